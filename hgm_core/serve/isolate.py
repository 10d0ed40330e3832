"""Crash isolation: the worker's compute in a child process it supervises (issue #17).

A native crash in the compute (torch, numba, open3d, mediapipe: a segfault, an abort) kills the
process it happens in. With `Worker(ComputeSpec(...))` that process is a child of the worker: the
worker's socket, its queue and its clients live on, the job that was running gets an "internal"
reply, the next job starts a fresh child, and a job that killed the compute `QUARANTINE_STRIKES`
times is refused from then on (`hgm_core.serve.quarantine`).

Parent and child speak the wire protocol over a private ipc:// PAIR socket: the parent forwards a
job's request frames as received, the child decodes them (`hgm_core.serve.schema`), runs its
handler and answers with the result frames, which the parent forwards to the client. Nothing is
pickled. The child is `python -m hgm_core.serve.isolate ENDPOINT TRACK_ENDPOINT SPEC_JSON`; it
builds its handler with `ComputeSpec.factory` and dies with its parent (PDEATHSIG).

Live mode (track jobs): when the handler belongs to an object with a `track` method (the
`LivePipeline` of `LivePipeline.run`), the child serves track jobs too, on a thread and a second
PAIR socket of their own (TRACK_ENDPOINT), so a keyframe in the child never holds up tracking, and
says so in its READY (`ChildCompute.tracks`). The parent's track lane calls `ChildCompute.track`
from its own thread: that socket belongs to that thread (bound on first use, kept across child
restarts: each new child connects to it); replies are matched by request id, so a reply that comes
after its job was given up is dropped. The trackers live in the child: a restarted child has none,
and the stream's next track job answers "lost" (no keyframe), which makes the client re-keyframe.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import zmq

from hgm_core.serve.children import die_with_parent
from hgm_core.serve.protocol import Message, decode, decode_header, encode, encode_error, new_id

log = logging.getLogger("hgm.serve.isolate")

TRACK_CONNECT_S = 1.0
"""How long a track job waits for the compute child's track socket to connect."""
UNLIMITED = 1 << 62
"""The child's message limits: the parent has enforced the real ones before forwarding."""


@dataclass(frozen=True)
class ComputeSpec:
    """How the child process builds its handler.

    Attributes:
        factory: "package.module:callable", imported in the child and called with `kwargs`; it
            returns the handler (`hgm_core.serve.schema.Handler`). When the handler is a method of
            an object with `describe() -> dict` (a `Reconstructor`'s `run`), or of one with a
            `reconstructor` that has it (a `LivePipeline`'s `run`), that description is sent with
            READY and shown in the worker's health (`ChildCompute.description`); when that object
            (or the handler itself) has `track`, the child serves track jobs (module docstring).
        kwargs: JSON-serialisable arguments of the factory.
        threads: compute threads of the child (`hgm_core.runtime.set_compute_threads`); 0 leaves
            the libraries' defaults.
        start_timeout_s: how long the child may take to build its handler (model loading).
    """

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    start_timeout_s: float = 600.0

    def build(self) -> Callable:
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)(**self.kwargs)


