"""The node's connection to its worker: a `WorkerClient`, health checks, and — when no endpoint is
configured — a local `hgm serve` process on `ipc://` that is restarted with backoff when it dies.

No ROS and no torch here: the node owns one `WorkerLink` and reads `status()` for diagnostics.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from hgm_core.serve.client import JobResult, WorkerCancelled, WorkerClient, WorkerError, WorkerTimeout
from hgm_core.serve.children import die_with_parent
from hgm_core.types import TrackedPose

log = logging.getLogger("hgm_node.worker")

HEALTH_TIMEOUT_S = 2.0
"""A worker answers health from its socket thread even while a job runs, so silence this long means
it is gone (or the host is badly overloaded)."""


@dataclass(frozen=True)
class WorkerStatus:
    """A snapshot for diagnostics.

    Attributes:
        state: "starting" (no answer yet), "ok", or "error".
        message: one line saying why.
        endpoint: where the client connects.
        local_pid: pid of the supervised local worker process (None when remote or not running).
        restarts: local worker restarts so far.
        health: the worker's last health reply (see `hgm_core.serve.protocol`).
    """

    state: str
    message: str
    endpoint: str
    local_pid: int | None = None
    restarts: int = 0
    health: dict = field(default_factory=dict)


class WorkerLink:
    """Client + supervision of one worker endpoint.

    Args:
        endpoint: a worker or broker endpoint; "" starts a local worker on `ipc://` in a private
            temporary directory and supervises it.
        local_command: argv of the local worker without `--bind` (default `python -m hgm_core serve`).
        timeout_s, retries: per-job deadline and re-sends (see `WorkerClient`).
        health_period_s: how often the worker is asked for its health.
        restart_backoff_max_s: cap of the doubling delay between local worker restarts.
        client_kwargs: extra `WorkerClient` arguments (CURVE keys).
    """

    def __init__(
        self,
        endpoint: str = "",
        *,
        local_command: list[str] | None = None,
        timeout_s: float = 120.0,
        retries: int = 0,
        health_period_s: float = 2.0,
        restart_backoff_max_s: float = 30.0,
        client_kwargs: dict | None = None,
    ) -> None:
        self._local = not endpoint
        self._tmpdir = tempfile.mkdtemp(prefix="hgm-worker-") if self._local else None
        self.endpoint = f"ipc://{self._tmpdir}/worker.sock" if self._local else endpoint
        self._command = (local_command or [sys.executable, "-m", "hgm_core", "serve"]) + ["--bind", self.endpoint]
        self._timeout_s, self._retries = timeout_s, retries
        self._health_period_s = health_period_s
        self._backoff_max_s = restart_backoff_max_s
        self._client = WorkerClient(self.endpoint, timeout_s=timeout_s, retries=retries, **(client_kwargs or {}))
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._process: subprocess.Popen | None = None
        # Set (and replaced by a fresh one) whenever the worker leaves the "ok" state or the link
        # closes: the jobs in flight hold it as their cancel event and give up.
        self._lost = threading.Event()
        self._status = WorkerStatus("starting", "waiting for the worker's first health reply", self.endpoint)
        self._thread = threading.Thread(target=self._supervise, name="hgm-worker-link", daemon=True)

    @staticmethod
    def parse_command(command: str) -> list[str] | None:
        """The `local_worker_command` parameter -> argv (None for the default)."""
        return shlex.split(command) or None

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop supervising, end the local worker (SIGTERM, then SIGKILL) and remove its temp dir."""
        self._stop.set()
        with self._lock:
            self._lost.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if self._process is not None:
            _terminate(self._process)
        self._client.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def status(self) -> WorkerStatus:
        with self._lock:
            return self._status

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the last health check succeeded (True) or `timeout_s` passed (False)."""
        return self._ready.wait(timeout_s)

    def reconstruct(self, image: np.ndarray, *, K: np.ndarray | None, mask: np.ndarray | None, stages: str,
                    mesh: bool = False, stream: str = "", bind: bool = False, depth: np.ndarray | None = None) -> JobResult:
        """Run one job (blocking, on the caller's thread; call it off the executor). Raises
        `WorkerError`/`WorkerTimeout`.

        ZeroMQ hides a dead peer, so a job on a worker that dies would only end at its deadline;
        instead the call is cancelled (kind "unavailable") as soon as supervision sees the worker
        leave the "ok" state, or the link closes.
        """
        return self._job(self._client.reconstruct, image, K=K, mask=mask, depth=depth, stages=stages, mesh=mesh,
                         stream=stream, bind=bind)

    def track(self, image: np.ndarray, *, K: np.ndarray | None, mask: np.ndarray | None, stream: str,
              stamp: float | None = None) -> TrackedPose:
        """One track job (live mode) of a frame captured at `stamp` seconds, supervised like `reconstruct`."""
        return self._job(self._client.track, image, K=K, mask=mask, stream=stream, stamp=stamp)

    def _job(self, call, image: np.ndarray, **kwargs):
        with self._lock:
            lost = self._lost
        try:
            return call(image, cancel=lost, **kwargs)
        except WorkerCancelled:
            if self._stop.is_set():
                raise WorkerError("unavailable", "the worker link is closing") from None
            raise WorkerError("unavailable", f"worker lost during the job: {self.status().message}") from None
        except WorkerTimeout as e:
            # A worker that misses a job's deadline is not trusted until it answers a health check again.
            self._set("error", f"job timed out: {e}")
            raise
        except WorkerError as e:
            if e.kind in ("internal", "unavailable"):
                self._set("error", f"job failed on the worker: {e}")
            raise

    # -- supervision thread -----------------------------------------------------------------------

    def _supervise(self) -> None:
        # The local worker is spawned from this thread because PDEATHSIG (the worker dies with the
        # node, even on SIGKILL) fires when the spawning *thread* ends; this one lives as long as the link.
        if self._local:
            self._spawn()
        backoff, restart_at = 0.5, None
        while not self._stop.is_set():
            if self._local:
                code = self._process.poll() if self._process is not None else None
                if code is not None and restart_at is None:
                    self._set("error", f"local worker pid {self._process.pid} exited with code {code}; restarting in {backoff:.1f} s")
                    restart_at = time.monotonic() + backoff
                    backoff = min(2 * backoff, self._backoff_max_s)
                if restart_at is not None and time.monotonic() >= restart_at:
                    restart_at = None
                    self._spawn(restart=True)
            if restart_at is None:
                healthy = self._check_health()
                if healthy and self.status().health.get("uptime_s", 0) > 10 * self._health_period_s:
                    backoff = 0.5  # a worker that stayed up resets the restart backoff
            self._stop.wait(self._health_period_s)

    def _check_health(self) -> bool:
        try:
            health = self._client.health(timeout_s=HEALTH_TIMEOUT_S)
        except WorkerError as e:
            # A local worker still importing and warming its model is "starting", not broken.
            if self._local and self.status().state == "starting":
                self._set("starting", "no answer yet from the local worker (importing and warming the model)")
            else:
                self._set("error", f"no health reply from {self.endpoint}: {e}")
            return False
        ok = bool(health.get("ok"))
        self._set("ok" if ok else "error", "worker healthy" if ok else f"worker reports not ok: {health}", health=health)
        return ok

    def _spawn(self, restart: bool = False) -> None:
        log.info("starting local worker: %s", shlex.join(self._command))
        process = subprocess.Popen(self._command, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL)
        with self._lock:
            self._process = process
            restarts = self._status.restarts + int(restart)
            self._status = WorkerStatus("starting", f"local worker pid {process.pid} starting", self.endpoint,
                                        local_pid=process.pid, restarts=restarts)
            self._ready.clear()

    def _set(self, state: str, message: str, *, health: dict | None = None) -> None:
        with self._lock:
            old = self._status
            pid = self._process.pid if self._process is not None and self._process.poll() is None else None
            self._status = WorkerStatus(state, message, self.endpoint, local_pid=pid, restarts=old.restarts,
                                        health=old.health if health is None else health)
            if old.state == "ok" and state != "ok":
                self._lost.set()
                self._lost = threading.Event()
        if state == "ok":
            self._ready.set()
        else:
            self._ready.clear()
        if state != old.state:
            (log.info if state == "ok" else log.warning)("worker %s: %s", state, message)


def _terminate(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
