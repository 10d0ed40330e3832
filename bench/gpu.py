"""GPU check (issue #15): the network, the pipeline's stages and the rasterizer on CUDA vs this CPU.

    python bench/gpu.py [--out results.json] [--repeats 5] [--cpu-big]

Made to run unattended in a few minutes on a bare GPU machine that has PyTorch and numpy and cannot
reach a registry: it needs no installed `hgm` (the repository root goes on sys.path), every section
imports what it needs and is skipped with the reason when something is missing, one section's
failure never stops the others, and the JSON is rewritten after every section (a run cut short
keeps what it measured). Without CUDA it measures the CPU side and marks the CUDA side skipped.

Sections:
- `environment`: torch, CUDA, the GPU (`hgm_core.device.device_report`), which optional packages import.
- `network`: the HGM forward pass of the `tiny` preset (the embedded checkpoint's weights when
  safetensors is there, else random weights; the time does not depend on them) and of `big` (the
  paper's size; random weights: no trained `big` checkpoint exists) on one input view: CUDA float32,
  CUDA float16 autocast (what `coarse.half` runs), and the CPU (float32; `big` only with --cpu-big).
  Agreement: the Gaussians of CUDA float32 vs CPU, and of float16 vs float32 on CUDA.
- `render`: the person scene (65,536 Gaussians, 4 views of 512²): gsplat on CUDA vs our numba
  rasterizer on the CPU; on a small scene (2,048 Gaussians, 64²) our pure-torch reference on CUDA
  vs numba, and gsplat vs that reference (a correctness check that needs no numba). Agreement:
  tolerances stated in the output (gsplat clamps a splat's alpha at 0.999, ours at 0.99, so nearly
  opaque pixels may differ by up to ~1e-2).
- `pipeline`: the whole `Reconstructor` on the sample photo with `device="cuda"` vs `"cpu"`, levels
  `prior` and `coarse`, seconds per stage (needs mediapipe, anny, roma, scipy, OpenCV, open3d).
Medians after one warm-up call; CUDA timings synchronise before and after each call.

On a machine with only torch and numpy, `network` and the reference/gsplat part of `render` run;
for the rest carry wheels built for that machine's Python (e.g. `pip download numba gsplat
safetensors -d wheels` here, then `pip install --no-index --find-links wheels numba gsplat
safetensors` there) — gsplat's first call may compile its CUDA kernels (`gsplat_first_call_s`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a bare machine has no installed hgm: use the repository's sources

import torch  # noqa: E402

from _results import RESULTS_DIR, add_out_argument, measure, write_results  # noqa: E402

OPTIONAL = ("gsplat", "numba", "safetensors", "scipy", "cv2", "mediapipe", "anny", "roma", "open3d")
RENDER_TOLERANCE = {"max_abs": 0.02, "mean_abs": 0.005, "pixels_over_max_abs": 0.005}
"""gsplat vs numba on the person scene: mean |difference| of RGB and alpha at most `mean_abs`, and at
most a fraction `pixels_over_max_abs` of pixel values differing by more than `max_abs`."""
REFERENCE_TOLERANCE = 2e-3
"""The pure-torch reference (CUDA) vs numba (CPU) on the small scene: the same maths, float32."""


class Missing(RuntimeError):
    """A section cannot run here (no CUDA, a package not installed); the message says what."""


def need(*modules: str) -> None:
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise Missing(f"not installed here: {', '.join(missing)}")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # an installed package can fail on import too (wrong CUDA, missing libraries)
        return False
    return True


def guarded(fn: Callable[[], dict]) -> dict:
    """`fn()`, or what stopped it: one failed measurement must not cost the others."""
    try:
        return fn()
    except Missing as e:
        return {"skipped": str(e)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}


def timed(fn: Callable[[], object], repeats: int, cuda: bool) -> dict[str, float]:
    """Median and fastest wall seconds of `repeats` calls after one warm-up (synchronised on CUDA)."""
    m = measure(fn, repeats, warmup=1, sync=torch.cuda.synchronize if cuda else None)
    return {"median_s": round(m["median_s"], 5), "min_s": round(m["min_s"], 5), "repeats": repeats}


# -- sections ----------------------------------------------------------------------------------------


def environment() -> dict:
    from hgm_core.device import device_report, resolve_device

    out = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "cpu_threads": torch.get_num_threads(), "optional_packages": {m: _importable(m) for m in OPTIONAL}}
    out["device"] = device_report(resolve_device("auto"))
    return out


def _network_inputs(config, device: torch.device) -> tuple:
    """One input view as the coarse stage feeds it: `[1, 1, 3, S, S]` image, body vertices
    `[1, Nv, 3]` (the person scene's points; the forward's cost depends on where they are, not on
    them being a fitted body), K and the canonical front camera."""
    from hgm_core.model.hgm import default_views
    from hgm_core.render.scenes import person_scene

    g = torch.Generator().manual_seed(0)
    S = config.input_size
    image = torch.rand(1, 1, 3, S, S, generator=g)
    points = person_scene(config.num_vertices, seed=1).means
    K, c2w = default_views(config)
    return tuple(t.to(device) for t in (image, points[None], K[None], c2w[None]))


def _forward(model, inputs: tuple, half: bool) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast(inputs[0].device.type, dtype=torch.float16, enabled=half):
        out = model(*inputs)
    return torch.cat((out.body[0], out.merged[0])).float()


def _network(preset: str, repeats: int, cpu: bool) -> dict:
    from hgm_core.model.config import config_for
    from hgm_core.model.hgm import HGM
    from hgm_core.model.predict import default_checkpoint_dir

    out: dict = {}
    if preset == "tiny" and _importable("safetensors") and default_checkpoint_dir().is_dir():
        model = HGM.from_pretrained(default_checkpoint_dir()).float().eval()
        out["weights"] = "embedded checkpoint"
    else:
        model = HGM(config_for(preset)).eval()
        out["weights"] = "random (timing only)"
    cfg = model.config
    out |= {"input_size": cfg.input_size, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    results = {}
    if cpu:
        cpu_inputs = _network_inputs(cfg, torch.device("cpu"))
        out["cpu_float32"] = timed(lambda: _forward(model, cpu_inputs, False), max(1, repeats // 2), cuda=False)
        results["cpu"] = _forward(model, cpu_inputs, False)
    else:
        out["cpu_float32"] = {"skipped": "the big network on the CPU takes minutes; pass --cpu-big"}
    if not torch.cuda.is_available():
        out["cuda"] = {"skipped": "no CUDA here"}
        return out
    model = model.to("cuda")
    inputs = _network_inputs(cfg, torch.device("cuda"))
    torch.cuda.reset_peak_memory_stats()
    out["cuda_float32"] = timed(lambda: _forward(model, inputs, False), repeats, cuda=True)
    out["cuda_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    results["cuda32"] = _forward(model, inputs, False).cpu()
    if "cpu" in results:
        out["speedup_cuda32_vs_cpu"] = round(out["cpu_float32"]["median_s"] / out["cuda_float32"]["median_s"], 1)
        out["agreement_cuda32_vs_cpu"] = _gaussian_agreement(results["cuda32"], results["cpu"])
    out["cuda_float16_autocast"] = guarded(lambda: timed(lambda: _forward(model, inputs, True), repeats, cuda=True))
    out["agreement_cuda16_vs_cuda32"] = guarded(lambda: _gaussian_agreement(_forward(model, inputs, True).cpu(), results["cuda32"]))
    return out


def _gaussian_agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Max and mean |a - b| per Gaussian field group of `[N, 14]` activated network outputs."""
    groups = {"means": slice(0, 3), "opacity": slice(3, 4), "scales": slice(4, 7), "quats": slice(7, 11), "rgb": slice(11, 14)}
    d = (a - b).abs()
    return {"finite": bool(torch.isfinite(a).all()),
            **{k: {"max_abs": float(d[:, s].max()), "mean_abs": float(d[:, s].mean())} for k, s in groups.items()}}


