"""Body fit warm-started from the previous frame vs from scratch (`fit_body(init=...)`).

Prints JSON and writes bench/results/fit_warm.json. Two kinds of frame pairs, one torch thread:
- synthetic: the three Anny ground-truth scenes of tests/test_fit.py as frame A, and frame B with
  ~5 deg on six joints and the pelvis moved by 5 cm (tests/test_fit_warm.py's `next_frame`);
  accuracy is MPJPE against the ground truth of B. Each pair also runs with depth (`*_depth`): both
  frames' ray-cast body depth through the simulated RGB-D sensor (`simulate_sensor`, seeded by the
  case), as a robot's depth camera would give it with the colour image.
- photo: Debian opencv-doc's messi5.jpg and the same image shifted by (6, 4) px; no ground truth,
  so accuracy is the reprojection error, the silhouette IoU and the warm fit's joint distance to
  the cold fit of the shifted image.
Seconds are single runs (each fit is deterministic; a cold fit takes seconds); `ratio` is cold /
warm seconds from the same run. The CPU is shared with other processes; `load_average` records how
busy it was.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hgm_core.runtime import configure_process  # noqa: E402

configure_process(threads=1)

from hgm_core.body import AnnyBody, fit_body  # noqa: E402
from hgm_core.body.depth import simulate_sensor  # noqa: E402
from hgm_core.body.fit import warm_start_params  # noqa: E402
from hgm_core.perception import PoseEstimator, default_intrinsics, perceive  # noqa: E402
from hgm_core.pipeline.prior import body_depth_maps  # noqa: E402
from tests.test_fit import (  # noqa: E402
    IMAGE_SIZE,
    POSES,
    SHAPES,
    _errors,
    render_case,
    synthetic_case,
)
from tests.test_fit_warm import next_frame  # noqa: E402
from _results import add_out_argument, write_results

MESSI = Path("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")
SHIFT_PX = (6, 4)


def _summary(fit, errors=None) -> dict:
    row = {
        "seconds": round(fit.seconds, 3),
        "iterations": fit.iterations,
        "warm_started": fit.warm_started,
        "keypoint_error_px": round(fit.keypoint_error_px, 2),
        "silhouette_iou": round(fit.silhouette_iou, 3),
    }
    if errors is not None:
        row["mpjpe_mm"], row["pa_mpjpe_mm"] = round(errors[0], 1), round(errors[1], 1)
    return row


def sensor_depth(body: AnnyBody, params, K: np.ndarray, seed: int) -> np.ndarray:
    """`[H, W]` uint16 mm: the body of `params` ray-cast from the camera, through `simulate_sensor`."""
    import torch

    with torch.no_grad():
        vertices = body(params).vertices[0].double().numpy()
    front, _ = body_depth_maps(vertices, body.faces.numpy(), K, *IMAGE_SIZE)
    return simulate_sensor(np.where(np.isfinite(front), front, 0.0), np.random.default_rng(seed))


def synthetic(body: AnnyBody) -> list[dict]:
    K = default_intrinsics(*IMAGE_SIZE)
    rows = []
    for i in range(len(POSES)):
        params_a, _, a = synthetic_case(body, i, body.shape_from_phenotypes(SHAPES[i]), K, noise_3d=0.05, seed=i)
        params_b = next_frame(body, params_a, degrees=5.0, transl=(0.03, -0.01, 0.04))
        gt_b, b = render_case(body, params_b, K, noise_3d=0.05, seed=100 + i)
        row: dict = {"case": i}
        for suffix, depth_a, depth_b in (("", None, None), ("_depth", sensor_depth(body, params_a, K, i), sensor_depth(body, params_b, K, 100 + i))):
            fit_a = fit_body(a, K, body, depth=depth_a)
            init = warm_start_params(fit_a, b, body)
            cold = fit_body(b, K, body, depth=depth_b)
            warm = fit_body(b, K, body, init=init, depth=depth_b)
            row |= {f"warm_start_accepted{suffix}": init is not None, f"cold{suffix}": _summary(cold, _errors(body, cold, gt_b)),
                    f"warm{suffix}": _summary(warm, _errors(body, warm, gt_b)), f"ratio{suffix}": round(cold.seconds / warm.seconds, 2)}  # fmt: skip
        rows.append(row)
    return rows


def photo(body: AnnyBody) -> dict:
    image = cv2.cvtColor(cv2.imread(str(MESSI)), cv2.COLOR_BGR2RGB)
    shift = np.float32([[1, 0, SHIFT_PX[0]], [0, 1, SHIFT_PX[1]]])
    moved = cv2.warpAffine(image, shift, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
    with PoseEstimator() as estimator:
        a, b = perceive(image, estimator), perceive(moved, estimator)
    fit_a = fit_body(a, None, body)
    init = warm_start_params(fit_a, b, body)
    cold = fit_body(b, None, body)
    warm = fit_body(b, None, body, init=init)
    return {
        "image": MESSI.name, "shift_px": SHIFT_PX, "box_height_px": b.bbox[3] - b.bbox[1],
        "warm_start_accepted": init is not None, "frame_a_cold": _summary(fit_a), "cold": _summary(cold),
        "warm": _summary(warm), "ratio": round(cold.seconds / warm.seconds, 2),
        "warm_vs_cold_joints_mm": round(1000 * float(np.linalg.norm(warm.joints - cold.joints, axis=-1).mean()), 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_out_argument(parser)
    args = parser.parse_args()
    result = {"threads": 1, "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    body = AnnyBody()
    rows = synthetic(body)
    result["synthetic"] = rows
    result["synthetic_median"] = {
        k: round(statistics.median(r[side][m] for r in rows), 2)
        for side in ("cold", "warm", "cold_depth", "warm_depth") for m in ("seconds", "mpjpe_mm", "pa_mpjpe_mm") for k in [f"{side}_{m}"]
    }  # fmt: skip
    if MESSI.exists():
        result["photo"] = photo(body)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_results("fit_warm", result, args.out)


if __name__ == "__main__":
    main()
