"""Benchmark the HGM network: parameters, peak memory and CPU forward time per config and view count.

Each (preset, views) runs in its own subprocess so peak RSS (`resource.getrusage` maxrss) belongs
to that config alone. Forward time is the median over `--repeats` timed runs after one warm-up
(big: one timed run, no warm-up, unless `--repeats` says otherwise). Writes bench/results/model.json.

    .venv/bin/python bench/model.py                     # tiny, small, big at 1 and 2 views
    .venv/bin/python bench/model.py --presets tiny --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from _results import add_out_argument, write_results


def measure(preset: str, views: int, repeats: int, warmup: int, threads: int) -> dict:
    import torch

    from hgm_core.runtime import set_compute_threads

    set_compute_threads(threads)
    from hgm_core.model import HGM, config_for, default_views

    cfg = config_for(preset, num_views=views)
    torch.manual_seed(0)
    model = HGM(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, views, 3, cfg.input_size, cfg.input_size, generator=g)
    # body-sized ellipsoid surface (~1.3 canonical units tall) with the body model's vertex count
    verts = torch.nn.functional.normalize(torch.randn(1, cfg.num_vertices, 3, generator=g), dim=-1) * torch.tensor([0.25, 0.65, 0.12])
    K, c2w = default_views(cfg)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(images, verts, K[None], c2w[None])
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return {
        "preset": preset,
        "views": views,
        "input_size": cfg.input_size,
        "gaussians": cfg.num_gaussians,
        "body_vertices": cfg.num_vertices,
        "params": params,
        "forward_s_median": statistics.median(times),
        "forward_s_all": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": threads,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "big"])
    ap.add_argument("--views", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=None, help="timed runs (default: 7 tiny, 5 small, 1 big)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    add_out_argument(ap)
    ap.add_argument("--child", nargs=2, metavar=("PRESET", "VIEWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    default_repeats = {"tiny": 7, "small": 5, "big": 1}
    if args.child:
        preset, views = args.child[0], int(args.child[1])
        repeats = args.repeats or default_repeats[preset]
        print(json.dumps(measure(preset, views, repeats, 0 if preset == "big" else 1, args.threads)))
        return 0

    rows = []
    for preset in args.presets:
        for views in args.views:
            cmd = [sys.executable, __file__, "--child", preset, str(views), "--threads", str(args.threads)]
            if args.repeats:
                cmd += ["--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"preset": preset, "views": views, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            if "error" in r:
                print(f"{preset:6s} V={views} ERROR {r['error']}", flush=True)
            else:
                print(f"{preset:6s} V={views} params {r['params'] / 1e6:8.2f} M  forward {r['forward_s_median']:8.3f} s  "
                      f"peak RSS {r['peak_rss_mb']:8.0f} MB  ({r['gaussians']} Gaussians, {r['threads']} threads)", flush=True)
    tiny1 = next((r for r in rows if r.get("preset") == "tiny" and r.get("views") == 1 and "error" not in r), None)
    summary = {
        "benchmark": "hgm_core.model forward (inference_mode, batch 1, random untrained weights)",
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "goal_tiny_1view_s": 0.3,
        "tiny_1view_meets_goal": None if tiny1 is None else tiny1["forward_s_median"] <= 0.3,
        "rows": rows,
    }
    if tiny1:
        for r in rows:
            if "error" not in r:
                r["ratio_vs_tiny_1view"] = r["forward_s_median"] / tiny1["forward_s_median"]
    write_results("model", summary, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
