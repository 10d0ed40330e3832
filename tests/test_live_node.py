"""hgm_node in live mode over real rclpy: keyframes, per-frame tracking, the compact stream.

The graph is tests/test_node_ros.py's (node and worker in processes of their own, a random
ROS_DOMAIN_ID); the worker serves `BlobLiveHandler` (tests/handlers.py): the "person" is a bright
square on a dark image, its avatar one Gaussian per bright pixel at 2 m, tracked by the square's
centroid. The test process is the camera and subscribes to the node's outputs.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import PoseArray  # noqa: E402
from sensor_msgs.msg import CompressedImage, PointCloud2  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from hgm_core.io.live_stream import decode_frame, read_binding, skin_raw  # noqa: E402
from hgm_core.io.pointcloud import unpack_gaussians  # noqa: E402
from hgm_node.qos import LATCHED_QOS  # noqa: E402
from tests.handlers import WORKER_COMMAND  # noqa: E402
from tests.test_node_ros import REPO, Graph, _frame  # noqa: E402

KEYFRAME_SLEEP_S = 1.5
"""Each keyframe takes this long on the test worker, so frames are tracked while one runs."""


def blob_rgb(x: int, y: int = 20, size: int = 8) -> np.ndarray:
    """A dark 48 x 64 image with a bright square whose top-left corner is at (x, y)."""
    image = np.full((48, 64, 3), 10, np.uint8)
    if x >= 0:
        image[y : y + size, x : x + size] = (200, 150, 100)
    return image


def expected_x(x: int, size: int = 8) -> float:
    """Camera-frame x of the square's centre at 2 m (the graph's K: f = 60 px, cx = 32)."""
    return (x + size / 2 - 32) / 60 * 2.0


class LiveGraph(Graph):
    """The test graph with a live worker, and the node's live outputs collected in this process."""

    def __init__(self, tmp, **params) -> None:
        super().__init__(tmp, node_params={"mode": "live", "keyframe_retry_s": 0.2, **params})
        self.lock = threading.Lock()
        self.clouds: dict[int, PointCloud2] = {}  # stamp sec -> the posed avatar
        self.bones: dict[int, CompressedImage] = {}
        self.joints: dict[int, PoseArray] = {}
        self.canonical: list[PointCloud2] = []
        self.bindings: list[CompressedImage] = []
        for kind, topic, store in ((PointCloud2, "human_gaussians", self.clouds), (CompressedImage, "human_avatar/bones", self.bones),
                                   (PoseArray, "human_body/joints", self.joints)):
            self.ros.create_subscription(kind, topic, lambda m, s=store: self._keep(s, m), LATCHED_QOS)
        self.ros.create_subscription(PointCloud2, "human_avatar/canonical", lambda m: self._append(self.canonical, m), LATCHED_QOS)
        self.ros.create_subscription(CompressedImage, "human_avatar/binding", lambda m: self._append(self.bindings, m), LATCHED_QOS)

    def start_worker(self, sleep_s: float):
        import subprocess

        return subprocess.Popen(WORKER_COMMAND + ["--bind", self.endpoint, "--live", "--keyframe-sleep", str(KEYFRAME_SLEEP_S)], cwd=REPO)

    def _keep(self, store: dict, msg) -> None:
        with self.lock:
            store[msg.header.stamp.sec] = msg

    def _append(self, store: list, msg) -> None:
        with self.lock:
            store.append(msg)

    def keyframes(self) -> int:
        return int(self.diag("pipeline").get("live_keyframes", 0))

    def track(self, x: int, sec: int, timeout_s: float = 30.0) -> np.ndarray:
        """Publish the square at `x` stamped `sec` until its posed avatar arrives; its raw rows."""
        self.publish_until(_frame(blob_rgb(x), sec), lambda: sec in self.clouds and sec in self.bones, timeout_s,
                           f"the posed avatar of frame {sec}")
        cloud = self.clouds[sec]
        assert cloud.header.frame_id == "test_camera_optical"
        return unpack_gaussians(cloud.fields, cloud.point_step, bytes(cloud.data))[0]


@pytest.fixture()
def graph(tmp_path):
    g = LiveGraph(tmp_path)
    try:
        g.ready()
        yield g
    finally:
        g.close()


