"""Property-based fuzzing of the wire protocol (issue #17): the codec in process, then live worker
and broker processes over real ipc:// sockets, fed messages a hostile client could send.

Every message must get a well-formed reply ("result", or "error" with a kind of
`hgm_core.types.ERROR_KINDS`), and the server must still be alive and healthy afterwards. The
default run is small (seconds); `-m slow` runs thousands of messages per target.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hgm_core.serve.client import WorkerClient, WorkerTimeout
from hgm_core.serve.protocol import DTYPES, KINDS, ProtocolError, decode
from hgm_core.serve.schema import decode_request
from hgm_core.types import ERROR_KINDS, STAGES
from tests.handlers import WORKER_COMMAND, PixelSplatHandler

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 1 << 20
SMALL, LARGE = 150, 4000  # messages per target: default suite, `slow` run
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])

# -- hostile messages ----------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12)
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
# Raw JSON text no `json.dumps` of a Python value produces: each once killed a server (issue #17).
hostile_tokens = st.sampled_from(["1e400", "-1e400", "9" * 5000, "NaN", "-Infinity", "[" * 3000 + "]" * 3000, '{"a":' * 900 + "1" + "}" * 900])

@st.composite
def valid_arrays(draw) -> list[dict]:
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    specs = [{"name": "image", "dtype": "uint8", "shape": [h, w, 3]}]
    if draw(st.booleans()):
        specs.append({"name": "K", "dtype": draw(st.sampled_from(["float64", "float32"])), "shape": [3, 3]})
    if draw(st.booleans()):
        specs.append({"name": "mask", "dtype": "uint8", "shape": [h, w]})
    return specs


hostile_specs = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["image", "K", "mask", "weights"]), json_values),
        "dtype": st.one_of(st.sampled_from([*DTYPES, "float16", "object", ">f8", "S4"]), json_values),
        "shape": st.one_of(st.lists(st.one_of(st.integers(-3, 16), st.integers(2**31 - 2, 2**64)), max_size=6), json_values),
    },
    optional={"code": json_values},
)
# field: (valid values, hostile values, whether the field is always present)
FIELDS = {
    "protocol": (st.just(1), st.one_of(st.sampled_from([True, 1.0, 2, "1", 0]), json_values), True),
    "id": (st.text(max_size=12), st.one_of(st.text(min_size=129, max_size=140), json_values), True),
    "kind": (st.sampled_from(["reconstruct", "reconstruct", "track", "health"]), st.one_of(st.sampled_from(KINDS), json_values), True),
    "arrays": (valid_arrays(), st.one_of(st.lists(hostile_specs, max_size=4), json_values), True),
    "deadline_ms": (st.integers(1, 60_000), st.one_of(st.floats(), st.integers(-(2**70), 2**70), json_values), False),
    "stages": (st.sampled_from(STAGES), json_values, False),
    "mesh": (st.booleans(), json_values, False),
    "stream": (st.text(max_size=20), st.one_of(st.text(min_size=129, max_size=140), json_values), False),
    "bind": (st.booleans(), json_values, False),
    "stamp": (st.floats(0, 2e9), st.one_of(st.floats(), json_values), False),
    "timings": (st.dictionaries(st.text(max_size=6), st.floats(0, 10)), json_values, False),
    "info": (st.dictionaries(st.text(max_size=6), json_values, max_size=3), json_values, False),
}


@st.composite
def headers(draw) -> dict:
    """A header with, on average, less than one broken field, so that most messages get past the
    first check and the deeper ones (arrays, intrinsics, options, the job itself) are reached."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))  # plain odds: hypothesis' own choices favour edge cases
    header = {}
    for name, (valid, hostile, always) in FIELDS.items():
        if always or rnd.random() < 0.3:
            header[name] = draw(hostile if rnd.random() < 0.06 else valid)
    return header


K_VALUES = st.lists(st.one_of(st.floats(width=64), st.sampled_from([0.0, 1.0, 1e39, 1e-30, 40.0, 16.0])), min_size=9, max_size=9)


