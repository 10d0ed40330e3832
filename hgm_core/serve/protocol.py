"""The hgm worker wire protocol, version 1 (docs/architecture.md §5). This docstring is the specification.

Transport: ZeroMQ. Clients use a DEALER socket (a REQ socket works too) and talk to a worker's
ROUTER socket (`hgm serve --bind`) or to a broker's client-facing ROUTER (`hgm serve --broker`),
which spreads jobs over workers. Endpoints are `tcp://host:port` or `ipc:///path`. A server given a
CURVE key pair requires CURVE security (the client needs the server's public key and, if the
server keeps a list of allowed clients, a key pair on that list).

Message: one ZeroMQ multipart message per request and per reply::

    frame 0        UTF-8 JSON object (the header): at most 64 KiB, nested at most 16 levels
                   deep, integers of at most 18 digits, numbers finite as float64 (no NaN,
                   Infinity or 1e400); anything else gets a bad_request reply
    frame 1..n     raw array bytes, one frame per entry of header["arrays"], in that order

Header keys:

    protocol   1 (a JSON integer; any other value, `1.0` and `true` included, gets an error reply
               of kind "protocol")
    id         string chosen by the client (<= 128 chars), echoed in the reply
    kind       "reconstruct" | "track" | "health"  requests
               "result" | "error"                  replies
               "ready" | "heartbeat"               worker <-> broker only
    arrays     list of at most 16 {"name": str, "dtype": str, "shape": [int, ...]} (unique names
               of at most 64 chars, at most 4 dimensions, each below 2^31, their non-zero ones
               multiplying to less than 2^48); dtype is one of uint8 uint16 int32 uint32 int64
               float32 float64, always little endian, C order; the frame holds exactly
               prod(shape) * itemsize bytes
    timings    (replies) {"stage": seconds, ...}
    error      (kind "error") {"kind": str, "message": str}; kind one of the error kinds below
    deadline_ms (requests, optional) the client's patience, a number in (0, 10^9]; work still
               queued after it is dropped
    stages     (reconstruct, optional) "prior" | "coarse" | "refined" | "full"; absent:
               `hgm_core.types.DEFAULT_STAGES`
    mesh       (reconstruct, optional) true/false: extract the avatar mesh; absent: the worker's default
    stream     (reconstruct, optional; track, required and non-empty) string of at most 128 chars
               naming the camera stream; the worker warm-starts a body fit only from the same
               stream's previous frame, and tracks a stream only from that stream's keyframe
    bind       (reconstruct, optional) true: the result is the stream's *keyframe* for live
               tracking: the avatar is bound to its fitted body (result `binding` and keyframe
               arrays) and the worker (re)starts tracking the stream from it
    binding    (reconstruct result of a bind request) {"binding_id": uint32 (new per keyframe),
               "body_model": str, "joint_names": [str; J], "joint_parents": [int; J] (-1 = root)}
    stamp      (track, optional) the frame's capture time in seconds, a finite number (the header
               stamp of the camera image): the tracker's temporal filter uses the spacing of a
               stream's stamps; absent: the worker's clock when the job starts
    track      (track result) {"state": "tracking" | "lost", "binding_id": uint32 (the keyframe
               the transforms belong to; 0 when none), "reason": str (why lost; "" while tracking)}
    info       (replies) JSON object: for health the server's state, for results the pipeline's extras
    skeleton   (reconstruct and track results, optional) {"names": [str, ...], "bones": [[i, j], ...]}

No pickle or other executable encoding is ever used; a reader needs only JSON and raw buffers.

reconstruct request arrays:  image uint8 [H, W, 3] RGB (required); K float32 or float64 [3, 3]
    pixel intrinsics (optional, default field of view when absent): last row 0 0 1, K[1, 0] = 0,
    focal lengths fx, fy in [0.02, 1000] * max(H, W), |skew| <= fx, principal point within one
    image size of the image (-W <= cx <= 2W, -H <= cy <= 2H); anything else is bad_input; mask
    uint8 [H, W] person mask, nonzero = person (optional; replaces the segmenter); depth uint16
    (millimetres) or float32 (metres, finite, >= 0) [H, W] aligned with the image, 0 or NaN = no
    measurement (optional; makes the body fit's placement metric).
    `hgm_core.serve.schema` encodes and checks requests and results.
reconstruct result arrays (all in the input camera's optical frame, x right, y down, z forward,
    metres): gaussians float32 [N, 14] raw rows `x y z f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1
    scale_2 rot_0 rot_1 rot_2 rot_3` (opacity logit, log scales, quaternion w first — the 3DGS PLY
    encoding); optional joints float32 [J, 3]; optional mesh_vertices float32 [V, 3], mesh_faces
    uint32 [F, 3], mesh_colors uint8 [V, 3]; optional body_vertices float32 [B, 3] and body_faces
    uint32 [G, 3] (the fitted body surface). A bind request's result adds the keyframe
    (docs/live_stream.md): canonical float32 [N, 14] (the avatar's raw rows in the body model's
    canonical pose, row i bound like gaussian i), joint_index uint16 [N, K] and joint_weight float32
    [N, K] (skinning joints and weights per row), rest_transforms float32 [J, 4, 4] (the joints'
    canonical world transforms) and bone_transforms float32 [J, 4, 4] (the keyframe's own pose,
    camera frame: skinning canonical with them gives gaussians back).
track request arrays: as reconstruct (image required; K, mask, depth optional, same checks); the
    worker finds the person's pose in this frame, starting from the stream's keyframe and previous
    frames. A stream without a keyframe on this worker, a frame without a person, or a pose the
    tracker cannot trust is state "lost" (a result, not an error): the client sends a new keyframe.
track result arrays (state "tracking"): bone_transforms float32 [J, 4, 4] rigid world transforms
    of the binding's J joints in the camera frame (skin the canonical avatar with them:
    docs/live_stream.md); optional joints float32 [S, 3] with `skeleton`. State "lost" has no arrays.
    A worker serves track jobs on a compute thread of their own, beside a running reconstruction
    (an isolated worker's compute child on a thread and socket of their own). A broker sends a
    stream's track jobs to the worker whose keyframe result of that stream came last, one at a
    time, also while that worker reconstructs; a track job of a stream with no live worker goes
    to any worker (which answers "lost" when it holds no keyframe of the stream).
health reply: kind "result" without arrays; `info` holds at least {"ok": bool, "protocol": 1,
    "role": "worker" | "broker", "stages": [...], "busy": bool}; a worker's also "track": bool
    (an isolated worker's: once its compute child said it tracks); a broker's also "streams": int
    (live streams tied to a worker).

Size limits: a message whose frames add up to more than the server's maximum gets a too_large
reply; a single frame over that maximum is refused by ZeroMQ itself (ZMQ_MAXMSGSIZE), which closes
that connection without a reply, so such a client sees a timeout.

Error kinds: bad_request (malformed message), protocol (unsupported version), too_large (message
bytes or image pixels over the server's limits), busy (queue full), bad_input, no_person,
crop_too_small, stage_unavailable (the pipeline's documented failures: `PipelineError.kind`),
internal (a bug or crash on the server, or a job quarantined after it crashed the compute
twice), timeout (the job outlived its deadline), unavailable (the server is shutting down, or an
isolated worker's compute child is restarting: try the next frame); the list is
`hgm_core.types.ERROR_KINDS`.

Envelopes: a ROUTER prepends the peer's routing id; servers reply with the same envelope (including
the empty delimiter frame a REQ socket adds). Between broker and worker, every message carries one
extra leading frame: a broker-chosen job key for jobs and their replies, empty for ready/heartbeat.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import zmq

from hgm_core.types import ERROR_KINDS, HgmError

PROTOCOL_VERSION = 1

REQUEST_KINDS = ("reconstruct", "track", "health")
REPLY_KINDS = ("result", "error")
CONTROL_KINDS = ("ready", "heartbeat")
KINDS = REQUEST_KINDS + REPLY_KINDS + CONTROL_KINDS

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("uint8", "uint16", "int32", "uint32", "int64", "float32", "float64")
}
"""Array dtypes allowed on the wire, all little endian."""

MAX_HEADER_BYTES = 64 << 10
MAX_ARRAYS = 16
MAX_NDIM = 4
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 64
MAX_DEPTH = 16
MAX_INT_DIGITS = 18
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**48
MAX_DEADLINE_MS = 1e9

Frame = bytes | memoryview | zmq.Frame


class ProtocolError(HgmError):
    """A message that breaks the protocol. `kind` (one of `hgm_core.types.ERROR_KINDS`) is the
    error kind to reply with; `request_id` the id of the offending message when its header could
    be read (else "")."""

    def __init__(self, kind: str, message: str, request_id: str = "") -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"{kind!r} is not a wire error kind ({', '.join(ERROR_KINDS)})")
        super().__init__(message)
        self.kind = kind
        self.request_id = request_id


@dataclass(frozen=True)
class Message:
    """A decoded message: the validated JSON header and its arrays by name (zero-copy views of the
    received frames)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def id(self) -> str:
        return self.header["id"]


