"""Soak: many jobs through one warm worker process, its resident memory sampled (issue #17).

    .venv/bin/python bench/soak.py [--jobs 1000] [--handler splat|pipeline] [--size 256]

`splat` serves `tests.handlers.PixelSplatHandler` (one Gaussian per pixel: a `size`² image in, a
`size`² x 14 float32 avatar out), so the figures are the serving layer's own (sockets, decode,
queue, encode); `pipeline` runs `hgm serve` with the real reconstructor on the bundled sample
photo at stage `prior`, one camera stream (warm-started fits). RSS (VmRSS of the worker process) is
read after every `--sample-every` jobs. Reported: RSS at job 50 and at the end, the growth between
them (goal < 2 %), the least-squares slope in KB per job over the same range, and the median job
round trip. JSON to stdout and bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import add_out_argument, write_results
from hgm_core.serve.client import WorkerClient, WorkerTimeout

REPO = Path(__file__).resolve().parents[1]
WARMUP_JOBS = 50


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def worker_command(handler: str, endpoint: str, threads: int) -> list[str]:
    if handler == "splat":
        return [sys.executable, "-m", "tests.handlers", "--bind", endpoint]
    return [sys.executable, "-m", "hgm_core", "serve", "--bind", endpoint, "--threads", str(threads), "--log-level", "WARNING"]


def job_image(handler: str, size: int) -> np.ndarray:
    if handler == "splat":
        return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    from PIL import Image

    from hgm_core.paths import ASSETS_DIR

    return np.asarray(Image.open(ASSETS_DIR / "sample" / "person.jpg").convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--handler", choices=["splat", "pipeline"], default="splat")
    parser.add_argument("--size", type=int, default=256, help="(splat) image side in pixels (default 256)")
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="(pipeline) compute threads of the worker")
    add_out_argument(parser)
    args = parser.parse_args()
    if args.jobs <= WARMUP_JOBS:
        parser.error(f"--jobs must exceed the {WARMUP_JOBS} warm-up jobs")
    endpoint = f"ipc://{tempfile.mkdtemp(prefix='hgm-soak-')}/worker.sock"
    proc = subprocess.Popen(worker_command(args.handler, endpoint, args.threads), cwd=REPO)
    image = job_image(args.handler, args.size)
    samples: list[tuple[int, int]] = []  # (jobs done, RSS kB)
    times: list[float] = []
    try:
        with WorkerClient(endpoint, timeout_s=600, retries=0) as client:
            deadline = time.monotonic() + 600
            while True:
                try:
                    if client.health(timeout_s=2.0)["ok"]:
                        break
                except WorkerTimeout:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the worker did not start") from None
            samples.append((0, rss_kb(proc.pid)))
            for job in range(1, args.jobs + 1):
                t0 = time.perf_counter()
                client.reconstruct(image, stages="prior", stream="soak")
                times.append(time.perf_counter() - t0)
                if job % args.sample_every == 0 or job == WARMUP_JOBS:
                    samples.append((job, rss_kb(proc.pid)))
                    print(f"job {job}: RSS {samples[-1][1] / 1024:.1f} MB, last {times[-1]:.2f} s", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    done = dict(samples)
    after = [(j, r) for j, r in samples if j >= WARMUP_JOBS]
    slope_kb = float(np.polyfit([j for j, _ in after], [r for _, r in after], 1)[0])
    start, end = done[WARMUP_JOBS], samples[-1][1]
    result = {
        "bench": "soak",
        "handler": args.handler,
        "what": f"{args.jobs} sequential jobs through one worker process, VmRSS every {args.sample_every} jobs",
        "image": list(image.shape),
        "jobs": args.jobs,
        "rss_mb_start": round(samples[0][1] / 1024, 1),
        f"rss_mb_job_{WARMUP_JOBS}": round(start / 1024, 1),
        "rss_mb_end": round(end / 1024, 1),
        f"rss_growth_pct_{WARMUP_JOBS}_to_end": round(100 * (end - start) / start, 2),
        "rss_slope_kb_per_job": round(slope_kb, 2),
        "job_median_ms": round(1e3 * statistics.median(times), 2),
        "rss_mb_samples": [[j, round(r / 1024, 1)] for j, r in samples],
    }
    write_results("soak" if args.handler == "pipeline" else f"soak_{args.handler}", result, args.out)


if __name__ == "__main__":
    main()
