"""The hgm worker: keeps a reconstruction handler warm and answers jobs over ZeroMQ (docs/architecture.md §5).

Two modes, one code path:
- `serve(bind=...)`: a ROUTER that clients talk to directly; up to `queue_depth` jobs wait behind
  the running one, further jobs get a "busy" error.
- `serve(connect=...)`: a DEALER connected to a broker's worker side (`hgm_core.serve.broker`); it
  announces READY when idle, heartbeats both ways, and reconnects with backoff when the broker goes
  silent (the Paranoid Pirate worker of the ZeroMQ guide).

The socket is served by one thread and the handler runs in another, so health requests and
heartbeats are answered while a job runs. Track jobs (live mode, given a `track` handler) have a
compute thread and queue of their own, so a keyframe reconstruction never holds up the per-frame
tracking of the same or another stream. Every request is validated (`hgm_core.serve.schema`)
before it is queued; a malformed or oversized request, a handler exception, or a bug in the worker
itself becomes an error reply — never a dead worker. Given a `ComputeSpec` instead of a handler, the
worker runs the handler in a child process it supervises (`hgm_core.serve.isolate`): a native crash
of the compute then costs the job that caused it an "internal" reply, not the worker. The child
serves track jobs too when its handler can (a `LivePipeline`'s), on a socket and thread of their own.
"""

from __future__ import annotations

import logging
import os
import queue
import socket as _socket
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import zmq

from hgm_core.serve import curve
from hgm_core.serve.isolate import ChildCompute, ComputeDied, ComputeNotReady, ComputeSpec
from hgm_core.serve.protocol import PROTOCOL_VERSION, Message, ProtocolError, decode, decode_header, encode, encode_error, encode_header, new_id
from hgm_core.serve.quarantine import Quarantine, fingerprint
from hgm_core.serve.schema import Handler, TrackHandler, decode_request, run_job
from hgm_core.types import STAGES, ReconstructionRequest

log = logging.getLogger("hgm.serve.worker")

"""Runs one job; raises an `HgmError` subclass for documented failures (its `kind` is replied)."""


@dataclass(frozen=True)
class WorkerConfig:
    """Limits and timing of a worker.

    Attributes:
        max_message_bytes: largest accepted request (all frames); also ZMQ_MAXMSGSIZE of the
            socket, so a single larger frame drops that peer's connection without being buffered.
        max_pixels: largest accepted image (H * W).
        queue_depth: jobs that may wait behind the running one (direct mode).
        stages: the `stages` values this worker accepts.
        heartbeat_interval_s, heartbeat_liveness: broker mode; the broker is presumed dead after
            `liveness` silent intervals and the worker reconnects.
        reconnect_max_s: cap of the exponential reconnect backoff.
    """

    max_message_bytes: int = 256 << 20
    max_pixels: int = 4096 * 4096
    queue_depth: int = 4
    stages: tuple[str, ...] = STAGES
    heartbeat_interval_s: float = 1.0
    heartbeat_liveness: int = 3
    reconnect_max_s: float = 16.0


TRACK_TIMEOUT_S = 30.0
"""How long an isolated worker waits for its child's answer to a track job without a deadline."""


@dataclass
class _Job:
    envelope: list
    message: Message
    frames: list  # the request as received (header + arrays), what a compute child is sent
    request: ReconstructionRequest
    received: float
    expires: float | None
    kind: str = "reconstruct"  # or "track"

    @property
    def request_id(self) -> str:
        return self.message.id


_RESTART_CHILD = object()
"""Put on the compute lane's queue: restart the compute child (it died during a track job)."""


