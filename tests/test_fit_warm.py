"""fit_body warm-started from the previous frame's fit, and `warm_start_params` (synthetic Anny frames)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import roma
import torch

from hgm_core.body import AnnyBody, BodyFit, BodyParams, FitConfig, fit_body
from hgm_core.body.fit import warm_start_params
from hgm_core.perception import Perception, default_intrinsics
from tests.test_fit import IMAGE_SIZE, SHAPES, _errors, render_case, synthetic_case

CASE = 1
MOVED_JOINTS = ("left_shoulder", "right_elbow", "left_hip", "right_knee", "spine1", "neck")


def next_frame(body: AnnyBody, params: BodyParams, *, degrees: float, transl: tuple[float, float, float], seed: int = 7) -> BodyParams:
    """`params` a moment later: random rotations of ~`degrees` on `MOVED_JOINTS`, the pelvis moved by `transl` (m)."""
    g = torch.Generator().manual_seed(seed)
    pose = params.pose.clone().reshape(-1, 3)
    idx = [body.pose_joint_names.index(n) for n in MOVED_JOINTS]
    pose[idx] += torch.randn(len(idx), 3, generator=g) * math.radians(degrees)
    return BodyParams(params.global_orient.clone(), params.transl + torch.tensor([transl]), pose.reshape(1, -1), params.shape.clone())


class Frames:
    """Frame A, frame B (5 deg on six joints, 4 cm), cold fits of both and a warm fit of B from A."""

    def __init__(self, body: AnnyBody) -> None:
        self.K = default_intrinsics(*IMAGE_SIZE)
        params_a, self.gt_a, self.a = synthetic_case(body, CASE, body.shape_from_phenotypes(SHAPES[CASE]), self.K, noise_3d=0.05, seed=CASE)
        self.params_b = next_frame(body, params_a, degrees=5.0, transl=(0.03, -0.01, 0.04))
        self.gt_b, self.b = render_case(body, self.params_b, self.K, noise_3d=0.05, seed=100 + CASE)
        self.fit_a = fit_body(self.a, self.K, body)
        self.cold_b = fit_body(self.b, self.K, body)
        self.warm_b = fit_body(self.b, self.K, body, init=self.fit_a.params)


@pytest.fixture(scope="module")
def anny_body() -> AnnyBody:
    return AnnyBody()


@pytest.fixture(scope="module")
def frames(anny_body: AnnyBody) -> Frames:
    return Frames(anny_body)


def test_warm_fit_matches_cold_fit_in_a_fraction_of_the_steps(anny_body: AnnyBody, frames: Frames, capsys) -> None:
    cold, warm = frames.cold_b, frames.warm_b
    e_cold, pa_cold = _errors(anny_body, cold, frames.gt_b)
    e_warm, pa_warm = _errors(anny_body, warm, frames.gt_b)
    with capsys.disabled():
        print(
            f"\n[fit warm] frame B cold: MPJPE {e_cold:.1f} mm PA {pa_cold:.1f} mm, {cold.keypoint_error_px:.2f} px, "
            f"IoU {cold.silhouette_iou:.3f}, {cold.iterations} it, {cold.seconds:.2f} s | warm from A: MPJPE {e_warm:.1f} mm "
            f"PA {pa_warm:.1f} mm, {warm.keypoint_error_px:.2f} px, IoU {warm.silhouette_iou:.3f}, {warm.iterations} it, {warm.seconds:.2f} s"
        )
    assert warm.warm_started and not cold.warm_started
    assert warm.iterations == FitConfig().warm_iterations and cold.iterations == FitConfig().camera_iterations + FitConfig().iterations
    assert e_warm <= e_cold + 5.0
    assert warm.keypoint_error_px < 3.0 and warm.silhouette_iou > 0.88
    # Shape is frozen while warm; the pose did move towards frame B (A's own pose explains B worse).
    assert torch.equal(warm.params.shape, frames.fit_a.params.shape)
    assert not torch.equal(warm.params.pose, frames.fit_a.params.pose)
    assert warm.residuals()["warm_started"] is True
    with torch.no_grad():
        np.testing.assert_allclose(anny_body(warm.params).vertices[0].numpy(), warm.vertices, atol=1e-5)


def test_bad_warm_result_falls_back_to_the_cold_fit(anny_body: AnnyBody, frames: Frames) -> None:
    """A start turned 180 degrees about the vertical cannot be refined in 40 steps: the cold fit runs."""
    a = frames.fit_a.params
    turned = roma.rotvec_to_rotmat(a.global_orient[0]) @ roma.rotvec_to_rotmat(torch.tensor([0.0, math.pi, 0.0]))
    bad = BodyParams(roma.rotmat_to_rotvec(turned)[None], a.transl.clone(), a.pose.clone(), a.shape.clone())
    fit = fit_body(frames.b, frames.K, anny_body, init=bad)
    assert not fit.warm_started
    assert fit.iterations == FitConfig().warm_iterations + FitConfig().camera_iterations + FitConfig().iterations  # the discarded warm attempt is counted
    np.testing.assert_allclose(fit.vertices, frames.cold_b.vertices, atol=1e-5)  # exactly the cold fit


def test_warm_start_params_accepts_the_next_frame(anny_body: AnnyBody, frames: Frames) -> None:
    init = warm_start_params(frames.fit_a, frames.b, anny_body)
    assert init is not None and init is not frames.fit_a.params
    for got, want in zip((init.global_orient, init.transl, init.pose, init.shape), (frames.fit_a.params.global_orient, frames.fit_a.params.transl, frames.fit_a.params.pose, frames.fit_a.params.shape)):
        assert torch.equal(got, want)
    assert warm_start_params(None, frames.b, anny_body) is None


@pytest.mark.parametrize("transl", [(0.6, 0.0, 0.0), (0.0, 0.0, -1.5)], ids=["walked_sideways", "came_closer"])
def test_warm_start_params_rejects_a_person_who_moved_far(anny_body: AnnyBody, frames: Frames, transl) -> None:
    moved = next_frame(anny_body, frames.params_b, degrees=0.0, transl=transl)
    _, far = render_case(anny_body, moved, frames.K)
    assert warm_start_params(frames.fit_a, far, anny_body) is None


def test_warm_start_params_rejects_a_frame_without_shoulders(anny_body: AnnyBody, frames: Frames) -> None:
    lm = frames.b.landmarks_2d.copy()
    lm[:, 2] = 0.0
    blind = Perception(**{**frames.b.__dict__, "landmarks_2d": lm})
    assert warm_start_params(frames.fit_a, blind, anny_body) is None


def test_init_from_another_body_model(tmp_path, anny_body: AnnyBody, frames: Frames) -> None:
    """`warm_start_params` returns None for another model's fit; `fit_body` raises ValueError for its params."""
    from hgm_core.body import SmplxBody
    from tests.test_body_smplx import write_synthetic_smplx

    smplx = SmplxBody(write_synthetic_smplx(tmp_path / "SMPLX_NEUTRAL.npz"))
    as_smplx: BodyFit = replace(frames.fit_a, body_model=smplx.name)
    assert warm_start_params(as_smplx, frames.b, anny_body) is None
    assert warm_start_params(frames.fit_a, frames.b, smplx) is None
    with pytest.raises(ValueError, match="anny"):
        fit_body(frames.b, frames.K, anny_body, init=smplx.rest_params())
    with pytest.raises(ValueError, match="batch-1"):
        fit_body(frames.b, frames.K, anny_body, init=anny_body.rest_params(batch_size=2))
