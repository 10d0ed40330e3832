"""hgm_node in a real ROS 2 graph: node, worker, publisher and subscribers in separate processes.

Each graph gets a random ROS_DOMAIN_ID and stays on localhost. The test process is the camera
(Image + CameraInfo publisher) and reads /diagnostics; the node runs `python -m hgm_node.main`; the
worker is a real `hgm_core.serve.worker.Worker` process with the small `PixelSplatHandler` (see
tests/test_node_worker_link.py); subscribers are `python -m tests.test_node_ros listen ...`
processes that save the serialised messages exactly as received, decoded here by rosbags.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from hgm_core.io.pointcloud import FIELDS, POINT_STEP, unpack_gaussians  # noqa: E402
from hgm_core.serve.client import WorkerClient  # noqa: E402
from hgm_node.qos import LATCHED_QOS, SENSOR_QOS  # noqa: E402
from tests.handlers import WORKER_COMMAND, process_alive  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
K = np.array([[60.0, 0, 32], [0, 60, 24], [0, 0, 1]])
OUTPUTS = {
    "/human_gaussians": "sensor_msgs/msg/PointCloud2",
    "/human_body": "visualization_msgs/msg/MarkerArray",
    "/human_body/joints": "geometry_msgs/msg/PoseArray",
    "/human_mesh": "visualization_msgs/msg/Marker",
}


def _env(domain: int) -> dict:
    return dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")


def _frame(rgb: np.ndarray, sec: int, encoding: str = "rgb8") -> Image:
    h, w = rgb.shape[:2]
    return Image(header=Header(stamp=Time(sec=sec, nanosec=7), frame_id="test_camera_optical"), height=h, width=w,
                 encoding=encoding, step=w * 3, data=rgb.tobytes())


def _rgb(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class Graph:
    """One isolated ROS graph: worker and node processes, and the test process as camera + diagnostics reader."""

    def __init__(self, tmp: Path, *, worker_sleep: float = 0.0, node_params: dict | None = None) -> None:
        self.tmp = tmp
        self.domain = random.SystemRandom().randint(1, 101)
        self.endpoint = f"ipc://{tmp}/worker.sock"
        self.worker = self.start_worker(worker_sleep)
        params = {"worker_endpoint": self.endpoint, "health_period_s": 0.3, "diagnostics_period_s": 0.2,
                  "timeout_s": 60.0, **(node_params or {})}
        args = [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
        self.node_log = open(tmp / "node.log", "w")
        self.node = subprocess.Popen([sys.executable, "-m", "hgm_node.main", "--ros-args", *args], cwd=REPO,
                                     env=_env(self.domain), stdout=self.node_log, stderr=subprocess.STDOUT)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain)
        self.ros = rclpy.create_node("test_camera", context=self.context)
        self.image_pub = self.ros.create_publisher(Image, "image", SENSOR_QOS)
        self.compressed_pub = self.ros.create_publisher(CompressedImage, "image/compressed", SENSOR_QOS)
        self.info_pub = self.ros.create_publisher(CameraInfo, "camera_info", SENSOR_QOS)
        self.diagnostics: dict[str, dict] = {}
        self.ros.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.ros)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()

    def start_worker(self, sleep_s: float) -> subprocess.Popen:
        return subprocess.Popen(WORKER_COMMAND + ["--bind", self.endpoint, "--sleep", str(sleep_s)], cwd=REPO)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            self.diagnostics[s.name.split(": ")[-1]] = {"level": s.level[0], "message": s.message,
                                                        **{kv.key: kv.value for kv in s.values}}

    def diag(self, name: str) -> dict:
        return self.diagnostics.get(name, {"level": -1, "message": ""})

    def wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.node.poll() is not None:
                raise AssertionError(f"the node exited with {self.node.returncode}; log:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; diagnostics {self.diagnostics}")
            time.sleep(0.05)

    def ready(self) -> None:
        """Wait for the node's subscriptions and a healthy worker, then give it the intrinsics."""
        self.wait(lambda: self.image_pub.get_subscription_count() > 0 and self.info_pub.get_subscription_count() > 0,
                  30.0, "the node's subscriptions")
        self.wait(lambda: self.diag("worker")["level"] == 0, 60.0, "a healthy worker")
        self.send_info()

    def send_info(self) -> None:
        for _ in range(3):
            self.info_pub.publish(CameraInfo(header=Header(frame_id="test_camera_optical"), width=64, height=48,
                                             k=K.reshape(-1).tolist()))
            time.sleep(0.05)

    def published(self) -> int:
        return int(self.diag("pipeline").get("jobs_published", 0))

    def publish_until(self, msg, predicate, timeout_s: float, what: str, publisher=None) -> None:
        """Publish `msg` every 0.3 s (best effort drops are normal) until `predicate()`."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.node.poll() is not None or time.monotonic() > deadline:
                self.wait(lambda: False, 0.0, what)  # raises with the node's log or the diagnostics
            (publisher or self.image_pub).publish(msg)
            time.sleep(0.3)

    def listen(self, sec: int, topics: dict[str, str] | None = None, timeout_s: float = 60.0) -> subprocess.Popen:
        out = self.tmp / f"listen_{sec}"
        args = [a for name, kind in (topics or OUTPUTS).items() for a in ("--topic", name, kind)]
        return subprocess.Popen([sys.executable, "-m", "tests.test_node_ros", "listen", "--out", str(out), "--sec", str(sec),
                                 "--timeout", str(timeout_s), *args], cwd=REPO, env=_env(self.domain))

    def log(self) -> str:
        self.node_log.flush()
        return (self.tmp / "node.log").read_text()[-3000:]

    def close(self) -> None:
        self.executor.shutdown()
        # Let the spin thread leave spin_once before its node and context go: destroying them under it
        # once left it spinning at full speed through the teardown (seen in a full run under load).
        self._spin.join(timeout=10)
        self.ros.destroy_node()
        rclpy.try_shutdown(context=self.context)
        for p in (self.node, self.worker):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in (self.node, self.worker):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.node_log.close()


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    g = Graph(tmp_path_factory.mktemp("graph"), node_params={"max_image_pixels": 200_000})
    try:
        g.ready()
        yield g
    finally:
        g.close()


def _decode(path: Path, kind: str):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED).deserialize_cdr(path.read_bytes(), kind)


def _received(listener: subprocess.Popen, g: Graph, timeout_s: float = 60.0) -> None:
    try:
        code = listener.wait(timeout_s)
    except subprocess.TimeoutExpired:
        listener.kill()
        raise
    assert code == 0, f"listener exited with {code}; diagnostics {g.diagnostics}; node log:\n{g.log()}"


def test_image_in_gaussians_out_equal_to_the_workers(graph):
    rgb = _rgb(1)
    listener = graph.listen(sec=101)
    graph.publish_until(_frame(rgb, 101), lambda: listener.poll() is not None, 60.0, "the listener to receive all outputs")
    _received(listener, graph)
    out = graph.tmp / "listen_101"

    cloud = _decode(out / "human_gaussians.cdr", OUTPUTS["/human_gaussians"])
    assert (cloud.header.stamp.sec, cloud.header.stamp.nanosec, cloud.header.frame_id) == (101, 7, "test_camera_optical")
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [(f.name, f.offset, f.datatype, f.count) for f in FIELDS]
    assert (cloud.height, cloud.width, cloud.point_step, cloud.is_dense, cloud.is_bigendian) == (1, 48 * 64, POINT_STEP, True, False)
    raw, colors = unpack_gaussians(cloud.fields, cloud.point_step, cloud.data)
    with WorkerClient(graph.endpoint, timeout_s=30) as client:  # what the worker makes of the same frame
        expected = client.reconstruct(rgb, K=K)
    np.testing.assert_array_equal(raw, expected.gaussians)
    np.testing.assert_array_equal(colors, rgb.reshape(-1, 3))  # the handler colours each Gaussian by its pixel

    body = _decode(out / "human_body.cdr", OUTPUTS["/human_body"])
    joints = _decode(out / "human_body_joints.cdr", OUTPUTS["/human_body/joints"])
    mesh = _decode(out / "human_mesh.cdr", OUTPUTS["/human_mesh"])
    np.testing.assert_allclose([[p.position.x, p.position.y, p.position.z] for p in joints.poses], expected.joints)
    assert len(body.markers[0].points) == 2 * len(expected.bones) and body.markers[0].header.frame_id == "test_camera_optical"
    assert len(mesh.points) == 3 * len(expected.mesh_faces) == len(mesh.colors)
    # The node never loaded torch, even after serving a job.
    assert "torch" not in Path(f"/proc/{graph.node.pid}/maps").read_text()


def test_late_subscriber_gets_the_last_avatar(graph):
    before = graph.published()
    graph.publish_until(_frame(_rgb(2), 202), lambda: graph.published() > before, 60.0, "a published avatar")
    time.sleep(0.5)  # let a job that may still run for the same frame finish; the stamp is the same anyway
    listener = graph.listen(sec=202, topics={"/human_gaussians": OUTPUTS["/human_gaussians"]}, timeout_s=30.0)
    _received(listener, graph, 40.0)  # nothing is published any more: TRANSIENT_LOCAL delivers the stored one
    cloud = _decode(graph.tmp / "listen_202" / "human_gaussians.cdr", OUTPUTS["/human_gaussians"])
    assert cloud.header.stamp.sec == 202 and cloud.width == 48 * 64


@pytest.mark.parametrize(
    "frame, reason",
    [
        (_frame(_rgb(3), 303, encoding="yuv422"), "unsupported encoding 'yuv422'"),
        (Image(header=Header(stamp=Time(sec=304)), encoding="rgb8"), "empty image (0 x 0)"),
        # Only the header is checked against max_image_pixels, so one row of data is enough: a whole
        # 720 KB frame over best effort with default transports arrives only by luck on a loaded host.
        (Image(header=Header(stamp=Time(sec=305)), height=480, width=500, encoding="rgb8", step=1500, data=b"\1" * 1500),
         "exceeds max_image_pixels=200000"),
        (Image(header=Header(stamp=Time(sec=306)), height=48, width=64, encoding="rgb8", step=192, data=b"\1" * 100),
         "data has 100 bytes"),
    ],
    ids=["encoding", "zero_size", "oversized", "truncated"],
)
def test_bad_frames_are_diagnosed_and_the_node_stays_up(graph, frame, reason):
    rejected = int(graph.diag("pipeline").get("frames_rejected", 0))
    graph.publish_until(frame, lambda: int(graph.diag("pipeline").get("frames_rejected", 0)) > rejected, 20.0, "a rejection")
    graph.wait(lambda: reason in graph.diag("pipeline")["message"], 5.0, f"diagnostics saying {reason!r}")
    assert graph.diag("pipeline")["level"] == 1  # WARN
    before = graph.published()
    graph.publish_until(_frame(_rgb(6), 399), lambda: graph.published() > before, 60.0, "a good frame to be served")
    assert graph.node.poll() is None and graph.diag("pipeline")["level"] == 0


def test_worker_killed_mid_job_then_replaced(tmp_path):
    """A worker dies during a job: the node stays up and says ERROR; a new worker on the same
    endpoint is picked up. Also exercises the compressed input path and the service trigger."""
    import cv2

    g = Graph(tmp_path, worker_sleep=2.0, node_params={"image_transport": "compressed", "trigger": "service"})
    try:
        g.wait(lambda: g.compressed_pub.get_subscription_count() > 0, 30.0, "the node's subscription")
        g.wait(lambda: g.diag("worker")["level"] == 0, 60.0, "a healthy worker")
        g.send_info()
        capture = g.ros.create_client(Trigger, "/hgm_node/capture")
        assert capture.wait_for_service(10.0)

        def compressed(sec: int) -> CompressedImage:
            ok, buf = cv2.imencode(".png", _rgb(sec)[:, :, ::-1])
            return CompressedImage(header=Header(stamp=Time(sec=sec, nanosec=7), frame_id="test_camera_optical"),
                                   format="rgb8; png compressed bgr8", data=buf.tobytes())

        def trigger() -> tuple[bool, str]:
            response = capture.call_async(Trigger.Request())
            g.wait(response.done, 10.0, "the capture service")
            return response.result().success, response.result().message

        g.compressed_pub.publish(compressed(401))
        g.wait(lambda: int(g.diag("pipeline").get("frames_received", 0)) > 0, 10.0, "the frame to arrive")
        ok, message = trigger()
        assert ok and "401.000000007" in message
        g.wait(lambda: g.diag("worker").get("health.busy") == "True", 10.0, "the job to run")
        g.worker.kill()
        g.wait(lambda: g.diag("worker")["level"] == 2 and g.diag("pipeline")["level"] == 2, 20.0, "ERROR diagnostics")
        assert "worker lost during the job" in g.diag("pipeline")["message"]
        assert g.node.poll() is None
        ok, message = trigger()
        assert not ok and "worker not ready" in message

        g.worker.wait()
        g.worker = g.start_worker(0.0)
        g.wait(lambda: g.diag("worker")["level"] == 0, 60.0, "the new worker")
        listener = g.listen(sec=402, topics={"/human_gaussians": OUTPUTS["/human_gaussians"]})
        g.publish_until(compressed(402), lambda: int(g.diag("pipeline").get("frames_received", 0)) >= 2, 20.0,
                        "the second frame", publisher=g.compressed_pub)
        assert trigger()[0]
        _received(listener, g)
        cloud = _decode(tmp_path / "listen_402" / "human_gaussians.cdr", OUTPUTS["/human_gaussians"])
        raw, colors = unpack_gaussians(cloud.fields, cloud.point_step, cloud.data)
        np.testing.assert_array_equal(colors, _rgb(402).reshape(-1, 3))  # PNG is lossless
    finally:
        g.close()
    assert not process_alive(g.worker.pid)


# -- subscriber process -------------------------------------------------------------------------


def listen(argv: list[str]) -> int:
    """Save the first message of each topic stamped `--sec` as `<out>/<topic>.cdr` (bytes as received)."""
    import importlib

    from rclpy.serialization import deserialize_message

    parser = argparse.ArgumentParser()
    parser.add_argument("--topic", nargs=2, action="append", metavar=("NAME", "TYPE"), required=True)
    parser.add_argument("--sec", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    node = rclpy.create_node("test_listener")
    missing = {name for name, _ in args.topic}

    def subscribe(name: str, kind: str) -> None:
        package, _, cls = kind.split("/")
        msg_type = getattr(importlib.import_module(f"{package}.msg"), cls)

        def on_message(data: bytes) -> None:
            msg = deserialize_message(data, msg_type)
            header = msg.markers[0].header if hasattr(msg, "markers") else msg.header
            if name in missing and header.stamp.sec == args.sec:
                (args.out / (name.strip("/").replace("/", "_") + ".cdr")).write_bytes(data)
                missing.discard(name)

        node.create_subscription(msg_type, name, on_message, LATCHED_QOS, raw=True)

    for name, kind in args.topic:
        subscribe(name, kind)
    deadline = time.monotonic() + args.timeout
    while missing and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.try_shutdown()
    return 1 if missing else 0


if __name__ == "__main__" and sys.argv[1:2] == ["listen"]:
    sys.exit(listen(sys.argv[2:]))