def test_moving_body_in_moving_avatar_out_and_the_compact_stream_agrees(graph):
    graph.publish_until(_frame(blob_rgb(10), 1), lambda: graph.keyframes() >= 1 and graph.canonical and graph.bindings,
                        60.0, "the first keyframe")
    xs = [10, 16, 22, 28, 34, 40]
    posed = {x: graph.track(x, 10 + x) for x in xs}
    # The avatar moves with the body: its centre follows the square across the image.
    centres = [float(posed[x][:, 0].mean()) for x in xs]
    np.testing.assert_allclose(centres, [expected_x(x) for x in xs], atol=1e-4)
    assert all(b > a for a, b in zip(centres, centres[1:]))
    for x in xs:  # the joints move along
        assert graph.joints[10 + x].poses[0].position.x == pytest.approx(expected_x(x), abs=1e-4)

    # A client of the compact stream: the canonical avatar and the binding once, then bone frames.
    with graph.lock:
        canonical_msg, binding_msg = graph.canonical[-1], graph.bindings[-1]
    assert binding_msg.format == "hgm-binding" and canonical_msg.header.frame_id == "hgm_avatar_canonical"
    binding = read_binding(io.BytesIO(bytes(binding_msg.data)))
    canonical = unpack_gaussians(canonical_msg.fields, canonical_msg.point_step, bytes(canonical_msg.data))[0]
    for x in xs:
        frame = graph.bones[10 + x]
        assert frame.format == "hgm-bones" and frame.header.frame_id == "test_camera_optical"
        transforms, binding_id = decode_frame(bytes(frame.data))
        assert binding_id == binding.binding_id and len(frame.data) == 12 + 28 * len(binding.joint_names)
        np.testing.assert_allclose(skin_raw(canonical, binding, transforms), posed[x], atol=1e-5)
    diag = graph.diag("pipeline")
    assert diag["live_state"] == "tracking" and diag["level"] == 0 and float(diag["latency.total_s"]) > 0


def test_lost_person_recovered_by_a_new_keyframe_without_stalling_the_frames(graph):
    graph.publish_until(_frame(blob_rgb(10), 1), lambda: graph.keyframes() >= 1, 60.0, "the first keyframe")
    graph.track(12, 2)
    first_id = read_binding(io.BytesIO(bytes(graph.bindings[-1].data))).binding_id

    # Nobody in view: lost, a keyframe is requested (and fails while nobody is there).
    graph.publish_until(_frame(blob_rgb(-1), 3), lambda: graph.diag("pipeline").get("live_state") == "lost", 30.0, "lost")
    assert graph.diag("pipeline")["level"] == 1 and "tracking lost" in graph.diag("pipeline")["message"]
    assert 3 not in graph.clouds  # nothing is published for a lost frame; the last avatar stays latched

    # The person is back: tracked frames are published while the new keyframe runs, then it lands.
    sec = 4
    while graph.keyframes() < 2:
        graph.track(20 + sec % 8, sec)
        sec += 1
        assert sec < 60, f"no second keyframe; diagnostics {graph.diagnostics}; node log:\n{graph.log()}"
    assert sec - 4 >= 2, "tracked frames should have been published while the keyframe ran"
    with graph.lock:
        new_id = read_binding(io.BytesIO(bytes(graph.bindings[-1].data))).binding_id
    assert new_id != first_id
    graph.track(30, sec + 1)
    assert decode_frame(bytes(graph.bones[sec + 1].data))[1] == new_id

    # ~/capture asks for one more keyframe.
    capture = graph.ros.create_client(Trigger, "/hgm_node/capture")
    assert capture.wait_for_service(10.0)
    response = capture.call_async(Trigger.Request())
    graph.wait(response.done, 10.0, "the capture service")
    assert response.result().success and "keyframe" in response.result().message
    sec += 2
    deadline = time.monotonic() + 60
    while graph.keyframes() < 3 and time.monotonic() < deadline:
        graph.track(24, sec)
        sec += 1
    assert graph.keyframes() >= 3
    graph.wait(lambda: "(~/capture)" in graph.log(), 10.0, "the node's log line of the captured keyframe")


def test_periodic_keyframes(tmp_path):
    g = LiveGraph(tmp_path, keyframe_period_s=0.5)
    try:
        g.ready()
        sec = 1
        while g.keyframes() < 3:  # tracked all along, the person never lost
            g.track(10 + sec % 20, sec)
            assert g.diag("pipeline").get("live_state") != "lost"
            sec += 1
            assert sec < 100, f"no periodic keyframes; diagnostics {g.diagnostics}"
        with g.lock:
            ids = {read_binding(io.BytesIO(bytes(m.data))).binding_id for m in g.bindings}
        assert len(ids) >= 3
    finally:
        g.close()


def test_a_new_worker_knows_no_keyframe_and_gets_one(tmp_path):
    """The worker dies and a new one takes its endpoint: its track replies are "lost" (no keyframe
    of this stream there), the node reconstructs a keyframe on it and tracks again."""
    g = LiveGraph(tmp_path)
    try:
        g.ready()
        g.publish_until(_frame(blob_rgb(10), 1), lambda: g.keyframes() >= 1, 60.0, "the first keyframe")
        g.track(14, 2)
        g.worker.kill()
        g.worker.wait()
        g.worker = g.start_worker(0.0)
        g.publish_until(_frame(blob_rgb(16), 3), lambda: g.keyframes() >= 2, 90.0, "a keyframe on the new worker")
        g.track(20, 4)
        with g.lock:
            assert len({read_binding(io.BytesIO(bytes(m.data))).binding_id for m in g.bindings}) >= 2
    finally:
        g.close()


