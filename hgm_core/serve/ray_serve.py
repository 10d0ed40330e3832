"""Workers as Ray Serve replicas behind the hgm wire protocol (docs/architecture.md §5, issue #17).

For a fleet beyond one broker and a few GPU hosts: `RayFront` binds a ROUTER that speaks the worker
protocol (`hgm_core.serve.protocol`), so `WorkerClient` and the ROS node talk to it unchanged. It
validates every request at the boundary (`hgm_core.serve.schema`, the same checks as a worker),
answers health itself, and hands each job to a Ray Serve deployment of `Replica`s. A replica builds
its handler once from a `ComputeSpec` (as a supervised worker's compute child does) and runs one
reconstruction and one track job at a time, each on a thread of its own (as a worker does). It
asks for one GPU where the cluster has GPUs; replica count, CPUs and Ray Serve's autoscaling
config come from `RayServeConfig`.

Routing: a job of a named stream carries the stream as Ray Serve's multiplexed model id, so a
stream's keyframes, track jobs and warm-started fits keep reaching the replica that holds its
state. The affinity is Ray's and soft: Ray learns a replica's streams shortly (~0.1 s) after
their first job starts there, and routes to another replica while that one is full
(`max_ongoing_requests`) or gone; a track job there answers "lost" and the client re-keyframes
(as behind a broker whose tied worker died). A job without a stream goes to the less busy of two replicas.

Failures: handler errors come back as typed error replies (`schema.run_job`). A replica that dies
while it holds a job (killed, or a native crash in the compute) makes the deployment handle raise
a `RayActorError`; the front counts a strike for the job (`hgm_core.serve.quarantine`) and sends
it again, and Ray Serve routes it to a live replica and replaces the dead one. A job that has lost
`max_attempts` replicas is quarantined ("internal"), like the broker does. A job still unanswered
at its deadline is cancelled ("timeout").

Inside the cluster a job travels as Ray objects (the request's numpy arrays through Ray's object
store, the reply's frames back the same way); nothing pickled ever crosses the client socket.
Needs the optional extra `ray` (`pip install 'hgm[ray]'`); the process that runs `RayFront`
connects to Ray itself (`ray.init`, an entry point's job: `hgm serve --ray`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket as _socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import ray
import zmq
import zmq.asyncio
from ray import serve
from ray.exceptions import RayActorError

from hgm_core.serve import curve
from hgm_core.serve.isolate import ComputeSpec
from hgm_core.serve.protocol import PROTOCOL_VERSION, ProtocolError, decode, decode_header, encode, encode_error, encode_header
from hgm_core.serve.quarantine import QUARANTINE_STRIKES, Quarantine, fingerprint
from hgm_core.serve.schema import decode_request, run_job
from hgm_core.types import STAGES, ReconstructionRequest

log = logging.getLogger("hgm.serve.ray")

MAX_STREAMS_PER_REPLICA = 1024
"""Streams a replica is routed by (Ray Serve multiplexing); the least recent one is forgotten first."""


@dataclass(frozen=True)
class RayServeConfig:
    """The deployment and the front's limits.

    Attributes:
        num_replicas: replicas when `autoscaling` is None.
        autoscaling: Ray Serve's `autoscaling_config` as given (e.g. {"min_replicas": 1,
            "max_replicas": 8, "target_ongoing_requests": 1}); replaces `num_replicas`.
        num_cpus: CPUs Ray reserves per replica.
        num_gpus: GPUs per replica; None: 1 when the cluster has a GPU, else 0.
        max_ongoing_requests: jobs Ray Serve sends one replica at once; 2 = one reconstruction
            and one track job side by side (each replica runs one of each kind at a time).
        max_queue: jobs the front holds (queued in Ray or running); more get "busy".
        max_message_bytes, max_pixels, stages: the request limits, as a worker's.
        max_attempts: replicas a job may lose before it is quarantined ("internal").
        app_name: the Ray Serve application's name (one front per application).
        health_period_s: how often the front reads the replicas' states for health replies.
    """

    num_replicas: int = 1
    autoscaling: dict[str, Any] | None = None
    num_cpus: float = 1.0
    num_gpus: float | None = None
    max_ongoing_requests: int = 2
    max_queue: int = 64
    max_message_bytes: int = 256 << 20
    max_pixels: int = 4096 * 4096
    stages: tuple[str, ...] = STAGES
    max_attempts: int = QUARANTINE_STRIKES
    app_name: str = "hgm"
    health_period_s: float = 1.0


class Replica:
    """One Ray Serve replica: a warm handler built from a `ComputeSpec` (given as a dict)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from hgm_core.runtime import configure_process

        compute = ComputeSpec(**spec)
        configure_process(compute.threads or None)  # the replica process is the compute's entry point
        self.handler = compute.build()
        # What the handler belongs to (the LivePipeline of `LivePipeline.run`), or the handler itself
        # (an object with __call__ and maybe track): its track jobs, stages and description.
        owner = getattr(self.handler, "__self__", self.handler)
        self.track = getattr(owner, "track", None)
        reconstructor = getattr(owner, "reconstructor", owner)
        self._describe = getattr(reconstructor, "describe", None)
        self._stages = tuple(getattr(reconstructor, "available_stages", STAGES))
        self._lanes = {kind: ThreadPoolExecutor(1, thread_name_prefix=f"hgm-replica-{kind}") for kind in ("reconstruct", "track")}
        self._worker = {"pid": os.getpid(), "host": _socket.gethostname(), "replica": _replica_id()}

    def describe(self) -> dict[str, Any]:
        """{"pid", "host", "replica", "track", "stages", "pipeline"} of this replica."""
        return {**self._worker, "track": self.track is not None, "stages": list(self._stages),
                "pipeline": self._describe() if self._describe else None}

    @serve.multiplexed(max_num_models_per_replica=MAX_STREAMS_PER_REPLICA)
    async def _stream(self, stream: str) -> str:
        # Nothing to load: "loading" the stream records it here, which is what routes its next jobs here.
        return stream

    async def run(self, request_id: str, request: ReconstructionRequest, kind: str) -> list:
        """One job's reply frames [header bytes, arrays...] (a "result" or an "error")."""
        if stream := serve.get_multiplexed_model_id():
            await self._stream(stream)
        return await asyncio.get_running_loop().run_in_executor(self._lanes[kind], self._job, request_id, request, kind)

    def _job(self, request_id: str, request: ReconstructionRequest, kind: str) -> list:
        handler = self.track if kind == "track" else self.handler
        if handler is None:
            return encode_error(request_id, "stage_unavailable", "this replica does not track")
        frames = run_job(handler, request_id, request, kind=kind)
        header = decode_header(frames[0])
        if header["kind"] != "result":
            return frames
        header["info"].setdefault("worker", {}).update(self._worker)
        return [encode_header(header), *frames[1:]]


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not inside a Ray Serve replica: no id to report
        return ""


