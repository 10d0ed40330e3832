"""What every benchmark shares: median timing, the `--out` option and the JSON result file (run scripts
from anywhere)."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median_s(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(fn: Callable[[], object], repeats: int, *, warmup: int = 0, sync: Callable[[], object] | None = None) -> dict[str, float]:
    """`fn` timed `repeats` times after `warmup` untimed calls, in seconds: {"median_s", "min_s"}
    (wall) and {"cpu_s"} (median CPU time of this process, all threads). `sync` runs before and
    after each timed call (`torch.cuda.synchronize` for CUDA work)."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        sync()
        c0, t0 = _cpu_s(), time.perf_counter()
        fn()
        sync()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_s() - c0)
    return {"median_s": statistics.median(walls), "min_s": min(walls), "cpu_s": statistics.median(cpus)}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """`--out PATH`: where `write_results` puts the JSON (pass `args.out` to it)."""
    parser.add_argument("--out", type=Path, default=None, help="result JSON file (default: bench/results/<name>.json)")


def write_results(name: str, report: dict, out: Path | None = None) -> Path:
    """Print `report` as JSON and write it to `out` (default: bench/results/<name>.json)."""
    text = json.dumps(report, indent=2)
    print(text)
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path
