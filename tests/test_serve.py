"""Worker protocol, worker and client over real ZeroMQ sockets (tcp loopback and ipc://).

The jobs run `PixelSplatHandler` (tests/handlers.py), a small real handler (one Gaussian per pixel),
not the HGM pipeline: these tests are about the transport.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from hgm_core.types import NoPersonError, ReconstructionRequest
from hgm_core.serve.client import WorkerCancelled, WorkerClient, WorkerError, WorkerTimeout
from hgm_core.serve.isolate import ComputeSpec
from hgm_core.serve.protocol import DTYPES, ProtocolError, decode, encode
from hgm_core.types import ERROR_KINDS, HgmError
from hgm_core.serve.worker import WorkerConfig
from tests.handlers import PixelSplatHandler, process_alive, running_worker, test_image

REPO = Path(__file__).resolve().parents[1]


def raw_request(endpoint: str, frames: list, timeout_s: float = 5.0) -> list[bytes] | None:
    """Send hand-made frames from a fresh DEALER; the reply frames, or None on timeout."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        if not sock.poll(timeout_s * 1000):
            return None
        return sock.recv_multipart()
    finally:
        sock.close()


def error_kind(reply: list[bytes]) -> str:
    header = json.loads(reply[0])
    assert header["kind"] == "error", header
    return header["error"]["kind"]


def header(kind: str = "reconstruct", arrays: list | None = None, **extra) -> bytes:
    return json.dumps({"protocol": 1, "id": "t1", "kind": kind, "arrays": arrays or [], **extra}).encode()


# -- protocol ------------------------------------------------------------------------------------


def test_protocol_round_trip_is_bit_exact_for_every_dtype_over_a_socket(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {name: rng.integers(0, 200, (3, 5, 2)).astype(dt) for name, dt in DTYPES.items()}
    arrays["float32"][0, 0, 0] = np.nan  # payload bits must survive, not just values
    arrays["empty"] = np.zeros((0, 14), np.float32)
    arrays["strided"] = np.arange(40, dtype=np.float64).reshape(5, 8)[:, ::2]  # non-contiguous input
    arrays["big_endian"] = np.arange(6, dtype=">f4")
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"ipc://{tmp_path}/p.sock")
    b.connect(f"ipc://{tmp_path}/p.sock")
    a.send_multipart(encode("result", "x", arrays, timings={"a": 1.5}), copy=False)
    msg = decode(b.recv_multipart(copy=False), max_message_bytes=1 << 20)
    a.close(), b.close()
    assert msg.kind == "result" and msg.id == "x" and msg.header["timings"] == {"a": 1.5}
    assert list(msg.arrays) == list(arrays)
    for name, sent in arrays.items():
        got = msg.arrays[name]
        assert got.shape == sent.shape and got.dtype == sent.dtype.newbyteorder("<")
        assert got.tobytes() == np.ascontiguousarray(sent, dtype=sent.dtype.newbyteorder("<")).tobytes()


def test_encode_refuses_dtypes_outside_the_whitelist():
    with pytest.raises(ValueError, match="not allowed"):
        encode("result", "x", {"a": np.zeros(3, np.float16)})
    with pytest.raises(ValueError, match="not allowed"):
        encode("result", "x", {"a": np.array(["s"], object)})


