"""Client of an hgm worker or broker (docs/architecture.md §5). Imports only numpy and pyzmq: the ROS node uses it.

    with WorkerClient("tcp://127.0.0.1:5555") as client:
        result = client.reconstruct(image, K=K)          # image [H, W, 3] uint8 RGB
        result.gaussians                                  # [N, 14] float32 raw rows, camera frame
        key = client.reconstruct(image, stream="cam", bind=True).keyframe   # live: canonical avatar + binding
        pose = client.track(next_image, stream="cam")    # pose.state, pose.bone_transforms [J, 4, 4]

Every call has a deadline; after a timeout the socket is thrown away and the request re-sent on a
fresh one (the "lazy pirate" pattern of the ZeroMQ guide), at most `retries` times. Calls are
thread-safe and may overlap (each in-flight call holds its own socket from a small pool). A call
given a `cancel` event returns within `CANCEL_POLL_S` of the event being set (`WorkerCancelled`), so
a caller that must give up early needs no thread of its own per call.

Requests and results are encoded by `hgm_core.serve.schema`, the module the worker uses too.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import zmq
import zmq.auth

from hgm_core.serve.curve import CurveClientKeys
from hgm_core.serve.curve import make_client as make_curve_client
from hgm_core.serve.protocol import Message, ProtocolError, decode, encode, new_id
from hgm_core.serve.schema import JobResult, decode_error, decode_result, decode_track_result, encode_request, encode_track_request
from hgm_core.types import DEFAULT_STAGES, HgmError, TrackedPose

_Reply = TypeVar("_Reply", JobResult, TrackedPose)

CANCEL_POLL_S = 0.05
"""How often a call with a `cancel` event looks at it while waiting for the reply."""


class WorkerError(HgmError):
    """A job failed. `kind` is one of `hgm_core.types.ERROR_KINDS` (see `hgm_core.serve.protocol`)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class WorkerTimeout(WorkerError):
    """No reply within the deadline on any attempt."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class WorkerCancelled(WorkerError):
    """The caller's `cancel` event was set before the reply came (kind "unavailable"); the request
    went down with its socket, so a late reply is never mistaken for another call's."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class WorkerClient:
    """DEALER client with per-attempt deadlines, lazy-pirate retries and optional CURVE.

    Args:
        endpoint: the worker's or broker's endpoint, e.g. `tcp://127.0.0.1:5555`, `ipc:///tmp/hgm.sock`.
        timeout_s: deadline of one attempt (also sent to the server, which drops the job if it is
            still queued after it). A call returns or raises within `(1 + retries) * timeout_s`.
        retries: extra attempts after a timeout, each on a new socket.
        server_public_key: the server's z85 CURVE public key (40 bytes) to require encryption and
            authenticate the server; client_secret_key/client_public_key: this client's key pair
            (an ephemeral pair is generated when omitted, accepted only by servers allowing any client).
        max_message_bytes: largest request sent and reply accepted (ZMQ_MAXMSGSIZE per frame).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 2,
        server_public_key: bytes | None = None,
        client_secret_key: bytes | None = None,
        client_public_key: bytes | None = None,
        max_message_bytes: int = 256 << 20,
    ) -> None:
        if timeout_s <= 0 or retries < 0:
            raise ValueError("timeout_s must be > 0 and retries >= 0")
        if (client_secret_key is None) != (client_public_key is None):
            raise ValueError("give both client_secret_key and client_public_key, or neither")
        if client_secret_key is not None and server_public_key is None:
            raise ValueError("a client key pair needs server_public_key")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_message_bytes = max_message_bytes
        self._curve = None
        if server_public_key is not None:
            if client_secret_key is None:
                client_public_key, client_secret_key = zmq.curve_keypair()
            self._curve = CurveClientKeys(server_public_key, client_public_key, client_secret_key)
        self._context = zmq.Context()
        self._pool: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- public API -------------------------------------------------------------------------------

    def reconstruct(
        self,
        image: np.ndarray,
        *,
        K: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        depth: np.ndarray | None = None,
        stages: str = DEFAULT_STAGES,
        mesh: bool | None = None,
        stream: str = "",
        bind: bool = False,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> JobResult:
        """Reconstruct the person in `image` (`[H, W, 3]` uint8 RGB).

        Args:
            K: `[3, 3]` pixel intrinsics of `image`; None means the worker's default field of view.
            mask: `[H, W]` uint8/bool person mask (nonzero = person), overriding the segmenter.
            depth: `[H, W]` aligned depth image, uint16 millimetres or float32 metres (0 = none).
            stages: "prior" | "coarse" | "refined" | "full".
            mesh: ask for the avatar mesh (`JobResult.mesh_*`); None: the worker's default (`hgm serve --mesh`).
            stream: names this camera stream, so the worker warm-starts the body fit from its
                previous frame only (several clients can share one worker).
            bind: make this the stream's keyframe for `track` (`JobResult.keyframe`: the canonical
                avatar and its binding); the worker restarts tracking the stream from it.
            timeout_s: deadline of one attempt (default: the client's).
            cancel: set it (from any thread) to abandon the call.

        Raises:
            WorkerError: the worker refused or failed the job (`.kind` says why); input the worker
                would refuse (`hgm_core.serve.schema`) raises its kind before anything is sent.
            WorkerTimeout: no reply on any attempt.
            WorkerCancelled: `cancel` was set first.
        """
        return self._job(lambda rid, ms: encode_request(rid, image, K=K, mask=mask, depth=depth, stages=stages, mesh=mesh,
                                                       stream=stream, bind=bind, deadline_ms=ms),
                         decode_result, "result", timeout_s, cancel)

    def track(
        self,
        image: np.ndarray,
        *,
        stream: str,
        K: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        depth: np.ndarray | None = None,
        stamp: float | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> TrackedPose:
        """The body's pose in `image` (`[H, W, 3]` uint8 RGB), one frame of `stream` captured at
        `stamp` seconds (its header stamp; paces the tracker's filter), tracked from the stream's
        keyframe (`reconstruct(..., bind=True)`) on the same worker.

        Returns a `TrackedPose`: state "tracking" with `bone_transforms [J, 4, 4]` (skin the
        keyframe's canonical avatar with `hgm_core.io.live_stream.skin_raw`) and the skeleton, or
        "lost" with its reason (then send a new keyframe). Timings get "roundtrip". Other arguments
        and exceptions as `reconstruct`.
        """
        return self._job(lambda rid, ms: encode_track_request(rid, image, stream=stream, K=K, mask=mask, depth=depth,
                                                             stamp=stamp, deadline_ms=ms),
                         decode_track_result, "track result", timeout_s, cancel)

    def _job(self, encode: Callable[[str, int], list], decode: Callable[[Message], _Reply], what: str,
             timeout_s: float | None, cancel: threading.Event | None) -> _Reply:
        """One job: `encode(request_id, deadline_ms)` its frames (a request the server would refuse
        fails here, with the server's error kind), send it with retries, `decode` the reply; the
        reply's timings get "roundtrip"."""
        timeout_s = timeout_s or self.timeout_s
        request_id = new_id()
        try:
            frames = encode(request_id, int(timeout_s * 1000))
        except ProtocolError as e:
            raise WorkerError(e.kind, str(e)) from None
        t0 = time.perf_counter()
        reply = self._call(request_id, frames, timeout_s, self.retries, cancel)
        try:
            out = decode(reply)
        except ProtocolError as e:
            raise WorkerError("protocol", f"malformed {what}: {e}") from None
        out.timings["roundtrip"] = time.perf_counter() - t0
        return out

    def health(self, timeout_s: float = 2.0) -> dict:
        """The server's state: {"ok", "protocol", "role", "stages", "busy", ...}. One attempt, no retry.

        Raises:
            WorkerTimeout: the server did not answer within `timeout_s`.
        """
        request_id = new_id()
        return dict(self._call(request_id, encode("health", request_id), timeout_s, 0, None).header.get("info", {}))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in self._pool:
                sock.close(linger=0)
            self._pool.clear()
        self._context.term()

    def __enter__(self) -> "WorkerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------------

    def _call(self, request_id: str, frames: list, timeout_s: float, retries: int, cancel: threading.Event | None) -> Message:
        size = sum(memoryview(f).nbytes for f in frames)
        if size > self.max_message_bytes:
            raise WorkerError("too_large", f"request of {size} bytes exceeds max_message_bytes={self.max_message_bytes}")
        for _ in range(retries + 1):
            sock = self._acquire()
            try:
                sock.send_multipart(frames, copy=False)
                reply = self._wait_reply(sock, request_id, timeout_s, cancel)
            except BaseException:
                sock.close(linger=0)
                raise
            if reply is None:
                # Lazy pirate: a late reply would arrive on this socket, so it is discarded (linger 0
                # also drops the request if it never left) and the next attempt starts clean.
                sock.close(linger=0)
                continue
            self._release(sock)
            if reply.kind == "error":
                err_kind, message = decode_error(reply)
                raise WorkerTimeout(message) if err_kind == "timeout" else WorkerError(err_kind, message)
            if reply.kind != "result":
                raise WorkerError("protocol", f"unexpected reply kind {reply.kind!r}")
            return reply
        raise WorkerTimeout(f"no reply from {self.endpoint} within {timeout_s:g} s ({retries + 1} attempt(s))")

    def _wait_reply(self, sock: zmq.Socket, request_id: str, timeout_s: float, cancel: threading.Event | None) -> Message | None:
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if cancel is not None and cancel.is_set():
                raise WorkerCancelled("the call was cancelled")
            if not sock.poll(1000 * (remaining if cancel is None else min(remaining, CANCEL_POLL_S)), zmq.POLLIN):
                continue
            frames = sock.recv_multipart(copy=False)
            try:
                reply = decode(frames, max_message_bytes=self.max_message_bytes)
            except ProtocolError as e:
                raise WorkerError("protocol", f"malformed reply: {e}") from None
            if reply.id == request_id:
                return reply
        return None

    def _acquire(self) -> zmq.Socket:
        with self._lock:
            if self._closed:
                raise WorkerError("unavailable", "client is closed")
            if self._pool:
                return self._pool.pop()
        sock = self._context.socket(zmq.DEALER)
        sock.linger = 0
        sock.maxmsgsize = self.max_message_bytes
        if self._curve is not None:
            make_curve_client(sock, self._curve)
        sock.connect(self.endpoint)
        return sock

    def _release(self, sock: zmq.Socket) -> None:
        with self._lock:
            if self._closed:
                sock.close(linger=0)
            else:
                self._pool.append(sock)


def load_curve_client_keys(server_key_file: str | Path, client_secret_file: str | Path | None = None) -> dict[str, bytes]:
    """Keyword arguments of `WorkerClient` from key files written by `hgm keys`.

    Args:
        server_key_file: the server's public key file (e.g. `keys/server.key`).
        client_secret_file: this client's secret key file (e.g. `keys/client.key_secret`), or None
            for an ephemeral key pair.
    """
    if client_secret_file is None:
        server_public, _ = zmq.auth.load_certificate(str(server_key_file))
        return {"server_public_key": server_public}
    keys = CurveClientKeys.load(server_key_file, client_secret_file)
    return {"server_public_key": keys.server_public, "client_public_key": keys.public, "client_secret_key": keys.secret}
