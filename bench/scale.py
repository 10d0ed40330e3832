"""Scaling out (issue #17): one job through a direct worker, a broker and Ray Serve, and the extra
latency of a job whose worker dies.

    .venv/bin/python bench/scale.py [--size 256] [--jobs 30] [--kills 3] [--sleep 1.0] [--heartbeat 1.0] [--no-ray]

Every server runs `tests.handlers.PixelSplatHandler` (a `size`² image in, one raw Gaussian per
pixel out: 65,536 x 14 float32 = 3.7 MB at 256²), so the figures are the serving layer's own.

Latency: `--jobs` sequential jobs (after 3 warm-up jobs) from one `WorkerClient` over ipc:// to
- direct: one worker process (`python -m tests.handlers --bind`);
- broker: a `Broker` (a thread of this process) in front of one worker process;
- ray: a `RayFront` (a thread of this process) in front of one Ray Serve replica, on a local Ray
  instance started here (`ray.init(num_cpus=2)`); its start-up time (Ray, then the application)
  and the resident memory of every Ray process are reported too.
Wall median and minimum, and this process's CPU time per job (client, plus the broker or the Ray
front and Ray's driver threads where those run here); ratios against direct.

Re-queue: two workers (broker) or two replicas (Ray) run `PidFileHandler` jobs that sleep
`--sleep` s; each of `--kills` jobs (a different image each, so none is quarantined) has the
process running it SIGKILLed half-way through its sleep. Reported per engine, medians over kills:
`extra_s` = that job's latency minus the median latency of the same job without a death (3 jobs),
and `detect_redispatch_s` = time from the kill to the reply minus the rerun's own handler time
(`worker_total`): how long the engine took to notice the death and start the job elsewhere. The
broker notices by missed heartbeats (`--heartbeat` s x 3), Ray by the replica's actor dying. A
replacement worker is started (broker) or awaited (Ray Serve restarts the replica) before the next
kill. JSON to stdout and bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from _results import add_out_argument, measure, write_results
from hgm_core.serve.broker import Broker, BrokerConfig
from hgm_core.serve.client import WorkerClient, WorkerTimeout

REPO = Path(__file__).resolve().parents[1]
WORKER = [sys.executable, "-m", "tests.handlers"]
BASELINE_JOBS = 3
LIVENESS = 3


def wait_health(client: WorkerClient, predicate, timeout_s: float = 120.0) -> dict:
    deadline, health = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            health = client.health(timeout_s=2.0)
        except WorkerTimeout:
            continue
        if predicate(health):
            return health
        time.sleep(0.05)
    raise RuntimeError(f"the server never reached the expected state: {health}")


def worker(*flags: str) -> subprocess.Popen:
    return subprocess.Popen(WORKER + list(flags), cwd=REPO, stdout=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


@contextmanager
def serving(target, *args):
    """`target(*args)` (a blocking `serve`) in a daemon thread."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    yield thread


def latency(endpoint: str, image: np.ndarray, jobs: int) -> dict[str, float]:
    with WorkerClient(endpoint, timeout_s=120, retries=0) as client:
        wait_health(client, lambda h: h["ok"])
        return measure(lambda: client.reconstruct(image), jobs, warmup=3)


def requeue(endpoint: str, pid_file: Path, sleep_s: float, kills: int, size: int, replace) -> dict:
    """Kill the process running each of `kills` jobs half-way; `replace(client, victim)` restores
    the pool (two live, idle workers) before the first job and after each kill."""
    with WorkerClient(endpoint, timeout_s=300, retries=0) as client:
        replace(client, None)
        baseline = statistics.median(_timed(client, _image(size, 1000 + i))[0] for i in range(BASELINE_JOBS))
        extra, redispatch = [], []
        for k in range(kills):
            pid_file.unlink(missing_ok=True)
            box: dict = {}
            t_send = time.monotonic()
            job = threading.Thread(target=lambda: box.update(zip(("total", "result"), _timed(client, _image(size, k)))))
            job.start()
            while not pid_file.exists():
                time.sleep(0.01)
            time.sleep(sleep_s / 2)
            victim = int(pid_file.read_text())
            os.kill(victim, signal.SIGKILL)
            t_kill = time.monotonic()
            job.join(300)
            result = box["result"]
            t_reply = t_send + box["total"]
            if result.info["worker"]["pid"] == victim:
                raise RuntimeError("the killed process answered")
            extra.append(box["total"] - baseline)
            redispatch.append(t_reply - t_kill - result.timings["worker_total"])
            replace(client, victim)
        health = client.health()
    return {
        "job_without_death_s": round(baseline, 3),
        "extra_s": round(statistics.median(extra), 3),
        "detect_redispatch_s": round(statistics.median(redispatch), 3),
        "extra_s_each": [round(x, 3) for x in extra],
        "detect_redispatch_s_each": [round(x, 3) for x in redispatch],
        "jobs_requeued": health.get("jobs_requeued"),
        "jobs_quarantined": health.get("jobs_quarantined"),
    }


