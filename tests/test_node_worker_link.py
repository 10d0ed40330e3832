"""The node's worker supervision (`hgm_node.worker_link`) with real worker processes, no ROS.

The workers run `PixelSplatHandler` (tests/handlers.py, a real, small handler) behind the real
`hgm_core.serve.worker.Worker`, in their own process (`tests.handlers.WORKER_COMMAND`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hgm_core.serve.client import WorkerError
from hgm_node.worker_link import WorkerLink
from tests.handlers import WORKER_COMMAND, process_alive

REPO = Path(__file__).resolve().parents[1]


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the worker command imports `tests.*`


def test_local_worker_killed_mid_job_is_restarted(in_repo):
    link = WorkerLink("", local_command=WORKER_COMMAND + ["--sleep", "1.5"], timeout_s=60.0, health_period_s=0.2)
    link.start()
    try:
        assert link.endpoint.startswith("ipc://") and link.wait_ready(60.0), link.status()
        first = link.status()
        assert first.state == "ok" and first.health["pid"] == first.local_pid and first.restarts == 0

        image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        errors: list[Exception] = []
        job = threading.Thread(target=lambda: _catch(errors, link.reconstruct, image, K=None, mask=None, stages="prior"))
        threads = threading.active_count()
        started = time.monotonic()
        job.start()
        _wait(lambda: link.status().health.get("busy") is True, 10.0, "the worker to report the job as running")
        assert threading.active_count() == threads + 1  # the call runs on the job's thread: no helper thread
        os.kill(first.local_pid, signal.SIGKILL)
        job.join(20.0)
        # The job gives up when supervision sees the death, far before its 60 s deadline.
        assert not job.is_alive() and time.monotonic() - started < 30.0
        assert isinstance(errors[0], WorkerError) and errors[0].kind == "unavailable"

        _wait(lambda: link.status().state == "ok", 60.0, "the restarted worker")
        second = link.status()
        assert second.restarts == 1 and second.local_pid not in (None, first.local_pid)
        result = link.reconstruct(image, K=None, mask=None, stages="prior")
        assert result.gaussians.shape == (48, 14) and result.info["worker"]["pid"] == second.local_pid
    finally:
        link.close()
    assert not process_alive(second.local_pid)
    assert not Path(link.endpoint.removeprefix("ipc://")).parent.exists()


def _catch(errors: list, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as e:  # collected for the asserting thread
        errors.append(e)


def test_local_worker_dies_with_a_killed_node(in_repo):
    """PDEATHSIG: a SIGKILLed node (no cleanup runs) still takes its local worker down."""
    code = (
        "import sys, time; from hgm_node.worker_link import WorkerLink;"
        f"link = WorkerLink('', local_command={WORKER_COMMAND!r}, health_period_s=0.2); link.start();"
        "assert link.wait_ready(60); print(link.status().local_pid, flush=True); time.sleep(600)"
    )
    node = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(node.stdout.readline())
        assert process_alive(pid)
        node.kill()
        _wait(lambda: not process_alive(pid), 10.0, f"worker {pid} to exit after its parent was killed")
    finally:
        node.kill()
        node.wait()


def test_unreachable_remote_worker_is_an_error():
    link = WorkerLink("tcp://127.0.0.1:9", timeout_s=1.0, health_period_s=0.2)
    link.start()
    try:
        _wait(lambda: link.status().state == "error", 10.0, "the error state")
        assert "no health reply from tcp://127.0.0.1:9" in link.status().message
        assert not link.wait_ready(0.1)
    finally:
        link.close()