class ChildCompute:
    """The parent's side: starts the child, forwards jobs to it, notices when it dies.

    Not thread-safe: one thread (the worker's compute thread) calls `run` and `close`.
    """

    def __init__(self, spec: ComputeSpec, ctx: zmq.Context) -> None:
        self.spec = spec
        self._ctx = ctx
        self._dir = tempfile.mkdtemp(prefix="hgm-compute-")
        self._endpoint = f"ipc://{self._dir}/compute.sock"
        self._track_endpoint = f"ipc://{self._dir}/track.sock"
        self._sock: zmq.Socket | None = None
        self._track_sock: zmq.Socket | None = None  # the track lane's thread's (see the module docstring)
        self._proc: subprocess.Popen | None = None
        self.ready = False
        self.crashes = 0
        self.starts = 0
        self.description: dict | None = None
        """What the child's handler runs on (device, checkpoint, config), from its READY."""
        self.tracks = False
        """Whether the child's handler serves track jobs, from its READY."""

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the child (if none runs) and wait for its READY. Raises `ComputeDied`."""
        if self._proc is not None and self._proc.poll() is None and self.ready:
            return
        self._stop_child()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.linger = 0
        self._sock.bind(self._endpoint)
        cmd = [sys.executable, "-m", "hgm_core.serve.isolate", self._endpoint, self._track_endpoint, json.dumps(asdict(self.spec))]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.starts += 1
        reply = self._wait(self.spec.start_timeout_s)
        if reply.kind == "error":
            error = reply.header.get("error", {})
            self._stop_child()
            raise ComputeDied(f"the compute process could not start: {error.get('kind')}: {error.get('message')}")
        if reply.kind != "ready":
            raise ComputeDied(f"compute process sent {reply.kind!r} instead of ready")
        self.description = reply.header.get("info", {}).get("pipeline")
        self.tracks = reply.header.get("info", {}).get("track") is True
        self.ready = True
        log.info("compute process pid %d ready", self._proc.pid)

    def run(self, frames: list) -> list:
        """Forward one job's request frames; the child's reply frames.

        Raises:
            ComputeDied: the child exited (crashed) before answering; it is not restarted here.
        """
        self.start()
        self._sock.send_multipart(frames, copy=False)
        return self._wait(None, raw=True)

    def track(self, frames: list, request_id: str, timeout_s: float) -> list:
        """Forward one track job's request frames to the child's track thread; its reply frames.
        Called from one thread only (the worker's track lane), never the one calling `run`.

        Raises:
            ComputeNotReady: the child is not ready (starting, or dead and not restarted yet); the
                job was not sent.
            ComputeDied: the child died before answering; it is not restarted here.
            TimeoutError: no reply within `timeout_s` (the job is given up; a late reply is dropped).
        """
        proc = self._proc
        if not self.ready or proc is None or proc.poll() is not None:
            raise ComputeNotReady("the compute process is not running (it is being restarted)")
        if self._track_sock is None:
            self._track_sock = self._ctx.socket(zmq.PAIR)
            self._track_sock.linger = 0
            self._track_sock.bind(self._track_endpoint)
        # The child connects to this socket (it retries every 0.1 s until it is bound): wait for it.
        if not self._track_sock.poll(1000 * TRACK_CONNECT_S, zmq.POLLOUT):
            raise ComputeNotReady("the compute process does not take track jobs yet")
        self._track_sock.send_multipart(frames, copy=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._track_sock.poll(100):
                if proc.poll() is not None:
                    self.ready = False
                    self.crashes += 1
                    raise ComputeDied(f"the compute process (pid {proc.pid}) died while tracking")
                continue
            reply = self._track_sock.recv_multipart(copy=False)
            if decode_header(reply[0]).get("id") == request_id:
                return reply
        raise TimeoutError(f"no track reply from the compute process within {timeout_s:g} s")

    def close(self) -> None:
        """Stop the child; call after the track lane's thread has ended (its socket is closed here)."""
        self._stop_child()
        if self._track_sock is not None:
            self._track_sock.close(linger=0)
            self._track_sock = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def _wait(self, timeout_s: float | None, raw: bool = False) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._sock.poll(100):
            code = self._proc.poll()
            if code is not None:
                self.ready = False
                self.crashes += 1
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise ComputeDied(f"the compute process (pid {self._proc.pid}) died with {how}")
            if deadline is not None and time.monotonic() > deadline:
                self._stop_child()
                raise ComputeDied(f"the compute process did not start within {timeout_s:g} s")
        frames = self._sock.recv_multipart(copy=False)
        return frames if raw else decode(frames, max_message_bytes=UNLIMITED)

    def _stop_child(self) -> None:
        self.ready = False
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


class ComputeDied(RuntimeError):
    """The compute child process is gone (crashed, killed, or failed to start)."""


class ComputeNotReady(ComputeDied):
    """The compute child is not (yet, or no longer) running: a job was not sent to it."""


def _serve(sock: zmq.Socket, handler: Callable, kind: str) -> None:
    """Answer the jobs arriving on `sock` with `handler` (kind "reconstruct" or "track"), forever."""
    from hgm_core.serve.schema import decode_request, run_job
    from hgm_core.types import STAGES

    while True:
        frames = sock.recv_multipart(copy=False)
        msg: Message = decode(frames, max_message_bytes=UNLIMITED)
        try:
            request = decode_request(msg, max_pixels=UNLIMITED, stages=STAGES)
        except Exception as e:  # the parent checked it already; answer rather than die
            sock.send_multipart(encode_error(msg.id, "internal", f"compute could not read the job: {e}"))
            continue
        sock.send_multipart(run_job(handler, msg.id, request, kind=kind), copy=False)


def _child_main(endpoint: str, track_endpoint: str, spec_json: str) -> None:
    from hgm_core.runtime import configure_process
    from hgm_core.types import HgmError

    spec = ComputeSpec(**json.loads(spec_json))
    configure_process(spec.threads or None)  # this process is the compute's entry point
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.connect(endpoint)
    try:
        handler = spec.build()
    except HgmError as e:  # a documented reason (no CUDA, missing files): said to the parent, then exit
        sock.send_multipart(encode_error(new_id(), e.kind, str(e)))
        sock.close(linger=1000)
        raise SystemExit(1) from None
    # What the handler belongs to (the LivePipeline of `LivePipeline.run`, a Reconstructor of
    # `Reconstructor.run`), or the handler itself: its track jobs and its description.
    owner = getattr(handler, "__self__", handler)
    describe = getattr(getattr(owner, "reconstructor", owner), "describe", None)
    track = getattr(owner, "track", None)
    if track is not None:
        track_sock = ctx.socket(zmq.PAIR)
        track_sock.connect(track_endpoint)
        threading.Thread(target=_serve, args=(track_sock, track, "track"), name="hgm-compute-track", daemon=True).start()
    sock.send_multipart(encode("ready", new_id(), info={"pid": os.getpid(), "pipeline": describe() if describe else None,
                                                        "track": track is not None}))
    _serve(sock, handler, "reconstruct")


if __name__ == "__main__":
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the child (Ctrl-C reaches both)
    _child_main(*sys.argv[1:4])