@pytest.mark.parametrize(
    "frames, kind, match",
    [
        ([], "bad_request", "empty"),
        ([b"\xff\xfe not json"], "bad_request", "JSON"),
        ([b"[1, 2]"], "bad_request", "object"),
        ([json.dumps({"protocol": 1, "kind": "health"}).encode()], "bad_request", "id"),
        ([json.dumps({"protocol": 2, "id": "a", "kind": "health"}).encode()], "protocol", "unsupported"),
        ([header("launch_missiles")], "bad_request", "unknown kind"),
        ([header(arrays=[{"name": "image", "dtype": "float16", "shape": [2]}]), b"1234"], "bad_request", "dtype"),
        ([header(arrays=[{"name": "image", "dtype": "uint8", "shape": [2, 2]}]), b"123"], "bad_request", "needs 4 bytes"),
        ([header(arrays=[{"name": "image", "dtype": "uint8", "shape": [-1]}]), b""], "bad_request", "non-negative"),
        ([header(arrays=[{"name": "a", "dtype": "uint8", "shape": [1]}] * 2), b"1", b"1"], "bad_request", "repeated"),
        ([header(arrays=[{"name": "a", "dtype": "uint8", "shape": [1]}]), b"1", b"2"], "bad_request", "array frames"),
        ([header(arrays=[{"name": "a", "dtype": "uint8", "shape": [1], "code": "x"}]), b"1"], "bad_request", "name, dtype, shape"),
        ([header(deadline_ms="soon")], "bad_request", "deadline_ms"),
        ([header(arrays=[{"name": "a", "dtype": "uint8", "shape": [600]}]), bytes(600)], "too_large", "exceeds"),
        ([b"{" + b" " * (70 << 10) + b"}"], "bad_request", "header of"),
        # Issue #17: each of these once escaped as a non-ProtocolError and killed worker and broker.
        ([header(arrays=[{"name": "a", "dtype": ["uint8"], "shape": [1]}]), b"1"], "bad_request", "dtype"),
        ([header(arrays=[{"name": "a", "dtype": {"x": 1}, "shape": [1]}]), b"1"], "bad_request", "dtype"),
        ([header(arrays=[{"name": "a", "dtype": "uint8", "shape": [2**40, 2**40]}]), b""], "bad_request", "below 2\\^31"),
        ([header(arrays=[{"name": "a", "dtype": "uint8", "shape": [2**31 - 1] * 3 + [0]}]), b""], "bad_request", "too many elements"),
        ([header().replace(b'"arrays"', b'"padding": ' + b"9" * 5000 + b', "arrays"')], "bad_request", "digits"),
        ([header(padding=10**19)], "bad_request", "digits"),
        ([b'{"protocol": 1, "id": "x", "kind": "health", "n": ' + b"[" * 5000 + b"]" * 5000 + b"}"], "bad_request", "JSON"),
        ([header(padding=[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]])], "bad_request", "deeper"),
        ([header().replace(b'"arrays"', b'"deadline_ms": 1e400, "arrays"')], "bad_request", "overflows"),
        ([header(deadline_ms=10**17)], "bad_request", "deadline_ms"),
        ([header(deadline_ms=-5)], "bad_request", "deadline_ms"),
        ([header().replace(b'"arrays"', b'"x": NaN, "arrays"')], "bad_request", "NaN"),
        ([json.dumps({"protocol": True, "id": "a", "kind": "health"}).encode()], "protocol", "unsupported"),
        ([json.dumps({"protocol": 1.0, "id": "a", "kind": "health"}).encode()], "protocol", "unsupported"),
    ],
)
def test_decode_rejects_malformed_messages(frames, kind, match):
    with pytest.raises(ProtocolError, match=match) as info:
        decode(frames, max_message_bytes=512)
    assert info.value.kind == kind


# -- worker + client -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_reconstruct_round_trip_is_bit_exact(transport, tmp_path):
    handler = PixelSplatHandler()
    bind = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/w.sock"
    image = test_image()
    K = np.array([[40.0, 0, 16], [0, 40, 12], [0, 0, 1]])
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[4:20, 8:24] = 1
    with running_worker(handler, bind=bind) as worker, WorkerClient(worker.endpoint, timeout_s=10) as client:
        result = client.reconstruct(image, K=K, mask=mask, stages="prior")
        health = client.health()
    expected = handler(ReconstructionRequest(image=image, camera=_camera(K, image), mask=mask))
    raw = expected.gaussians.to_raw().numpy()
    assert result.gaussians.dtype == np.float32 and result.gaussians.shape == (16 * 16, 14)
    assert result.gaussians.tobytes() == raw.tobytes()
    np.testing.assert_array_equal(result.joints, expected.skeleton.joints)
    assert result.joint_names == ("pelvis", "head") and result.bones == ((0, 1),)
    np.testing.assert_array_equal(result.mesh_faces, [[0, 1, 2], [0, 2, 3]])
    assert result.mesh_faces.dtype == np.uint32
    np.testing.assert_array_equal(result.mesh_colors, [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]])
    assert result.body_vertices is None
    assert {"splat", "queue", "worker_total", "roundtrip"} <= set(result.timings)
    assert result.timings["roundtrip"] >= result.timings["worker_total"] > 0
    assert result.info["pixels"] == 256 and result.info["worker"]["pid"] == os.getpid()
    assert health["ok"] is True and health["role"] == "worker" and health["busy"] is False
    assert health["protocol"] == 1 and "prior" in health["stages"] and health["jobs_done"] == 1


def _camera(K, image):
    from hgm_core.types import CameraInfo

    return CameraInfo(K=K, width=image.shape[1], height=image.shape[0])


