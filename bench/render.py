"""Rasterizer speed: the tiled `numba` backend on a 65,536-Gaussian person, the tiled pure-torch
backend and the dense reference.

Prints JSON and writes bench/results/render.json. Figures are medians over several runs after a
warm-up; each run renders one camera of the 8-view turntable (cycling through them). The dense
reference cannot render the full scene in reasonable time, so all backends are also timed on one
small scene (`small`), and `ratio` compares them there (same scene, same image, same machine, same
run). `training` is the render of one training step (a person of 18,000 Gaussians into 4 views of
96 x 96, all four per call): numba, torch with the CPU's chunking and with CUDA's (run on this CPU),
the dense reference's forward on one of the views, the splat-pixel pairs each backend evaluates and
the torch backend's kernel count per call (`torch.profiler`: leaf aten ops that launch work; on CUDA
each is about one kernel launch). The CPU is shared with other processes; `load_average` records
how busy it was. `--sections` runs a subset.
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
from hgm_core.render.torch_tiles import ACCEL_MAX_CHUNK, rasterize_torch_tiles, splat_pixel_pairs  # noqa: E402
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
    return time_calls(forward(g, backend), forward_backward(g, backend), cams, runs)


def time_calls(fwd_fn, fwd_bwd_fn, cams, runs):
    fwd = median_ms(fwd_fn, cams, runs)
    fwd_bwd = median_ms(fwd_bwd_fn, cams, max(3, runs // 2))
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


# Ops that only make views or allocate: no kernel of their own on CUDA.
NO_KERNEL = {
    "aten::" + n for n in (
        "view", "as_strided", "expand", "expand_as", "slice", "select", "unsqueeze", "squeeze", "permute",
        "transpose", "t", "reshape", "_reshape_alias", "_unsafe_view", "detach", "alias", "unbind", "split",
        "split_with_sizes", "narrow", "empty", "empty_strided", "empty_like", "resize_", "lift_fresh",
        "result_type", "view_as", "item", "_local_scalar_dense", "is_nonzero", "resolve_conj", "resolve_neg",
    )
}


def kernel_count(fn) -> int:
    """Leaf aten ops of one `fn()` that do work (on CUDA each is about one kernel launch)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if not e.cpu_children and e.name.startswith("aten::") and e.name not in NO_KERNEL)


def torch_tiles_calls(g, cuda_plan: bool):
    """Forward and forward+backward of the torch backend, with the CPU's chunking or CUDA's."""
    kw = {"max_chunk": ACCEL_MAX_CHUNK, "growth": float("inf")} if cuda_plan else {}
    bg = torch.ones(3)

    def fwd(cams):
        with torch.no_grad():
            rasterize_torch_tiles(g, cams, bg, near=0.01, far=1e10, eps2d=0.3, **kw)

    def fwd_bwd(cams):
        params = {k: getattr(g, k).detach().requires_grad_() for k in PARAMS}
        out = rasterize_torch_tiles(replace(g, **params), cams, bg, near=0.01, far=1e10, eps2d=0.3, **kw)
        (out.rgb.sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()

    return fwd, fwd_bwd


def training_scene(runs: int, dense_runs: int) -> dict:
    """The training step's render (4 views of 96 x 96 per call, 1 thread) on every backend."""
    n, size, views = 18000, 96, 4
    g, cams = person_scene(n), turntable_cameras(size, n_views=views)
    calls = [cams]  # one call renders all four views
    entry = {"scene": f"person_scene({n}) into {views} turntable views of {size}x{size} per call, 1 thread",
             "numba": time_backend(g, calls, "numba", runs)}
    for name, cuda_plan in (("torch", False), ("torch_cuda_chunking", True)):
        fwd, fwd_bwd = torch_tiles_calls(g, cuda_plan)
        entry[name] = time_calls(fwd, fwd_bwd, calls, runs)
        entry[name]["kernels_forward"] = kernel_count(lambda: fwd(cams))
        entry[name]["kernels_forward_backward"] = kernel_count(lambda: fwd_bwd(cams))
    entry["splat_pixel_pairs"] = {
        "dense": splat_pixel_pairs(g, cams)["dense"],
        "torch": splat_pixel_pairs(g, cams),
        "torch_cuda_chunking": splat_pixel_pairs(g, cams, device="cuda"),
    }
    if dense_runs:
        # O(N H W) per view: ~25 s and ~4 GB for one view here, so one view only, forward only (its
        # autograd state would be several times that).
        one_view = [cams[0]]
        entry["reference_one_view_forward_ms"] = round(median_ms(forward(g, "reference"), one_view, dense_runs, warmup=0), 1)
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_out_argument(parser)
    parser.add_argument("--sections", nargs="+", choices=("turntable", "small", "training"),
                        default=["turntable", "small", "training"], help="what to measure (default: all)")
    parser.add_argument("--dense-runs", type=int, default=3,
                        help="runs of the dense reference on one training view (~25 s each; 0 skips it)")
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
    if "training" in args.sections:
        result["training"] = training_scene(runs=9, dense_runs=args.dense_runs)
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
