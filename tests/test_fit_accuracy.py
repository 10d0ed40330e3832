"""The body fit's metric placement: depth images (RGB-D), a known floor, and the distance uncertainty (issue #13).

Synthetic ground truth as in tests/test_fit.py; depth images are ray cast from the ground-truth body
and passed through `simulate_sensor` (noise, no return at edges, dropouts, millimetres).
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import roma
import torch

from hgm_core.body import AnnyBody, FitConfig, fit_body
from hgm_core.body.depth import DepthTarget, depth_metres, depth_target, simulate_sensor, surface_residuals
from hgm_core.body.fit import mirror_landmarks, warm_start_params
from hgm_core.perception import LANDMARK_NAMES, default_intrinsics
from tests.test_fit import IMAGE_SIZE, SHAPES, _errors, synthetic_case

CONFIG = FitConfig(landmarks_3d_lean_deg=0.0, landmark_offset_scale=0.0)
"""The case's landmarks are the model's own keypoints (+ noise), not BlazePose's: no lean or 2D offsets to undo."""


def ray_cast_depth(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`[H, W]` camera z (metres, 0 = no surface) of a camera-frame mesh, one ray per pixel centre."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(vertices.astype(np.float32), faces.astype(np.uint32))
    w, h = size
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1 per unit t
    rays = np.concatenate([np.zeros_like(dirs), dirs], -1).reshape(-1, 6).astype(np.float32)
    t = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().reshape(h, w)
    return np.where(np.isfinite(t), t, 0.0).astype(np.float32)  # t along a z = 1 direction is z


@pytest.fixture(scope="module")
def anny_body() -> AnnyBody:
    return AnnyBody()


@pytest.fixture(scope="module")
def case(anny_body: AnnyBody):
    """Case 0 of tests/test_fit.py (a tall-ish person 3.5 m away), its depth as a sensor sees it, and the image-only fit."""
    K = default_intrinsics(*IMAGE_SIZE)
    params, gt, perception = synthetic_case(anny_body, 0, anny_body.shape_from_phenotypes(SHAPES[0]), K, noise_3d=0.05, seed=0)
    depth = ray_cast_depth(gt.vertices[0].numpy(), anny_body.faces.numpy(), K, IMAGE_SIZE)
    sensor = simulate_sensor(depth, np.random.default_rng(0))
    return {"K": K, "gt": gt, "perception": perception, "depth": depth, "sensor": sensor,
            "mono": fit_body(perception, K, anny_body, config=CONFIG)}  # fmt: skip


def _distance_error(fit, gt) -> float:
    return float(np.linalg.norm(fit.vertices.mean(0)) - np.linalg.norm(gt.vertices[0].numpy().mean(0)))


def test_depth_makes_placement_metric(anny_body: AnnyBody, case, capsys) -> None:
    fit = fit_body(case["perception"], case["K"], anny_body, depth=case["sensor"], config=CONFIG)
    mono = case["mono"]
    e, pa = _errors(anny_body, fit, case["gt"])
    e_mono, _ = _errors(anny_body, mono, case["gt"])
    d, d_mono = _distance_error(fit, case["gt"]), _distance_error(mono, case["gt"])
    absolute = 1000 * float(np.linalg.norm(fit.joints - case["gt"].joints[0].numpy(), axis=-1).mean())
    with capsys.disabled():
        print(f"\n[fit depth] MPJPE {absolute:.0f} mm, root-aligned {e:.0f} (image only {e_mono:.0f}), PA {pa:.0f} mm; distance "
              f"{1000 * d:+.0f} ± {1000 * fit.distance_sigma_m:.0f} mm (image only {1000 * d_mono:+.0f} ± {1000 * mono.distance_sigma_m:.0f}); "
              f"{fit.keypoint_error_px:.2f} px, IoU {fit.silhouette_iou:.3f}, {fit.seconds:.1f} s")  # fmt: skip
    assert abs(d) < 0.05 and abs(d) < 0.5 * abs(d_mono)
    assert absolute < 60.0 and e < 50.0
    assert abs(d) <= 3 * fit.distance_sigma_m < abs(d_mono) + 3 * mono.distance_sigma_m
    assert fit.keypoint_error_px < 4.0 and fit.silhouette_iou > 0.8  # still matches the image


def test_image_only_distance_uncertainty_covers_the_error(anny_body: AnnyBody, case) -> None:
    """Without depth the distance rests on a population's stature: its sigma is ~7 % of the distance."""
    mono = case["mono"]
    distance = float(np.linalg.norm(mono.vertices.mean(0)))
    assert 0.05 * distance < mono.distance_sigma_m < 0.1 * distance
    assert abs(_distance_error(mono, case["gt"])) <= 3 * mono.distance_sigma_m
    assert mono.residuals()["distance_sigma_m"] == mono.distance_sigma_m
    assert mono.residuals()["surface_residual_m"] is None  # no depth; JSON (the wire) has no NaN


def test_unusable_depth_leaves_the_image_only_fit(anny_body: AnnyBody, case) -> None:
    """Depth with nothing on the person (all holes) changes nothing; a float image in metres equals millimetres."""
    empty = fit_body(case["perception"], case["K"], anny_body, depth=np.zeros(IMAGE_SIZE[::-1], np.uint16), config=CONFIG)
    np.testing.assert_allclose(empty.vertices, case["mono"].vertices, atol=1e-6)
    assert empty.distance_sigma_m == case["mono"].distance_sigma_m
    metres = depth_metres(case["sensor"])
    np.testing.assert_allclose(metres, case["sensor"] / 1000.0, rtol=1e-6)
    with pytest.raises(ValueError, match="same size"):
        fit_body(case["perception"], case["K"], anny_body, depth=np.ones((10, 10), np.float32), config=CONFIG)


def test_depth_target_keeps_the_person_only(case) -> None:
    depth, mask = case["depth"], case["perception"].mask
    bled = depth.copy()
    ys, xs = np.nonzero(mask)
    bled[ys[::7], xs[::7]] = 6.0  # background seen through a mask that is too wide
    bled[ys[::11], xs[::11]] = np.nan  # holes
    target = depth_target(depth_metres(bled), mask)
    usable = target.usable[0, 0].numpy() > 0
    assert usable.sum() > 0.5 * mask.sum()
    assert not usable[ys[::7], xs[::7]].any() and not usable[ys[::11], xs[::11]].any()
    assert abs(target.median - float(np.median(depth[mask & (depth > 0)]))) < 0.02
    assert depth_target(np.zeros_like(depth), mask) is None


def test_surface_residuals_fade_at_holes() -> None:
    """A sample's measurement is the mean of its usable bilinear neighbours and its weight their
    share: half a pixel from a hole it still reads the surface, at half weight; inside it, none."""
    depth = torch.zeros(1, 1, 4, 8)
    depth[..., :4] = 2.0  # usable on the left half, a hole on the right
    target = DepthTarget(depth, (depth > 0).float(), 2.0, 16)
    points = torch.tensor([[0.0, 0.0, 1.9], [0.0, 0.0, 1.8], [0.0, 0.0, 1.7]], requires_grad=True)
    uv = torch.tensor([[2.0, 2.0], [4.0, 2.0], [6.5, 2.0]])  # inside, on the pixel edge by the hole, in the hole
    r, weight = surface_residuals(points, uv, target, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(r, torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(weight, torch.tensor([1.0, 0.5]))
    r.sum().backward()
    assert points.grad[:, 2].tolist() == [-1.0, -1.0, 0.0]


def test_simulated_sensor(case) -> None:
    depth = case["depth"]
    sensor = simulate_sensor(depth, np.random.default_rng(1))
    assert sensor.dtype == np.uint16
    seen = sensor > 0
    assert not seen[depth == 0].any()
    surface = (depth > 0).astype(np.uint8)
    inner = cv2.erode(surface, np.ones((9, 9), np.uint8)) > 0
    outline = (surface > 0) & ~(cv2.erode(surface, np.ones((3, 3), np.uint8)) > 0)
    assert not seen[outline].any()  # no return where the person meets the background
    assert 0.9 < seen[inner].mean() < 1.0  # inside: a few dropouts
    error = sensor[seen] / 1000.0 - depth[seen]
    assert 0.002 < float(error.std()) < 0.05 and abs(float(error.mean())) < 0.003
    far = simulate_sensor(depth + 2.0 * (depth > 0), np.random.default_rng(1))  # noise grows with distance
    assert float((far[seen & (far > 0)] / 1000.0 - depth[seen & (far > 0)] - 2.0).std()) > 2 * float(error.std())


@pytest.mark.slow
def test_depth_with_heavy_dropout(anny_body: AnnyBody, case) -> None:
    """A third of the depth missing in blobs: the placement still holds."""
    sparse = simulate_sensor(case["depth"], np.random.default_rng(2), dropout=0.35)
    fit = fit_body(case["perception"], case["K"], anny_body, depth=sparse, config=CONFIG)
    assert abs(_distance_error(fit, case["gt"])) < 0.05


def test_feet_on_a_known_floor_fix_the_distance(anny_body: AnnyBody, case, capsys) -> None:
    """Image only, but with the floor plane (a robot knows its camera's height and tilt)."""
    gt, mono = case["gt"], case["mono"]
    params = synthetic_case(anny_body, 0, anny_body.shape_from_phenotypes(SHAPES[0]), case["K"])[0]
    up = (roma.rotvec_to_rotmat(params.global_orient[0]) @ torch.tensor([0.0, 1.0, 0.0])).double().numpy()
    floor = float((gt.vertices[0].double().numpy() @ up).min())  # the feet stand on it
    fit = fit_body(case["perception"], case["K"], anny_body, ground=np.array([*up, -floor]), config=CONFIG)
    d, d_mono = _distance_error(fit, gt), _distance_error(mono, gt)
    e, pa = _errors(anny_body, fit, gt)
    with capsys.disabled():
        print(f"\n[fit ground] root-aligned {e:.0f} mm, PA {pa:.0f} mm; distance {1000 * d:+.0f} ± {1000 * fit.distance_sigma_m:.0f} mm "
              f"(image only {1000 * d_mono:+.0f} ± {1000 * mono.distance_sigma_m:.0f})")  # fmt: skip
    assert abs(d) < 0.5 * abs(d_mono) and abs(d) <= 3 * fit.distance_sigma_m < 3 * mono.distance_sigma_m
    assert fit.keypoint_error_px < 3.0 and fit.silhouette_iou > 0.85
    # Feet out of view: the floor cannot be used and the fit is the image-only one.
    lm = case["perception"].landmarks_2d.copy()
    lm[[LANDMARK_NAMES.index(n) for n in ("left_heel", "right_heel", "left_foot_index", "right_foot_index")], 2] = 0.0
    blind = replace(case["perception"], landmarks_2d=lm)
    np.testing.assert_allclose(fit_body(blind, case["K"], anny_body, ground=np.array([*up, -floor]), config=CONFIG).vertices,
                               fit_body(blind, case["K"], anny_body, config=CONFIG).vertices, atol=1e-6)  # fmt: skip
    # Feet landmarks far above the mask's bottom (a confused detection): the floor is not used either.
    confused = case["perception"].landmarks_2d.copy()
    feet = [LANDMARK_NAMES.index(n) for n in ("left_heel", "right_heel", "left_foot_index", "right_foot_index")]
    confused[feet, 1] -= 0.4 * (case["perception"].bbox[3] - case["perception"].bbox[1])
    moved = replace(case["perception"], landmarks_2d=confused)
    np.testing.assert_allclose(fit_body(moved, case["K"], anny_body, ground=np.array([*up, -floor]), config=CONFIG).vertices,
                               fit_body(moved, case["K"], anny_body, config=CONFIG).vertices, atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="above the ground"):
        fit_body(case["perception"], case["K"], anny_body, ground=np.array([*up, floor - 10.0]), config=CONFIG)


def test_adult_population_from_annys_calibration(anny_body: AnnyBody) -> None:
    """anny's calibrated adults: younger-adult age, shorter than anny's mid height, ~5 % stature spread."""
    population = anny_body.shape_population
    prior = population.prior
    mean = dict(zip(prior.labels, prior.mean.tolist()))
    assert 0.75 < mean["age"] < 0.85 and 0.3 < mean["height"] < 0.45 and abs(mean["gender"] - 0.5) < 1e-6
    assert 0.04 < population.stature_sd < 0.08
    assert torch.all(prior.sd > 0) and float(prior.sd[prior.labels.index("age")]) < 0.05  # adults only


def test_depth_corrects_a_back_to_front_reading(anny_body: AnnyBody, case) -> None:
    """Landmarks read back to front (left and right swapped, depths mirrored: what BlazePose does with
    some people, consistently in 2D and 3D): with depth the fit also tries the mirrored reading and
    keeps it, because its surface fits the measurement; without the check it stays turned around."""
    wrong = mirror_landmarks(case["perception"])
    np.testing.assert_array_equal(mirror_landmarks(wrong).landmarks_2d, case["perception"].landmarks_2d)
    np.testing.assert_array_equal(mirror_landmarks(wrong).landmarks_3d, case["perception"].landmarks_3d)
    right = fit_body(case["perception"], case["K"], anny_body, depth=case["sensor"], config=CONFIG)
    fixed = fit_body(wrong, case["K"], anny_body, depth=case["sensor"], config=CONFIG)
    kept = fit_body(wrong, case["K"], anny_body, depth=case["sensor"], config=replace(CONFIG, depth_mirror_check_m=0.0))
    assert not right.mirrored and right.surface_residual_m < CONFIG.depth_mirror_check_m
    assert fixed.mirrored and not kept.mirrored and kept.surface_residual_m > CONFIG.depth_mirror_check_m
    e_right, e_fixed, e_kept = (_errors(anny_body, f, case["gt"])[0] for f in (right, fixed, kept))
    assert e_fixed < e_right + 10.0 and e_kept > 150.0, (e_right, e_fixed, e_kept)
    assert fixed.iterations == 2 * right.iterations and fixed.residuals()["mirrored"] is True
    # The next frame's landmarks come the detector's way round again: no warm start from a mirrored fit.
    assert warm_start_params(fixed, wrong, anny_body) is None and warm_start_params(right, case["perception"], anny_body) is not None