def test_malformed_requests_get_error_replies_and_the_worker_lives_on():
    cfg = WorkerConfig(max_message_bytes=100_000, max_pixels=150 * 150)
    img = {"name": "image", "dtype": "uint8", "shape": [4, 4, 3]}
    cases = [
        ([b"not json"], "bad_request"),
        ([header(arrays=[img])], "bad_request"),  # frame missing
        ([header(arrays=[{**img, "dtype": "float16"}]), bytes(96)], "bad_request"),
        ([header(arrays=[img]), bytes(47)], "bad_request"),
        ([header(arrays=[{**img, "shape": [4, 4]}]), bytes(16)], "bad_input"),
        ([header(arrays=[{**img, "shape": [160, 160, 3]}]), bytes(160 * 160 * 3)], "too_large"),  # pixels
        (  # every frame under ZMQ_MAXMSGSIZE, the whole message over max_message_bytes
            [header(arrays=[{**img, "shape": [150, 150, 3]}, {"name": "pad", "dtype": "uint8", "shape": [40000]}]), bytes(67500), bytes(40000)],
            "too_large",
        ),
        ([header(arrays=[img, {"name": "K", "dtype": "float64", "shape": [2, 3]}]), bytes(48), bytes(48)], "bad_input"),
        ([header(arrays=[img, {"name": "weights", "dtype": "uint8", "shape": [1]}]), bytes(48), b"x"], "bad_request"),
        ([header(arrays=[img], stages="everything"), bytes(48)], "bad_request"),
        ([header(arrays=[img], mesh="yes"), bytes(48)], "bad_request"),
        ([header(arrays=[img], stream=7), bytes(48)], "bad_request"),
        ([header("result")], "bad_request"),
        ([json.dumps({"protocol": 9, "id": "old", "kind": "health"}).encode()], "protocol"),
    ]
    with running_worker(PixelSplatHandler(), cfg) as worker:
        for frames, kind in cases:
            reply = raw_request(worker.endpoint, frames)
            assert reply is not None, frames[0][:80]
            assert error_kind(reply) == kind, frames[0][:120]
        # A REQ peer's envelope (empty delimiter) is honoured too.
        ctx = zmq.Context.instance()
        req = ctx.socket(zmq.REQ)
        req.connect(worker.endpoint)
        req.send(header("health"))
        assert req.poll(5000)
        assert json.loads(req.recv())["info"]["ok"] is True
        req.close(linger=0)
        with WorkerClient(worker.endpoint, timeout_s=5) as client:
            assert client.health()["ok"] is True
            assert client.reconstruct(test_image()).gaussians.shape == (24 * 32, 14)


def _K(fx: float, fy: float | None = None, cx: float = 16.0, cy: float = 12.0, skew: float = 0.0) -> np.ndarray:
    return np.array([[fx, skew, cx], [0, fx if fy is None else fy, cy], [0, 0, 1]])


@pytest.mark.parametrize(
    "K, match",
    [
        (_K(1e39), "focal lengths"),  # finite in float64, inf in float32: segfaulted the body fit
        (_K(1e-30), "focal lengths"),  # near zero: was an "internal" error deep in the fit
        (_K(40.0, fy=0.5), "focal lengths"),
        (_K(-40.0), "focal lengths"),
        (_K(40.0, skew=100.0), "skew"),
        (_K(40.0, cx=1e6), "principal point"),
        (np.array([[40.0, 0, 16], [0, 40, 12], [0, 0, 2]]), "last row"),
        (np.array([[40.0, 0, 16], [3, 40, 12], [0, 0, 1]]), "upper triangular"),
        (np.array([[40.0, 0, 16], [0, np.inf, 12], [0, 0, 1]]), "non-finite"),
    ],
)
def test_intrinsics_the_pipeline_cannot_take_are_bad_input_before_any_work(K, match):
    handler = PixelSplatHandler()
    frames = [header(arrays=[{"name": "image", "dtype": "uint8", "shape": [24, 32, 3]}, {"name": "K", "dtype": "float64", "shape": [3, 3]}]),
              test_image().tobytes(), K.astype("<f8").tobytes()]
    with running_worker(handler) as worker, WorkerClient(worker.endpoint, timeout_s=5) as client:
        reply = raw_request(worker.endpoint, frames)
        assert error_kind(reply) == "bad_input" and match in json.loads(reply[0])["error"]["message"]
        with pytest.raises(WorkerError, match=match) as info:  # the client refuses the same K locally
            client.reconstruct(test_image(), K=K)
        assert info.value.kind == "bad_input"
        assert client.reconstruct(test_image(), K=_K(40.0)).gaussians.shape == (24 * 32, 14)
    assert handler.calls == 1


