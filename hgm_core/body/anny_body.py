"""`AnnyBody`: the default body model (anny 0.6.2, Apache-2.0 code, CC0 MakeHuman data).

anny is Z-up with the body facing -y; this wrapper rotates it into the shared body frame (y up,
facing +z, x to the body's left) and exposes 19 articulated joints (twist, finger, toe, eye bones
stay at rest), 6 phenotype shape parameters and anny's COCO-WholeBody keypoint regressor.

Only the native "anny" / "anny-full" topologies are allowed: "smpl" / "smplx" download
non-commercial data at run time. The model cache lives under `hgm_core.paths.cache_dir()/anny`
(built once by `hgm setup`, ~1 min).
"""

from __future__ import annotations

import numpy as np
import roma
import torch

from hgm_core.body.base import COCO_KEYPOINT_NAMES, BodyModel, BodyOutput, JointLimits, SampledBody
from hgm_core.body.priors import anny_adult_population
from hgm_core.io.mesh import outward_faces

ANNY_FROM_BODY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""Rotation taking body-frame vectors (y up, facing +z) to anny's frame (z up, facing -y)."""

ANNY_JOINTS: tuple[tuple[str, str], ...] = (
    ("pelvis", "root"), ("left_hip", "upperleg01.L"), ("right_hip", "upperleg01.R"),
    ("spine1", "spine04"), ("left_knee", "lowerleg01.L"), ("right_knee", "lowerleg01.R"),
    ("spine2", "spine02"), ("left_ankle", "foot.L"), ("right_ankle", "foot.R"), ("spine3", "spine01"),
    ("neck", "neck01"), ("left_collar", "clavicle.L"), ("right_collar", "clavicle.R"), ("head", "head"),
    ("left_shoulder", "upperarm01.L"), ("right_shoulder", "upperarm01.R"), ("left_elbow", "lowerarm01.L"),
    ("right_elbow", "lowerarm01.R"), ("left_wrist", "wrist.L"), ("right_wrist", "wrist.R"),
)  # fmt: skip
"""(SMPL-style joint name, anny bone whose head is that joint). All but the pelvis are articulated."""

PHENOTYPE_CENTER = {"gender": 0.5, "age": 2.0 / 3.0, "muscle": 0.5, "weight": 0.5, "height": 0.5, "proportions": 0.5}
"""Phenotypes at `shape = 0`: anny's mid values, except age 2/3 = its "young adult" anchor (0.5 is a teenager)."""

SHAPE_PRIOR_WEIGHTS = {"gender": 0.5, "age": 4.0, "muscle": 1.0, "weight": 1.0, "height": 0.5, "proportions": 1.0}
"""Per-phenotype weight of the shape prior: age is held near adult (a child far away and an adult
nearby look alike in one image), height and gender vary most among adults."""