class Worker:
    """Serves `handler` on one endpoint until `stop()`.

    Args:
        handler: the warm model, e.g. a `hgm_core.pipeline.Reconstructor` instance's `run`; or a
            `ComputeSpec` to build it in a supervised child process (crash isolation).
        config: limits and timing.
        curve_server: key pair (and allowed clients) to require CURVE on a bound endpoint.
        curve_client: keys to reach a CURVE broker in connect mode.
        track: serves track jobs (`hgm_core.pipeline.live.LivePipeline.track`) on a compute thread
            of their own; None refuses them ("stage_unavailable").
        describe: what the handler runs on (`Reconstructor.describe`: device, GPU, checkpoint,
            config), shown as "pipeline" in health replies; a compute child describes itself.
    """

    def __init__(
        self,
        handler: Handler | ComputeSpec,
        config: WorkerConfig | None = None,
        *,
        curve_server: curve.CurveServerKeys | None = None,
        curve_client: curve.CurveClientKeys | None = None,
        track: TrackHandler | None = None,
        describe: Callable[[], dict] | None = None,
    ) -> None:
        self.handler = handler
        self.track = track
        self.describe = describe
        self.config = config or WorkerConfig()
        self.curve_server = curve_server
        self.curve_client = curve_client
        self.endpoint: str | None = None
        """The bound endpoint (with the actual port when bound to `tcp://host:*`), once serving."""
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._track_jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0  # jobs accepted and not yet replied; touched by the socket thread only
        self._done = 0
        self._failed = 0
        self._started = time.monotonic()
        self._broker_mode = False
        self._child: ChildCompute | None = None  # set while serving with a ComputeSpec
        self._quarantine = Quarantine()

    # -- lifecycle --------------------------------------------------------------------------------

    def serve(self, *, bind: str | None = None, connect: str | None = None) -> None:
        """Block serving `bind` (direct mode) or the broker at `connect` until `stop()`."""
        if (bind is None) == (connect is None):
            raise ValueError("give exactly one of bind= or connect=")
        self._broker_mode = connect is not None
        ctx = zmq.Context()
        auth = curve.start_authenticator(ctx, self.curve_server) if bind and self.curve_server else None
        if isinstance(self.handler, ComputeSpec):
            self._child = ChildCompute(self.handler, ctx)
        # An isolated worker has a track lane whether or not its child tracks (it says so when ready).
        tracking = self.track is not None or self._child is not None
        lanes = [(self._jobs, "compute")] + ([(self._track_jobs, "track")] if tracking else [])
        pipes, computes = [], []
        for jobs, name in lanes:  # one result pipe per compute thread (a PAIR has one peer)
            pipe_addr = f"inproc://hgm-worker-{name}-{id(self)}"
            pipe = ctx.socket(zmq.PAIR)
            pipe.bind(pipe_addr)
            compute = threading.Thread(target=self._compute_loop, args=(ctx, pipe_addr, jobs), name=f"hgm-worker-{name}", daemon=True)
            compute.start()
            pipes.append(pipe)
            computes.append(compute)
        try:
            if bind is not None:
                self._serve_direct(ctx, pipes, bind)
            else:
                self._serve_broker(ctx, pipes, connect)
        finally:
            for (jobs, _), compute in zip(lanes, computes):
                jobs.put(None)
                compute.join(timeout=2.0)
            for pipe in pipes:
                pipe.close(linger=0)
            if auth is not None:
                auth.stop()
            if any(c.is_alive() for c in computes):  # a handler call is still running; the process is exiting anyway
                log.warning("worker stopped while a job was running")
            else:
                if self._child is not None:
                    self._child.close()
                ctx.term()

    def stop(self) -> None:
        """Ask `serve` to return (thread- and signal-safe). Queued jobs get an "unavailable" reply."""
        self._stop.set()

    def health_info(self) -> dict:
        child = self._child
        compute = {} if child is None else {
            "compute": {"pid": child.pid, "ready": child.ready, "starts": child.starts, "crashes": child.crashes},
            "jobs_quarantined": len(self._quarantine),
        }
        return {
            # An isolated worker is ok once its compute child has loaded (and through its restarts).
            "ok": child is None or child.starts > 1 or child.ready,
            "role": "worker",
            "protocol": PROTOCOL_VERSION,
            "stages": list(self.config.stages),
            "track": self._tracks(),
            "busy": self._pending > 0,
            "queued": max(0, self._pending - 1),
            "queue_depth": self.config.queue_depth,
            "jobs_done": self._done,
            "jobs_failed": self._failed,
            "max_pixels": self.config.max_pixels,
            "max_message_bytes": self.config.max_message_bytes,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "pid": os.getpid(),
            "pipeline": self._description(),
            **compute,
        }

    def _tracks(self) -> bool:
        """Whether track jobs are served: by `track`, or by a compute child that said so."""
        return self.track is not None or (self._child is not None and self._child.tracks)

    def _description(self) -> dict | None:
        if self._child is not None:
            return self._child.description
        if self.describe is None:
            return None
        try:
            return self.describe()
        except Exception as e:  # health must answer whatever the description does
            return {"error": f"{type(e).__name__}: {e}"}

    # -- socket thread ----------------------------------------------------------------------------

    def _socket(self, ctx: zmq.Context, kind: int) -> zmq.Socket:
        sock = ctx.socket(kind)
        sock.linger = 0
        sock.maxmsgsize = self.config.max_message_bytes
        return sock

    def _serve_direct(self, ctx: zmq.Context, pipes: list[zmq.Socket], bind: str) -> None:
        sock = self._socket(ctx, zmq.ROUTER)
        if self.curve_server is not None:
            curve.make_server(sock, self.curve_server)
        try:
            sock.bind(bind)
            self.endpoint = sock.last_endpoint.decode()
            log.info("worker serving on %s", self.endpoint)
            self.ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            for pipe in pipes:
                poller.register(pipe, zmq.POLLIN)
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if sock in events:
                    frames = sock.recv_multipart(copy=False)
                    # [routing id, (empty delimiter of a REQ peer), header, arrays...]
                    n = 2 if len(frames) > 2 and frames[1].bytes == b"" else 1
                    self._on_request(sock, frames[:n], frames[n:])
                for pipe in pipes:
                    if pipe in events:
                        self._pending -= 1
                        sock.send_multipart(pipe.recv_multipart(copy=False), copy=False)
            self._refuse_queued(sock)
        finally:
            sock.close(linger=0)

    def _serve_broker(self, ctx: zmq.Context, pipes: list[zmq.Socket], connect: str) -> None:
        cfg = self.config
        patience = cfg.heartbeat_interval_s * cfg.heartbeat_liveness
        backoff = cfg.heartbeat_interval_s
        sock = None
        poller = zmq.Poller()
        for pipe in pipes:
            poller.register(pipe, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if sock is None:
                    sock = self._socket(ctx, zmq.DEALER)
                    if self.curve_client is not None:
                        curve.make_client(sock, self.curve_client)
                    sock.connect(connect)
                    poller.register(sock, zmq.POLLIN)
                    self.endpoint = connect
                    heard = next_beat = time.monotonic()
                    if self._pending == 0:
                        self._send_control(sock, "ready")
                    self.ready.set()
                events = dict(poller.poll(100))
                now = time.monotonic()
                if sock in events:
                    heard, backoff = now, cfg.heartbeat_interval_s
                    frames = sock.recv_multipart(copy=False)
                    # [job key (empty for control messages), header, arrays...]
                    if len(frames) >= 2 and frames[0].bytes:
                        self._on_request(sock, frames[:1], frames[1:])
                for pipe in pipes:
                    if pipe in events:
                        self._pending -= 1
                        sock.send_multipart(pipe.recv_multipart(copy=False), copy=False)
                        if self._pending == 0:
                            self._send_control(sock, "ready")
                if now >= next_beat:
                    self._send_control(sock, "heartbeat")
                    next_beat = now + cfg.heartbeat_interval_s
                if now - heard > patience:
                    log.warning("broker %s silent for %.1f s; reconnecting in %.1f s", connect, now - heard, backoff)
                    poller.unregister(sock)
                    sock.close(linger=0)
                    sock = None
                    self._stop.wait(backoff)
                    backoff = min(2 * backoff, cfg.reconnect_max_s)
            if sock is not None:
                self._refuse_queued(sock)
        finally:
            if sock is not None:
                sock.close(linger=0)

    def _send_control(self, sock: zmq.Socket, kind: str) -> None:
        info = {"stages": list(self.config.stages), "pid": os.getpid(), "busy": self._pending > 0}
        sock.send_multipart([b""] + encode(kind, new_id(), info=info))

    def _on_request(self, sock: zmq.Socket, envelope: list, frames: list) -> None:
        rid = ""
        try:
            msg = decode(frames, max_message_bytes=self.config.max_message_bytes)
            rid = msg.id
            if msg.kind == "health":
                self._reply(sock, envelope, encode("result", rid, info=self.health_info()))
                return
            if msg.kind not in ("reconstruct", "track"):
                raise ProtocolError("bad_request", f"kind {msg.kind!r} is not a request", rid)
            request = decode_request(msg, max_pixels=self.config.max_pixels, stages=self.config.stages)
            if msg.kind == "track" and not self._tracks():
                raise ProtocolError("stage_unavailable", "this worker does not track (no track handler, or its compute "
                                    "process has none or is not ready)", rid)
            if self._pending > self.config.queue_depth:
                raise ProtocolError("busy", f"queue full ({self.config.queue_depth} waiting)", rid)
        except ProtocolError as e:
            log.info("rejected request %r: %s: %s", e.request_id, e.kind, e)
            self._reply(sock, envelope, encode_error(e.request_id, e.kind, str(e)))
            return
        except Exception as e:  # last resort: a bug in the checks must cost one reply, not the worker
            log.error("request %r failed:\n%s", rid, traceback.format_exc())
            self._reply(sock, envelope, encode_error(rid, "internal", f"{type(e).__name__}: {e}"))
            return
        now = time.monotonic()
        deadline = msg.header.get("deadline_ms")
        expires = now + deadline / 1000 if deadline is not None else None
        self._pending += 1
        (self._track_jobs if msg.kind == "track" else self._jobs).put(_Job(envelope, msg, frames, request, now, expires, msg.kind))

    def _reply(self, sock: zmq.Socket, envelope: list, frames: list) -> None:
        sock.send_multipart(envelope + frames, copy=False)
        if self._broker_mode and self._pending == 0:
            self._send_control(sock, "ready")

    def _refuse_queued(self, sock: zmq.Socket) -> None:
        for jobs in (self._jobs, self._track_jobs):
            while True:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, _Job):
                    sock.send_multipart(job.envelope + encode_error(job.request_id, "unavailable", "worker is shutting down"))

    # -- compute thread ---------------------------------------------------------------------------

    def _compute_loop(self, ctx: zmq.Context, pipe_addr: str, jobs: queue.Queue) -> None:
        # The compute child is started from this thread: its PDEATHSIG fires when this thread ends.
        pipe = ctx.socket(zmq.PAIR)
        pipe.connect(pipe_addr)
        try:
            if self._child is not None and jobs is self._jobs:
                self._start_child()
            while (job := jobs.get()) is not None:
                if job is _RESTART_CHILD:  # the track lane saw the child die
                    self._start_child()
                    continue
                try:
                    reply = self._run(job)
                except Exception as e:  # last resort: the compute thread must outlive any job
                    log.error("job %s failed in the worker:\n%s", job.request_id, traceback.format_exc())
                    self._failed += 1
                    reply = encode_error(job.request_id, "internal", f"{type(e).__name__}: {e}")
                pipe.send_multipart(job.envelope + reply, copy=False)
        finally:
            pipe.close()

    def _run(self, job: _Job) -> list:
        started = time.monotonic()
        if job.expires is not None and started > job.expires:
            self._failed += 1
            return encode_error(job.request_id, "timeout", f"job expired after {started - job.received:.2f} s in the queue")
        frames = self._compute(job)
        try:  # what the client will check: a result the protocol cannot carry is the server's bug
            header = decode_header(frames[0])
        except ProtocolError as e:
            self._failed += 1
            return encode_error(job.request_id, "internal", f"the result breaks the protocol: {e}")
        if header["kind"] != "result":
            self._failed += 1
            return frames
        self._done += 1
        header["timings"]["queue"] = started - job.received
        header["info"].setdefault("worker", {}).update(pid=os.getpid(), host=_socket.gethostname())
        return [encode_header(header), *frames[1:]]

    def _compute(self, job: _Job) -> list:
        """The job's reply frames, from the handler in this process or from the compute child."""
        track = job.kind == "track"
        if self._child is None:
            return run_job(self.track if track else self.handler, job.request_id, job.request, kind=job.kind)
        digest = fingerprint(job.message)
        if (reason := self._quarantine.reason(digest)) is not None:
            return encode_error(job.request_id, "internal", reason)
        try:
            if track:  # the track lane's own socket to the child, within the job's deadline
                timeout = TRACK_TIMEOUT_S if job.expires is None else max(0.1, job.expires - time.monotonic())
                return self._child.track(job.frames, job.request_id, timeout)
            return self._child.run(job.frames)
        except TimeoutError as e:
            return encode_error(job.request_id, "timeout", str(e))
        except ComputeNotReady as e:  # a track job while the child (re)starts: not this job's fault
            if not self._child.alive:
                self._jobs.put(_RESTART_CHILD)
            return encode_error(job.request_id, "unavailable", str(e))
        except ComputeDied as e:
            log.error("job %s: %s", job.request_id, e)
            reason = self._quarantine.strike(digest, "the compute process")
            if track:
                self._jobs.put(_RESTART_CHILD)  # the compute lane owns the child and restarts it
            else:
                self._start_child()
            return encode_error(job.request_id, "internal", reason or f"{e} while running this job; it is restarted")

    def _start_child(self) -> None:
        try:
            self._child.start()
        except ComputeDied as e:  # the next job tries again and reports it
            log.error("cannot start the compute process: %s", e)
