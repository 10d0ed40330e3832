"""Body-fit accuracy and time per cold fit on synthetic people with ground truth, beside today's fit.

    python bench/fit.py [--data /work/data/fitbench] [--limit N]

Data: `hgm datagen --seed 7070 --subjects 24 --size 512 --views 1 -o /work/data/fitbench_v3` (seed 7070
is reserved for this benchmark, never for training; generator version 3, whose long hair parts at the
face: version 2's hung over it, and BlazePose read such people as seen from behind). Each subject's view 0 goes through the real
`perceive` (mediapipe landmarks, the ground-truth mask and intrinsics given, as `hgm eval` does) and
then through six fits from the same perception, in the same process, one torch thread:
- `today`: `hgm_core/body/fit.py` as of `BASELINE_REV` (loaded from git, so the baseline is the code
  users had, not a re-creation of it);
- `before` / `before_depth`: the fit as of `BEFORE_REV` (git, likewise: `fit.py` and the evaluator it
  optimises, `anny_reduced.py`), image only and with depth;
- `new`: the working tree's `fit_body` with its default `FitConfig`, from the image alone;
- `new_depth`: the same with the subject's rendered depth as an RGB-D camera would give it
  (`hgm_core.body.depth.simulate_sensor`: distance-dependent noise, no return at depth edges,
  dropouts, millimetres; seeded by the subject's index);
- `new_ground`: image only, with the floor plane known (the generator's floor, y = 0, in view 0's
  frame), as a robot knows its camera's height and tilt.
Figures per fit (`hgm_core.train.body_metrics`, as `hgm eval` reports them), against the generator's
ground truth in view 0's optical frame (23 COCO-WholeBody keypoints from anny's regressor, the same
regressor the fit uses, and the body vertices):
- `mpjpe_mm`: keypoints as placed (metric placement included);
- `root_mpjpe_mm`: after aligning the hip midpoints (pose and scale, not placement);
- `pa_mpjpe_mm`: after the best similarity transform (pose only);
- `distance_error_mm`: distance from the camera of the fitted body's vertex centroid minus the true
  one (signed: negative = too near); `|distance|` rows average its magnitude;
- `surface_mm`: median distance between the fitted body's visible vertices (a per-pixel z-buffer)
  and the rendered, noise-free depth of the clothed person at their pixels;
- `seconds`: wall time of the whole `fit_body` call;
- `keypoint_root_mm` (means only): root-aligned error per keypoint, to see which joints carry it;
- `mirrored`: the fit kept the mirrored reading of the landmarks (`FitConfig.depth_mirror_check_m`;
  summaries count them).
Each row's `truth_surface_mm` is `surface_mm` of the ground-truth body itself: the floor of that
figure, since the body model is unclothed and the rendered depth is of the clothed person.
All but `today` also give the fit's own distance uncertainty (`distance_sigma_mm`) and whether the true
distance lies within two of it. Means and medians over subjects; `ratio_seconds_median` = today / new seconds, `..._before` = before / new.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hgm_core.runtime import configure_process  # noqa: E402

configure_process(threads=1)

from _results import add_out_argument, write_results  # noqa: E402

BASELINE_REV = "5f15d34"
"""The last commit of hgm_core/body/fit.py before issue #13: "today's fit"."""
BEFORE_REV = "e56cbad"
"""hgm_core/body/fit.py and body/anny_reduced.py as the sixth #13 session left them (before the
mirrored-reading check with depth): the `before` columns."""
SIDES = ("today", "before", "before_depth", "new", "new_depth", "new_ground")
DEFAULT_DATA = Path("/work/data/fitbench_v3")


