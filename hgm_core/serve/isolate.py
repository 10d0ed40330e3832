"""Crash isolation: the worker's compute in a child process it supervises (issue #17).

A native crash in the compute (torch, numba, open3d, mediapipe: a segfault, an abort) kills the
process it happens in. With `Worker(ComputeSpec(...))` that process is a child of the worker: the
worker's socket, its queue and its clients live on, the job that was running gets an "internal"
reply, the next job starts a fresh child, and a job that killed the compute `QUARANTINE_STRIKES`
times is refused from then on (`hgm_core.serve.quarantine`).

Parent and child speak the wire protocol over a private ipc:// PAIR socket: the parent forwards a
job's request frames as received, the child decodes them (`hgm_core.serve.schema`), runs its
handler and answers with the result frames, which the parent forwards to the client. Nothing is
pickled. The child is `python -m hgm_core.serve.isolate ENDPOINT SPEC_JSON`; it builds its handler
with `ComputeSpec.factory` and dies with its parent (PDEATHSIG).
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
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import zmq

from hgm_core.serve.children import die_with_parent
from hgm_core.serve.protocol import Message, decode, encode, encode_error, new_id

log = logging.getLogger("hgm.serve.isolate")

UNLIMITED = 1 << 62
"""The child's message limits: the parent has enforced the real ones before forwarding."""


@dataclass(frozen=True)
class ComputeSpec:
    """How the child process builds its handler.

    Attributes:
        factory: "package.module:callable", imported in the child and called with `kwargs`; it
            returns the handler (`hgm_core.serve.schema.Handler`). When the handler is a method of
            an object with `describe() -> dict` (a `Reconstructor`'s `run`), that description is
            sent with READY and shown in the worker's health (`ChildCompute.description`).
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
        self._sock: zmq.Socket | None = None
        self._proc: subprocess.Popen | None = None
        self.ready = False
        self.crashes = 0
        self.starts = 0
        self.description: dict | None = None
        """What the child's handler runs on (device, checkpoint, config), from its READY."""

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
        cmd = [sys.executable, "-m", "hgm_core.serve.isolate", self._endpoint, json.dumps(asdict(self.spec))]
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

    def close(self) -> None:
        self._stop_child()
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


def _child_main(endpoint: str, spec_json: str) -> None:
    from hgm_core.runtime import configure_process
    from hgm_core.serve.schema import decode_request
    from hgm_core.serve.schema import run_job
    from hgm_core.types import STAGES, HgmError

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
    describe = getattr(getattr(handler, "__self__", None), "describe", None)
    sock.send_multipart(encode("ready", new_id(), info={"pid": os.getpid(), "pipeline": describe() if describe else None}))
    while True:
        frames = sock.recv_multipart(copy=False)
        msg: Message = decode(frames, max_message_bytes=UNLIMITED)
        try:
            request = decode_request(msg, max_pixels=UNLIMITED, stages=STAGES)
        except Exception as e:  # the parent checked it already; answer rather than die
            sock.send_multipart(encode_error(msg.id, "internal", f"compute could not read the job: {e}"))
            continue
        sock.send_multipart(run_job(handler, msg.id, request), copy=False)


if __name__ == "__main__":
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the child (Ctrl-C reaches both)
    _child_main(*sys.argv[1:3])
