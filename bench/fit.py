"""Body-fit accuracy and time per cold fit on synthetic people with ground truth, beside today's fit.

    python bench/fit.py [--data /work/data/fitbench] [--limit N]

Data: `hgm datagen --seed 7070 --subjects 24 --size 512 --views 1 -o /work/data/fitbench` (seed 7070
is reserved for this benchmark, never for training). Each subject's view 0 goes through the real
`perceive` (mediapipe landmarks, the ground-truth mask and intrinsics given, as `hgm eval` does) and
then through two fits from the same perception, in the same process, one torch thread:
- `today`: `hgm_core/body/fit.py` as of `BASELINE_REV` (loaded from git, so the baseline is the code
  users had, not a re-creation of it);
- `new`: the working tree's `fit_body` with its default `FitConfig`.
Figures per fit, against the generator's ground truth in view 0's optical frame (23 COCO-WholeBody
keypoints from anny's regressor, the same regressor the fit uses, and the body vertices):
- `mpjpe_mm`: keypoints as placed (metric placement included);
- `root_mpjpe_mm`: after aligning the hip midpoints (pose and scale, not placement);
- `pa_mpjpe_mm`: after the best similarity transform (pose only);
- `distance_error_mm`: distance from the camera of the fitted body's vertex centroid minus the true
  one (signed: negative = too near); `|distance|` rows average its magnitude;
- `seconds`: wall time of the whole `fit_body` call.
`new` rows also give the fit's own distance uncertainty (`distance_sigma_mm`) and whether the true
distance lies within two of it. Means and medians over subjects; `ratio` = today / new seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hgm_core.runtime import configure_process  # noqa: E402

configure_process(threads=1)

from _results import write_results  # noqa: E402

BASELINE_REV = "5f15d34"
"""The last commit of hgm_core/body/fit.py before issue #13: "today's fit"."""
DEFAULT_DATA = Path("/work/data/fitbench")