def deploy(compute: ComputeSpec, config: RayServeConfig) -> serve.handle.DeploymentHandle:
    """Run the replicas of `compute` as the Ray Serve application `config.app_name` on the Ray
    instance this process is connected to; its handle once every replica is up.

    Raises:
        RuntimeError: Ray is not initialised in this process.
        ray.serve.exceptions.RayServeException (or the replica's own error): a replica failed to start.
    """
    if not ray.is_initialized():
        raise RuntimeError("connect to Ray first (ray.init)")
    gpus = config.num_gpus
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": gpus},
        "max_ongoing_requests": config.max_ongoing_requests,
    }
    if config.autoscaling is not None:
        options["autoscaling_config"] = dict(config.autoscaling)
    else:
        options["num_replicas"] = config.num_replicas
    app = serve.deployment(Replica, name="hgm_replica").options(**options).bind(asdict(compute))
    serve.start(proxy_location="Disabled")  # jobs come in through the front, never over Serve's HTTP
    return serve.run(app, name=config.app_name, route_prefix=None)


class RayFront:
    """Serves the worker protocol on one endpoint and runs the jobs on Ray Serve replicas until `stop()`.

    Args:
        compute: how each replica builds its handler.
        config: the deployment and the front's limits.
        curve_server: key pair (and allowed clients) to require CURVE on the endpoint.
    """

    def __init__(self, compute: ComputeSpec, config: RayServeConfig | None = None, *,
                 curve_server: curve.CurveServerKeys | None = None) -> None:
        self.compute = compute
        self.config = config or RayServeConfig()
        self.curve_server = curve_server
        self.endpoint: str | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._quarantine = Quarantine(self.config.max_attempts)
        self._handle: serve.handle.DeploymentHandle | None = None
        self._replica: dict[str, Any] = {}  # one replica's describe(): what every replica serves
        self._replicas: dict[str, int] = {}  # replica state -> count, refreshed every health_period_s
        self._app_status = "NOT_STARTED"
        self._inflight = 0
        self._done = 0
        self._failed = 0
        self._requeued = 0
        self._started = time.monotonic()

    def stop(self) -> None:
        """Ask `serve` to return (thread- and signal-safe); jobs in flight get "unavailable"."""
        self._stop.set()

    def start(self) -> None:
        """Deploy the replicas (see `deploy`; a replica that cannot build its handler raises here)
        unless done already."""
        if self._handle is not None:
            return
        handle = deploy(self.compute, self.config)
        try:
            self._replica = handle.describe.remote().result()
        except BaseException:
            serve.delete(self.config.app_name)
            raise
        self._handle = handle
        log.info("Ray Serve application %r up: replica %s", self.config.app_name, self._replica)

    def serve(self, bind: str) -> None:
        """`start()`, then block serving `bind` until `stop()`. The Ray Serve application is
        deleted on return."""
        self.start()
        try:
            asyncio.run(self._serve(bind))
        finally:
            serve.delete(self.config.app_name)
            self._handle = None

    def health_info(self) -> dict:
        running = self._replicas.get("RUNNING", 0)
        return {
            "ok": self._app_status == "RUNNING" and running > 0,
            "role": "broker",
            "engine": "ray",
            "protocol": PROTOCOL_VERSION,
            "stages": self._stages(),
            "track": bool(self._replica.get("track")),
            "busy": self._inflight >= running * self.config.max_ongoing_requests,
            "workers": running,
            "replica_states": dict(self._replicas),
            "application": self._app_status,
            "in_flight": self._inflight,
            "max_queue": self.config.max_queue,
            "jobs_done": self._done,
            "jobs_failed": self._failed,
            "jobs_requeued": self._requeued,
            "jobs_quarantined": len(self._quarantine),
            "max_pixels": self.config.max_pixels,
            "max_message_bytes": self.config.max_message_bytes,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "pid": os.getpid(),
            "pipeline": self._replica.get("pipeline"),
        }

    def _stages(self) -> list[str]:
        served = self._replica.get("stages", STAGES)
        return [s for s in self.config.stages if s in served]

    # -- the event loop ---------------------------------------------------------------------------

    async def _serve(self, bind: str) -> None:
        ctx = zmq.Context()
        auth = curve.start_authenticator(ctx, self.curve_server) if self.curve_server else None
        actx = zmq.asyncio.Context.shadow(ctx.underlying)
        sock = actx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.maxmsgsize = self.config.max_message_bytes
        if self.curve_server is not None:
            curve.make_server(sock, self.curve_server)
        jobs: set[asyncio.Task] = set()
        watcher = asyncio.create_task(self._watch_replicas())
        try:
            sock.bind(bind)
            self.endpoint = sock.last_endpoint.decode()
            log.info("Ray front serving on %s", self.endpoint)
            await self._refresh_replicas()
            self.ready.set()
            while not self._stop.is_set():
                if not await sock.poll(100):
                    continue
                frames = await sock.recv_multipart(copy=False)
                # [routing id, (empty delimiter of a REQ peer), header, arrays...]
                n = 2 if len(frames) > 2 and frames[1].bytes == b"" else 1
                job = await self._on_request(sock, frames[:n], frames[n:])
                if job is not None:
                    task = asyncio.create_task(job)
                    jobs.add(task)
                    task.add_done_callback(jobs.discard)
            for task in list(jobs):
                task.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            watcher.cancel()
            sock.close(linger=0)
            if auth is not None:
                auth.stop()
            ctx.term()

    async def _watch_replicas(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_period_s)
            try:
                await self._refresh_replicas()
            except Exception:  # health must go on answering from the last state
                log.warning("cannot read the replicas' states:\n%s", traceback.format_exc())

    async def _refresh_replicas(self) -> None:
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.config.app_name)
        if app is None:
            self._app_status, self._replicas = "DELETED", {}
            return
        self._app_status = str(app.status.value if hasattr(app.status, "value") else app.status)
        states: dict[str, int] = {}
        for deployment in app.deployments.values():
            for state, count in deployment.replica_states.items():
                key = str(state.value if hasattr(state, "value") else state)
                states[key] = states.get(key, 0) + count
        self._replicas = states

    async def _on_request(self, sock: zmq.asyncio.Socket, envelope: list, frames: list):
        """Reply to health and to anything refused; the job's coroutine for an accepted request."""
        rid = ""
        try:
            msg = decode(frames, max_message_bytes=self.config.max_message_bytes)
            rid = msg.id
            if msg.kind == "health":
                await sock.send_multipart(envelope + encode("result", rid, info=self.health_info()))
                return None
            if msg.kind not in ("reconstruct", "track"):
                raise ProtocolError("bad_request", f"kind {msg.kind!r} is not a request", rid)
            request = decode_request(msg, max_pixels=self.config.max_pixels, stages=tuple(self._stages()))
            if msg.kind == "track" and not self._replica.get("track"):
                raise ProtocolError("stage_unavailable", "these replicas do not track", rid)
            if self._inflight >= self.config.max_queue:
                raise ProtocolError("busy", f"queue full ({self.config.max_queue} jobs)", rid)
            digest = fingerprint(msg)
            if (reason := self._quarantine.reason(digest)) is not None:
                raise ProtocolError("internal", reason, rid)
        except ProtocolError as e:
            await sock.send_multipart(envelope + encode_error(e.request_id, e.kind, str(e)))
            return None
        except Exception as e:  # last resort: a bug in the checks costs one reply, not the front
            log.error("request %r failed:\n%s", rid, traceback.format_exc())
            await sock.send_multipart(envelope + encode_error(rid, "internal", f"{type(e).__name__}: {e}"))
            return None
        deadline_ms = msg.header.get("deadline_ms")
        expires = time.monotonic() + deadline_ms / 1000 if deadline_ms is not None else None
        self._inflight += 1
        return self._job(sock, envelope, rid, request, msg.kind, digest, expires)

    async def _job(self, sock: zmq.asyncio.Socket, envelope: list, rid: str, request: ReconstructionRequest,
                   kind: str, digest: bytes, expires: float | None) -> None:
        try:
            reply = await self._attempts(rid, request, kind, digest, expires)
        except asyncio.CancelledError:  # the front is stopping
            reply = encode_error(rid, "unavailable", "the server is shutting down")
        except Exception as e:  # last resort: one "internal" reply, keep serving
            log.error("job %s failed in the front:\n%s", rid, traceback.format_exc())
            reply = encode_error(rid, "internal", f"{type(e).__name__}: {e}")
        finally:
            self._inflight -= 1
        if decode_header(reply[0])["kind"] == "result":
            self._done += 1
        else:
            self._failed += 1
        await sock.send_multipart(envelope + reply, copy=False)

    async def _attempts(self, rid: str, request: ReconstructionRequest, kind: str, digest: bytes,
                        expires: float | None) -> list:
        """Send the job to a replica until one answers, it is quarantined, or its deadline passes."""
        received, attempts = time.monotonic(), 0
        handle = self._handle.options(multiplexed_model_id=request.stream) if request.stream else self._handle
        while True:
            attempts += 1
            response = handle.run.remote(rid, request, kind)
            task = asyncio.ensure_future(_awaited(response))
            try:
                done, _ = await asyncio.wait({task}, timeout=None if expires is None else max(0.0, expires - time.monotonic()))
            except asyncio.CancelledError:
                response.cancel()
                task.add_done_callback(_retrieved)
                raise
            if not done:
                response.cancel()
                task.add_done_callback(_retrieved)  # it ends in RequestCancelledError, which nobody awaits
                return encode_error(rid, "timeout", f"no answer within the deadline ({time.monotonic() - received:.2f} s)")
            try:
                frames = task.result()
            except RayActorError as e:  # the replica died (or became unreachable) holding the job
                reason = self._quarantine.strike(digest, "its replica")
                log.error("job %s: replica lost (%s): %s", rid, type(e).__name__, reason or "sending it again")
                if reason is not None:
                    return encode_error(rid, "internal", reason)
                self._requeued += 1
                continue
            return _with_front_timings(frames, time.monotonic() - received, attempts)


async def _awaited(response: Any) -> Any:
    return await response


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _with_front_timings(frames: list, elapsed_s: float, attempts: int) -> list:
    """The replica's reply with timings "queue" (front round trip less the handler's time: Ray's
    routing, waiting for a replica, transport; lost attempts included) and info "attempts"."""
    header = decode_header(frames[0])
    if header["kind"] != "result":
        return list(frames)
    header["timings"]["queue"] = max(0.0, elapsed_s - float(header["timings"].get("worker_total", 0.0)))
    header["info"]["attempts"] = attempts
    return [encode_header(header), *frames[1:]]