class AnnyBody(BodyModel):
    """anny as a `BodyModel` (13,718 vertices for the default topology).

    `shape` holds 6 unconstrained values; phenotype `= sigmoid(shape + logit(PHENOTYPE_CENTER))`
    in anny's order (gender, age, muscle, weight, height, proportions); see `phenotypes()`.
    """

    name = "anny"

    def __init__(self, topology: str = "anny") -> None:
        super().__init__()
        if topology not in ("anny", "anny-full"):
            raise ValueError(f"anny topology {topology!r} is not offline-safe; use 'anny' or 'anny-full'")
        import anny  # heavy; its cache lives where ANNY_CACHE_DIR points (hgm_core.runtime.configure_process)

        self.anny = anny.Anny(topology=topology).to(torch.float32)
        self.phenotype_labels = tuple(self.anny.phenotype_labels)
        self.shape_dim = len(self.phenotype_labels)
        bones = list(self.anny.bone_labels)
        self.joint_names = tuple(name for name, _ in ANNY_JOINTS)
        self.pose_joint_names = self.joint_names[1:]
        joint_bones = [bones.index(bone) for _, bone in ANNY_JOINTS]
        self.register_buffer("_joint_bones", torch.tensor(joint_bones))
        self.joint_parents = tuple(_nearest_kept_ancestor(list(self.anny.bone_parents), joint_bones, b) for b in joint_bones)
        self._num_bones = len(bones)

        center = torch.tensor([PHENOTYPE_CENTER[k] for k in self.phenotype_labels])
        self.register_buffer("_shape_offset", torch.logit(center))
        self.register_buffer("_shape_weights", torch.tensor([SHAPE_PRIOR_WEIGHTS[k] for k in self.phenotype_labels]))
        regressor = anny.KeypointsRegressor.coco(self.anny, labels=list(COCO_KEYPOINT_NAMES))
        self.register_buffer("_keypoint_weights", regressor.regression_weights.to(torch.float32))
        self.register_buffer("_anny_from_body", ANNY_FROM_BODY.clone())
        self.skinning_joint_names = tuple(bones)
        self.skinning_parents = tuple(int(p) for p in self.anny.bone_parents)
        dense = torch.zeros(self.anny.vertex_bone_weights.shape[0], len(bones))
        dense.scatter_add_(1, self.anny.vertex_bone_indices.long(), self.anny.vertex_bone_weights.to(torch.float32))
        self.register_buffer("skinning_weights", dense)
        body_from_anny = torch.eye(4)
        body_from_anny[:3, :3] = ANNY_FROM_BODY.T
        self.register_buffer("_body_from_anny_4x4", body_from_anny)

        faces = self.anny.get_triangular_faces().long()
        rest = self.rest_params()
        with torch.no_grad():
            out = self._body_frame(rest.pose, rest.shape)
        self.faces = torch.from_numpy(outward_faces(out.vertices[0].numpy(), faces.numpy()))
        rest_joints = dict(zip(self.joint_names, out.joints[0].numpy().astype(np.float64)))
        self.joint_limits = JointLimits(self.pose_joint_names, rest_joints)
        self.shape_population = anny_adult_population(self)

    def phenotypes(self, shape: torch.Tensor) -> torch.Tensor:
        """`[B, 6]` anny phenotype values in [0, 1] for `shape [B, 6]`."""
        return torch.sigmoid(shape + self._shape_offset)

    def shape_from_phenotypes(self, phenotypes: dict[str, float]) -> torch.Tensor:
        """`[1, 6]` shape for named phenotype values (missing names take `PHENOTYPE_CENTER`)."""
        values = torch.tensor([[phenotypes.get(k, PHENOTYPE_CENTER[k]) for k in self.phenotype_labels]])
        return torch.logit(values.clamp(1e-4, 1 - 1e-4)) - self._shape_offset

    def shape_prior(self, shape: torch.Tensor) -> torch.Tensor:
        return (self._shape_weights * shape.square()).sum(-1)

    def anny_deltas(self, pose: torch.Tensor, batch_size: int) -> torch.Tensor:
        """`[B, bones, 4, 4]` anny "local-ref" delta transforms for `pose [B or 1, P]`."""
        # anny's "local-ref" deltas are rotations about world-aligned axes at each bone's head:
        # the same convention as `pose`, up to the change of axes.
        rotvec_anny = pose.reshape(pose.shape[0], -1, 3) @ self._anny_from_body.T
        deltas = torch.eye(4, dtype=pose.dtype).repeat(batch_size, self._num_bones, 1, 1)
        deltas[:, self._joint_bones[1:], :3, :3] = roma.rotvec_to_rotmat(rotvec_anny).expand(batch_size, -1, -1, -1)
        return deltas

    def _anny_forward(self, pose: torch.Tensor, shape: torch.Tensor) -> dict[str, torch.Tensor]:
        """anny's own output (its frame): posed `vertices`, `bone_poses`, and the `rest_*` bind pose."""
        B = max(pose.shape[0], shape.shape[0])
        return self.anny(self.anny_deltas(pose, B), phenotype_kwargs=self.phenotypes(shape).expand(B, -1))

    def _make_sampled(self, vertex_index: torch.Tensor) -> SampledBody:
        from hgm_core.body.anny_reduced import ReducedAnny

        return ReducedAnny(self, vertex_index)

    def _posed_bones(self, pose: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return self._body_from_anny_4x4 @ self._anny_forward(pose, shape)["bone_poses"]

    def _bind_pose(self, shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # anny's bind pose is its rest mesh, not the zero-`pose` A-pose: zero deltas take every bone to
        # its reference orientation, which differs from the rest orientation the weights were painted on.
        out = self._anny_forward(shape.new_zeros(shape.shape[0], self.pose_dim), shape)
        return out["rest_vertices"] @ self._anny_from_body, self._body_from_anny_4x4 @ out["rest_bone_poses"]

    def _body_frame(self, pose: torch.Tensor, shape: torch.Tensor) -> BodyOutput:
        out = self._anny_forward(pose, shape)
        body_from_anny = self._anny_from_body  # row vectors: x_body = x_anny @ A
        vertices = out["vertices"] @ body_from_anny
        joints = out["bone_poses"][:, self._joint_bones, :3, 3] @ body_from_anny
        keypoints = torch.einsum("kv,bvd->bkd", self._keypoint_weights, vertices)
        return BodyOutput(vertices, joints, keypoints)


def _nearest_kept_ancestor(parents: list[int], kept: list[int], bone: int) -> int:
    """Index in `kept` of the closest ancestor of `bone` that is kept, or -1 (the root)."""
    p = parents[bone]
    while p >= 0 and p not in kept:
        p = parents[p]
    return kept.index(p) if p >= 0 else -1
