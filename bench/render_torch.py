"""The training step's render on any device: the tiled `torch` backend against the dense reference.

    python bench/render_torch.py [--device cpu|cuda] [--out PATH] [--runs 9] [--dense-runs 3]

The scene is what one training sample renders: a person of 18,000 Gaussians (`person_scene`) into
4 turntable views of 96 x 96, all four in one call, float32, white background. Needs only torch
and numpy (numba is timed when it imports and the device is the CPU), so it runs as is on a bare
GPU machine. Figures are medians after a warm-up (synchronised on CUDA); JSON to stdout and `--out`.

- `torch`: forward (no grad) and forward + backward with the device's `TilePlan` at tiles of 2, 4
  and 8 pixels, and with the other device's plan as it is; per setting the
  splat-pixel pairs, intersections and chunks (`splat_pixel_pairs`), kernels per call (on CUDA the
  profiler's kernel count; on the CPU its leaf aten ops that do work, about one launch each on
  CUDA) and the memory a forward + backward holds (CUDA: peak allocated; CPU: bytes saved for backward).
- `numba` (CPU only): the tiled CPU backend on the same call.
- `dense`: the dense reference against the torch backend (the device's default plan) on the same
  views — all four on CUDA, the first one on the CPU (~25 s and ~4 GB per dense forward here; its
  forward + backward is run on CUDA only): `agreement` (max |difference| of rgb, alpha, depth;
  share of pixels whose median depth differs by more than 1e-4), `reference` and
  `torch_same_views` times, `ratio` = reference time / torch time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hgm_core.render import rasterize  # noqa: E402
from hgm_core.render.scenes import person_scene, turntable_cameras  # noqa: E402
from hgm_core.render.torch_tiles import ACCEL_PLAN, CPU_PLAN, rasterize_torch_tiles, splat_pixel_pairs  # noqa: E402
from _results import add_out_argument, measure, write_results  # noqa: E402

PARAMS = ("means", "quats", "scales", "opacities", "colors")
N_GAUSSIANS, SIZE, VIEWS = 18000, 96, 4
# Profiler ops that only make views or allocate: no kernel of their own on CUDA.
NO_KERNEL = {
    "aten::" + n for n in (
        "view", "as_strided", "expand", "expand_as", "slice", "select", "unsqueeze", "squeeze", "permute",
        "transpose", "t", "reshape", "_reshape_alias", "_unsafe_view", "detach", "alias", "unbind", "split",
        "split_with_sizes", "narrow", "empty", "empty_strided", "empty_like", "resize_", "lift_fresh",
        "result_type", "view_as", "item", "_local_scalar_dense", "is_nonzero", "resolve_conj", "resolve_neg",
    )
}


def forward_fn(render):
    """`render(g)` under no_grad."""
    def run(g):
        with torch.no_grad():
            return render(g)
    return run


def forward_backward_fn(render):
    """`render(g)` with every Gaussian parameter requiring grad, then backward of a mixed loss."""
    def run(g):
        params = {k: getattr(g, k).detach().requires_grad_() for k in PARAMS}
        out = render(replace(g, **params))
        (out.rgb.sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
    return run


def timed_ms(fn, g, runs: int, device: torch.device, warmup: int = 1) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return round(1000 * measure(lambda: fn(g), runs, warmup=warmup, sync=sync)["median_s"], 2)


def kernels(fn, g, device: torch.device) -> int:
    """CUDA: kernels launched by one `fn(g)`; CPU: leaf aten ops that do work (about one launch each on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn(g)
    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in prof.events() if not e.cpu_children and e.name.startswith("aten::") and e.name not in NO_KERNEL)