@contextlib.contextmanager
def live_mode_in_process(publish_avatar, **kwargs):
    """A `LiveMode` on an rclpy node of this process, linked to a real worker serving
    `BlobLiveHandler` in this process; yields `(live, worker endpoint)`."""
    import random

    from hgm_node.live import LiveMode
    from hgm_node.worker_link import WorkerLink
    from tests.handlers import BlobLiveHandler, running_worker

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random.SystemRandom().randint(1, 101))
    node = rclpy.create_node("live_in_process", context=context)
    handler = BlobLiveHandler()
    live = link = None
    try:
        with running_worker(handler, track=handler.track) as worker:
            link = WorkerLink(worker.endpoint, timeout_s=10.0)
            link.start()
            assert link.wait_ready(10.0)
            live = LiveMode(node, link, stream="cam", stages="prior", publish_avatar=publish_avatar, **kwargs)
            yield live, worker.endpoint
    finally:
        if live is not None:
            live.close()
        if link is not None:
            link.close()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def live_input(rgb: np.ndarray, sec: int, K: np.ndarray = np.array([[60.0, 0, 32], [0, 60, 24], [0, 0, 1]])):
    """A converted camera frame stamped `sec`, as the node's job thread hands it to `LiveMode`."""
    from std_msgs.msg import Header

    from hgm_node.live import LiveInput

    now = time.monotonic()
    return LiveInput(rgb, K, None, None, Header(stamp=Time(sec=sec), frame_id="cam"), now, now)


