"""Benchmark one `hgm train` step: steps per second and the split data / forward / render / loss / backward.

Uses the real training path (`hgm_core.train.trainer`): subjects from a render layout through the
training-resolution cache, the `TrainConfig` defaults (4 supervision views, LPIPS on one), Adam.
Each `--variant` overrides `TrainConfig` fields (`key=value,key=value`; the first variant is the
baseline, default: the defaults) and is measured in the same run, every variant from the same
initial weights and data stream; reports medians over `--steps` timed steps after `--warmup`
steps, per thread count, and each variant's time relative to the baseline. Writes
bench/results/train.json (or `--out`).

    .venv/bin/python bench/train.py --data /work/data/train_s1000 --cache /work/data/cache \\
        --variant "" --variant "supervision_crop=64,aim_input=true"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import add_out_argument, write_results  # noqa: E402


def parse_variant(text: str) -> dict:
    """`"supervision_crop=64,aim_input=true"` -> TrainConfig overrides (values parsed as JSON, else strings)."""
    from hgm_core.train.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in known:
            raise SystemExit(f"unknown TrainConfig field {key!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def measure(data: Path, cache: Path, threads: int, steps: int, warmup: int, overrides: dict) -> dict:
    import numpy as np
    import torch

    from hgm_core.model import HGM, config_for
    from hgm_core.runtime import set_compute_threads
    from hgm_core.train.config import TrainConfig
    from hgm_core.train.lpips import LPIPS
    from hgm_core.train.trainer import SubjectPool, build_optimizer, train_step, training_sample

    set_compute_threads(threads)
    config = replace(TrainConfig(train_data=(str(data),), val_data=str(data), cache_dir=str(cache)), **overrides)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = HGM(config_for(config.preset, num_views=config.num_views)).train()
    optimizer = build_optimizer(model, config)
    lpips_model = LPIPS.load()
    pool = SubjectPool(config.train_data, config.image_size, cache)
    rows = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        sample = training_sample(pool, config, rng)
        data_s = time.perf_counter() - t
        result = train_step(model, optimizer, sample, config, lpips_model, rng)
        result.times.data = data_s
        if i >= warmup:
            rows.append(asdict(result.times) | {"total": result.times.total})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"threads": threads, "steps": steps, "overrides": overrides, "median_s": med, "steps_per_s": 1.0 / med["total"],
            "gaussians": config_for(config.preset).num_vertices + config_for(config.preset).num_gaussians,
            "config": {k: v for k, v in asdict(config).items() if k in ("preset", "num_views", "image_size", "supervision_views",
                                                                         "lpips_views", "lpips_crop", "supervision_crop", "aim_input")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="a render layout (hgm datagen output)")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: a temporary one, cold)")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variant", action="append", default=None,
                   help="TrainConfig overrides 'key=value,...' (repeatable; the first is the baseline; default: one, the defaults)")
    add_out_argument(p)
    args = p.parse_args()
    from hgm_core.runtime import configure_process

    configure_process()  # numba's threading layer and caches, as the `hgm` entry point sets them
    cache = args.cache or Path(tempfile.mkdtemp(prefix="hgm_bench_cache_"))
    variants = [parse_variant(v) for v in (args.variant or [""])]
    runs = [measure(args.data, cache, t, args.steps, args.warmup, v) for t in args.threads for v in variants]
    for r in runs:
        base = next(b for b in runs if b["threads"] == r["threads"])
        r["time_vs_baseline"] = r["median_s"]["total"] / base["median_s"]["total"]
    write_results("train", {"benchmark": "hgm train step (tiny unless configured)", "data": str(args.data), "runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