def load_baseline(rev: str, path: str = "hgm_core/body/fit.py"):
    """`path` at git revision `rev` as a module (it imports the current versions of everything else)."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"{Path(path).stem}_at_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def load_fit(rev: str):
    """`hgm_core/body/fit.py` at `rev`, with what it uses of `hgm_core/body/depth.py` from the same
    revision (the depth residuals changed their return value after 239bd18)."""
    fit = load_baseline(rev)
    if hasattr(fit, "surface_residuals"):
        depth = load_baseline(rev, "hgm_core/body/depth.py")
        for name in ("depth_metres", "depth_target", "surface_residuals", "visible"):
            setattr(fit, name, getattr(depth, name))
    return fit


@contextmanager
def evaluator_at(body, rev: str, n: int, cache: dict):
    """Within the block, `body.sampled(n)` (the fit's evaluator) is `hgm_core/body/anny_reduced.py` as of
    `rev` (built once per `rev` and `n` into `cache`), so a baseline fit runs on the code it had."""
    if (rev, n) not in cache:
        cache[rev, n] = load_baseline(rev, "hgm_core/body/anny_reduced.py").ReducedAnny(body, body.surface_samples(n))
    current = body.sampled(n)
    body._sampled[n] = cache[rev, n]
    try:
        yield
    finally:
        body._sampled[n] = current


def load_subject(root: Path, sid: str) -> dict:
    """View 0 of one subject: image, mask, K, and the ground truth in view 0's optical frame."""
    import cv2

    from hgm_core.data.reader import load_subject_cameras
    from hgm_core.data.render import decode_depth

    E, Ks, _ = load_subject_cameras(root, sid)
    image = cv2.imread(str(root / "img" / f"{sid}_000" / "0.jpg"))[..., ::-1].copy()
    mask = cv2.imread(str(root / "mask" / f"{sid}_000" / "0.png"), cv2.IMREAD_GRAYSCALE) > 127
    to_cam = lambda x: x @ E[0, :3, :3].T + E[0, :3, 3]  # noqa: E731
    kp = json.loads((root / "keypoints" / f"{sid}.json").read_text())
    body = np.load(root / "body" / f"{sid}.npz")
    meta = json.loads((root / "body" / f"{sid}.json").read_text())
    depth = decode_depth(cv2.imread(str(root / "depth" / f"{sid}_000" / "1.0.png"), cv2.IMREAD_UNCHANGED))
    up = E[0, :3, :3] @ np.array([0.0, 1.0, 0.0])  # the world floor y = 0 in view 0's optical frame
    ground = np.array([*up, -up @ E[0, :3, 3]])
    return {"id": sid, "image": image, "mask": mask, "K": Ks[0], "keypoint_names": kp["names"], "depth": depth, "ground": ground,
            "keypoints": to_cam(np.asarray(kp["world"], np.float64)), "vertices": to_cam(body["vertices"].astype(np.float64)),
            "height_m": meta["height_m"]}  # fmt: skip


def score(fit, subject: dict) -> dict:
    """Accuracy of one fit against its subject's ground truth (`hgm_core.train.body_metrics`, as `hgm eval`)."""
    from hgm_core.train.body_metrics import fit_scores

    r = fit_scores(fit, subject["keypoints"], subject["keypoint_names"], subject["vertices"], subject["depth"])
    r["keypoint_root_mm"] = keypoint_root_errors(fit, subject)
    if np.isfinite(r["distance_sigma_mm"]):
        r["distance_within_2_sigma"] = abs(r["distance_error_mm"]) <= 2 * r["distance_sigma_mm"]
    else:
        del r["distance_sigma_mm"]  # today's fit reports no uncertainty
    return r | {"seconds": fit.seconds, "iterations": fit.iterations, "keypoint_error_px": fit.keypoint_error_px,
                "silhouette_iou": fit.silhouette_iou, "mirrored": bool(getattr(fit, "mirrored", False))}


def keypoint_root_errors(fit, subject: dict) -> dict[str, float]:
    """Root-aligned (hip midpoint) error per keypoint name (mm) of one fit."""
    names = [n for n in subject["keypoint_names"] if n in fit.keypoint_names]
    pred = np.stack([fit.keypoints[fit.keypoint_names.index(n)] for n in names]).astype(np.float64)
    gt = np.stack([subject["keypoints"][subject["keypoint_names"].index(n)] for n in names])
    hips = [names.index("left_hip"), names.index("right_hip")]
    error = np.linalg.norm((pred - pred[hips].mean(0)) - (gt - gt[hips].mean(0)), axis=-1)
    return {n: round(1000 * float(e), 1) for n, e in zip(names, error)}


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and not isinstance(rows[0][k], bool)]
    out = {f"mean_{k}": round(float(np.mean([r[k] for r in rows])), 3) for k in keys}
    out |= {f"median_{k}": round(float(np.median([r[k] for r in rows])), 3) for k in keys}
    out["mean_abs_distance_error_mm"] = round(float(np.mean([abs(r["distance_error_mm"]) for r in rows])), 1)
    out["mean_keypoint_root_mm"] = {n: round(float(np.mean([r["keypoint_root_mm"][n] for r in rows])), 1) for n in rows[0]["keypoint_root_mm"]}
    out["mirrored"] = sum(r["mirrored"] for r in rows)
    if "distance_within_2_sigma" in rows[0]:
        out["distance_within_2_sigma"] = round(float(np.mean([r["distance_within_2_sigma"] for r in rows])), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    parser.add_argument("--baseline", default=BASELINE_REV, help=f"git revision of today's fit (default {BASELINE_REV})")
    parser.add_argument("--before", default=BEFORE_REV, help=f"git revision of the `before` columns (default {BEFORE_REV})")
    add_out_argument(parser)
    args = parser.parse_args()

    from hgm_core.body import AnnyBody, fit_body
    from hgm_core.perception import PoseEstimator, perceive
    from hgm_core.train.body_metrics import sensor_depth, surface_error
    from hgm_core.types import CameraInfo

    subjects = json.loads((args.data / "dataset.json").read_text())["subjects"][: args.limit]
    today, before = load_fit(args.baseline), load_fit(args.before)
    evaluators: dict = {}
    body, estimator = AnnyBody(), PoseEstimator()
    result: dict = {"data": str(args.data), "seed": json.loads((args.data / "dataset.json").read_text())["seed"],
                    "subjects": len(subjects), "baseline_rev": args.baseline, "before_rev": args.before, "threads": 1,
                    "load_average_before": [round(x, 2) for x in os.getloadavg()], "rows": []}  # fmt: skip
    t0 = time.perf_counter()
    for sid in subjects:
        s = load_subject(args.data, sid)
        h, w = s["mask"].shape
        perception = perceive(s["image"], mask=s["mask"], camera=CameraInfo(s["K"], w, h), estimator=estimator)
        sensor = sensor_depth(s["depth"], sid)
        fits = {"today": today.fit_body(perception, None, body)}
        with evaluator_at(body, args.before, before.FitConfig().silhouette_points, evaluators):
            fits |= {"before": before.fit_body(perception, None, body), "before_depth": before.fit_body(perception, None, body, depth=sensor)}
        fits |= {"new": fit_body(perception, None, body), "new_depth": fit_body(perception, None, body, depth=sensor),
                 "new_ground": fit_body(perception, None, body, ground=s["ground"])}  # fmt: skip
        row = {"id": sid, "height_m": round(s["height_m"], 3), "gt_distance_m": round(float(np.linalg.norm(s["vertices"].mean(0))), 3),
               "truth_surface_mm": round(1000 * surface_error(s["vertices"], s["K"], s["depth"]), 1)}  # fmt: skip
        for side, fit in fits.items():
            r = score(fit, s)
            row[side] = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
        result["rows"].append(row)
        print(f"{sid}: " + " | ".join(f"{side} {r['mpjpe_mm']:.0f}/{r['root_mpjpe_mm']:.0f}/{r['pa_mpjpe_mm']:.0f} mm d {r['distance_error_mm']:+.0f}"
                                      f"±{r.get('distance_sigma_mm', float('nan')):.0f} mm surf {r['surface_mm']:.0f} mm {r['seconds']:.2f} s"
                                      for side, r in ((k, row[k]) for k in fits)), file=sys.stderr)  # fmt: skip
    for side in SIDES:
        result[side] = summarise([r[side] for r in result["rows"]])
    result["ratio_seconds_median"] = round(result["today"]["median_seconds"] / result["new"]["median_seconds"], 2)
    result["ratio_seconds_median_depth"] = round(result["today"]["median_seconds"] / result["new_depth"]["median_seconds"], 2)
    result["ratio_seconds_median_before"] = round(result["before"]["median_seconds"] / result["new"]["median_seconds"], 2)
    result["ratio_seconds_median_before_depth"] = round(result["before_depth"]["median_seconds"] / result["new_depth"]["median_seconds"], 2)
    result["median_truth_surface_mm"] = round(float(np.median([r["truth_surface_mm"] for r in result["rows"]])), 1)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_results("fit", result, args.out)
    print(markdown(result), file=sys.stderr)


def markdown(result: dict) -> str:
    """The before/after table of the issue note."""
    cols = (("mean_mpjpe_mm", "MPJPE mm"), ("mean_root_mpjpe_mm", "root-aligned mm"), ("mean_pa_mpjpe_mm", "PA-MPJPE mm"),
            ("median_mpjpe_mm", "median MPJPE mm"), ("median_pa_mpjpe_mm", "median PA-MPJPE mm"),
            ("mean_abs_distance_error_mm", "abs. distance mm"), ("mean_distance_error_mm", "distance (signed) mm"),
            ("median_surface_mm", "surface vs depth mm (median)"), ("median_seconds", "s / cold fit (median)"))  # fmt: skip
    lines = ["| fit | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for side in SIDES:
        lines.append(f"| {side} | " + " | ".join(f"{result[side][c[0]]:.3g}" if "seconds" in c[0] else f"{result[side][c[0]]:.0f}" for c in cols) + " |")
    lines.append("")
    lines += [f"{side}: true distance within 2 sigma for {100 * result[side]['distance_within_2_sigma']:.0f} % of subjects "
              f"(median sigma {result[side]['median_distance_sigma_mm']:.0f} mm)" for side in SIDES[1:]]  # fmt: skip
    lines.append(f"surface vs depth of the ground-truth (unclothed) body itself: {result['median_truth_surface_mm']:.0f} mm (median)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