def _timed(client: WorkerClient, image: np.ndarray):
    t0 = time.monotonic()
    result = client.reconstruct(image)
    return time.monotonic() - t0, result


def _image(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def tree_rss_mb(root: psutil.Process) -> dict[str, float]:
    """Resident memory of `root`'s descendants (Ray's processes started by ray.init), by name."""
    sizes: dict[str, float] = {}
    for p in root.children(recursive=True):
        try:
            name = " ".join(p.cmdline()[:1]).rsplit("/", 1)[-1] if not p.name().startswith("ray::") else p.name()
            if name.startswith("python"):
                name = next((a.rsplit("/", 1)[-1] for a in p.cmdline()[1:] if a.endswith(".py")), name)
            sizes[name] = round(sizes.get(name, 0.0) + p.memory_info().rss / 2**20, 1)
        except psutil.Error:
            continue
    return sizes


def replica_pids(app: str) -> list[int]:
    """Live processes of the Ray Serve application `app`'s replicas (descendants of this process)."""
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if f"ServeReplica:{app}:" in p.name() and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids


def bench_direct(tmp: Path, image: np.ndarray, jobs: int) -> dict:
    endpoint = f"ipc://{tmp}/direct.sock"
    proc = worker("--bind", endpoint)
    try:
        out = latency(endpoint, image, jobs)
        out["worker_rss_mb"] = round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)
        return out
    finally:
        stop([proc])


def bench_broker(tmp: Path, image: np.ndarray, args: argparse.Namespace) -> tuple[dict, dict]:
    broker = Broker(BrokerConfig(heartbeat_interval_s=args.heartbeat, heartbeat_liveness=LIVENESS))
    front, back = f"ipc://{tmp}/front.sock", f"ipc://{tmp}/back.sock"
    procs: list[subprocess.Popen] = []
    with serving(broker.serve, front, back) as thread:
        try:
            broker.ready.wait(10)
            procs.append(worker("--connect", back, "--heartbeat", str(args.heartbeat)))
            lat = latency(front, image, args.jobs)
            stop(procs)
            pid_file = tmp / "broker.pid"
            flags = ("--connect", back, "--heartbeat", str(args.heartbeat), "--pid-file", str(pid_file), "--sleep", str(args.sleep))

            def replace(client: WorkerClient, victim: int | None) -> None:  # two live workers, both idle
                while sum(p.poll() is None for p in procs) < 2:
                    procs.append(worker(*flags))
                wait_health(client, lambda h: h["workers"] == 2 and h["idle"] == 2)

            req = requeue(front, pid_file, args.sleep, args.kills, args.size, replace)
        finally:
            broker.stop()
            thread.join(10)
            stop(procs)
    return lat, req