@st.composite
def messages(draw) -> list[bytes]:
    """One multipart message (without envelope) as a hostile client could send it."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    if rnd.random() < 0.03:
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=3))
    header = draw(headers())
    text = json.dumps(header)
    if rnd.random() < 0.04:
        text = text[:-1] + f', "x": {draw(hostile_tokens)}}}'
    frames = [text.encode()]
    specs = header["arrays"] if isinstance(header["arrays"], list) else []
    for spec in specs:
        frames.append(draw(_payload(spec)))
    if frames[1:] and rnd.random() < 0.03:
        frames.pop(draw(st.integers(1, len(frames) - 1)))  # one frame missing
    return frames


def _payload(spec: object) -> st.SearchStrategy[bytes]:
    """The frame for one `arrays` entry: mostly the right size when the entry is usable."""
    spec = spec if isinstance(spec, dict) else {}
    dtype, shape = DTYPES.get(spec["dtype"]) if isinstance(spec.get("dtype"), str) else None, spec.get("shape")
    if dtype is None or not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= 64 for d in shape):
        return st.binary(max_size=32)
    size = math.prod(shape) * dtype.itemsize
    if spec["name"] == "K" and size == 72:
        return K_VALUES.map(lambda k: np.array(k, "<f8").tobytes())
    exact = st.integers(0, 255).map(lambda b: bytes([b]) * size)  # any pixel values will do
    return st.one_of(exact, st.binary(max_size=size + 8)) if size <= 8 else exact


# -- the codec, in process -----------------------------------------------------------------------


def _check_codec(frames: list[bytes]) -> str:
    """Decode like a server does; the reply kind it would send."""
    try:
        msg = decode(frames, max_message_bytes=MAX_BYTES)
        if msg.kind in ("reconstruct", "track"):
            request = decode_request(msg, max_pixels=100, stages=STAGES)
            PixelSplatHandler()(request)  # a request that passed the checks is usable
            assert request.stamp is None or math.isfinite(request.stamp)
    except ProtocolError as e:
        assert e.kind in ERROR_KINDS
        return e.kind
    return "ok"


@settings(max_examples=4 * SMALL, **FUZZ)
@given(messages())
def test_codec_answers_every_message_with_a_wire_kind(frames):
    _check_codec(frames)


@pytest.mark.slow
@settings(max_examples=5 * LARGE, **FUZZ)
@given(messages())
def test_codec_answers_every_message_with_a_wire_kind_at_length(frames):
    _check_codec(frames)


# -- live servers --------------------------------------------------------------------------------


class Target:
    """A server process and a DEALER talking to it; `send` returns the reply's header."""

    def __init__(self, endpoint: str, processes: list[subprocess.Popen]) -> None:
        self.endpoint, self.processes = endpoint, processes
        self.ctx = zmq.Context()
        self.sock = self._socket()
        self.kinds: dict[str, int] = {}

    def _socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(self.endpoint)
        return sock

    def send(self, frames: list[bytes]) -> dict:
        self.sock.send_multipart(frames)
        if not self.sock.poll(10_000):
            dead = [p.args for p in self.processes if p.poll() is not None]
            raise AssertionError(f"no reply to {[f[:100] for f in frames]}; dead: {dead}")
        reply = self.sock.recv_multipart()
        if frames[0] == b"" and len(frames) > 1:  # taken for a REQ envelope and echoed
            assert reply[0] == b""
            reply = reply[1:]
        header = decode(reply, max_message_bytes=64 << 20).header
        assert header["kind"] in ("result", "error"), header
        kind = header["error"]["kind"] if header["kind"] == "error" else "result"
        assert kind in ERROR_KINDS or kind == "result", header
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return header

    def assert_alive_and_healthy(self) -> None:
        assert all(p.poll() is None for p in self.processes), [(p.args, p.returncode) for p in self.processes]
        with WorkerClient(self.endpoint, timeout_s=10, retries=0) as client:
            assert client.health()["protocol"] == 1

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
        for p in self.processes:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_healthy(endpoint: str, predicate, processes: list[subprocess.Popen]) -> None:
    with WorkerClient(endpoint, timeout_s=1.0, retries=0) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in processes)
            try:
                if predicate(client.health()):
                    return
            except WorkerTimeout:
                continue
            time.sleep(0.05)
    raise AssertionError(f"{endpoint} never became healthy")


@pytest.fixture(scope="module")
def worker_target(tmp_path_factory):
    endpoint = f"ipc://{tmp_path_factory.mktemp('fuzz')}/worker.sock"
    proc = _start(WORKER_COMMAND + ["--bind", endpoint])
    _wait_healthy(endpoint, lambda h: h["ok"], [proc])
    target = Target(endpoint, [proc])
    yield target
    target.close()


@pytest.fixture(scope="module")
def broker_target(tmp_path_factory):
    where = tmp_path_factory.mktemp("fuzz")
    front, back = f"ipc://{where}/front.sock", f"ipc://{where}/back.sock"
    broker = _start([sys.executable, "-m", "hgm_core", "serve", "--broker", "--bind", front, "--backend", back, "--heartbeat-s", "0.2"])
    worker = _start(WORKER_COMMAND + ["--connect", back, "--heartbeat", "0.2"])
    _wait_healthy(front, lambda h: h["workers"] == 1, [broker, worker])
    target = Target(front, [broker, worker])
    yield target
    target.close()


@settings(max_examples=SMALL, **FUZZ)
@given(frames=messages())
def test_live_worker_answers_every_hostile_message(worker_target, frames):
    worker_target.send(frames)


@settings(max_examples=SMALL, **FUZZ)
@given(frames=messages())
def test_live_broker_answers_every_hostile_message(broker_target, frames):
    broker_target.send(frames)


@pytest.mark.slow
@settings(max_examples=LARGE, **FUZZ)
@given(frames=messages())
def test_live_worker_answers_every_hostile_message_at_length(worker_target, frames):
    worker_target.send(frames)


@pytest.mark.slow
@settings(max_examples=LARGE, **FUZZ)
@given(frames=messages())
def test_live_broker_answers_every_hostile_message_at_length(broker_target, frames):
    broker_target.send(frames)


def test_fuzzed_servers_are_alive_healthy_and_replied_with_every_kind(worker_target, broker_target):
    """Runs after the fuzz tests above (file order): nothing they sent killed or wedged a server."""
    for target in (worker_target, broker_target):
        target.assert_alive_and_healthy()
        assert sum(target.kinds.values()) >= SMALL
        assert {"bad_request", "bad_input", "result"} <= set(target.kinds), target.kinds  # the checks at every depth ran
