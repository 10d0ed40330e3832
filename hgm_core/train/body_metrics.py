"""Body-fit figures against ground truth, with and without a depth camera (`hgm eval`, bench/fit.py).

A robot acts on where the body fit puts the person, so the figures separate placement from pose:
- `mpjpe_mm`: COCO keypoints as placed, in the camera's optical frame (metric placement included);
- `root_mpjpe_mm`: after aligning the hip midpoints (pose, orientation and size; not placement);
- `pa_mpjpe_mm`: after the best similarity transform (pose only);
- `distance_error_mm`: distance from the camera of the fitted body's vertex centroid minus the
  true one (signed: negative = too near), beside the fit's own `distance_sigma_mm`;
- `surface_mm`: median depth difference between the fitted body's visible vertices and the
  rendered, noise-free depth of the clothed person (how well the avatar sits on the measured surface).
The depth fit gets what an RGB-D camera would give: the rendered depth through
`hgm_core.body.depth.simulate_sensor` (noise, holes at edges, dropouts, millimetres), seeded per subject.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hgm_core.body.metrics import mpjpe, pa_mpjpe

FIT_COLUMNS = (("mpjpe_mm", "MPJPE mm"), ("root_mpjpe_mm", "root-aligned mm"), ("pa_mpjpe_mm", "PA-MPJPE mm"),
               ("abs_distance_error_mm", "abs. distance mm"), ("distance_error_mm", "distance (signed) mm"),
               ("distance_sigma_mm", "distance sigma mm"), ("surface_mm", "surface vs depth mm"))  # fmt: skip
"""Summary columns of `markdown_lines` (means over subjects)."""
SIDES = (("image", "image only"), ("depth", "with depth (simulated sensor)"))


def fit_scores(fit, gt_keypoints: np.ndarray, gt_names: list[str], gt_vertices: np.ndarray, depth: np.ndarray | None = None) -> dict:
    """Figures of one `BodyFit` (see the module docstring), in its camera's optical frame.

    Args:
        gt_keypoints: `[K, 3]` true keypoints named `gt_names` (the fit's keypoints are matched by name).
        gt_vertices: `[V, 3]` the true body's vertices (their centroid's distance is the true distance).
        depth: `[H, W]` noise-free rendered depth (metres, 0 = background) for `surface_mm`, or None.
    """
    names = [n for n in gt_names if n in fit.keypoint_names]
    pred = np.stack([fit.keypoints[fit.keypoint_names.index(n)] for n in names]).astype(np.float64)
    gt = np.stack([gt_keypoints[gt_names.index(n)] for n in names]).astype(np.float64)
    hips = np.isin(names, ["left_hip", "right_hip"])
    distance = np.linalg.norm(np.mean(fit.vertices, 0)) - np.linalg.norm(np.mean(gt_vertices, 0))
    root = mpjpe(pred, gt, hips, scale=1000) if hips.any() else float("nan")  # no hips: no root to align
    out = {"mpjpe_mm": mpjpe(pred, gt, scale=1000), "root_mpjpe_mm": root,
           "pa_mpjpe_mm": pa_mpjpe(pred, gt, scale=1000), "distance_error_mm": 1000 * float(distance),
           # NaN for fits that report no uncertainty (bench/fit.py's baseline from before it existed)
           "distance_sigma_mm": 1000 * float(getattr(fit, "distance_sigma_m", float("nan")))}  # fmt: skip
    if depth is not None:
        out["surface_mm"] = 1000 * surface_error(fit.vertices, fit.K, depth)
    return out


def surface_error(vertices: np.ndarray, K: np.ndarray, depth: np.ndarray) -> float:
    """Median |z| difference (metres) between the vertices `[V, 3]` nearest the camera in each pixel
    and `depth [H, W]` (metres, 0 = none) there; NaN when they share no pixel."""
    h, w = depth.shape
    uvw = np.asarray(vertices, np.float64) @ np.asarray(K, np.float64).T
    front = uvw[:, 2] > 0
    u = np.floor(uvw[front, 0] / uvw[front, 2]).astype(np.int64)
    v = np.floor(uvw[front, 1] / uvw[front, 2]).astype(np.int64)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    zbuf = np.full(h * w, np.inf)
    np.minimum.at(zbuf, v[inside] * w + u[inside], uvw[front, 2][inside])
    zbuf = zbuf.reshape(h, w)
    both = np.isfinite(zbuf) & (depth > 0)
    return float(np.median(np.abs(zbuf[both] - depth[both]))) if both.any() else float("nan")


def layout_depth(root: Path, sid: str, size: int | None = None, view: int = 0) -> np.ndarray | None:
    """The rendered depth `[H, W]` (metres, 0 = background) of one view of a render layout
    (`hgm datagen`), resized to `size` (nearest pixel), or None when the layout has none."""
    import cv2

    from hgm_core.data.render import decode_depth

    path = Path(root) / "depth" / f"{sid}_{view:03d}" / "1.0.png"
    if not path.exists():
        return None
    depth = decode_depth(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    if size is not None and depth.shape[0] != size:
        depth = cv2.resize(depth, (size, size), interpolation=cv2.INTER_NEAREST)
    return depth


def sensor_depth(depth_m: np.ndarray, sid: str) -> np.ndarray:
    """`depth_m` as a consumer RGB-D camera gives it (16UC1 mm, `simulate_sensor`), seeded by the
    subject id (its number, or a CRC of it), so every run sees the same noise."""
    from hgm_core.body.depth import simulate_sensor

    seed = int(sid) if sid.isdigit() else zlib.crc32(sid.encode())
    return simulate_sensor(depth_m, np.random.default_rng(seed))


def subject_row(root: Path, sid: str, size: int | None, to_view0: Callable[[np.ndarray], np.ndarray], fit,
                fit_with_depth: Callable[[np.ndarray], object] | None, gt_vertices: np.ndarray | None) -> dict | None:
    """`{"id", "image": fit_scores, "depth": fit_scores}` of one subject of a render layout, or None
    without ground-truth keypoints and body.

    Args:
        to_view0: world -> view 0's optical frame, `[N, 3] -> [N, 3]`.
        fit: the image-only `BodyFit` of view 0.
        fit_with_depth: makes the fit of view 0 given a 16UC1 depth image (None: no depth fit).
        gt_vertices: the true body in view 0's frame.
    """
    kp_path = Path(root) / "keypoints" / f"{sid}.json"
    if gt_vertices is None or not kp_path.exists():
        return None
    kp = json.loads(kp_path.read_text())
    gt = to_view0(np.asarray(kp["world"], np.float64))
    depth = layout_depth(root, sid, size)
    row = {"id": sid, "image": fit_scores(fit, gt, kp["names"], gt_vertices, depth)}
    if depth is not None and fit_with_depth is not None:
        row["depth"] = fit_scores(fit_with_depth(sensor_depth(depth, sid)), gt, kp["names"], gt_vertices, depth)
    return row


def summarise(rows: list[dict]) -> dict:
    """Per side (`image`, `depth`): means over subjects of every figure, `abs_distance_error_mm`, and
    `distance_within_2_sigma` (the fraction whose true distance lies within two of the fit's sigma)."""
    out: dict = {"subjects": rows}
    for side, _ in SIDES:
        scores = [r[side] for r in rows if side in r]
        if not scores:
            continue
        keys = [k for k in scores[0] if all(k in s for s in scores)]
        mean = {k: float(np.nanmean([s[k] for s in scores])) for k in keys}
        mean["abs_distance_error_mm"] = float(np.mean([abs(s["distance_error_mm"]) for s in scores]))
        mean["distance_within_2_sigma"] = float(np.mean([abs(s["distance_error_mm"]) <= 2 * s["distance_sigma_mm"] for s in scores]))
        out[side] = mean | {"n": len(scores)}
    return out


def markdown_lines(summary: dict) -> list[str]:
    """The body-fit section of `eval.md`: one row per side (means over subjects)."""
    sides = [(k, label) for k, label in SIDES if k in summary]
    if not sides:
        return []
    cols = [c for c in FIT_COLUMNS if all(c[0] in summary[k] for k, _ in sides)]
    lines = ["## Body fit (view 0, camera frame)", "",
             "| fit | subjects | " + " | ".join(c[1] for c in cols) + " | true distance within 2 sigma |", "|" + "---|" * (len(cols) + 3)]
    for k, label in sides:
        s = summary[k]
        lines.append(f"| {label} | {s['n']} | " + " | ".join(f"{s[c[0]]:.0f}" for c in cols) + f" | {100 * s['distance_within_2_sigma']:.0f} % |")
    return lines + [""]
