"""Load-balancing broker between clients and several workers (docs/architecture.md §5).

The Paranoid Pirate broker of the ZeroMQ guide: clients talk to a ROUTER (`frontend`), workers
connect DEALERs to another ROUTER (`backend`) and announce READY when idle. Jobs wait in a bounded
queue and go to the longest-idle worker. Broker and workers exchange heartbeats; a worker that goes
silent (or whose connection is gone) is dropped and its job is re-queued at the front for another
worker. A job that has lost `max_attempts` (2) workers is quarantined: the client gets an "internal"
error, and the same job (same arrays and options) sent again is refused at once instead of killing
more workers. Health requests are answered by the broker itself. Any message, however malformed,
gets an error reply or is dropped; none can stop the broker.

Live streams keep their worker (tracker affinity): a keyframe (`bind` reconstruct job) of a stream
ties the stream to the worker that got it, because that worker alone holds the stream's tracker.
The stream's track jobs then go to that worker only, also while it runs a reconstruction (a worker
tracks on a lane of its own), one at a time, waiting in the queue for it meanwhile. The tie is made
when the keyframe's result comes back (until then the previous keyframe's worker tracks on); a track job of
a stream with no live worker goes to any idle one, which answers "lost" (no keyframe there), and
the client's next keyframe ties the stream anew. A worker holds at most one job per lane
(reconstruct, track) and announces READY when it holds none.

Between broker and worker each message carries one leading frame: the broker's job key for a job
and its reply, empty for READY / heartbeat. Workers need no other knowledge of the broker.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass

import zmq

from hgm_core.serve import curve
from hgm_core.serve.quarantine import QUARANTINE_STRIKES, Quarantine, fingerprint
from hgm_core.serve.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    decode_header,
    encode,
    encode_error,
    encode_header,
    new_id,
)

log = logging.getLogger("hgm.serve.broker")


@dataclass(frozen=True)
class BrokerConfig:
    """Limits and timing of a broker.

    Attributes:
        max_message_bytes: largest accepted request; also ZMQ_MAXMSGSIZE of both sockets.
        max_queue: jobs that may wait for a worker; more get a "busy" error.
        heartbeat_interval_s, heartbeat_liveness: a worker silent for `liveness` intervals is dead.
        max_attempts: workers a job may lose before it is quarantined and the client gets an
            "internal" error (a job that kills every worker must not take the whole pool down);
            a client's retry of the job counts on.
        max_streams: live streams whose worker is remembered (the least recently keyframed is
            forgotten first; its track jobs then go to any worker, which answers "lost").
    """

    max_message_bytes: int = 256 << 20
    max_queue: int = 64
    heartbeat_interval_s: float = 1.0
    heartbeat_liveness: int = 3
    max_attempts: int = QUARANTINE_STRIKES
    max_streams: int = 1024


@dataclass
class _Job:
    key: bytes
    envelope: list
    frames: list
    request_id: str
    deadline: float | None
    fingerprint: bytes
    worker: bytes | None = None
    kind: str = "reconstruct"  # or "track": the worker lane it runs on
    stream: str = ""
    bind: bool = False


@dataclass
class _WorkerState:
    expires: float
    stages: tuple[str, ...] = ()
    pid: int | None = None
    job: bytes | None = None  # the reconstruct lane's job
    track: bytes | None = None  # the track lane's job

    def holds(self, job: _Job) -> bytes | None:
        return self.track if job.kind == "track" else self.job


class Broker:
    """Routes jobs from `frontend` clients to `backend` workers until `stop()`."""

    def __init__(self, config: BrokerConfig | None = None, *, curve_server: curve.CurveServerKeys | None = None) -> None:
        self.config = config or BrokerConfig()
        self.curve_server = curve_server
        self.frontend_endpoint: str | None = None
        self.backend_endpoint: str | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._workers: OrderedDict[bytes, _WorkerState] = OrderedDict()
        self._idle: deque[bytes] = deque()
        self._queue: deque[_Job] = deque()
        self._inflight: dict[bytes, _Job] = {}
        self._streams: OrderedDict[str, bytes] = OrderedDict()  # live stream -> the worker holding its keyframe
        self._keys = itertools.count(1)
        self._quarantine = Quarantine(self.config.max_attempts)
        self._done = 0
        self._requeued = 0
        self._started = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def serve(self, frontend: str, backend: str) -> None:
        """Block routing between the bound `frontend` (clients) and `backend` (workers) endpoints."""
        ctx = zmq.Context()
        auth = curve.start_authenticator(ctx, self.curve_server) if self.curve_server else None
        self._front = self._socket(ctx)
        self._back = self._socket(ctx)
        # Sending to a vanished worker fails at once instead of silently dropping its job.
        self._back.router_mandatory = True
        try:
            self._front.bind(frontend)
            self._back.bind(backend)
            self.frontend_endpoint = self._front.last_endpoint.decode()
            self.backend_endpoint = self._back.last_endpoint.decode()
            log.info("broker: clients on %s, workers on %s", self.frontend_endpoint, self.backend_endpoint)
            self.ready.set()
            self._loop()
            self._refuse_all()
        finally:
            self._front.close(linger=0)
            self._back.close(linger=0)
            if auth is not None:
                auth.stop()
            ctx.term()

    def health_info(self) -> dict:
        stages = sorted({s for w in self._workers.values() for s in w.stages})
        return {
            "ok": bool(self._workers),
            "role": "broker",
            "protocol": PROTOCOL_VERSION,
            "stages": stages,
            "busy": not self._idle,
            "workers": len(self._workers),
            "idle": len(self._idle),
            "worker_pids": [w.pid for w in self._workers.values()],
            "queued": len(self._queue),
            "max_queue": self.config.max_queue,
            "in_flight": len(self._inflight),
            "streams": len(self._streams),
            "jobs_done": self._done,
            "jobs_requeued": self._requeued,
            "jobs_quarantined": len(self._quarantine),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "pid": os.getpid(),
        }

    # -- internals --------------------------------------------------------------------------------

    def _socket(self, ctx: zmq.Context) -> zmq.Socket:
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.maxmsgsize = self.config.max_message_bytes
        if self.curve_server is not None:
            curve.make_server(sock, self.curve_server)
        return sock

    @property
    def _patience(self) -> float:
        return self.config.heartbeat_interval_s * self.config.heartbeat_liveness

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        poller.register(self._back, zmq.POLLIN)
        next_beat = time.monotonic()
        while not self._stop.is_set():
            events = dict(poller.poll(max(0, min(100, (next_beat - time.monotonic()) * 1000))))
            if self._back in events:
                frames = self._back.recv_multipart(copy=False)
                try:
                    self._on_worker(frames)
                except Exception:  # last resort: drop the message, keep routing
                    log.error("message from a worker dropped:\n%s", traceback.format_exc())
            if self._front in events:
                self._on_client(self._front.recv_multipart(copy=False))
            now = time.monotonic()
            if now >= next_beat:
                for wid in list(self._workers):
                    self._send_worker(wid, [b""] + encode("heartbeat", new_id()))
                next_beat = now + self.config.heartbeat_interval_s
            self._purge(now)
            self._dispatch(now)

    def _on_client(self, frames: list) -> None:
        # [client routing id, (empty delimiter of a REQ client), header, arrays...]
        n = 2 if len(frames) > 2 and frames[1].bytes == b"" else 1
        envelope, body = frames[:n], frames[n:]
        rid = ""
        try:
            msg = decode(body, max_message_bytes=self.config.max_message_bytes)
            rid = msg.id
            if msg.kind == "health":
                self._front.send_multipart(envelope + encode("result", rid, info=self.health_info()))
                return
            if msg.kind not in ("reconstruct", "track"):
                raise ProtocolError("bad_request", f"kind {msg.kind!r} is not a request", rid)
            if len(self._queue) >= self.config.max_queue:
                raise ProtocolError("busy", f"broker queue full ({self.config.max_queue} jobs)", rid)
            digest = fingerprint(msg)
            if (reason := self._quarantine.reason(digest)) is not None:
                raise ProtocolError("internal", reason, rid)
        except ProtocolError as e:
            self._front.send_multipart(envelope + encode_error(e.request_id, e.kind, str(e)))
            return
        except Exception as e:  # last resort: one "internal" reply, keep routing
            log.error("client message %r failed:\n%s", rid, traceback.format_exc())
            self._front.send_multipart(envelope + encode_error(rid, "internal", f"{type(e).__name__}: {e}"))
            return
        deadline_ms = msg.header.get("deadline_ms")
        deadline = time.monotonic() + deadline_ms / 1000 if deadline_ms is not None else None
        key = next(self._keys).to_bytes(8, "big")
        stream = msg.header.get("stream")
        self._queue.append(_Job(key, envelope, body, rid, deadline, digest, kind=msg.kind,
                                stream=stream if isinstance(stream, str) else "", bind=msg.header.get("bind") is True))

    def _on_worker(self, frames: list) -> None:
        # [worker routing id, job key or empty, header, arrays...]
        if len(frames) < 3:
            return
        wid, route, body = frames[0].bytes, frames[1].bytes, frames[2:]
        try:
            header = decode_header(body[0])
        except ProtocolError as e:
            log.warning("dropping malformed message from a worker: %s", e)
            return
        now = time.monotonic()
        state = self._workers.get(wid)
        if header["kind"] == "ready":
            if state is None:
                state = self._workers[wid] = _WorkerState(now)
                log.info("worker joined (pid %s); %d worker(s)", header.get("info", {}).get("pid"), len(self._workers))
            elif state.job is not None:  # READY while holding a job: that job is lost
                self._lose_job(state, state.job)
            # (A track job sent while the worker was busy may cross its READY: it is not lost, and
            # one that never comes back is dropped at its deadline, `_purge`.)
            info = header.get("info", {})
            stages, pid = info.get("stages"), info.get("pid")
            state.stages = tuple(s for s in stages if isinstance(s, str)) if isinstance(stages, list) else ()
            state.pid = pid if type(pid) is int else None
            if wid not in self._idle:
                self._idle.append(wid)
        if state is None:
            # An unknown worker (e.g. one we dropped as dead, or after a broker restart): it hears
            # no heartbeats from us, reconnects and announces READY.
            return
        state.expires = now + self._patience
        if header["kind"] in ("result", "error") and route:
            job = self._inflight.get(route)
            if job is None or job.worker != wid:
                log.info("dropping a stale reply for job %s", route.hex())
                return
            del self._inflight[route]
            if job.kind == "track":
                state.track = None
            else:
                state.job = None
            if job.bind and job.stream and header["kind"] == "result":
                # Tied on the keyframe's result, not its dispatch: meanwhile the stream's track jobs
                # still reach the worker tracking from its previous keyframe.
                self._tie_stream(job.stream, wid)
            self._done += 1
            self._front.send_multipart(job.envelope + body, copy=False)

    def _purge(self, now: float) -> None:
        for wid, state in list(self._workers.items()):
            if now > state.expires:
                log.warning("worker pid %s silent for %.1f s: dropped", state.pid, self._patience)
                self._drop_worker(wid)
        while self._queue and self._queue[0].deadline is not None and now > self._queue[0].deadline:
            job = self._queue.popleft()
            self._front.send_multipart(job.envelope + encode_error(job.request_id, "timeout", "no worker took the job before its deadline"))
        for key, job in list(self._inflight.items()):
            # A track job whose reply never came (it crossed the worker's READY and was lost): the
            # client has given up at its deadline; free the lane for the stream's next frame.
            if job.kind == "track" and job.deadline is not None and now > job.deadline + self._patience:
                del self._inflight[key]
                state = self._workers.get(job.worker)
                if state is not None and state.track == key:
                    state.track = None

    def _dispatch(self, now: float) -> None:
        waiting: deque[_Job] = deque()  # jobs whose worker is not free yet, in their order
        while self._queue:
            job = self._queue.popleft()
            if job.deadline is not None and now > job.deadline:
                self._front.send_multipart(job.envelope + encode_error(job.request_id, "timeout", "job expired in the broker queue"))
                continue
            wid = self._streams.get(job.stream) if job.kind == "track" else None
            if wid is not None:  # the worker holding the stream's tracker, idle or not
                if self._workers[wid].track is not None:
                    waiting.append(job)
                    continue
                if wid in self._idle:
                    self._idle.remove(wid)
            elif self._idle:
                wid = self._idle.popleft()
            else:
                waiting.append(job)
                continue
            self._send_job(wid, job, now)
        self._queue = waiting

    def _send_job(self, wid: bytes, job: _Job, now: float) -> None:
        state = self._workers[wid]
        job.worker = wid
        if job.kind == "track":
            state.track = job.key
        else:
            state.job = job.key
        self._inflight[job.key] = job
        self._send_worker(wid, [job.key, self._with_remaining_deadline(job, now)] + job.frames[1:])

    def _tie_stream(self, stream: str, wid: bytes) -> None:
        """`stream`'s keyframe (and tracker) now lives on worker `wid`."""
        self._streams.pop(stream, None)
        self._streams[stream] = wid
        while len(self._streams) > self.config.max_streams:
            self._streams.popitem(last=False)

    def _with_remaining_deadline(self, job: _Job, now: float) -> bytes:
        # The worker drops work it cannot start in time; it must count from the client's deadline.
        if job.deadline is None:
            return job.frames[0]
        header = decode_header(job.frames[0])
        header["deadline_ms"] = max(1, int((job.deadline - now) * 1000))
        return encode_header(header)

    def _send_worker(self, wid: bytes, frames: list) -> None:
        try:
            self._back.send_multipart([wid] + frames, copy=False)
        except zmq.ZMQError as e:  # EHOSTUNREACH: the connection is gone (router_mandatory)
            log.warning("worker unreachable (%s): dropped", e)
            self._drop_worker(wid)

    def _drop_worker(self, wid: bytes) -> None:
        state = self._workers.pop(wid, None)
        if wid in self._idle:
            self._idle.remove(wid)
        for stream in [s for s, w in self._streams.items() if w == wid]:  # their trackers died with it
            del self._streams[stream]
        if state is not None:
            for key in (state.job, state.track):
                if key is not None:
                    self._lose_job(state, key)

    def _lose_job(self, state: _WorkerState, key: bytes) -> None:
        job = self._inflight.pop(key, None)
        if job is None:  # a track job already given up (`_purge`)
            return
        if job.kind == "track":
            state.track = None
        else:
            state.job = None
        job.worker = None
        reason = self._quarantine.strike(job.fingerprint, "its worker")
        if reason is not None:
            log.error("job %s %s", job.request_id, reason)
            self._front.send_multipart(job.envelope + encode_error(job.request_id, "internal", reason))
            return
        self._requeued += 1
        self._queue.appendleft(job)

    def _refuse_all(self) -> None:
        for job in list(self._queue) + list(self._inflight.values()):
            self._front.send_multipart(job.envelope + encode_error(job.request_id, "unavailable", "broker is shutting down"))