def test_a_bug_in_request_handling_is_an_internal_reply_and_the_worker_serves_on():
    # A broken limit makes the worker's own checks raise TypeError: the last-resort handler answers.
    with running_worker(PixelSplatHandler(), WorkerConfig(max_pixels=None)) as worker:
        with WorkerClient(worker.endpoint, timeout_s=5) as client:
            for _ in range(3):
                with pytest.raises(WorkerError) as info:
                    client.reconstruct(test_image())
                assert info.value.kind == "internal" and "TypeError" in str(info.value)
            assert client.health()["ok"] is True


def test_protocol_and_client_errors_are_hgm_errors_with_wire_kinds():
    assert issubclass(ProtocolError, HgmError) and issubclass(WorkerError, HgmError)
    assert ProtocolError("bad_input", "x").kind in ERROR_KINDS
    with pytest.raises(ValueError, match="not a wire error kind"):
        ProtocolError("oops", "x")


def test_a_cancelled_call_returns_at_once_and_the_client_stays_usable():
    slow = PixelSplatHandler(sleep_s=1.0)
    with running_worker(slow) as worker, WorkerClient(worker.endpoint, timeout_s=30, retries=0) as client:
        cancel = threading.Event()
        threading.Timer(0.2, cancel.set).start()
        t0 = time.monotonic()
        with pytest.raises(WorkerCancelled) as info:
            client.reconstruct(test_image(), cancel=cancel)
        assert info.value.kind == "unavailable" and time.monotonic() - t0 < 0.6
        # The abandoned request's late reply went down with its socket; the next call gets its own.
        result = client.reconstruct(test_image(8, 8), cancel=threading.Event())
        assert result.gaussians.shape == (64, 14)
    assert slow.calls == 2


def test_a_frame_over_maxmsgsize_drops_only_that_connection():
    cfg = WorkerConfig(max_message_bytes=50_000)
    with running_worker(PixelSplatHandler(), cfg) as worker:
        frames = [header(arrays=[{"name": "image", "dtype": "uint8", "shape": [200, 200, 3]}]), bytes(120_000)]
        assert raw_request(worker.endpoint, frames, timeout_s=1.0) is None
        with WorkerClient(worker.endpoint, timeout_s=5, max_message_bytes=50_000) as client:
            assert client.health()["ok"] is True
            with pytest.raises(WorkerError) as info:  # the client refuses before sending
                client.reconstruct(test_image(200, 200))
            assert info.value.kind == "too_large"


@pytest.mark.parametrize(
    "error, kind",
    [(NoPersonError("nobody in the frame"), "no_person"), (RuntimeError("boom"), "internal"), (ZeroDivisionError(), "internal")],
)
def test_handler_failures_become_error_replies(error, kind):
    failing = PixelSplatHandler(error=error)
    with running_worker(failing) as worker, WorkerClient(worker.endpoint, timeout_s=5) as client:
        with pytest.raises(WorkerError) as info:
            client.reconstruct(test_image())
        assert info.value.kind == kind and not isinstance(info.value, WorkerTimeout)
        failing.error = None
        assert client.reconstruct(test_image()).gaussians.shape[0] == 24 * 32
        health = client.health()
        assert (health["jobs_failed"], health["jobs_done"]) == (1, 1)


def test_a_native_crash_in_isolated_compute_costs_one_job_and_twice_quarantines_it(monkeypatch):
    monkeypatch.chdir(REPO)  # the compute child imports `tests.handlers`
    spec = ComputeSpec("tests.handlers:PixelSplatHandler", {"crash_stream": "poison"}, start_timeout_s=120)
    with running_worker(spec) as worker, WorkerClient(worker.endpoint, timeout_s=120, retries=0) as client:
        for _ in range(1200):
            if (health := client.health())["ok"]:
                break
            time.sleep(0.1)
        first = health["compute"]["pid"]
        assert health["compute"]["ready"] and first not in (None, os.getpid())
        result = client.reconstruct(test_image())
        assert result.info["worker"] == {"compute_pid": first, "pid": os.getpid(), "host": result.info["worker"]["host"]}
        assert result.timings["queue"] >= 0 and result.timings["worker_total"] > 0

        with pytest.raises(WorkerError, match="SIGSEGV") as info:  # the child died of it, the worker did not
            client.reconstruct(test_image(), stream="poison")
        assert info.value.kind == "internal" and "quarantined" not in str(info.value)
        health = client.health()
        assert health["ok"] and health["compute"]["crashes"] == 1 and health["compute"]["starts"] == 2
        assert health["compute"]["pid"] not in (None, first)
        assert client.reconstruct(test_image(), stream="cam").info["worker"]["compute_pid"] == health["compute"]["pid"]

        with pytest.raises(WorkerError, match="quarantined"):  # the same job again: second crash
            client.reconstruct(test_image(), stream="poison")
        with pytest.raises(WorkerError, match="quarantined"):  # and now refused without running
            client.reconstruct(test_image(), stream="poison")
        assert client.reconstruct(test_image(8, 8), stream="cam").gaussians.shape == (64, 14)
        health = client.health()
        assert health["compute"]["crashes"] == 2 and health["jobs_quarantined"] == 1
        assert (health["jobs_done"], health["jobs_failed"]) == (3, 3)
    assert not process_alive(health["compute"]["pid"])  # a stopped worker takes its compute child along