def load_baseline(rev: str):
    """`hgm_core/body/fit.py` at git revision `rev` as a module (it imports the current body/perception)."""
    source = subprocess.run(["git", "show", f"{rev}:hgm_core/body/fit.py"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"fit_at_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    exec(compile(source, f"{rev}:hgm_core/body/fit.py", "exec"), module.__dict__)
    return module


def load_subject(root: Path, sid: str) -> dict:
    """View 0 of one subject: image, mask, K, and the ground truth in view 0's optical frame."""
    import cv2

    from hgm_core.data.reader import load_subject_cameras

    E, Ks, _ = load_subject_cameras(root, sid)
    image = cv2.imread(str(root / "img" / f"{sid}_000" / "0.jpg"))[..., ::-1].copy()
    mask = cv2.imread(str(root / "mask" / f"{sid}_000" / "0.png"), cv2.IMREAD_GRAYSCALE) > 127
    to_cam = lambda x: x @ E[0, :3, :3].T + E[0, :3, 3]  # noqa: E731
    kp = json.loads((root / "keypoints" / f"{sid}.json").read_text())
    body = np.load(root / "body" / f"{sid}.npz")
    meta = json.loads((root / "body" / f"{sid}.json").read_text())
    return {"id": sid, "image": image, "mask": mask, "K": Ks[0], "keypoint_names": kp["names"],
            "keypoints": to_cam(np.asarray(kp["world"], np.float64)), "vertices": to_cam(body["vertices"].astype(np.float64)),
            "height_m": meta["height_m"]}  # fmt: skip


def score(fit, subject: dict) -> dict:
    """Accuracy of one fit against its subject's ground truth (see the module docstring)."""
    from hgm_core.body import mpjpe, pa_mpjpe

    names = subject["keypoint_names"]
    pred = np.stack([fit.keypoints[fit.keypoint_names.index(n)] for n in names]).astype(np.float64)
    gt = subject["keypoints"]
    hips = np.isin(names, ["left_hip", "right_hip"])
    distance = np.linalg.norm(fit.vertices.mean(0)) - np.linalg.norm(subject["vertices"].mean(0))
    return {"mpjpe_mm": 1000 * mpjpe(pred, gt), "root_mpjpe_mm": 1000 * mpjpe(pred, gt, hips),
            "pa_mpjpe_mm": 1000 * pa_mpjpe(pred, gt), "distance_error_mm": 1000 * float(distance),
            "seconds": fit.seconds, "iterations": fit.iterations, "keypoint_error_px": fit.keypoint_error_px,
            "silhouette_iou": fit.silhouette_iou}  # fmt: skip


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)]
    out = {f"mean_{k}": round(float(np.mean([r[k] for r in rows])), 3) for k in keys}
    out |= {f"median_{k}": round(float(np.median([r[k] for r in rows])), 3) for k in keys}
    out["mean_abs_distance_error_mm"] = round(float(np.mean([abs(r["distance_error_mm"]) for r in rows])), 1)
    if "distance_within_2_sigma" in rows[0]:
        out["distance_within_2_sigma"] = round(float(np.mean([r["distance_within_2_sigma"] for r in rows])), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    parser.add_argument("--baseline", default=BASELINE_REV, help=f"git revision of today's fit (default {BASELINE_REV})")
    args = parser.parse_args()

    from hgm_core.body import AnnyBody, fit_body
    from hgm_core.perception import PoseEstimator, perceive
    from hgm_core.types import CameraInfo

    subjects = json.loads((args.data / "dataset.json").read_text())["subjects"][: args.limit]
    today = load_baseline(args.baseline)
    body, estimator = AnnyBody(), PoseEstimator()
    result: dict = {"data": str(args.data), "seed": json.loads((args.data / "dataset.json").read_text())["seed"],
                    "subjects": len(subjects), "baseline_rev": args.baseline, "threads": 1,
                    "load_average_before": [round(x, 2) for x in os.getloadavg()], "rows": []}  # fmt: skip
    t0 = time.perf_counter()
    for sid in subjects:
        s = load_subject(args.data, sid)
        h, w = s["mask"].shape
        perception = perceive(s["image"], mask=s["mask"], camera=CameraInfo(s["K"], w, h), estimator=estimator)
        old = score(today.fit_body(perception, None, body), s)
        fit = fit_body(perception, None, body)
        new = score(fit, s)
        sigma = 1000 * fit.distance_sigma_m
        new |= {"distance_sigma_mm": sigma, "distance_within_2_sigma": abs(new["distance_error_mm"]) <= 2 * sigma}
        row = {"id": sid, "height_m": round(s["height_m"], 3), "gt_distance_m": round(float(np.linalg.norm(s["vertices"].mean(0))), 3),
               "today": {k: round(v, 3) if isinstance(v, float) else v for k, v in old.items()},
               "new": {k: round(v, 3) if isinstance(v, float) else v for k, v in new.items()}}  # fmt: skip
        result["rows"].append(row)
        print(f"{sid}: today {old['mpjpe_mm']:.0f}/{old['root_mpjpe_mm']:.0f}/{old['pa_mpjpe_mm']:.0f} mm "
              f"d {old['distance_error_mm']:+.0f} mm {old['seconds']:.2f} s | new {new['mpjpe_mm']:.0f}/{new['root_mpjpe_mm']:.0f}/"
              f"{new['pa_mpjpe_mm']:.0f} mm d {new['distance_error_mm']:+.0f}±{sigma:.0f} mm {new['seconds']:.2f} s", file=sys.stderr)  # fmt: skip
    for side in ("today", "new"):
        result[side] = summarise([r[side] for r in result["rows"]])
    result["ratio_seconds_median"] = round(result["today"]["median_seconds"] / result["new"]["median_seconds"], 2)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_results("fit", result)
    print(markdown(result), file=sys.stderr)


def markdown(result: dict) -> str:
    """The before/after table of the issue note."""
    cols = (("mean_mpjpe_mm", "MPJPE mm"), ("mean_root_mpjpe_mm", "root-aligned mm"), ("mean_pa_mpjpe_mm", "PA-MPJPE mm"),
            ("mean_abs_distance_error_mm", "|distance| mm"), ("mean_distance_error_mm", "distance (signed) mm"),
            ("median_seconds", "s / cold fit (median)"))  # fmt: skip
    lines = ["| fit | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for side in ("today", "new"):
        lines.append(f"| {side} | " + " | ".join(f"{result[side][c[0]]:.3g}" if "seconds" in c[0] else f"{result[side][c[0]]:.0f}" for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
