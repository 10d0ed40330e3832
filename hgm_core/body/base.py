"""The `BodyModel` interface shared by every body model, its parameter and output types, and the
anatomical joint-limit pose prior.

Frames and units (all models):
- The *body frame* is SMPL's: metres, y up, the body facing +z, x towards the body's left. Its
  origin is the root (pelvis) joint of the posed body, so `global_orient` turns the body about the
  pelvis.
- `forward` returns points in the *output frame*: `X = R(global_orient) @ X_body + transl`. The
  fitter uses the camera's optical frame (x right, y down, z forward), where an upright person
  facing the camera has `global_orient = (pi, 0, 0)`.
- `pose` holds one axis-angle `[3]` per articulated joint (`pose_joint_names`), each expressed in
  body-frame axes at the rest pose (SMPL's convention), so the same joint-limit table serves every
  model; zeros give the model's rest pose (Anny: A-pose, SMPL-X: T-pose).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, fields

import numpy as np
import roma
import torch

from hgm_core.body.priors import ShapePopulation

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle", "left_big_toe", "right_big_toe", "left_small_toe",
    "right_small_toe", "left_heel", "right_heel",
)  # fmt: skip
"""COCO-WholeBody body + foot keypoints (17 + 6): the keypoint order of every body model here."""


@dataclass
class BodyParams:
    """Parameters of a batch of B bodies (see the module docstring for frames).

    Attributes:
        global_orient: `[B, 3]` axis-angle, body frame -> output frame.
        transl: `[B, 3]` metres, where the pelvis lands in the output frame.
        pose: `[B, 3 * len(model.pose_joint_names)]` per-joint axis-angles; zeros = rest pose.
        shape: `[B, model.shape_dim]`; zeros = the model's mean body.
    """

    global_orient: torch.Tensor
    transl: torch.Tensor
    pose: torch.Tensor
    shape: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.transl.shape[0]

    def detach(self) -> "BodyParams":
        return BodyParams(*(getattr(self, f.name).detach().clone() for f in fields(self)))

    def to_dict(self) -> dict[str, list]:
        """JSON-serialisable nested lists, one entry per field."""
        return {f.name: getattr(self, f.name).detach().cpu().tolist() for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, list], dtype: torch.dtype = torch.float32) -> "BodyParams":
        return cls(*(torch.tensor(data[f.name], dtype=dtype) for f in fields(cls)))


@dataclass(frozen=True)
class BodyOutput:
    """Posed bodies in the output frame.

    Attributes:
        vertices: `[B, V, 3]`; joints: `[B, J, 3]` in `joint_names` order;
        keypoints: `[B, K, 3]` in `keypoint_names` order.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    keypoints: torch.Tensor


def place(out: BodyOutput, params: BodyParams) -> BodyOutput:
    """Body-frame output (pelvis anywhere) -> output frame: `X = R(global_orient) @ (X - pelvis) + transl`."""
    root = out.joints[:, :1]
    R = roma.rotvec_to_rotmat(params.global_orient)
    t = params.transl[:, None]
    moved = lambda x: (x - root) @ R.transpose(1, 2) + t  # noqa: E731
    return BodyOutput(moved(out.vertices), moved(out.joints), moved(out.keypoints))


def place_bones(bones: torch.Tensor, params: BodyParams) -> torch.Tensor:
    """Body-frame joint transforms `[B, J, 4, 4]` (joint 0 at the pelvis, anywhere) -> output frame,
    the placement `place` applies to points."""
    R = roma.rotvec_to_rotmat(params.global_orient)
    M = torch.zeros_like(bones[:, 0])
    M[:, :3, :3] = R
    M[:, :3, 3] = params.transl - (R @ bones[:, 0, :3, 3:])[..., 0]  # the pelvis lands on transl
    M[:, 3, 3] = 1
    return M[:, None] @ bones


