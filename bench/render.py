"""Rasterizer speed: the tiled `numba` backend on a 65,536-Gaussian person, the tiled pure-torch
backend and the dense reference.

Prints JSON and writes bench/results/render.json. Figures are medians over several runs after a
warm-up; each run renders one camera of the 8-view turntable (cycling through them). The dense
reference cannot render the full scene in reasonable time, so all backends are also timed on one
small scene (`small`), and `ratio` compares them there (same scene, same image, same machine, same
run); `bench/render_torch.py` times the training step's render on every backend and device. The
CPU is shared with other processes; `load_average` records how busy it was. `--sections` runs a subset.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hgm_core.runtime import configure_process, set_compute_threads  # noqa: E402

configure_process()  # this script is an entry point: caches and numba's threading layer first

import numba  # noqa: E402
import torch  # noqa: E402

from hgm_core.render import _tile_kernels as K  # noqa: E402
from hgm_core.render import rasterize  # noqa: E402
from hgm_core.render.scenes import person_scene, turntable_cameras  # noqa: E402
from _results import add_out_argument, write_results

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def median_ms(fn, cameras, runs: int, warmup: int = 2) -> float:
    """Median wall time of `fn(camera)` in milliseconds, cycling through the cameras."""
    for i in range(warmup):
        fn(cameras[i % len(cameras)])
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(cameras[i % len(cameras)])
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def forward(g, backend):
    def run(cam):
        with torch.no_grad():
            rasterize(g, cam, background=(1.0, 1.0, 1.0), backend=backend)
    return run


def forward_backward(g, backend):
    def run(cam):
        params = {k: getattr(g, k).detach().requires_grad_() for k in PARAMS}
        out = rasterize(replace(g, **params), cam, background=(1.0, 1.0, 1.0), backend=backend)
        (out.rgb.sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
    return run


def time_backend(g, cams, backend, runs):
    fwd = median_ms(forward(g, backend), cams, runs)
    fwd_bwd = median_ms(forward_backward(g, backend), cams, max(3, runs // 2))
    return {"forward_ms": round(fwd, 2), "forward_fps": round(1000 / fwd, 1),
            "forward_backward_ms": round(fwd_bwd, 2), "forward_backward_it_s": round(1000 / fwd_bwd, 2)}


def forward_stages(g, cams, runs) -> dict:
    """Median ms of the no-gradient forward's kernels: fused projection, sort + binning, compositing."""
    arrays = [t.numpy() for t in (g.means, g.quats, g.scales)]
    W, H = cams[0].width, cams[0].height

    def proj(c):
        return K.project(*arrays, c.viewmats.numpy(), c.K.numpy(), W, H, 0.01, 1e10, 0.3)

    def prep(c):
        m, co, d, r = proj(c)
        return K.prepare(m, co, g.opacities.expand(1, -1).numpy(), d, g.colors.numpy(), r, W, H)

    packed = {id(c): prep(c) for c in cams}
    return {
        "project": round(median_ms(proj, cams, runs), 2),
        "project+sort+bin": round(median_ms(prep, cams, runs), 2),
        "composite": round(median_ms(lambda c: K.rasterize_fwd(*packed[id(c)][:3], W, H, 1), cams, runs), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_out_argument(parser)
    parser.add_argument("--sections", nargs="+", choices=("turntable", "small"),
                        default=["turntable", "small"], help="what to measure (default: both)")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    result = {
        "scene": "person_scene(65536): 1.7 m person, one camera of an 8-view turntable per run, white background",
        "torch_threads_default": default_threads,
        "numba_threading_layer": None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "tiled": {},
    }
    if "turntable" in args.sections:
        turntable(result, default_threads)
    set_compute_threads(1)
    result["numba_threading_layer"] = numba.threading_layer()
    if "small" in args.sections:
        small_scene(result)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["numba_cache_dir"] = numba.config.CACHE_DIR
    write_results("render", result, args.out)
    return 0


def turntable(result: dict, default_threads: int) -> None:
    """The numba backend on the 65,536-Gaussian person at 256 and 512, on 1 and the default thread count."""
    g = person_scene(65536)
    # The kernels use torch.get_num_threads() threads; the project runs torch single-threaded.
    for threads in sorted({1, default_threads}):
        set_compute_threads(threads)
        for size, runs in ((256, 24), (512, 10)):
            cams = [turntable_cameras(size)[i] for i in range(8)]
            entry = time_backend(g, cams, "numba", runs)
            entry["forward_stages_ms"] = forward_stages(g, cams, runs)
            result["tiled"][f"{size}x{size}, {threads} thread(s)"] = entry


def small_scene(result: dict) -> None:
    """Every CPU backend on one small scene: the dense reference is O(N * H * W) in time and memory."""
    small_n, small_size = 2048, 64
    small = person_scene(small_n)
    cams = [turntable_cameras(small_size)[i] for i in range(8)]
    dense = time_backend(small, cams, "reference", 5)
    tiled = time_backend(small, cams, "numba", 20)
    torch_tiles = time_backend(small, cams, "torch", 20)
    result["small"] = {"scene": f"person_scene({small_n}) at {small_size}x{small_size}, 1 thread",
                       "reference": dense, "numba": tiled, "torch": torch_tiles}
    result["ratio"] = {
        "what": f"dense reference time / each tiled backend's time, all on person_scene({small_n}) at {small_size}x{small_size}, 1 thread",
        "forward": round(dense["forward_ms"] / tiled["forward_ms"], 1),
        "forward_backward": round(dense["forward_backward_ms"] / tiled["forward_backward_ms"], 1),
        "torch_forward": round(dense["forward_ms"] / torch_tiles["forward_ms"], 1),
        "torch_forward_backward": round(dense["forward_backward_ms"] / torch_tiles["forward_backward_ms"], 1),
    }
    pairs_per_s = lambda n, size, ms: n * size * size / (ms / 1000)  # noqa: E731
    result["gaussian_pixels_per_s"] = {
        "what": "N * H * W / forward time (how fast each backend covers the Gaussian x pixel space)",
        "reference_small": f"{pairs_per_s(small_n, small_size, dense['forward_ms']):.3g}",
        "torch_small": f"{pairs_per_s(small_n, small_size, torch_tiles['forward_ms']):.3g}",
    }
    if "256x256, 1 thread(s)" in result["tiled"]:
        result["gaussian_pixels_per_s"]["numba_256_1_thread"] = \
            f"{pairs_per_s(65536, 256, result['tiled']['256x256, 1 thread(s)']['forward_ms']):.3g}"


if __name__ == "__main__":
    sys.exit(main())
