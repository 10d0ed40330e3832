"""fit_body when BlazePose misreads the legs: leg landmarks folded into the torso (a long dress read as
sitting) are dropped, and limb joints without keypoints keep to the rest pose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch
from dataclasses import replace

from hgm_core.body import AnnyBody, BodyParams, FitConfig, fit_body, pa_mpjpe
from hgm_core.body.fit import LEGS, fit_targets, _unseen_joints
from hgm_core.perception import LANDMARK_NAMES, default_intrinsics
from tests.test_fit import IMAGE_SIZE, render_case

LEG_LANDMARKS = ("left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
                 "left_foot_index", "right_foot_index")  # fmt: skip


@pytest.fixture(scope="module")
def anny_body() -> AnnyBody:
    return AnnyBody()


@pytest.fixture(scope="module")
def standing(anny_body: AnnyBody):
    """An upright person in the rest pose (legs straight), 3 m away, and its perfect perception."""
    K = default_intrinsics(*IMAGE_SIZE)
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ roma.rotvec_to_rotmat(torch.tensor([0.0, math.radians(15), 0.0]))
    params = BodyParams(roma.rotmat_to_rotvec(R)[None], torch.tensor([[0.0, 0.1, 3.0]]), torch.zeros(1, anny_body.pose_dim),
                        anny_body.shape_from_phenotypes({"height": 0.55}))  # fmt: skip
    gt, perception = render_case(anny_body, params, K)
    return K, gt, perception


def _folded(perception):
    """BlazePose's misreading: the leg landmarks (2D and 3D) folded up to the hips, fully visible."""
    lm2, lm3 = perception.landmarks_2d.copy(), perception.landmarks_3d.copy()
    hips2 = lm2[[LANDMARK_NAMES.index("left_hip"), LANDMARK_NAMES.index("right_hip")], :2].mean(0)
    for i, name in enumerate(LEG_LANDMARKS):
        j = LANDMARK_NAMES.index(name)
        lm2[j, :2] = hips2 + [(-1) ** i * 10.0, -20.0 + 3 * i]
        lm3[j] = [(-1) ** i * 0.1, -0.1, -0.3]
    return replace(perception, landmarks_2d=lm2, landmarks_3d=lm3)


def test_folded_leg_landmarks_are_dropped_unless_the_person_leaves_the_image(anny_body: AnnyBody, standing) -> None:
    _, _, perception = standing
    names, cfg = anny_body.keypoint_names, FitConfig()
    legs = [names.index(n) for n in LEGS]
    assert (fit_targets(perception, names, cfg).weight[legs] > 0).all()  # good landmarks are kept
    assert (fit_targets(_folded(perception), names, cfg).weight[legs] == 0).all()
    # A person cut off by the image's bottom edge continues below it: nothing to compare with.
    w, h = perception.image_size
    cut = replace(_folded(perception), bbox=perception.bbox[:3] + (h,))
    assert (fit_targets(cut, names, cfg).weight[legs] > 0).all()


def test_unseen_joints_follow_the_keypoints_below_them(anny_body: AnnyBody) -> None:
    names = anny_body.keypoint_names
    weight = torch.ones(len(names))
    for n in ("left_ankle", "left_big_toe", "left_small_toe", "left_heel", "right_wrist"):
        weight[names.index(n)] = 0.0
    unseen = {j for j, u in zip(anny_body.pose_joint_names, _unseen_joints(anny_body.pose_joint_names, names, weight)) if u}
    assert unseen == {"left_knee", "left_ankle", "right_elbow"}  # the left knee still shows the hip's rotation


def test_fit_with_folded_leg_landmarks_keeps_the_legs_straight(anny_body: AnnyBody, standing) -> None:
    K, gt, perception = standing
    folded = _folded(perception)
    fit = fit_body(folded, K, anny_body)
    trusting = fit_body(folded, K, anny_body, config=FitConfig(legs_max_gap=math.inf, unseen_joint_weight=0.0))
    pa = lambda f: 1000 * pa_mpjpe(f.keypoints, gt.keypoints[0].numpy())  # noqa: E731
    assert pa(fit) < 30.0, pa(fit)  # the outline and the rest pose give straight legs
    assert pa(trusting) > 2 * pa(fit), (pa(trusting), pa(fit))  # believing the landmarks folds them
    foot = anny_body.keypoint_names.index("left_ankle")
    assert np.linalg.norm(fit.keypoints[foot] - gt.keypoints[0, foot].numpy()) < np.linalg.norm(trusting.keypoints[foot] - gt.keypoints[0, foot].numpy())


def test_the_3d_landmarks_lean_turns_the_upper_body_only(anny_body: AnnyBody, standing) -> None:
    _, _, perception = standing
    names = anny_body.keypoint_names
    straight = fit_targets(perception, names, FitConfig(landmarks_3d_lean_deg=0.0)).xyz.numpy()
    leaned = fit_targets(perception, names, FitConfig(landmarks_3d_lean_deg=6.0)).xyz.numpy()
    legs = [names.index(n) for n in LEGS]
    np.testing.assert_allclose(leaned[legs], straight[legs])  # BlazePose's legs are not tilted: they stay
    hips = straight[[names.index("left_hip"), names.index("right_hip")]].mean(0)
    for name in ("nose", "left_shoulder", "right_wrist"):
        i = names.index(name)
        a, b = straight[i] - hips, leaned[i] - hips
        assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(b), rel=1e-5)  # a turn about the hips
        assert math.degrees(math.acos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))) > 1.0
