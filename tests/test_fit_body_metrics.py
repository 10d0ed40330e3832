"""Body-fit figures for `hgm eval` and bench/fit.py (hgm_core/train/body_metrics.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from hgm_core.body.base import COCO_KEYPOINT_NAMES
from hgm_core.train.body_metrics import fit_scores, markdown_lines, sensor_depth, summarise, surface_error

K = np.array([[500.0, 0, 100], [0, 500, 100], [0, 0, 1]])


def _fit(keypoints: np.ndarray, vertices: np.ndarray, sigma_m: float = 0.1):
    return SimpleNamespace(keypoints=keypoints, keypoint_names=COCO_KEYPOINT_NAMES, vertices=vertices, K=K, distance_sigma_m=sigma_m)


def _person(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    kp = rng.normal(0, 0.3, (len(COCO_KEYPOINT_NAMES), 3)) + [0, 0, 2.5]
    return kp, rng.normal(0, 0.2, (200, 3)) + [0, 0, 2.5]


def test_placement_size_and_pose_errors_are_told_apart():
    kp, verts = _person()
    names = list(COCO_KEYPOINT_NAMES)
    hips = kp[[names.index("left_hip"), names.index("right_hip")]].mean(0)
    # 10 cm too far: only the placement is wrong.
    s = fit_scores(_fit(kp + [0, 0, 0.1], verts + [0, 0, 0.1]), kp, names, verts)
    assert s["mpjpe_mm"] == pytest.approx(100.0) and s["root_mpjpe_mm"] < 1e-6 and s["pa_mpjpe_mm"] < 1e-6
    assert s["distance_error_mm"] == pytest.approx(1000 * (np.linalg.norm(verts.mean(0) + [0, 0, 0.1]) - np.linalg.norm(verts.mean(0))))
    # 10 % too big about the hips: root-aligned sees the size, PA does not.
    big = (kp - hips) * 1.1 + hips
    s = fit_scores(_fit(big, verts), kp, names, verts)
    assert s["root_mpjpe_mm"] == pytest.approx(100 * np.linalg.norm(kp - hips, axis=1).mean(), rel=1e-6)
    assert s["pa_mpjpe_mm"] < 1e-6 and s["distance_error_mm"] == 0.0
    # Keypoints are matched by name, in any order and subset of the ground truth's.
    order = names[::-1][:10]
    s = fit_scores(_fit(kp, verts), kp[[names.index(n) for n in order]], order, verts)
    assert s["mpjpe_mm"] == 0.0 and s["distance_sigma_mm"] == pytest.approx(100.0)


def test_surface_error_reads_the_front_surface():
    h = w = 200
    depth = np.zeros((h, w))
    depth[50:150, 50:150] = 2.0
    u, v = np.meshgrid(np.arange(60, 140) + 0.5, np.arange(60, 140) + 0.5)
    rays = np.stack([(u - 100) / 500, (v - 100) / 500, np.ones_like(u)], -1).reshape(-1, 3)
    front, back = rays * 2.03, rays * 2.4  # the back surface hides behind the front one
    assert surface_error(np.concatenate([front, back]), K, depth) == pytest.approx(0.03, abs=1e-6)
    assert np.isnan(surface_error(front + [5.0, 0, 0], K, depth))  # outside the image: nothing to compare


def test_summary_and_table():
    rows = [{"id": "0", "image": {"mpjpe_mm": 100.0, "root_mpjpe_mm": 60.0, "pa_mpjpe_mm": 40.0, "distance_error_mm": -150.0,
                                  "distance_sigma_mm": 100.0, "surface_mm": 90.0},
             "depth": {"mpjpe_mm": 40.0, "root_mpjpe_mm": 35.0, "pa_mpjpe_mm": 30.0, "distance_error_mm": 10.0,
                       "distance_sigma_mm": 30.0, "surface_mm": 15.0}},
            {"id": "1", "image": {"mpjpe_mm": 200.0, "root_mpjpe_mm": 80.0, "pa_mpjpe_mm": 50.0, "distance_error_mm": 250.0,
                                  "distance_sigma_mm": 100.0, "surface_mm": 110.0}}]  # fmt: skip
    s = summarise(rows)
    assert s["image"]["n"] == 2 and s["depth"]["n"] == 1
    assert s["image"]["mpjpe_mm"] == 150.0 and s["image"]["distance_error_mm"] == 50.0
    assert s["image"]["abs_distance_error_mm"] == 200.0 and s["image"]["distance_within_2_sigma"] == 0.5
    md = "\n".join(markdown_lines(s))
    image = next(line for line in md.splitlines() if line.startswith("| image only |"))
    assert image.split(" | ")[1:5] == ["2", "150", "70", "45"] and image.endswith("| 50 % |")
    assert "| with depth (simulated sensor) | 1 | 40 | 35 | 30 |" in md
    assert markdown_lines(summarise([])) == []


def test_sensor_depth_is_seeded_by_subject():
    depth = np.full((64, 64), 2.0)
    a, b = sensor_depth(depth, "0007"), sensor_depth(depth, "0007")
    assert a.dtype == np.uint16 and np.array_equal(a, b)
    assert not np.array_equal(a, sensor_depth(depth, "0008")) and not np.array_equal(a, sensor_depth(depth, "subject_x"))


@pytest.mark.slow
def test_eval_reports_the_body_fit_with_and_without_depth(tmp_path):
    """`hgm eval` on one synthetic subject: the body-fit section has both fits; depth fixes the distance."""
    pytest.importorskip("anny")
    pytest.importorskip("mediapipe")
    from hgm_core.cli import main

    data = tmp_path / "data"
    assert main(["datagen", "--subjects", "1", "--seed", "9090", "--size", "256", "--ssaa", "1", "--views", "2", "-o", str(data)]) == 0
    out = tmp_path / "eval"
    # Two views: the side-by-side figures of the worst subjects show what the layout has.
    assert main(["eval", "--data", str(data), "--method", "prior", "-o", str(out)]) == 0
    body = json.loads((out / "eval.json").read_text())["body_fit"]
    image, depth = body["image"], body["depth"]
    assert image["n"] == depth["n"] == 1 and len(body["subjects"]) == 1
    assert abs(depth["distance_error_mm"]) < 60.0 and depth["surface_mm"] < 40.0  # metric from the sensor
    assert depth["distance_sigma_mm"] < image["distance_sigma_mm"]
    assert image["pa_mpjpe_mm"] <= image["root_mpjpe_mm"] + 1e-6
    assert "## Body fit" in (out / "eval.md").read_text()