def bench_ray(tmp: Path, image: np.ndarray, args: argparse.Namespace) -> tuple[dict, dict, dict]:
    import ray

    from hgm_core.serve.isolate import ComputeSpec
    from hgm_core.serve.ray_serve import RayFront, RayServeConfig

    logging.getLogger("ray").setLevel(logging.WARNING)
    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})  # replicas import tests.handlers
    startup = {"ray_init_s": round(time.monotonic() - t0, 2)}
    try:
        def run_front(compute: ComputeSpec, config: RayServeConfig, body):
            front = RayFront(compute, config)
            t1 = time.monotonic()
            with serving(front.serve, f"ipc://{tmp}/{config.app_name}.sock") as thread:
                try:
                    if not front.ready.wait(300):
                        raise RuntimeError("the Ray front did not start")
                    startup.setdefault("application_start_s", round(time.monotonic() - t1, 2))
                    return body(front)
                finally:
                    front.stop()
                    thread.join(60)

        def lat_body(front: RayFront) -> dict:
            out = latency(front.endpoint, image, args.jobs)
            startup["rss_mb"] = tree_rss_mb(psutil.Process())
            startup["rss_mb_total"] = round(sum(startup["rss_mb"].values()), 1)
            return out

        lat = run_front(ComputeSpec("tests.handlers:PixelSplatHandler"), RayServeConfig(num_replicas=1, num_cpus=0.5, app_name="bench_latency"), lat_body)
        pid_file = tmp / "ray.pid"

        compute = ComputeSpec("tests.handlers:PidFileHandler", {"pid_file": str(pid_file), "sleep_s": args.sleep})
        config = RayServeConfig(num_replicas=2, num_cpus=0.5, app_name="bench_requeue")

        def replace(client: WorkerClient, victim: int | None) -> None:
            # Ray Serve replaces a dead replica by itself. Until its controller has noticed the
            # death, status still says 2 running, so first wait for a new replica process.
            deadline = time.monotonic() + 300
            while len(pids := replica_pids(config.app_name)) < 2 or victim in pids:
                if time.monotonic() > deadline:
                    raise RuntimeError("Ray Serve did not replace the killed replica")
                time.sleep(0.1)
            wait_health(client, lambda h: h["ok"] and h["replica_states"] == {"RUNNING": 2} and h["in_flight"] == 0, 300)

        req = run_front(compute, config, lambda front: requeue(front.endpoint, pid_file, args.sleep, args.kills, args.size, replace))
    finally:
        ray.shutdown()
    return lat, req, startup


def _ms(stats: dict[str, float]) -> dict[str, float]:
    return {"median_ms": round(1e3 * stats["median_s"], 2), "min_ms": round(1e3 * stats["min_s"], 2),
            "cpu_ms": round(1e3 * stats["cpu_s"], 2), **{k: v for k, v in stats.items() if k.endswith("_mb")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--jobs", type=int, default=30, help="timed jobs per engine (default 30)")
    parser.add_argument("--kills", type=int, default=3, help="jobs whose worker is killed, per engine (default 3)")
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each re-queue job sleeps (default 1)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="broker<->worker heartbeat interval, as `hgm serve --heartbeat-s` (default 1)")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Serve")
    add_out_argument(parser)
    args = parser.parse_args()
    image = _image(args.size, 0)
    tmp = Path(tempfile.mkdtemp(prefix="hgm-scale-"))
    direct = bench_direct(tmp, image, args.jobs)
    broker_lat, broker_req = bench_broker(tmp, image, args)
    latency_ms = {"direct": _ms(direct), "broker": _ms(broker_lat)}
    requeue_s = {"broker": {**broker_req, "heartbeat_s": args.heartbeat, "liveness": LIVENESS}}
    result = {"bench": "scale"}
    ray_missing = None
    if not args.no_ray:
        try:
            import ray.serve  # noqa: F401
        except ImportError as e:
            ray_missing = f"not measured: {e} (install the extra `ray`)"
    if args.no_ray or ray_missing:
        result["ray"] = ray_missing or "skipped (--no-ray)"
    else:
        ray_lat, ray_req, startup = bench_ray(tmp, image, args)
        latency_ms["ray"] = _ms(ray_lat)
        requeue_s["ray"] = ray_req
        result["ray_startup"] = startup
    for name in list(latency_ms):
        latency_ms[name]["ratio_vs_direct"] = round(latency_ms[name]["median_ms"] / latency_ms["direct"]["median_ms"], 2)
    result.update({
        "what": f"{args.size}x{args.size} RGB in, {args.size ** 2} raw Gaussians ({args.size ** 2 * 56 / 1e6:.1f} MB) out, "
                "ipc:// loopback, one client; medians",
        "jobs": args.jobs,
        "kills": args.kills,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "latency_ms": latency_ms,
        "requeue_s": requeue_s,
    })
    write_results("scale", result, args.out)


if __name__ == "__main__":
    main()
