"""How far an RGB-D request's avatar surface lies from the true surface, without and with `align_depth`.

    python bench/depth_align.py [--data /work/data/fitbench] [--limit N] [--methods prior coarse]

Data: the fit benchmark's subjects (`bench/fit.py`: `hgm datagen --seed 7070 --subjects 24 --size 512
--views 1`, a seed never used for training), view 0. Each subject is reconstructed once per method from
its image, ground-truth mask and intrinsics, and a simulated RGB-D camera's depth
(`hgm_core.body.depth.simulate_sensor`, seeded by the subject, as `bench/fit.py` and `hgm eval` use it),
with `align_depth` off; the stage then runs on that same frame, so both sides share one body fit.
Figures per subject and side (`surface_mm`): the median |avatar depth - true depth| (millimetres) over
the pixels where the avatar is opaque (alpha >= 0.9, rendered at full resolution from the input camera)
and the noise-free rendered depth of the clothed person exists: the avatar's visible surface against
the real one. `within_2cm` is the share of those pixels within 2 cm. `align_seconds` is the stage's
wall time (one thread). Summaries are medians and means over subjects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hgm_core.runtime import configure_process  # noqa: E402

configure_process(threads=1)

from _results import add_out_argument, write_results  # noqa: E402
from fit import DEFAULT_DATA, load_subject  # noqa: E402


def avatar_surface(gaussians, K: np.ndarray, true_depth: np.ndarray) -> tuple[float, float]:
    """Median |rendered - true| depth (mm) and the share within 2 cm, over opaque avatar pixels with
    a true depth."""
    import torch

    from hgm_core.camera import Cameras
    from hgm_core.render.api import rasterize

    h, w = true_depth.shape
    cams = Cameras(torch.as_tensor(K, dtype=torch.float32)[None], torch.eye(4)[None], w, h)
    with torch.no_grad():
        out = rasterize(gaussians.to(dtype=torch.float32, device="cpu"), cams)
    depth = (out.median_depth if out.median_depth is not None else out.depth)[0, ..., 0].numpy()
    both = (out.alpha[0, ..., 0].numpy() >= 0.9) & (true_depth > 0) & (depth > 0)
    error = np.abs(depth[both] - true_depth[both])
    return float(1000 * np.median(error)), float(np.mean(error < 0.02))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    parser.add_argument("--methods", nargs="+", default=["prior", "coarse"], help="request levels (default prior coarse)")
    add_out_argument(parser)
    args = parser.parse_args()

    from hgm_core.pipeline.depth_align import DepthAlignStage
    from hgm_core.pipeline.reconstructor import Reconstructor, ReconstructorConfig
    from hgm_core.train.body_metrics import sensor_depth
    from hgm_core.types import CameraInfo, ReconstructionRequest

    meta = json.loads((args.data / "dataset.json").read_text())
    subjects = meta["subjects"][: args.limit]
    rec = Reconstructor.from_config(ReconstructorConfig().override({"align_depth.enabled": False}))
    align = DepthAlignStage()
    result: dict = {"data": str(args.data), "seed": meta["seed"], "subjects": len(subjects), "methods": args.methods,
                    "threads": 1, "load_average_before": [round(x, 2) for x in os.getloadavg()], "rows": []}  # fmt: skip
    t0 = time.perf_counter()
    for sid in subjects:
        s = load_subject(args.data, sid)
        h, w = s["mask"].shape
        sensor = sensor_depth(s["depth"], sid)
        row: dict = {"id": sid}
        for method in args.methods:
            request = ReconstructionRequest(image=s["image"], camera=CameraInfo(s["K"], w, h), mask=s["mask"], depth=sensor, stages=method)
            frame, _ = rec.run_frame(request)
            t1 = time.perf_counter()
            aligned = align(frame)
            seconds = time.perf_counter() - t1
            before, before_2cm = avatar_surface(frame.gaussians, s["K"], s["depth"])
            after, after_2cm = avatar_surface(aligned.gaussians, s["K"], s["depth"])
            row[method] = {"before_surface_mm": round(before, 1), "after_surface_mm": round(after, 1),
                           "before_within_2cm": round(before_2cm, 3), "after_within_2cm": round(after_2cm, 3),
                           "align_seconds": round(seconds, 3), "report": aligned.reports.get("align_depth")}  # fmt: skip
        result["rows"].append(row)
        print(sid + ": " + " | ".join(f"{m} {row[m]['before_surface_mm']:.0f} -> {row[m]['after_surface_mm']:.0f} mm "
                                      f"({row[m]['align_seconds']:.2f} s)" for m in args.methods), file=sys.stderr)  # fmt: skip
    for method in args.methods:
        rows = [r[method] for r in result["rows"]]
        result[method] = {f"{stat}_{k}": round(float(fn([r[k] for r in rows])), 3)
                          for k in ("before_surface_mm", "after_surface_mm", "before_within_2cm", "after_within_2cm", "align_seconds")
                          for stat, fn in (("median", np.median), ("mean", np.mean))}  # fmt: skip
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_results("depth_align", result, args.out)
    for method in args.methods:
        m = result[method]
        print(f"{method}: surface {m['median_before_surface_mm']:.1f} -> {m['median_after_surface_mm']:.1f} mm (median of subjects), "
              f"within 2 cm {m['mean_before_within_2cm']:.2f} -> {m['mean_after_within_2cm']:.2f}, "
              f"stage {m['median_align_seconds']:.3f} s", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