def new_id() -> str:
    return uuid.uuid4().hex


def encode(kind: str, request_id: str, arrays: Mapping[str, np.ndarray] | None = None, **fields: Any) -> list:
    """Header fields + named arrays -> multipart frames `[header_bytes, array buffers...]`.

    The array frames are the arrays themselves (C-contiguous, little endian) so that
    `socket.send_multipart(frames, copy=False)` sends them without copying.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    specs, buffers = [], []
    for name, array in (arrays or {}).items():
        array = np.asarray(array)
        wire = DTYPES.get(array.dtype.name)
        if wire is None:
            raise ValueError(f"array {name!r}: dtype {array.dtype} is not allowed on the wire ({', '.join(DTYPES)})")
        array = np.ascontiguousarray(array, dtype=wire)
        specs.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape)})
        buffers.append(array)
    header = {"protocol": PROTOCOL_VERSION, "id": request_id, "kind": kind, "arrays": specs, **fields}
    return [encode_header(header)] + buffers


def encode_header(header: dict[str, Any]) -> bytes:
    """Frame 0 of a header dict (e.g. one from `decode_header`, changed by a server that forwards it)."""
    return json.dumps(header, separators=(",", ":"), default=_json_fallback).encode()


def encode_error(request_id: str, kind: str, message: str) -> list:
    if kind not in ERROR_KINDS:
        raise ValueError(f"{kind!r} is not a wire error kind ({', '.join(ERROR_KINDS)})")
    return encode("error", request_id, error={"kind": kind, "message": message[:2000]})


def decode(frames: Sequence[Frame], *, max_message_bytes: int) -> Message:
    """Validate multipart frames (without envelope) and view the arrays in place.

    Raises:
        ProtocolError: malformed header, unsupported version, unknown kind, disallowed dtype,
            shape/byte-length mismatch, wrong frame count, or more than `max_message_bytes`.
    """
    if not frames:
        raise ProtocolError("bad_request", "empty message")
    views = [_view(f) for f in frames]
    header = decode_header(views[0])
    rid = header["id"]
    total = sum(v.nbytes for v in views)
    if total > max_message_bytes:
        raise ProtocolError("too_large", f"message of {total} bytes exceeds the limit of {max_message_bytes}", rid)
    specs = header["arrays"]
    if len(views) - 1 != len(specs):
        raise ProtocolError("bad_request", f"header lists {len(specs)} arrays but {len(views) - 1} array frames follow", rid)
    arrays = {}
    for spec, view in zip(specs, views[1:]):
        dtype = DTYPES[spec["dtype"]]
        expected = math.prod(spec["shape"]) * dtype.itemsize  # bounded by _check_array_specs
        if view.nbytes != expected:
            raise ProtocolError(
                "bad_request", f"array {spec['name']!r}: {spec['shape']} {spec['dtype']} needs {expected} bytes, frame has {view.nbytes}", rid
            )
        arrays[spec["name"]] = np.frombuffer(view, dtype=dtype).reshape(spec["shape"])
    return Message(header, arrays)


def decode_header(frame: Frame) -> dict[str, Any]:
    """Parse and validate frame 0 (see the module docstring). Raises ProtocolError."""
    view = _view(frame)
    if view.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError("bad_request", f"header of {view.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(view), parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError("bad_request", f"header is not UTF-8 JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_request", "header is not a JSON object")
    if _depth(header) > MAX_DEPTH:
        raise ProtocolError("bad_request", f"header nests deeper than {MAX_DEPTH} levels")
    rid = header.get("id")
    if not isinstance(rid, str) or len(rid) > MAX_ID_CHARS:
        raise ProtocolError("bad_request", f"header 'id' must be a string of at most {MAX_ID_CHARS} chars")
    version = header.get("protocol")
    if type(version) is not int or version != PROTOCOL_VERSION:  # `true` and `1.0` compare equal to 1
        raise ProtocolError("protocol", f"unsupported protocol {version!r}; this server speaks {PROTOCOL_VERSION}", rid)
    if header.get("kind") not in KINDS:
        raise ProtocolError("bad_request", f"unknown kind {header.get('kind')!r}", rid)
    header.setdefault("arrays", [])
    _check_array_specs(header["arrays"], rid)
    for key in ("timings", "info", "error"):
        if key in header and not isinstance(header[key], dict):
            raise ProtocolError("bad_request", f"header {key!r} must be an object", rid)
    if "deadline_ms" in header and not (_is_number(header["deadline_ms"]) and 0 < header["deadline_ms"] <= MAX_DEADLINE_MS):
        raise ProtocolError("bad_request", f"header 'deadline_ms' must be a number in (0, {MAX_DEADLINE_MS:.0e}]", rid)
    return header


def _check_array_specs(specs: Any, rid: str) -> None:
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise ProtocolError("bad_request", f"header 'arrays' must be a list of at most {MAX_ARRAYS} entries", rid)
    names = set()
    for spec in specs:
        if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
            raise ProtocolError("bad_request", "each array entry must be {name, dtype, shape}", rid)
        name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or name in names:
            raise ProtocolError("bad_request", f"array name {name!r} is invalid or repeated", rid)
        names.add(name)
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ProtocolError("bad_request", f"array {name!r}: dtype {dtype!r} not allowed ({', '.join(DTYPES)})", rid)
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)
        ):
            raise ProtocolError("bad_request", f"array {name!r}: shape must be a list of at most {MAX_NDIM} non-negative ints below 2^31", rid)
        # numpy cannot make an array whose dimensions multiply past intp, even an empty one.
        if math.prod(d for d in shape if d) >= MAX_ELEMENTS:
            raise ProtocolError("bad_request", f"array {name!r}: shape {shape} has too many elements", rid)


def _view(frame: Frame) -> memoryview:
    view = frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _parse_int(text: str) -> int:
    # Huge integers cost quadratic time to parse and overflow every float conversion downstream.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ProtocolError("bad_request", f"header has an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ProtocolError("bad_request", f"header number {text[:40]} overflows a float")
    return value


def _refuse_constant(name: str) -> Any:
    raise ProtocolError("bad_request", f"header has {name}, which is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: the value may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _json_fallback(obj: Any) -> Any:
    # Pipeline `info` may hold numpy scalars/arrays; anything else is described, never pickled.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.size <= 64:
        return obj.tolist()
    return repr(obj)