def test_client_rejects_bad_input_before_sending():
    with WorkerClient("tcp://127.0.0.1:9", timeout_s=0.2, retries=0) as client:
        for kwargs in (
            {"image": np.zeros((4, 4), np.uint8)},
            {"image": np.zeros((4, 4, 3), np.float32)},
            {"image": np.zeros((0, 4, 3), np.uint8)},
            {"image": test_image(), "K": np.eye(2)},
            {"image": test_image(), "mask": np.zeros((3, 3), np.uint8)},
        ):
            with pytest.raises(WorkerError) as info:
                client.reconstruct(**kwargs)
            assert info.value.kind == "bad_input"


def test_queue_full_is_busy_and_health_answers_while_a_job_runs():
    slow = PixelSplatHandler(sleep_s=1.5)
    with running_worker(slow, WorkerConfig(queue_depth=0)) as worker, WorkerClient(worker.endpoint, timeout_s=10) as client:
        results = []
        job = threading.Thread(target=lambda: results.append(client.reconstruct(test_image())))
        job.start()
        for _ in range(100):
            health = client.health()
            if health["busy"]:
                break
            time.sleep(0.02)
        assert health["busy"] is True and health["queued"] == 0
        with pytest.raises(WorkerError) as info:
            client.reconstruct(test_image())
        assert info.value.kind == "busy"
        job.join(10)
        assert len(results) == 1 and results[0].gaussians.shape == (24 * 32, 14)


def test_job_outliving_its_deadline_in_the_queue_is_dropped():
    slow = PixelSplatHandler(sleep_s=0.8)
    with running_worker(slow) as worker, WorkerClient(worker.endpoint, timeout_s=10) as client:
        first = threading.Thread(target=client.reconstruct, args=(test_image(),))
        first.start()
        time.sleep(0.2)
        with WorkerClient(worker.endpoint, retries=0) as impatient, pytest.raises(WorkerTimeout):
            impatient.reconstruct(test_image(), timeout_s=0.3)
        first.join(10)
        time.sleep(0.2)
        health = client.health()
    assert slow.calls == 1  # the expired job never reached the handler
    assert health["jobs_done"] == 1 and health["jobs_failed"] == 1


def test_deadline_gives_worker_timeout_then_success_once_a_worker_appears(tmp_path):
    endpoint = f"ipc://{tmp_path}/late.sock"
    with WorkerClient(endpoint, timeout_s=0.3, retries=0) as client:
        t0 = time.monotonic()
        with pytest.raises(WorkerTimeout) as info:
            client.reconstruct(test_image())
        assert info.value.kind == "timeout" and time.monotonic() - t0 >= 0.3
        with pytest.raises(WorkerTimeout):
            client.health(timeout_s=0.2)
        handler = PixelSplatHandler()
        with running_worker(handler, bind=endpoint):
            result = client.reconstruct(test_image(), timeout_s=5)
        assert result.gaussians.shape == (24 * 32, 14)
        assert handler.calls == 1  # the timed-out request died with its socket


def test_retries_reach_a_worker_that_starts_late(tmp_path):
    endpoint = f"ipc://{tmp_path}/retry.sock"
    handler = PixelSplatHandler()
    # 1 s per attempt: enough for a job on a loaded machine, so the one that reaches the worker is
    # not timed out and sent again (handler.calls would be 2).
    with WorkerClient(endpoint, timeout_s=1.0, retries=10) as client:
        results = []
        call = threading.Thread(target=lambda: results.append(client.reconstruct(test_image())))
        call.start()
        time.sleep(2.5)  # two or three attempts time out before the worker exists
        with running_worker(handler, bind=endpoint):
            call.join(15)
    assert len(results) == 1 and results[0].gaussians.shape == (24 * 32, 14)
    assert handler.calls == 1


def test_client_module_imports_no_torch():
    code = "import sys, hgm_core.serve.client, hgm_core.serve.protocol, hgm_core.serve; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