def network(repeats: int, cpu_big: bool) -> dict:
    return {"tiny": guarded(lambda: _network("tiny", repeats, cpu=True)), "big": guarded(lambda: _network("big", repeats, cpu=cpu_big))}


def render(repeats: int) -> dict:
    from hgm_core.camera import orbit_cameras
    from hgm_core.render import rasterize
    from hgm_core.render.scenes import person_scene, turntable_cameras

    out: dict = {"scene": "person_scene(65536), 4 turntable views of 512x512, white background",
                 "tolerance": RENDER_TOLERANCE, "reference_tolerance_max_abs": REFERENCE_TOLERANCE}
    g, cams = person_scene(65536), turntable_cameras(512, n_views=4)
    bg = (1.0, 1.0, 1.0)
    small_g = person_scene(2048, seed=2)
    small_cams = orbit_cameras(64, 64, n_views=2, radius=2.3)
    cpu = ref_cpu = None
    if _importable("numba"):
        out["numba_cpu"] = timed(lambda: rasterize(g, cams, background=bg, backend="numba"), max(1, repeats // 2), cuda=False)
        cpu = rasterize(g, cams, background=bg, backend="numba")
        ref_cpu = rasterize(small_g, small_cams, background=bg, backend="numba")
    else:
        out["numba_cpu"] = {"skipped": "numba is not installed here"}
    if not torch.cuda.is_available():
        out["cuda"] = {"skipped": "no CUDA here"}
        return out
    small_cuda = rasterize(small_g.to("cuda"), small_cams.to("cuda"), background=bg, backend="reference")
    out["reference_cuda_small"] = timed(lambda: rasterize(small_g.to("cuda"), small_cams.to("cuda"), background=bg, backend="reference"),
                                        repeats, cuda=True)
    if ref_cpu is not None:
        diff = max(float((small_cuda.rgb.cpu() - ref_cpu.rgb).abs().max()), float((small_cuda.alpha.cpu() - ref_cpu.alpha).abs().max()))
        out["reference_cuda_vs_numba_max_abs"] = diff
        out["reference_cuda_agrees"] = diff <= REFERENCE_TOLERANCE
    if not _importable("gsplat"):
        out["gsplat"] = {"skipped": "gsplat is not installed here (pip install 'hgm[gsplat]'; wheels must match torch and CUDA)"}
        return out
    small_gsplat = rasterize(small_g.to("cuda"), small_cams.to("cuda"), background=bg, backend="gsplat")
    out["agreement_gsplat_vs_reference_small"] = agreement = _image_agreement(small_gsplat, small_cuda)
    out["gsplat_agrees_with_reference_small"] = _agrees(agreement)
    gc, cc = g.to("cuda"), cams.to("cuda")
    t0 = time.perf_counter()
    gpu = rasterize(gc, cc, background=bg, backend="gsplat")  # the first call may compile gsplat's kernels
    torch.cuda.synchronize()
    out["gsplat_first_call_s"] = round(time.perf_counter() - t0, 2)
    out["gsplat_cuda"] = timed(lambda: rasterize(gc, cc, background=bg, backend="gsplat"), repeats, cuda=True)
    if cpu is not None:
        out["speedup_gsplat_vs_numba"] = round(out["numba_cpu"]["median_s"] / out["gsplat_cuda"]["median_s"], 1)
        out["agreement_gsplat_vs_numba"] = agreement = _image_agreement(gpu, cpu)
        out["gsplat_agrees"] = _agrees(agreement)
    return out


def _agrees(agreement: dict) -> bool:
    return all(a["mean_abs"] <= RENDER_TOLERANCE["mean_abs"] and a["pixels_over_max_abs"] <= RENDER_TOLERANCE["pixels_over_max_abs"]
               for a in agreement.values())


def _image_agreement(a, b) -> dict:
    """|a - b| of RGB and alpha of two renders of the same scene and cameras (any devices)."""
    out = {}
    for name in ("rgb", "alpha"):
        d = (getattr(a, name).cpu() - getattr(b, name).cpu()).abs()
        out[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                     "pixels_over_max_abs": float((d > RENDER_TOLERANCE["max_abs"]).float().mean())}
    return out


def pipeline(repeats: int) -> dict:
    need("mediapipe", "anny", "roma", "scipy", "cv2", "open3d")
    from hgm_core.io.inputs import load_image
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.types import ReconstructionRequest

    image = load_image(ROOT / "hgm_core" / "assets" / "sample" / "person.jpg")
    out: dict = {"image": "hgm_core/assets/sample/person.jpg", "note": "perceive, fit_body and prior run on the CPU on every device"}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if not torch.cuda.is_available():
        out["cuda"] = {"skipped": "no CUDA here"}
    for device in devices:
        rec = Reconstructor.from_config(ReconstructorConfig(device=device, body=_cold_body()))
        runs: dict = {"components": rec.describe()["components"]}
        for level in ("prior", "coarse"):
            if level not in rec.available_stages:
                runs[level] = {"skipped": f"{level} is not available ({rec.available_stages})"}
                continue
            request = ReconstructionRequest(image=image, stages=level)
            rec.run(request)  # warm-up
            timings = [rec.run(request).timings for _ in range(repeats)]
            runs[level] = {k: round(statistics.median(t[k] for t in timings), 4) for k in timings[0]}
        out[device] = runs
    return out


def _cold_body():
    """The body config with warm starts off, so every run fits from scratch (the same work each time)."""
    from hgm_core.pipeline.reconstructor import BodyConfig
    from hgm_core.body.tracker import TrackConfig

    return BodyConfig(track=TrackConfig(enabled=False))


# -- driver ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (default 5)")
    parser.add_argument("--cpu-big", action="store_true", help="also time the big network on the CPU (minutes)")
    parser.add_argument("--only", nargs="+", choices=("environment", "network", "render", "pipeline"), default=None,
                        help="run only these sections")
    add_out_argument(parser)
    args = parser.parse_args()
    sections: dict[str, Callable[[], dict]] = {
        "environment": environment,
        "network": lambda: network(args.repeats, args.cpu_big),
        "render": lambda: render(args.repeats),
        "pipeline": lambda: pipeline(max(1, args.repeats // 2)),
    }
    report: dict = {"bench": "gpu", "measured_on_gpu": torch.cuda.is_available(), "repeats": args.repeats}
    for name, run in sections.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        report[name] = guarded(run)  # one section's failure is a result too; the others still run
        report[name]["section_s"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu bench] {name}: {report[name]['section_s']} s", file=sys.stderr, flush=True)
        _write_quietly(report, args.out)
    write_results("gpu", report, args.out)


def _write_quietly(report: dict, out: Path | None) -> None:
    path = out or RESULTS_DIR / "gpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
