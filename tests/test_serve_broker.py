"""Broker failover, CURVE, and the `hgm serve` / `hgm keys` commands, over real sockets and processes.

Workers that must die run in their own processes (`tests.handlers.WORKER_COMMAND`) and are SIGKILLed;
the rest run in threads. Jobs use `PixelSplatHandler` (tests/handlers.py), not the HGM model,
except `test_hgm_serve_with_the_real_reconstructor`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq.auth

from hgm_core.cli import main as hgm_main
from hgm_core.serve.broker import Broker, BrokerConfig
from hgm_core.serve.client import WorkerClient, WorkerError, WorkerTimeout, load_curve_client_keys
from hgm_core.serve.curve import CurveClientKeys, CurveServerKeys
from hgm_core.serve.worker import WorkerConfig
from tests.handlers import WORKER_COMMAND, PixelSplatHandler, running_worker, test_image

REPO = Path(__file__).resolve().parents[1]
FAST = dict(heartbeat_interval_s=0.2, heartbeat_liveness=5)


@contextmanager
def running_broker(config: BrokerConfig | None = None, *, tmp_path: Path, **kw):
    broker = Broker(config or BrokerConfig(**FAST), **kw)
    thread = threading.Thread(target=broker.serve, args=(f"ipc://{tmp_path}/front.sock", f"ipc://{tmp_path}/back.sock"), daemon=True)
    thread.start()
    assert broker.ready.wait(10)
    try:
        yield broker
    finally:
        broker.stop()
        thread.join(10)
        assert not thread.is_alive()


def worker_process(connect: str, sleep_s: float = 0.0, *flags: str) -> subprocess.Popen:
    cmd = WORKER_COMMAND + ["--connect", connect, "--sleep", str(sleep_s), "--heartbeat", "0.2", *flags]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_health(client: WorkerClient, predicate, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> dict:
    """Poll health until `predicate` holds (a server still starting up may not answer yet)."""
    deadline, health = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stderr.read()}")
        try:
            health = client.health()
        except WorkerTimeout:
            continue
        if predicate(health):
            return health
        time.sleep(0.05)
    raise AssertionError(f"server never reached the expected state: {health}")


def test_broker_balances_concurrent_clients_over_workers(tmp_path):
    handlers = [PixelSplatHandler(sleep_s=0.3), PixelSplatHandler(sleep_s=0.3)]
    with running_broker(tmp_path=tmp_path) as broker:
        with (
            running_worker(handlers[0], WorkerConfig(**FAST), connect=broker.backend_endpoint),
            running_worker(handlers[1], WorkerConfig(**FAST), connect=broker.backend_endpoint),
            WorkerClient(broker.frontend_endpoint, timeout_s=10) as client,
        ):
            health = wait_health(client, lambda h: h["workers"] == 2 and h["idle"] == 2)
            assert health["ok"] is True and health["role"] == "broker" and "prior" in health["stages"]
            images = [test_image(8 + i, 10, seed=i) for i in range(4)]
            results: dict[int, object] = {}
            calls = [threading.Thread(target=lambda i=i: results.update({i: client.reconstruct(images[i])})) for i in range(4)]
            for c in calls:
                c.start()
            for c in calls:
                c.join(20)
            final = client.health()
    for i, image in enumerate(images):  # every reply reached the client that asked
        np.testing.assert_allclose(results[i].gaussians[:, 3:6], (image.reshape(-1, 3) / 255.0 - 0.5) / 0.28209479177387814, atol=1e-5)
    assert [h.calls for h in handlers] == [2, 2]  # longest-idle worker first: both took their share
    assert final["jobs_done"] == 4 and final["queued"] == 0 and final["in_flight"] == 0


def test_job_of_a_killed_worker_is_rerun_on_another(tmp_path):
    with running_broker(tmp_path=tmp_path) as broker, WorkerClient(broker.frontend_endpoint, timeout_s=60, retries=0) as client:
        slow = worker_process(broker.backend_endpoint, sleep_s=60)
        fast = None
        try:
            wait_health(client, lambda h: h["workers"] == 1)
            results, errors = [], []

            def call():
                try:
                    results.append(client.reconstruct(test_image()))
                except Exception as e:  # reported below
                    errors.append(e)

            job = threading.Thread(target=call)
            job.start()
            wait_health(client, lambda h: h["in_flight"] == 1)  # the slow worker has it
            fast = worker_process(broker.backend_endpoint)
            wait_health(client, lambda h: h["workers"] == 2 and h["idle"] == 1)
            slow.send_signal(signal.SIGKILL)
            job.join(30)
            assert not errors, errors
            assert len(results) == 1
            assert results[0].info["worker"]["pid"] == fast.pid
            assert results[0].gaussians.shape == (24 * 32, 14)
            health = client.health()
            assert health["workers"] == 1 and health["jobs_requeued"] == 1 and health["jobs_done"] == 1
        finally:
            for p in (slow, fast):
                if p is not None:
                    p.kill()
                    p.wait(10)


def test_a_job_that_kills_two_workers_is_quarantined_not_retried_across_the_fleet(tmp_path):
    with running_broker(tmp_path=tmp_path) as broker, WorkerClient(broker.frontend_endpoint, timeout_s=60, retries=0) as client:
        workers = [worker_process(broker.backend_endpoint, 0.0, "--crash-stream", "poison") for _ in range(3)]
        try:
            wait_health(client, lambda h: h["workers"] == 3)
            with pytest.raises(WorkerError) as info:
                client.reconstruct(test_image(), stream="poison")
            assert info.value.kind == "internal" and "quarantined" in str(info.value)
            assert sorted(p.poll() for p in workers if p.poll() is not None) == [-signal.SIGSEGV] * 2
            health = client.health()
            assert health["workers"] == 1 and health["jobs_quarantined"] == 1 and health["jobs_requeued"] == 1
            # The same job again (a client's retry) is refused at once: the last worker lives on.
            with pytest.raises(WorkerError, match="quarantined"):
                client.reconstruct(test_image(), stream="poison")
            assert client.reconstruct(test_image(), stream="cam").gaussians.shape == (24 * 32, 14)
            assert sum(p.poll() is None for p in workers) == 1
        finally:
            for p in workers:
                p.kill()
                p.wait(10)


def test_jobs_in_flight_while_the_broker_is_killed_reach_the_restarted_broker(tmp_path):
    """A broker process SIGKILLed with jobs queued and running: the clients' retries reach its
    successor on the same endpoints, and the workers rejoin it."""
    front, back = f"ipc://{tmp_path}/f.sock", f"ipc://{tmp_path}/b.sock"
    cmd = [sys.executable, "-m", "hgm_core", "serve", "--broker", "--bind", front, "--backend", back, "--heartbeat-s", "0.2"]
    broker = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = [worker_process(back, 0.5) for _ in range(2)]
    successor = None
    try:
        with WorkerClient(front, timeout_s=2.0, retries=15) as client:
            wait_health(client, lambda h: h["workers"] == 2, process=broker)
            results, errors = {}, []

            def call(i: int) -> None:
                try:
                    results[i] = client.reconstruct(test_image(8, 8, seed=i))
                except Exception as e:  # reported below
                    errors.append(e)

            calls = [threading.Thread(target=call, args=(i,)) for i in range(4)]
            for c in calls:
                c.start()
            wait_health(client, lambda h: h["in_flight"] == 2 and h["queued"] == 2, process=broker)
            broker.kill()
            broker.wait(10)
            successor = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for c in calls:
                c.join(60)
            assert not errors, errors
            assert sorted(results) == [0, 1, 2, 3]
            for i, r in results.items():
                np.testing.assert_allclose(r.gaussians[:, 3:6], (test_image(8, 8, seed=i).reshape(-1, 3) / 255.0 - 0.5) / 0.28209479177387814, atol=1e-5)
            assert client.health()["workers"] == 2
    finally:
        for p in [broker, successor, *workers]:
            if p is not None:
                p.kill()
                p.wait(10)


def test_a_bug_in_the_broker_is_an_internal_reply_and_it_routes_on(tmp_path):
    # A broken limit makes the broker's own checks raise TypeError: the last-resort handler answers.
    with running_broker(BrokerConfig(max_queue=None, **FAST), tmp_path=tmp_path) as broker:
        with WorkerClient(broker.frontend_endpoint, timeout_s=5, retries=0) as client:
            with pytest.raises(WorkerError) as info:
                client.reconstruct(test_image())
            assert info.value.kind == "internal" and "TypeError" in str(info.value)
            assert client.health()["role"] == "broker"


def test_worker_reconnects_to_a_restarted_broker(tmp_path):
    handler = PixelSplatHandler()
    backend, frontend = f"ipc://{tmp_path}/back.sock", f"ipc://{tmp_path}/front.sock"
    with running_worker(handler, WorkerConfig(**FAST, reconnect_max_s=0.5), connect=backend):
        with running_broker(tmp_path=tmp_path), WorkerClient(frontend, timeout_s=10) as client:
            wait_health(client, lambda h: h["workers"] == 1)
        time.sleep(0.5)  # broker gone: the worker stops hearing heartbeats
        with running_broker(tmp_path=tmp_path), WorkerClient(frontend, timeout_s=10) as client:
            wait_health(client, lambda h: h["workers"] == 1, timeout_s=10)  # a fresh READY
            assert client.reconstruct(test_image()).gaussians.shape == (24 * 32, 14)
    assert handler.calls == 1


def test_broker_queue_is_bounded_and_jobs_wait_for_a_worker(tmp_path):
    with running_broker(BrokerConfig(max_queue=1, **FAST), tmp_path=tmp_path) as broker:
        with WorkerClient(broker.frontend_endpoint, timeout_s=20, retries=0) as client:
            health = client.health()
            assert health["ok"] is False and health["workers"] == 0
            results = []
            waiting = threading.Thread(target=lambda: results.append(client.reconstruct(test_image())))
            waiting.start()
            wait_health(client, lambda h: h["queued"] == 1)
            with pytest.raises(WorkerError) as info:
                client.reconstruct(test_image())
            assert info.value.kind == "busy"
            with running_worker(PixelSplatHandler(), WorkerConfig(**FAST), connect=broker.backend_endpoint):
                waiting.join(20)
            assert len(results) == 1 and results[0].gaussians.shape == (24 * 32, 14)


def test_broker_rejects_malformed_requests_and_keeps_serving(tmp_path):
    from tests.test_serve import error_kind, header, raw_request

    with running_broker(BrokerConfig(max_message_bytes=10_000, **FAST), tmp_path=tmp_path) as broker:
        assert error_kind(raw_request(broker.frontend_endpoint, [b"{]"])) == "bad_request"
        img = {"name": "image", "dtype": "uint8", "shape": [50, 50, 3]}
        assert error_kind(raw_request(broker.frontend_endpoint, [header(arrays=[img]), bytes(10)])) == "bad_request"
        big = [header(arrays=[img, {**img, "name": "mask"}]), bytes(7500), bytes(7500)]
        assert error_kind(raw_request(broker.frontend_endpoint, big)) == "too_large"
        with WorkerClient(broker.frontend_endpoint, timeout_s=5) as client:
            assert client.health()["role"] == "broker"


def test_curve_requires_the_right_keys(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert hgm_main(["keys", "-o", str(keys), "--clients", "node,robot"]) == 0
    assert "authorized_clients" in capsys.readouterr().out
    assert hgm_main(["keys", "-o", str(keys)]) == 1  # never overwrites silently
    assert oct((keys / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    server_public, server_secret = zmq.auth.load_certificate(str(keys / "server.key_secret"))
    assert len(server_public) == 40 and len(server_secret) == 40
    assert sorted(p.name for p in (keys / "authorized_clients").iterdir()) == ["node.key", "robot.key"]

    server = CurveServerKeys.load(keys / "server.key_secret", keys / "authorized_clients")
    with running_worker(PixelSplatHandler(), curve_server=server) as worker:
        endpoint = worker.endpoint
        with WorkerClient(endpoint, timeout_s=0.5, retries=0) as plain, pytest.raises(WorkerTimeout):
            plain.reconstruct(test_image())
        stranger = zmq.curve_keypair()  # knows the server key, but is not an authorized client
        with WorkerClient(endpoint, timeout_s=0.5, retries=0, server_public_key=server_public) as client, pytest.raises(WorkerTimeout):
            client.health()
        with WorkerClient(
            endpoint, timeout_s=0.5, retries=0, server_public_key=server_public, client_public_key=stranger[0], client_secret_key=stranger[1]
        ) as client, pytest.raises(WorkerTimeout):
            client.health()
        wrong_server = zmq.curve_keypair()[0]
        node_keys = load_curve_client_keys(keys / "server.key", keys / "node.key_secret")
        with WorkerClient(endpoint, timeout_s=0.5, retries=0, **{**node_keys, "server_public_key": wrong_server}) as client:
            with pytest.raises(WorkerTimeout):
                client.health()
        with WorkerClient(endpoint, timeout_s=5, **node_keys) as client:
            assert client.reconstruct(test_image()).gaussians.shape == (24 * 32, 14)

    # Behind a CURVE broker, workers are CURVE clients too and must be authorized like any client.
    robot = CurveClientKeys.load(keys / "server.key", keys / "robot.key_secret")
    with (
        running_broker(tmp_path=tmp_path, curve_server=server) as broker,
        running_worker(PixelSplatHandler(), WorkerConfig(**FAST), connect=broker.backend_endpoint, curve_client=robot),
        WorkerClient(broker.frontend_endpoint, timeout_s=10, **node_keys) as client,
    ):
        wait_health(client, lambda h: h["workers"] == 1)
        assert client.reconstruct(test_image()).gaussians.shape == (24 * 32, 14)


def test_hgm_serve_broker_command_serves_and_stops_on_sigterm(tmp_path):
    front, back = f"ipc://{tmp_path}/f.sock", f"ipc://{tmp_path}/b.sock"
    cmd = [sys.executable, "-m", "hgm_core", "serve", "--broker", "--bind", front, "--backend", back, "--heartbeat-s", "0.2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with (
            WorkerClient(front, timeout_s=20, retries=0) as client,
            running_worker(PixelSplatHandler(), WorkerConfig(**FAST), connect=back),
        ):
            wait_health(client, lambda h: h["workers"] == 1)
            assert client.reconstruct(test_image()).gaussians.shape == (24 * 32, 14)
            # The broker needs no model stack: it never loads torch.
            assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "clients on ipc://" in err
    finally:
        proc.kill()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--broker", "--connect", "tcp://127.0.0.1:5556"], "--connect is for workers"),
        (["--stages", "prior,everything"], "unknown stages"),
        (["--broker", "--curve-secret-key", "/nonexistent/server.key_secret"], "cannot load CURVE keys"),
    ],
)
def test_hgm_serve_reports_user_errors_in_one_line(args, message, capsys):
    assert hgm_main(["serve", "--bind", "ipc:///nonexistent/dir/x.sock", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hgm serve: error:") and message in err and "\n" not in err


@pytest.mark.parametrize("isolate", [[], ["--isolate"]], ids=["in_process", "isolated"])
def test_hgm_serve_with_the_real_reconstructor(tmp_path, isolate):
    endpoint = f"ipc://{tmp_path}/hgm.sock"
    proc = subprocess.Popen([sys.executable, "-m", "hgm_core", "serve", "--bind", endpoint, *isolate], cwd=REPO, stderr=subprocess.PIPE, text=True)
    image = _sample_person_image()
    try:
        with WorkerClient(endpoint, timeout_s=240, retries=0) as client:
            health = wait_health(client, lambda h: h["ok"], timeout_s=240, process=proc)
            assert health["role"] == "worker" and "prior" in health["stages"]
            assert ("compute" in health) == bool(isolate)
            h, w = image.shape[:2]
            with pytest.raises(WorkerError) as info:  # inf in float32 once segfaulted the fit; refused as the worker would
                client.reconstruct(image, K=np.array([[1e39, 0, w / 2], [0, 1e39, h / 2], [0, 0, 1]]))
            assert info.value.kind == "bad_input"
            result = client.reconstruct(image, stages="prior", mesh=True)
        assert result.mesh_vertices.shape[1] == 3 and result.mesh_faces.max() < len(result.mesh_vertices)
        assert result.timings["mesh"] > 0
        assert result.gaussians.dtype == np.float32 and result.gaussians.shape[1] == 14 and len(result.gaussians) > 0
        assert np.isfinite(result.gaussians).all()
        assert np.median(result.gaussians[:, 2]) > 0  # in front of the camera (optical frame, z forward)
        assert result.timings["worker_total"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _sample_person_image() -> np.ndarray:
    from PIL import Image

    from hgm_core.paths import ASSETS_DIR

    return np.asarray(Image.open(ASSETS_DIR / "sample" / "person.jpg").convert("RGB"))