def held_memory_mb(fn, g, device: torch.device) -> float:
    """CUDA: peak allocated during one `fn(g)`; CPU: bytes saved for backward (distinct storages)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(g)
        torch.cuda.synchronize()
        return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(g)
    return round(sum(saved.values()) / 2**20, 1)


def torch_backend(g, cams, device: torch.device, runs: int) -> dict:
    """The torch backend per tile size and chunking (see the module docstring)."""
    bg = torch.ones(3, device=device)
    out = {}
    for name, base in (("cpu", CPU_PLAN), ("cuda", ACCEL_PLAN)):
        for tile in (2, 4, 8):
            plan = replace(base, tile=tile)
            if device.type != name and tile != base.tile:
                continue  # the other device's plan with its own tile only

            def render(x, plan=plan):
                return rasterize_torch_tiles(x, cams, bg, near=0.01, far=1e10, eps2d=0.3, plan=plan)

            fwd, fwd_bwd = forward_fn(render), forward_backward_fn(render)
            out[f"{name} plan, tile {tile}"] = entry = {
                "forward_ms": timed_ms(fwd, g, runs, device),
                "forward_backward_ms": timed_ms(fwd_bwd, g, max(3, runs // 2), device),
                "work": splat_pixel_pairs(g, cams, plan=plan),
            }
            entry["kernels_forward"], entry["kernels_forward_backward"] = kernels(fwd, g, device), kernels(fwd_bwd, g, device)
            entry["forward_backward_memory_mb"] = held_memory_mb(fwd_bwd, g, device)
    return out


def reference(g, views, device: torch.device, dense_runs: int) -> dict:
    """The dense backend on `views`: forward, and on CUDA forward + backward with its memory."""
    def render(x):
        return rasterize(x, views, background=(1.0, 1.0, 1.0), backend="reference")

    entry = {"views": len(views), "forward_ms": timed_ms(forward_fn(render), g, dense_runs, device, warmup=0)}
    if device.type == "cpu":
        entry["forward_backward"] = "not run on the CPU: its autograd state would be several times the ~4 GB forward"
        return entry
    try:
        entry["forward_backward_ms"] = timed_ms(forward_backward_fn(render), g, dense_runs, device)
        entry["forward_backward_memory_mb"] = held_memory_mb(forward_backward_fn(render), g, device)
    except torch.cuda.OutOfMemoryError as e:
        entry["forward_backward"] = f"out of memory: {str(e).splitlines()[0]}"
    return entry


def agreement(g, views) -> dict:
    """Torch backend vs dense reference on `views` (same device): max |difference|, median-depth flips."""
    with torch.no_grad():
        a = rasterize(g, views, background=(1.0, 1.0, 1.0), backend="torch")
        b = rasterize(g, views, background=(1.0, 1.0, 1.0), backend="reference")
    out = {k: float((getattr(a, k) - getattr(b, k)).abs().max()) for k in ("rgb", "alpha", "depth")}
    out["median_depth_pixels_differing"] = float(((a.median_depth - b.median_depth).abs() > 1e-4).float().mean())
    return out


def dense_comparison(g, cams, device: torch.device, runs: int, dense_runs: int) -> dict:
    """Reference vs torch backend (the device's default plan) on the same views: all four on CUDA,
    the first on the CPU (~25 s per dense forward here)."""
    views = cams if device.type == "cuda" else cams[0]
    out = {"agreement": agreement(g, views), "reference": reference(g, views, device, dense_runs)}

    def render(x):
        return rasterize(x, views, background=(1.0, 1.0, 1.0), backend="torch")

    fast = {"forward_ms": timed_ms(forward_fn(render), g, runs, device),
            "forward_backward_ms": timed_ms(forward_backward_fn(render), g, max(3, runs // 2), device)}
    out["torch_same_views"] = fast
    out["ratio"] = {k.removesuffix("_ms"): round(out["reference"][k] / fast[k], 1) for k in fast if k in out["reference"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_out_argument(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N] (default: cuda when there)")
    parser.add_argument("--runs", type=int, default=9, help="timed runs per torch-backend figure (forward + backward: half)")
    parser.add_argument("--dense-runs", type=int, default=3, help="timed runs of the dense reference (0 skips it and the agreement)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # this script is an entry point; the project renders on one thread
    g = person_scene(N_GAUSSIANS).to(device=device)
    cams = turntable_cameras(SIZE, n_views=VIEWS).to(device=device)
    result: dict = {
        "scene": f"person_scene({N_GAUSSIANS}) into {VIEWS} turntable views of {SIZE}x{SIZE} per call, float32",
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    result["torch"] = torch_backend(g, cams, device, args.runs)
    if device.type == "cpu" and importlib.util.find_spec("numba") is not None:
        def numba_render(x):
            return rasterize(x, cams, background=(1.0, 1.0, 1.0), backend="numba")
        result["numba"] = {"forward_ms": timed_ms(forward_fn(numba_render), g, args.runs, device, warmup=2),
                           "forward_backward_ms": timed_ms(forward_backward_fn(numba_render), g, max(3, args.runs // 2), device, warmup=2)}
    if args.dense_runs:
        result["dense"] = dense_comparison(g, cams, device, args.runs, args.dense_runs)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_results("render_torch", result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
