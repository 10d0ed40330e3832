"""Workers as Ray Serve replicas behind the wire protocol (`hgm_core.serve.ray_serve`, issue #17).

One local Ray instance (2 CPUs, no dashboard) serves the module. Replicas run the transport test
handler `PixelSplatHandler` (tests/handlers.py), or its `PidFileHandler`, which also writes the
pid of the replica running a job, so a test can SIGKILL exactly that replica mid-job;
`SegfaultHandler` (below) crashes natively on one stream. Clients are the real `WorkerClient` over
tcp loopback. The real reconstructor runs through `hgm serve --ray` in a slow test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq

pytest.importorskip("ray.serve", reason="the optional extra `ray` is not installed")

import ray  # noqa: E402

from hgm_core.serve.client import WorkerClient, WorkerError  # noqa: E402
from hgm_core.serve.isolate import ComputeSpec  # noqa: E402
from hgm_core.serve.protocol import decode, encode  # noqa: E402
from hgm_core.serve.ray_serve import RayFront, RayServeConfig  # noqa: E402
from tests.handlers import PixelSplatHandler, test_image  # noqa: E402
from tests.test_serve_broker import wait_health  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPLAT = "tests.handlers:PixelSplatHandler"


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():  # another module's instance: ours must have the CPUs we count on
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@contextmanager
def running_front(compute: ComputeSpec, config: RayServeConfig):
    front = RayFront(compute, config)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            front.serve("tcp://127.0.0.1:*")
        except BaseException as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not front.ready.wait(0.2):
        assert not errors, errors
        assert time.monotonic() < deadline, "the Ray front did not start"
    try:
        yield front
    finally:
        front.stop()
        thread.join(60)
        assert not thread.is_alive()
        assert not errors, errors


class SegfaultHandler(PixelSplatHandler):
    """`PixelSplatHandler` that dies of a real segmentation fault, in the thread running the job, on
    requests of stream `crash_stream` (a signal sent with os.kill may reach another thread of a
    Ray worker first and let the job finish before the process dies)."""

    def __init__(self, crash_stream: str) -> None:
        super().__init__()
        self.poison = crash_stream

    def __call__(self, request):
        if request.stream == self.poison:
            import ctypes

            ctypes.string_at(0)  # reads address 0: SIGSEGV
        return super().__call__(request)


def _splat_colours(image: np.ndarray) -> np.ndarray:
    return (image.reshape(-1, 3) / 255.0 - 0.5) / 0.28209479177387814


def test_two_replicas_serve_concurrent_jobs_health_and_hostile_messages(local_ray):
    config = RayServeConfig(num_replicas=2, num_cpus=0.5, app_name="hgm_test_pair")
    with running_front(ComputeSpec(SPLAT, {"sleep_s": 1.0}), config) as front, WorkerClient(front.endpoint, timeout_s=60, retries=0) as client:
        health = wait_health(client, lambda h: h["ok"] and h["workers"] == 2)
        assert health["role"] == "broker" and health["engine"] == "ray" and health["protocol"] == 1
        assert "prior" in health["stages"] and health["track"] is False

        # Four concurrent clients' jobs: each reply reaches the client that asked, both replicas work.
        images = [test_image(8 + i, 10, seed=i) for i in range(4)]
        results: dict[int, object] = {}
        calls = [threading.Thread(target=lambda i=i: results.update({i: client.reconstruct(images[i])})) for i in range(4)]
        t0 = time.monotonic()
        for c in calls:
            c.start()
        for c in calls:
            c.join(60)
        wall = time.monotonic() - t0
        for i, image in enumerate(images):
            np.testing.assert_allclose(results[i].gaussians[:, 3:6], _splat_colours(image), atol=1e-5)
            assert results[i].info["attempts"] == 1 and results[i].timings["worker_total"] >= 1.0
        assert len({r.info["worker"]["pid"] for r in results.values()}) == 2
        assert wall < 4 * 1.0  # four 1 s jobs on one replica would take 4 s

        # Hostile messages: typed error replies, and the front keeps serving.
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.connect(front.endpoint)
        try:
            hostile = [
                [b"\xff\xfe not json"],
                [b'{"protocol": true, "id": "a", "kind": "health"}'],
                [b'{"protocol": 1, "id": "b", "kind": "reconstruct", "arrays": [{"name": "image", "dtype": ["u1"], "shape": [2, 2, 3]}]}', b"x" * 12],
                [b'{"protocol": 1, "id": "c", "kind": "reconstruct", "deadline_ms": 1e400}'],
                [b'{"protocol": 1, "id": "d", "kind": "reconstruct", "n": ' + b"9" * 5000 + b"}"],
                [b"[" * 5000 + b"]" * 5000],
                encode("reconstruct", "e", {"image": np.zeros((4, 4), np.uint8)}),  # not [H, W, 3]
                encode("reconstruct", "f", {"image": np.zeros((4, 4, 3), np.uint8), "K": np.diag([1e39, 1e39, 1.0])}),
                encode("result", "g"),
                # A job the replicas cannot finish in time: cancelled and answered at its deadline.
                encode("reconstruct", "h", {"image": np.zeros((4, 4, 3), np.uint8)}, deadline_ms=300),
            ]
            kinds = []
            for frames in hostile:
                raw.send_multipart(frames)
                assert raw.poll(10_000), f"no reply to {frames[0][:60]!r}"
                kinds.append(decode(raw.recv_multipart(), max_message_bytes=1 << 20).header["error"]["kind"])
        finally:
            raw.close(0)
        assert kinds == ["bad_request", "protocol", "bad_request", "bad_request", "bad_request", "bad_request",
                         "bad_input", "bad_input", "bad_request", "timeout"]
        after = client.reconstruct(images[0])
        np.testing.assert_allclose(after.gaussians[:, 3:6], _splat_colours(images[0]), atol=1e-5)
        with pytest.raises(WorkerError) as info:
            client.track(images[0], stream="cam")  # these replicas do not track
        assert info.value.kind == "stage_unavailable"
        final = client.health()
        assert final["jobs_done"] == 5 and final["jobs_failed"] == 1 and final["in_flight"] == 0 and final["jobs_requeued"] == 0


def test_a_replica_killed_mid_job_does_not_lose_the_job(local_ray, tmp_path):
    pid_file = tmp_path / "running.pid"
    config = RayServeConfig(num_replicas=2, num_cpus=0.5, app_name="hgm_test_kill")
    compute = ComputeSpec("tests.handlers:PidFileHandler", {"pid_file": str(pid_file), "sleep_s": 3.0})
    with running_front(compute, config) as front, WorkerClient(front.endpoint, timeout_s=120, retries=0) as client:
        wait_health(client, lambda h: h["ok"] and h["workers"] == 2)
        image = test_image(seed=3)
        results, errors = [], []

        def call() -> None:
            try:
                results.append(client.reconstruct(image))
            except Exception as e:  # reported below
                errors.append(e)

        job = threading.Thread(target=call)
        job.start()
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert time.monotonic() < deadline, "no replica started the job"
            time.sleep(0.05)
        victim = int(pid_file.read_text())
        os.kill(victim, signal.SIGKILL)
        job.join(120)
        assert not errors, errors
        assert len(results) == 1
        result = results[0]
        assert result.info["attempts"] == 2 and result.info["worker"]["pid"] != victim
        np.testing.assert_allclose(result.gaussians[:, 3:6], _splat_colours(image), atol=1e-5)
        health = client.health()
        assert health["jobs_requeued"] == 1 and health["jobs_done"] == 1 and health["jobs_quarantined"] == 0


@pytest.mark.slow
def test_a_stream_keeps_reaching_the_replica_with_its_keyframe(local_ray):
    """Keyframe and track jobs of a stream go to one replica (multiplexed routing): with two
    replicas and routing by load alone, a track job would often find no keyframe ("lost"). Ray
    learns where a stream is when its first job starts there (within ~0.1-0.3 s); keyframes take
    seconds, here 1 s."""
    config = RayServeConfig(num_replicas=2, num_cpus=0.5, app_name="hgm_test_streams")
    with running_front(ComputeSpec("tests.handlers:BlobLiveHandler", {"keyframe_sleep_s": 1.0}), config) as front, WorkerClient(front.endpoint, timeout_s=60, retries=0) as client:
        wait_health(client, lambda h: h["ok"] and h["workers"] == 2 and h["track"])
        for stream, (x, y) in {"cam_a": (4, 6), "cam_b": (20, 10)}.items():
            image = np.zeros((24, 32, 3), np.uint8)
            image[y:y + 4, x:x + 4] = 255
            keyframe = client.reconstruct(image, stream=stream, bind=True)
            binding_id = keyframe.keyframe.binding.binding_id
            for dx in range(6):
                moved = np.roll(image, dx, axis=1)
                pose = client.track(moved, stream=stream)
                assert pose.state == "tracking" and pose.binding_id == binding_id, (stream, dx, pose.reason)


@pytest.mark.slow
def test_the_ray_front_answers_every_fuzzed_message(local_ray):
    """tests/test_fuzz_serve.py's hostile messages (hypothesis), 1,000 of them, to a live Ray front:
    each gets a well-formed reply of a wire kind; afterwards the front is healthy and serves."""
    from hypothesis import given, settings

    from tests.test_fuzz_serve import FUZZ, Target, messages

    config = RayServeConfig(num_replicas=1, num_cpus=0.5, app_name="hgm_test_fuzz")
    with running_front(ComputeSpec(SPLAT), config) as front:
        target = Target(front.endpoint, [])

        @settings(max_examples=1000, **FUZZ)
        @given(frames=messages())
        def fuzz(frames):
            target.send(frames)

        try:
            fuzz()
            target.assert_alive_and_healthy()
        finally:
            target.close()
        assert sum(target.kinds.values()) >= 1000 and set(target.kinds) - {"result"}
        with WorkerClient(front.endpoint, timeout_s=60, retries=0) as client:
            assert client.reconstruct(test_image()).gaussians.shape == (24 * 32, 14)


@pytest.mark.slow
def test_a_job_that_kills_two_replicas_is_quarantined(local_ray):
    config = RayServeConfig(num_replicas=2, num_cpus=0.5, app_name="hgm_test_poison")
    with running_front(ComputeSpec("tests.test_ray_serve:SegfaultHandler", {"crash_stream": "poison"}), config) as front, WorkerClient(front.endpoint, timeout_s=120, retries=0) as client:
        wait_health(client, lambda h: h["ok"] and h["workers"] == 2)
        with pytest.raises(WorkerError) as info:
            client.reconstruct(test_image(), stream="poison")
        assert info.value.kind == "internal" and "quarantined" in str(info.value)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="quarantined"):  # the same job again: refused at once
            client.reconstruct(test_image(), stream="poison")
        assert time.monotonic() - t0 < 5
        health = client.health()
        assert health["jobs_quarantined"] == 1 and health["jobs_requeued"] == 1
        # Ray Serve replaces the dead replicas; the front serves on.
        assert client.reconstruct(test_image(), stream="cam").gaussians.shape == (24 * 32, 14)


@pytest.mark.slow
def test_hgm_serve_ray_runs_the_real_reconstructor(tmp_path):
    """`hgm serve --ray` in a process of its own (its own local Ray instance, autoscaling from one
    replica): the real pipeline (live: reconstruct and track), a prior-level job of the sample photo."""
    from tests.test_serve_broker import _sample_person_image

    endpoint = f"ipc://{tmp_path}/front.sock"
    autoscaling = '{"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1}'  # passed to Ray Serve as is
    cmd = [sys.executable, "-m", "hgm_core", "serve", "--ray", "--bind", endpoint, "--autoscaling", autoscaling,
           "--replica-cpus", "1", "--ray-num-cpus", "2", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    image = _sample_person_image()
    try:
        with WorkerClient(endpoint, timeout_s=300, retries=0) as client:
            health = wait_health(client, lambda h: h["ok"], timeout_s=300, process=proc)
            assert health["engine"] == "ray" and health["track"] is True and health["pipeline"]["device"] == "cpu"
            result = client.reconstruct(image, stages="prior", stream="cam")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stderr.read()[-2000:]
    assert result.gaussians.dtype == np.float32 and result.gaussians.shape[1] == 14 and len(result.gaussians) > 0
    assert np.isfinite(result.gaussians).all() and np.median(result.gaussians[:, 2]) > 0
    assert result.timings["worker_total"] > 0 and result.info["attempts"] == 1