class BodyModel(torch.nn.Module, abc.ABC):
    """A parametric body (float32, metres). Subclasses implement `_body_frame` and set the attributes.

    Attributes:
        name: short identifier recorded with fits and checkpoints ("anny", "smplx").
        faces: `[F, 3]` int64 triangles, counter-clockwise seen from outside.
        joint_names / joint_parents: the skeleton returned in `BodyOutput.joints` (parent -1 = root).
        keypoint_names: order of `BodyOutput.keypoints` (`COCO_KEYPOINT_NAMES`).
        pose_joint_names: articulated joints, one axis-angle each in `BodyParams.pose`.
        shape_dim: length of `BodyParams.shape`.
        skinning_joint_names / skinning_parents: the model's own linear-blend-skinning bones (anny: its
            104 bones, SMPL-X: its 55 joints), a superset of the skeleton; joint 0 is the root, whose
            origin is the pelvis. `bone_transforms` and `bind_pose` are in this order.
        skinning_weights: `[V, len(skinning_joint_names)]` per-vertex LBS weights, rows summing to 1.
        shape_population: the adult population's shape distribution when the model has one (anny:
            its calibrated phenotypes); the body fit reports its stature spread as the relative
            uncertainty of the distance (one image does not show a person's size).

    Skinning: with `vertices, rest = bind_pose(shape)`, linear blend skinning of `vertices` by
    `skinning_weights` and `bone_transforms(params) @ inverse(rest)` gives `forward(params).vertices`
    (exactly for anny; for SMPL-X up to its pose-corrective blend shapes, which plain LBS leaves out).
    See `hgm_core.body.skinning`.
    """

    name: str
    faces: torch.Tensor
    joint_names: tuple[str, ...]
    joint_parents: tuple[int, ...]
    keypoint_names: tuple[str, ...] = COCO_KEYPOINT_NAMES
    pose_joint_names: tuple[str, ...]
    shape_dim: int
    skinning_joint_names: tuple[str, ...]
    skinning_parents: tuple[int, ...]
    skinning_weights: torch.Tensor
    shape_population: ShapePopulation | None = None

    def __init__(self) -> None:
        super().__init__()
        self._surface_samples: dict[int, torch.Tensor] = {}
        self._sampled: dict[int, SampledBody] = {}

    @property
    def num_vertices(self) -> int:
        return int(self.faces.max()) + 1

    @property
    def pose_dim(self) -> int:
        return 3 * len(self.pose_joint_names)

    @property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(parent, child) joint index pairs of the skeleton."""
        return tuple((p, c) for c, p in enumerate(self.joint_parents) if p >= 0)

    def rest_params(self, batch_size: int = 1) -> BodyParams:
        """Identity orientation, zero translation, rest pose, mean shape (the body frame itself)."""
        z = lambda n: torch.zeros(batch_size, n)  # noqa: E731
        return BodyParams(z(3), z(3), z(self.pose_dim), z(self.shape_dim))

    def surface_samples(self, count: int) -> torch.Tensor:
        """`[min(count, used vertices)]` int64 vertex indices spread evenly over the rest mesh
        (farthest-point sampling), computed once per `count` and kept by this model."""
        if count not in self._surface_samples:
            with torch.no_grad():
                verts = self(self.rest_params()).vertices[0]
            used = torch.unique(self.faces)
            verts = verts[used]
            chosen = torch.zeros(min(count, len(used)), dtype=torch.long)
            dist = torch.full((len(verts),), float("inf"))
            for i in range(1, len(chosen)):
                dist = torch.minimum(dist, (verts - verts[chosen[i - 1]]).square().sum(-1))
                chosen[i] = torch.argmax(dist)
            self._surface_samples[count] = used[chosen]
        return self._surface_samples[count]

    def sampled(self, count: int) -> "SampledBody":
        """This model evaluated at `surface_samples(count)` only (the body fit's evaluator), built
        once per `count` and kept by this model."""
        if count not in self._sampled:
            self._sampled[count] = self._make_sampled(self.surface_samples(count))
        return self._sampled[count]

    def _make_sampled(self, vertex_index: torch.Tensor) -> "SampledBody":
        """A `SampledBody` on `vertex_index`; models with a cheaper exact evaluator override this."""
        return SampledBody(self, vertex_index)

    @abc.abstractmethod
    def _body_frame(self, pose: torch.Tensor, shape: torch.Tensor) -> BodyOutput:
        """Posed vertices, joints, keypoints `[B, *, 3]` in the body frame (pelvis not yet at the origin)."""

    def forward(self, params: BodyParams) -> BodyOutput:  # type: ignore[override]
        """Pose and place the bodies: `X = R(global_orient) @ (X_body - pelvis) + transl`."""
        if params.pose.shape[-1] != self.pose_dim or params.shape.shape[-1] != self.shape_dim:
            raise ValueError(
                f"{self.name}: pose must be [B, {self.pose_dim}] and shape [B, {self.shape_dim}], "
                f"got {list(params.pose.shape)} and {list(params.shape.shape)}"
            )
        return place(self._body_frame(params.pose, params.shape), params)

    @abc.abstractmethod
    def _posed_bones(self, pose: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """`[B, J, 4, 4]` rigid world transforms of the skinning joints in the body frame (pelvis not yet at the origin)."""

    @abc.abstractmethod
    def _bind_pose(self, shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pose the skinning weights were painted on, in the body frame (pelvis not yet at the
        origin): vertices `[B, V, 3]` and skinning joint transforms `[B, J, 4, 4]`."""

    def bone_transforms(self, params: BodyParams) -> torch.Tensor:
        """`[B, J, 4, 4]` rigid world transforms of the skinning joints, placed like `forward` (output frame)."""
        return place_bones(self._posed_bones(params.pose, params.shape), params)

    def bind_pose(self, shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The canonical (bind) pose for `shape [B, S]`: vertices `[B, V, 3]` and skinning joint
        transforms `[B, J, 4, 4]` in the body frame with the bind pose's pelvis at the origin."""
        vertices, T = self._bind_pose(shape)
        root = T[:, 0, :3, 3].clone()
        T = T.clone()
        T[:, :, :3, 3] -= root[:, None]
        return vertices - root[:, None], T

    def pose_prior(self, pose: torch.Tensor) -> torch.Tensor:
        """`[B]` energy of `pose [B, P]`: squared joint-limit violations (radians) + a weak L2 pull to rest."""
        return self.joint_limits(pose) + 1e-2 * pose.square().sum(-1)

    def shape_prior(self, shape: torch.Tensor) -> torch.Tensor:
        """`[B]` energy of `shape [B, S]` (a standard-normal prior unless a model knows better)."""
        return shape.square().sum(-1)

    joint_limits: "JointLimits"


class SampledBody(torch.nn.Module):
    """A `BodyModel`'s joints, keypoints and the vertices `vertex_index` (`[N]`), split into a shape
    part `rest(shape)` and a pose part `posed(rest, params)`, so an optimiser that holds the shape
    still computes the shape part once. `posed(rest(params.shape), params)` equals `model(params)`
    with vertices `[B, N, 3]`. This generic one runs the whole model; subclasses do less work.
    """

    def __init__(self, model: BodyModel, vertex_index: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("vertex_index", vertex_index.long())

    def rest(self, shape: torch.Tensor) -> object:
        """Whatever `posed` needs from `shape [B, S]` (here the shape itself)."""
        return shape

    def posed(self, rest: object, params: BodyParams) -> BodyOutput:
        """The bodies of `params` with the shape `rest` was made from."""
        out = self.model(BodyParams(params.global_orient, params.transl, params.pose, rest))
        return BodyOutput(out.vertices[:, self.vertex_index], out.joints, out.keypoints)

    def forward(self, params: BodyParams) -> BodyOutput:  # type: ignore[override]
        return self.posed(self.rest(params.shape), params)


# Limits in degrees for the LEFT side and the spine, with the arms hanging down ("anatomical
# neutral"), as (min, max) of the axis-angle components about body x (left), y (up), z (forward).
# Positive x bends a joint forward for the spine/neck and backward for a leg hanging down, so hip
# flexion is negative x and knee flexion positive x; positive z lifts the left limbs sideways.
# Elbows (and knees) are hinges: their first column is the flexion axis of `_hinge_frame`.
_LIMITS_DEG: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "hip": ((-125, 30), (-45, 45), (-25, 60)),
    "knee": ((0, 150), (-15, 15), (-5, 5)),
    "ankle": ((-45, 30), (-20, 20), (-25, 25)),
    "foot": ((-20, 40), (-5, 5), (-5, 5)),
    "spine": ((-20, 35), (-25, 25), (-20, 20)),
    "neck": ((-35, 45), (-50, 50), (-30, 30)),
    "head": ((-30, 30), (-40, 40), (-25, 25)),
    "collar": ((-15, 15), (-20, 20), (-10, 25)),
    "shoulder": ((-170, 60), (-80, 80), (-30, 170)),
    "elbow": ((0, 150), (-80, 80), (-5, 5)),  # (flexion, twist about the forearm, sideways)
    "wrist": ((-70, 70), (-40, 40), (-70, 70)),
}


def _limit_key(joint: str) -> str:
    base = joint.removeprefix("left_").removeprefix("right_")
    return "spine" if base.startswith("spine") else base


def _hinge_frame(bone_dir: np.ndarray, flex_dir: np.ndarray) -> np.ndarray:
    """`[3, 3]` columns (flexion axis, bone direction, third): rotating about the axis swings the
    bone from `bone_dir` towards `flex_dir`."""
    d = bone_dir / np.linalg.norm(bone_dir)
    a = np.cross(d, flex_dir)
    a /= np.linalg.norm(a)
    return np.stack([a, d, np.cross(a, d)], axis=1)


class JointLimits(torch.nn.Module):
    """Soft anatomical joint limits: `[B]` sum of squared violations (radians) of each joint's
    axis-angle, read in its anatomical frame, against the `_LIMITS_DEG` box.

    Built from the model's rest joint positions (body frame), which fix the hinge axes of elbows
    and knees and how far the rest pose already lifts the arms (A-pose vs T-pose).
    """

    def __init__(self, pose_joint_names: tuple[str, ...], rest_joints: dict[str, np.ndarray]) -> None:
        super().__init__()
        lo, hi, frames = [], [], []
        for name in pose_joint_names:
            box = np.radians(np.array(_LIMITS_DEG[_limit_key(name)], np.float64))  # [3, 2]
            frame = np.eye(3)
            side = name.split("_")[0]
            key = _limit_key(name)
            if key in ("elbow", "knee"):
                upper = {"elbow": "shoulder", "knee": "hip"}[key]
                bone = rest_joints[name] - rest_joints[f"{side}_{upper}"]
                frame = _hinge_frame(bone, np.array([0.0, 0.0, 1.0 if key == "elbow" else -1.0]))
            elif key == "shoulder":
                arm = rest_joints[f"{side}_elbow"] - rest_joints[name]
                lift = math.atan2(abs(arm[0]), -arm[1])  # how far the rest pose already raises the arm
                box[2] -= lift
            if side == "right" and key not in ("elbow", "knee"):
                # Mirror x -> -x: an axial vector keeps its x component and flips y and z.
                box[1:] = -box[1:, ::-1]
            lo.append(box[:, 0])
            hi.append(box[:, 1])
            frames.append(frame)
        self.register_buffer("lo", torch.tensor(np.array(lo), dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(np.array(hi), dtype=torch.float32))
        self.register_buffer("frames", torch.tensor(np.array(frames), dtype=torch.float32))

    def local(self, pose: torch.Tensor) -> torch.Tensor:
        """`[B, J, 3]` axis-angles of `pose [B, 3J]` in each joint's anatomical frame."""
        r = pose.reshape(pose.shape[0], -1, 3)
        return torch.einsum("bjk,jkl->bjl", r, self.frames)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        r = self.local(pose)
        return ((self.lo - r).clamp(min=0).square() + (r - self.hi).clamp(min=0).square()).sum((1, 2))

