"""`SmplxBody`: SMPL-X through the `smplx` package, from model files the user points to.

SMPL-X files are licence-gated (https://smpl-x.is.tue.mpg.de); nothing here downloads them. Its
body frame already is the shared one (y up, facing +z), and its rest pose is the T-pose. The 21
body joints are articulated; hands, jaw and eyes stay at their flat rest pose. Keypoints use
SMPL-X's own joints and its extra vertex landmarks (nose, eyes, ears, toes, heels); COCO hips
are taken as SMPL-X's hip joints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import roma
import torch

from hgm_core.body.base import COCO_KEYPOINT_NAMES, BodyModel, BodyOutput, JointLimits

NUM_BODY_JOINTS = 22
"""pelvis + 21 articulated body joints, the first 22 of `smplx.joint_names.JOINT_NAMES`."""


class SmplxBody(BodyModel):
    """SMPL-X as a `BodyModel`.

    Args:
        model_path: an `SMPLX_*.npz` / `.pkl` file, or a folder holding `SMPLX_{GENDER}.npz`.
        gender: "neutral", "male" or "female" (only used with a folder).
        num_betas: length of `BodyParams.shape`.
    """

    name = "smplx"

    def __init__(self, model_path: str | Path, gender: str = "neutral", num_betas: int = 10) -> None:
        super().__init__()
        import smplx
        from smplx.joint_names import JOINT_NAMES

        path = Path(model_path)
        if not path.exists():
            raise FileNotFoundError(f"SMPL-X model not found: {path} (licensed files: https://smpl-x.is.tue.mpg.de)")
        ext = path.suffix.lstrip(".") if path.is_file() else "npz"
        self.smplx = smplx.SMPLX(
            str(path), gender=gender, ext=ext, num_betas=num_betas, use_pca=False, flat_hand_mean=True, dtype=torch.float32
        )
        self.shape_dim = num_betas
        self.joint_names = tuple(JOINT_NAMES[:NUM_BODY_JOINTS])
        self.pose_joint_names = self.joint_names[1:]
        self.joint_parents = tuple(int(p) for p in self.smplx.parents[:NUM_BODY_JOINTS].tolist())  # root: -1
        self.register_buffer("_keypoint_index", torch.tensor([JOINT_NAMES.index(k) for k in COCO_KEYPOINT_NAMES]))
        self.faces = torch.as_tensor(np.asarray(self.smplx.faces, np.int64))
        self.skinning_joint_names = tuple(JOINT_NAMES[: len(self.smplx.parents)])
        self.skinning_parents = tuple(int(p) for p in self.smplx.parents.tolist())
        rest = self.rest_params()
        with torch.no_grad():
            joints = self._body_frame(rest.pose, rest.shape).joints[0]
        self.joint_limits = JointLimits(self.pose_joint_names, dict(zip(self.joint_names, joints.numpy().astype(np.float64))))

    @property
    def num_vertices(self) -> int:
        return int(self.smplx.v_template.shape[0])

    def _body_frame(self, pose: torch.Tensor, shape: torch.Tensor) -> BodyOutput:
        B = max(pose.shape[0], shape.shape[0])
        zeros = lambda n: pose.new_zeros(B, n)  # noqa: E731
        out = self.smplx(
            betas=shape.expand(B, -1),
            body_pose=pose.expand(B, -1),
            global_orient=zeros(3),
            transl=zeros(3),
            jaw_pose=zeros(3),
            leye_pose=zeros(3),
            reye_pose=zeros(3),
            left_hand_pose=zeros(45),
            right_hand_pose=zeros(45),
            expression=zeros(self.smplx.num_expression_coeffs),
        )
        joints = out.joints[:, :NUM_BODY_JOINTS]
        return BodyOutput(out.vertices, joints, out.joints[:, self._keypoint_index])

    @property
    def skinning_weights(self) -> torch.Tensor:  # type: ignore[override]
        """`[V, 55]` SMPL-X's own LBS weights (a buffer of the wrapped module, so it follows `.to()`)."""
        return self.smplx.lbs_weights

    def _shaped(self, shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unposed vertices `[B, V, 3]` and joints `[B, 55, 3]` of `shape [B, S]` (neutral expression)."""
        from smplx.lbs import blend_shapes, vertices2joints

        vertices = self.smplx.v_template + blend_shapes(shape, self.smplx.shapedirs)
        return vertices, vertices2joints(self.smplx.J_regressor, vertices)

    def _posed_bones(self, pose: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        from smplx.lbs import batch_rigid_transform

        B = max(pose.shape[0], shape.shape[0])
        _, joints = self._shaped(shape.expand(B, -1))
        rotvecs = pose.new_zeros(B, len(self.skinning_joint_names), 3)  # root, hands, jaw, eyes at rest
        rotvecs[:, 1:NUM_BODY_JOINTS] = pose.expand(B, -1).reshape(B, -1, 3)
        _, relative = batch_rigid_transform(roma.rotvec_to_rotmat(rotvecs), joints, self.smplx.parents, dtype=pose.dtype)
        # smplx returns the skinning transforms (world @ rest^-1); the rest pose is [I | joint].
        return relative @ _translations(joints)

    def _bind_pose(self, shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vertices, joints = self._shaped(shape)
        return vertices, _translations(joints)


def _translations(points: torch.Tensor) -> torch.Tensor:
    """`[..., 4, 4]` pure translations by `points [..., 3]`."""
    T = torch.eye(4, dtype=points.dtype, device=points.device).expand(*points.shape[:-1], 4, 4).clone()
    T[..., :3, 3] = points
    return T