def first_keyframe(live, rgb: np.ndarray, K: np.ndarray | None = None, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while live.avatar is None:
        live.process(live_input(rgb, 1) if K is None else live_input(rgb, 1, K))
        assert time.monotonic() < deadline, "no keyframe"
        time.sleep(0.05)


def test_publishing_overlaps_the_next_track_job_and_only_the_newest_pose_waits():
    """`LiveMode` with a real worker and a publisher that takes 0.3 s: `process` hands each pose
    over and returns at once (the next frame is tracked while the last one is published), a pose
    not yet taken is replaced by a newer one (never a queue), and the newest frame always comes
    out, in order, at its own position."""
    from hgm_core.serve.client import WorkerClient

    published: list[tuple[int, float, float, float]] = []  # (stamp sec, start, end, mean x of the avatar)

    def slow_publish(raw, joints, bones, header) -> int:
        start = time.monotonic()
        time.sleep(0.3)
        published.append((header.stamp.sec, start, time.monotonic(), float(raw[:, 0].mean())))
        return raw.nbytes

    reports: list[tuple[int, str]] = []
    with live_mode_in_process(slow_publish, report=lambda f, o: reports.append((f.header.stamp.sec, o.state))) as (live, endpoint):
        first_keyframe(live, blob_rgb(10))
        time.sleep(0.8)  # the keyframe's avatar and the warm-up frames are out
        skipped, calls = live.skipped, []
        for i in range(10):  # a 10 Hz camera; the publisher manages 3 Hz
            t0 = time.monotonic()
            assert live.process(live_input(blob_rgb(12 + 2 * i), 100 + i)).state == "tracking"
            calls.append((t0, time.monotonic()))
            time.sleep(max(0.0, t0 + 0.1 - time.monotonic()))
        assert max(c1 - c0 for c0, c1 in calls) < 0.15  # no frame waited for a publish
        deadline = time.monotonic() + 10
        while not published or published[-1][0] != 109:  # the newest frame always comes out
            assert time.monotonic() < deadline, f"frame 109 never published: {published}"
            time.sleep(0.05)
        with WorkerClient(endpoint) as client:  # the handler's own avatar where the square is
            where = {x: float(client.reconstruct(blob_rgb(x), K=live_input(blob_rgb(x), 0).K).gaussians[:, 0].mean()) for x in (12, 30)}
    tracked = [p for p in published if p[0] >= 100]
    secs = [p[0] for p in tracked]
    assert secs == sorted(secs) and len(secs) == len(set(secs))
    assert live.skipped - skipped == 10 - len(tracked) and 2 <= len(tracked) <= 6
    assert [s for s, state in reports if s >= 100] == secs and {state for s, state in reports if s >= 100} == {"tracking"}
    # Tracking went on while a frame was being published.
    assert any(start < c0 and c1 < end for _, start, end, _ in tracked for c0, c1 in calls)
    for sec, _, _, x in tracked:
        square = 12 + 2 * (sec - 100)
        if square in where:
            assert x == pytest.approx(where[square], abs=1e-4)
        assert x == pytest.approx(expected_x(square), abs=1e-3)


class _Log:
    """Keeps `LiveMode`'s log lines (in place of the node's logger)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, **kw) -> None:
        self.lines.append(message)

    warning = error = info


def test_appearance_drift_asks_for_a_keyframe():
    """The person changes colour in place (tracking goes on): after `drift_frames` drifted frames a
    keyframe is taken for "appearance drift", and its avatar has the new colours; unchanged frames
    never drift. A 96 px square in a 320 x 240 frame (the drift check compares 8 px cells)."""
    K = np.array([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]])

    def person(x: int, rgb: tuple[int, int, int]) -> np.ndarray:
        image = np.full((240, 320, 3), 10, np.uint8)
        image[60:156, x : x + 96] = rgb
        return image

    log = _Log()
    published: list[tuple[int, np.ndarray]] = []
    with live_mode_in_process(lambda raw, *a: published.append((a[-1].stamp.sec, raw)) or 0, drift_threshold=0.1, drift_frames=3,
                              logger=log) as (live, _):
        first_keyframe(live, person(100, (200, 150, 100)), K)
        sec = 10
        for _ in range(8):  # the same person moving: no drift
            live.process(live_input(person(100 + sec % 5, (200, 150, 100)), sec, K))
            sec += 1
            time.sleep(0.05)
        time.sleep(0.2)
        assert live.keyframes == 1 and live.last_drift is not None and abs(live.last_drift) < 0.02
        deadline = time.monotonic() + 20
        while live.keyframes < 2:  # a new shirt
            live.process(live_input(person(100 + sec % 5, (60, 200, 240)), sec, K))
            sec += 1
            time.sleep(0.05)
            assert time.monotonic() < deadline, f"no drift keyframe; last drift {live.last_drift}; log {log.lines}"
        for _ in range(4):
            live.process(live_input(person(100, (60, 200, 240)), sec, K))
            sec += 1
            time.sleep(0.05)
        time.sleep(0.2)
    assert any("(appearance drift: colour error" in line for line in log.lines), log.lines
    assert abs(live.last_drift) < 0.02  # the new keyframe looks like the frames again
    colours = 0.5 + 0.28209479 * published[-1][1][:, 3:6]
    np.testing.assert_allclose(colours.mean(0), np.array([60, 200, 240]) / 255.0, atol=1e-3)


@pytest.mark.slow
def test_demo_plays_a_sequence_through_live_mode(tmp_path):
    """`hgm demo --sequence`: a short `hgm datagen --sequence` clip through the real pipeline in live
    mode; posed avatars arrive and are rendered beside their frames."""
    import os
    import random
    import re
    import subprocess
    import sys

    import cv2

    env = dict(os.environ, ROS_DOMAIN_ID=str(random.SystemRandom().randint(1, 101)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    subprocess.run([sys.executable, "-m", "hgm_core", "datagen", "--sequence", "--subjects", "1", "--frames", "16",
                    "--frame-size", "320x240", "--seed", "9090", "-o", str(tmp_path / "seq")], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=300)
    run = subprocess.run([sys.executable, "-m", "hgm_core", "demo", "--sequence", str(tmp_path / "seq" / "seq_0000"),
                          "--out", str(tmp_path / "out"), "--timeout", "400"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=500)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = run.stdout[run.stdout.index("hgm demo: the sequence through live mode"):]
    avatars = int(re.search(r"(\d+) posed avatars on /human_gaussians for 16 frames", summary).group(1))
    assert avatars >= 1 and re.search(r"[1-9]\d* keyframe\(s\)", summary)
    sheet = cv2.imread(str(tmp_path / "out" / "live_sequence.png"))
    columns = min(4, avatars)
    assert sheet.shape == (2 * 240, columns * 320, 3)
    renders = sheet[240:].astype(int)
    drawn = np.abs(renders - renders[0, 0]).sum(-1) > 30  # differs from the background (the corner pixel)
    assert 0.01 < drawn.mean() < 0.5


def test_live_counters_reach_the_diagnostics():
    from hgm_node.diagnostics import PipelineStats, diagnostic_array
    from hgm_node.worker_link import WorkerStatus

    stats = PipelineStats(keyframes=2, track_state="tracking", live_skipped=5)
    worker = WorkerStatus(state="ok", endpoint="ipc://x", message="", local_pid=None, restarts=0, health={})
    values = {kv.key: kv.value for kv in diagnostic_array(Time(), "hgm", worker, stats).status[1].values}
    assert (values["live_keyframes"], values["live_state"], values["live_skipped"]) == ("2", "tracking", "5")
    off = {kv.key for kv in diagnostic_array(Time(), "hgm", worker, PipelineStats()).status[1].values}
    assert not off & {"live_keyframes", "live_state", "live_skipped"}  # not in live mode: no live values
