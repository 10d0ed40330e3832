"""fit_body on synthetic ground truth (Anny posed with known, plausible parameters) and on SMPL-X."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch

from hgm_core.body import AnnyBody, BodyModel, BodyParams, FitConfig, fit_body, mpjpe, pa_mpjpe, skeleton
from hgm_core.body.fit import BLAZEPOSE_FOR_KEYPOINT, mesh_mask
from hgm_core.perception import LANDMARK_NAMES, Perception, default_intrinsics

IMAGE_SIZE = (512, 512)

# Plausible poses as degrees about body axes (x left, y up, z forward); hinges as flexion angles.
POSES = [
    {"left_shoulder": (-30, 0, 35), "right_elbow": 70, "left_hip": (-35, 0, 0), "left_knee": 50, "spine1": (10, 0, 0), "neck": (0, 15, 0)},
    {"right_shoulder": (-60, 0, -20), "left_elbow": 40, "right_hip": (-20, 0, -10), "right_knee": 30, "left_knee": 10, "spine2": (5, 15, 0)},
    {"left_shoulder": (0, 0, 60), "right_shoulder": (0, 0, -60), "left_elbow": 90, "right_elbow": 90, "left_hip": (0, 0, 15), "right_hip": (0, 0, -15)},
]  # fmt: skip
SHAPES = [
    {"gender": 0.3, "height": 0.65, "weight": 0.6},
    {"gender": 0.8, "height": 0.4, "muscle": 0.6},
    {"gender": 0.5, "height": 0.55, "proportions": 0.6},
]
ORIENT_YAW_DEG = [20.0, -30.0, 0.0]
TRANSL = [(0.1, 0.15, 3.5), (-0.2, 0.1, 4.0), (0.0, 0.05, 3.0)]


def pose_vector(body: BodyModel, spec: dict) -> torch.Tensor:
    """`[1, P]` pose from a spec of per-joint degrees (3-tuples) or hinge flexion angles (floats)."""
    pose = torch.zeros(len(body.pose_joint_names), 3)
    for name, value in spec.items():
        j = body.pose_joint_names.index(name)
        if isinstance(value, tuple):
            pose[j] = torch.tensor(value, dtype=torch.float32) * math.pi / 180
        else:  # flexion about the hinge axis (first column of the joint's anatomical frame)
            pose[j] = body.joint_limits.frames[j][:, 0] * math.radians(value)
    return pose.reshape(1, -1)


def synthetic_case(body: BodyModel, i: int, shape: torch.Tensor, K: np.ndarray, noise_3d: float = 0.0, seed: int = 0):
    """GT params/output and a `Perception` with the GT keypoints projected and the GT mask."""
    yaw = roma.rotvec_to_rotmat(torch.tensor([0.0, math.radians(ORIENT_YAW_DEG[i]), 0.0]))
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ yaw  # upright, facing the camera, turned
    params = BodyParams(roma.rotmat_to_rotvec(R)[None], torch.tensor([TRANSL[i]]), pose_vector(body, POSES[i]), shape)
    with torch.no_grad():
        gt = body(params)
    kp = gt.keypoints[0].numpy()
    uvw = kp @ K.T
    uv = uvw[:, :2] / uvw[:, 2:]
    lm2 = np.zeros((33, 3), np.float32)
    lm3 = np.zeros((33, 3), np.float32)
    hips = kp[[body.keypoint_names.index("left_hip"), body.keypoint_names.index("right_hip")]].mean(0)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(body.keypoint_names):
        if name in BLAZEPOSE_FOR_KEYPOINT:
            j = LANDMARK_NAMES.index(BLAZEPOSE_FOR_KEYPOINT[name])
            lm2[j] = (uv[k, 0], uv[k, 1], 1.0)
            lm3[j] = kp[k] - hips + rng.normal(0, noise_3d, 3)
    mask = mesh_mask(gt.vertices[0].numpy(), body.faces.numpy(), K, IMAGE_SIZE)
    ys, xs = np.nonzero(mask)
    perception = Perception(
        image_size=IMAGE_SIZE, mask=mask, mask_source="given", landmarks_2d=lm2, landmarks_3d=lm3,
        bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), num_people=1, K=K,
        intrinsics_source="default_fov",
    )  # fmt: skip
    return params, gt, perception
