"""`fit_body`: SMPLify-style fit of a `BodyModel` to one `Perception` (keypoints + silhouette).

Energy (Adam, two stages like SMPLify: camera first, then everything):
- 2D keypoints: BlazePose landmarks mapped to the model's COCO keypoints by name, weighted by
  visibility, Geman-McClure robust, residuals measured in units of the person's box height.
- Silhouette: a two-sided chamfer between the projected body surface (a few thousand evenly
  spread vertices) and the person mask (`silhouette_distances`): samples outside the mask are
  pulled in along the mask's distance transform, and every mask contour pixel pulls its nearest
  sample. Every surface point of a body projects inside the body's silhouette, so this matches the
  mesh silhouette to the mask with no rendering, at full image resolution, with no depth order,
  in a few ms per step. (Splatting the surface with the Gaussian rasterizer gives the same
  signal blurred at a low grid resolution, at ~10x the cost on this CPU.)
- Priors: the model's anatomical joint limits (+ weak pull to rest), a firm pull to rest for limb
  joints with no keypoint below them (leg landmarks that BlazePose folded into the body are
  dropped first), and the shape prior; an optional weak term towards BlazePose's metric 3D
  landmarks, their upper body turned back by its calibrated forward lean (they carry limb depth,
  which 2D keypoints cannot).
Metric scale: depth is initialised from the torso's 3D size (mean body) over its 2D size and then
resolved by the body-shape prior; all outputs are in the camera's optical frame, metres.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence, TypeVar

import cv2
import numpy as np
import roma
import torch
from scipy.spatial import cKDTree

from hgm_core.body.anny_reduced import rotvec_to_rotmat
from hgm_core.body.base import BodyModel, BodyOutput, BodyParams, SampledBody
from hgm_core.body.depth import DepthTarget, depth_metres, depth_target, surface_residuals, visible
from hgm_core.body.ground import GroundPlane, contact_distance_sigma, ground_plane
from hgm_core.camera import project_points
from hgm_core.perception.perceive import LANDMARK_NAMES, Landmarks, Perception
from hgm_core.types import NoPersonError, Skeleton

PerceptionT = TypeVar("PerceptionT", Perception, Landmarks)
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

BLAZEPOSE_FOR_KEYPOINT = {
    "nose": "nose", "left_eye": "left_eye", "right_eye": "right_eye", "left_ear": "left_ear",
    "right_ear": "right_ear", "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
    "left_elbow": "left_elbow", "right_elbow": "right_elbow", "left_wrist": "left_wrist",
    "right_wrist": "right_wrist", "left_hip": "left_hip", "right_hip": "right_hip", "left_knee": "left_knee",
    "right_knee": "right_knee", "left_ankle": "left_ankle", "right_ankle": "right_ankle",
    "left_big_toe": "left_foot_index", "right_big_toe": "right_foot_index", "left_heel": "left_heel",
    "right_heel": "right_heel",
}  # fmt: skip
"""Body-model keypoint -> BlazePose landmark used as its 2D target (small toes have none)."""

BLAZEPOSE_OFFSETS: dict[str, tuple[float, float]] = {
    "nose": (-0.0002, -0.0033), "left_eye": (-0.0008, -0.0042), "right_eye": (0.0027, -0.0033),
    "left_ear": (-0.0105, 0.0063), "right_ear": (0.0128, 0.004), "left_shoulder": (0.0071, 0.0086),
    "right_shoulder": (-0.0034, 0.008), "left_elbow": (0.005, 0.0093), "right_elbow": (-0.0012, 0.0081),
    "left_wrist": (0.0006, -0.0028), "right_wrist": (0.0013, -0.0025), "left_hip": (0.003, 0.006),
    "right_hip": (-0.0021, 0.0036), "left_knee": (-0.0068, 0.002), "right_knee": (0.0068, 0.0014),
    "left_ankle": (-0.0011, -0.002), "right_ankle": (0.0019, -0.0018), "left_big_toe": (0.0004, 0.0048),
    "right_big_toe": (-0.0005, 0.0055), "left_heel": (-0.0063, -0.0072), "right_heel": (0.0059, -0.006),
}  # fmt: skip
"""Body-model keypoint -> where BlazePose puts its landmark relative to it in the image: `(along_left,
along_up)` in the person's 2D torso frame (`torso_frame_2d`), in person-box heights; the medians of
`bench/landmark_offsets.py` on 100 training subjects (seed 1000, generator v3). `fit_targets` takes
them off the landmarks (`FitConfig.landmark_offset_scale`)."""

TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
HEAD_AND_TORSO = TORSO + ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
FACE = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
FEET = ("left_heel", "right_heel", "left_big_toe", "right_big_toe")
"""Keypoints whose visibility tells that the feet, and so their floor contact, are in view."""
LEGS = ("left_knee", "right_knee", "left_ankle", "right_ankle") + FEET
"""Keypoints of the legs below the hips (`legs_max_gap`)."""
DOWNSTREAM = {"hip": ("knee", "ankle", "big_toe", "small_toe", "heel"), "knee": ("ankle", "big_toe", "small_toe", "heel"),
              "ankle": ("big_toe", "small_toe", "heel"), "shoulder": ("elbow", "wrist"), "elbow": ("wrist",)}  # fmt: skip
"""Limb joint -> the keypoints (same side) that show its rotation (`unseen_joint_weight`)."""


@dataclass(frozen=True)
class FitConfig:
    """Weights and schedule of `fit_body`.

    Attributes:
        camera_iterations / iterations: Adam steps of stage 1 (orientation + translation on the
            torso; a rigid body, next to free) and stage 2 (everything).
        shape_iterations: the first this many stage 2 steps also fit the shape; the rest hold it,
            which skips the shape-dependent part of the model and poses anny's 20-joint chain
            (`ReducedAnny`): 4.6 ms a step instead of 9.1 (1 thread, load ~2; stage 1 steps 0.8 ms,
            the rest of a fit ~60 ms). 30 + 80 steps at lr 0.06 fit as well as the former 40 + 160
            at lr 0.03 (bench/fit.py); fewer cost accuracy (fitbench, image only: 70 stage 2 steps
            MPJPE 195 -> 201 mm, 20 shape steps 205 mm; the distance follows the fitted size).
        lr: Adam learning rate (radians / shape units; translation uses `lr / 3` metres).
        min_visibility: landmarks below this BlazePose visibility (or outside the image) are ignored.
        robust_sigma: Geman-McClure scale of keypoint residuals, in person-box heights.
        face_weight: relative weight of the 5 face keypoints (they pin the head, not the body).
        silhouette_weight, pose_prior_weight, shape_prior_weight, landmarks_3d_weight: energy weights
            (`landmarks_3d_weight = 0` ignores the 3D landmarks). The pose prior weight decays from
            `pose_prior_weight * 10` to `pose_prior_weight` over stage 2, as in SMPLify.
        landmarks_3d_lean_deg: BlazePose's world landmarks above the hips are turned back by this
            (about the hips and their torso's left axis) before they are used: their torso leans
            further forward than the body model's keypoints, by 6.0 deg (sd 7.6) on 60 training
            subjects (hgm datagen seed 1000, view 0, real perceive; 4.8 deg on the bench's 24), and
            the fit inherited that lean. Their legs are not tilted and stay (`_lean_back`).
        landmark_offset_scale: how much of BlazePose's calibrated 2D offset from the body model's
            keypoints (`BLAZEPOSE_OFFSETS`) `fit_targets` takes off its landmarks (0: none). The two
            place joints differently (BlazePose's shoulders, elbows and hips sit 0.4-0.9 % of the
            person's height higher, its knees and heels 0.6-0.7 % and its ears 1.1-1.3 % nearer the
            midline), and a fit that matches them exactly bends the body to do so. On the fit
            benchmark (bench/fit.py, generator v3): PA-MPJPE 47.0 -> 44.8 mm and root-aligned 97.1 ->
            94.9 image only, MPJPE 46.7 -> 43.8 with depth; the image-only distance, which rests on
            the population's stature, moves from +59 to +75 mm (mean signed error).
        stature_sd: relative spread of adult stature for models without a `shape_population`
            (anny's calibration gives 0.056), used for `BodyFit.distance_sigma_m`.
        size_sd: relative error of the body's fitted size beside the population's spread (the
            metric landmarks and the silhouette move it): 24 bench subjects (bench/fit.py, seed
            7070) missed their distance by 7.2 % (robust sd) where the stature spread is 5.6 %.
        depth_weight / depth_sigma_m: weight and Geman-McClure scale (metres) of the depth term:
            the visible surface samples against an aligned depth image (`fit_body(depth=...)`).
        depth_sigma_start_m: the depth term's scale at the start of stage 2; it shrinks to
            `depth_sigma_m` over the stage (graduated non-convexity, like the pose prior's decay).
            A limb whose surface lies 10-30 cm from the measured one (a leg stepped towards the
            camera, fitted with the knee bent back) feels no pull at a 5 cm scale; at 20 cm it
            does. On the fitbench (bench/fit.py) 0.2 with `depth_weight` 0.6 (was 0.05 and 0.3):
            MPJPE 70 -> 63 mm, PA-MPJPE 41 -> 37; on 24 validation subjects (seed 5555) 77 -> 75
            and 53 -> 49 mm.
        depth_clothing_m: how far the measured surface lies in front of the body's skin (clothes).
        depth_cell / depth_thickness_m: a sample counts as visible when it is within this depth of
            the nearest sample in its image cell, `depth_cell` person-box heights wide.
        depth_sigma_floor_m: the distance uncertainty with depth never drops below this (what
            clothing and the body model's fit of a clothed person leave).
        depth_mirror_check_m: with depth, a cold fit whose visible surface lies further than this
            (median) from the measured one is fitted again to the mirrored reading of the landmarks
            (`mirror_landmarks`: BlazePose sometimes reads a person back to front, and its 2D and 3D
            landmarks then agree with each other, so nothing in the image tells), and the reading
            whose surface fits the depth better is kept. On the fit benchmark (24 subjects, seed
            7070, generator v3, simulated sensor; `surface_residual_m`): right readings 7.5-19 mm,
            mirrored ones of the same people 15-36, and the one back-to-front reading 19.6 mm
            against 11.5 for its mirror. The lower residual was the right reading for all 24, but
            no threshold separates right from wrong (a long skirt's right reading: 18.8), so the
            check compares; at 15 mm it runs for 3 of the 24 (doubling their fit time). 0 never checks.
        ground_weight / ground_sigma_m: weight and Geman-McClure scale (metres) of the foot contact
            term with a known floor (`fit_body(ground=...)`): the body's lowest point on the floor.
        ground_clearance_m: how far the body's soles stay above the floor (shoes).
        feet_max_gap: the floor is used only when the lowest visible heel or toe lies within this
            many box heights of the mask's bottom (on 12 bench subjects: 0.01-0.05 when right,
            0.55 when BlazePose put the legs inside the torso).
        legs_max_gap: the leg keypoints (knees down) are ignored when the lowest visible one lies
            more than this many box heights above the bottom of the person's mask (and the mask
            does not reach the image's bottom edge): on 24 bench subjects 0.01-0.07 when BlazePose
            found the legs, 0.55 when it folded them into the torso (a long dress read as sitting).
        unseen_joint_weight: weight of a pull to the rest pose (squared radians) of the limb joints
            whose keypoints below them all lack a 2D target (`DOWNSTREAM`): only the silhouette
            would move them, and a loose skirt's outline is not the legs'.
        ground_pixel_sigma: the feet's pixel error behind the distance uncertainty with a floor:
            BlazePose's heels and toes are not exactly anny's, and its pixels err by a few px; 6 px
            makes the errors of 8 bench subjects (bench/fit.py) one sigma on average (rms).
        silhouette_points: surface vertices projected for the silhouette terms.
        contour_points: at most this many mask contour pixels are matched to them.
        warm_iterations / warm_lr: steps and Adam rate of the warm-started fit (`fit_body(init=...)`),
            which skips the camera stage; a lower rate because Adam's first steps move every
            parameter by ~lr whatever its gradient, which would shake an already good pose.
        warm_pose_prior_scale: the pose prior's multiplier while warm (constant; the cold fit anneals
            from 10 to 1 because it starts from the rest pose, a warm start is already plausible).
        warm_shape: also optimise shape while warm (off: a person's shape does not change between frames).
        warm_max_keypoint_error / warm_min_iou: a warm result whose mean reprojection error exceeds
            this fraction of the person's box height, or whose silhouette IoU is below this, is
            discarded and the cold fit runs instead. The defaults are the bounds any usable fit meets
            (a cold fit of messi5.jpg: 1.3 % and IoU 0.70, mask noise keeps real IoUs near 0.7), so
            they catch a diverged warm start, not a slightly worse one.
        warm_max_displacement / warm_min_box_iou: `warm_start_params` rejects a previous fit whose
            projected keypoints lie on average further than this fraction of the new box height
            from the new landmarks, or whose keypoint box overlaps the new one less than this.
    """

    camera_iterations: int = 30
    iterations: int = 80
    shape_iterations: int = 40
    lr: float = 0.06
    min_visibility: float = 0.5
    robust_sigma: float = 0.1
    face_weight: float = 0.5
    silhouette_weight: float = 0.5
    pose_prior_weight: float = 0.02
    shape_prior_weight: float = 0.002
    landmarks_3d_weight: float = 0.02
    landmarks_3d_lean_deg: float = 6.0
    landmark_offset_scale: float = 1.0
    stature_sd: float = 0.055
    size_sd: float = 0.045
    depth_weight: float = 0.6
    depth_sigma_m: float = 0.05
    depth_sigma_start_m: float = 0.2
    depth_clothing_m: float = 0.015
    depth_cell: float = 0.025
    depth_thickness_m: float = 0.03
    depth_sigma_floor_m: float = 0.03
    depth_mirror_check_m: float = 0.015
    ground_weight: float = 0.3
    ground_sigma_m: float = 0.05
    ground_clearance_m: float = 0.01
    ground_pixel_sigma: float = 6.0
    feet_max_gap: float = 0.1
    legs_max_gap: float = 0.25
    unseen_joint_weight: float = 1.0
    silhouette_points: int = 1000
    contour_points: int = 500
    warm_iterations: int = 40
    warm_lr: float = 0.02
    warm_pose_prior_scale: float = 1.0
    warm_shape: bool = False
    warm_max_keypoint_error: float = 0.05
    warm_min_iou: float = 0.5
    warm_max_displacement: float = 0.1
    warm_min_box_iou: float = 0.5


@dataclass(frozen=True)
class BodyFit:
    """A fitted body in the camera's optical frame (x right, y down, z forward), metres.

    Attributes:
        body_model: the model's `name`.
        params: batch-1 `BodyParams` whose `forward` gives these vertices (camera frame).
        vertices: `[V, 3]` float32; faces: `[F, 3]` int64.
        joints: `[J, 3]` float32 in `joint_names` order; joint_parents: parent index per joint (-1 root).
        keypoints: `[K, 3]` float32 in `keypoint_names` order; keypoints_2d: `[K, 2]` their projections (px).
        K: `[3, 3]` float64 intrinsics the fit used.
        keypoint_errors_px: `[K]` reprojection error per keypoint (NaN where no 2D target was used).
        keypoint_error_px: visibility-weighted mean of `keypoint_errors_px`.
        silhouette_iou: IoU of the rasterised body mesh with the person mask.
        iterations, seconds: optimisation steps taken and wall time (a discarded warm attempt included).
        warm_started: the result is a warm-started refinement of `fit_body(init=...)`; False for a
            cold fit, including the automatic fallback when the warm result failed its check.
        distance_sigma_m: one standard deviation of the body's distance from the camera (metres).
            From one image: the image fixes the body's direction and its size-to-distance ratio,
            not its size, so the distance is uncertain by the adult stature spread
            (`ShapePopulation.stature_sd` or `FitConfig.stature_sd`) and the fit's own size error
            (`FitConfig.size_sd`) times the distance. With
            depth: the spread of the visible surface's depth residuals over the square root of
            their number, floored at `FitConfig.depth_sigma_floor_m`. With a floor and visible
            feet (no depth): how far the feet's contact point moves for `ground_pixel_sigma` px.
        surface_residual_m: with depth, the median |measured - fitted| depth of the body's visible
            surface (clothing allowance included); NaN without usable depth.
        mirrored: the fit used the mirrored reading of the landmarks (`FitConfig.depth_mirror_check_m`):
            the detector's left and right were swapped and the person faces the other way.
    """

    body_model: str
    params: BodyParams
    vertices: np.ndarray
    faces: np.ndarray
    joints: np.ndarray
    joint_names: tuple[str, ...]
    joint_parents: tuple[int, ...]
    keypoints: np.ndarray
    keypoint_names: tuple[str, ...]
    keypoints_2d: np.ndarray
    K: np.ndarray
    keypoint_errors_px: np.ndarray
    keypoint_error_px: float
    silhouette_iou: float
    iterations: int
    seconds: float
    warm_started: bool = False
    distance_sigma_m: float = math.nan
    surface_residual_m: float = math.nan
    mirrored: bool = False

    def residuals(self) -> dict[str, float | int | bool | None]:
        """JSON-ready summary: mean keypoint error (px), IoU, iterations, seconds, warm_started,
        distance_sigma_m, surface_residual_m (None without depth), mirrored."""
        return {
            "keypoint_error_px": self.keypoint_error_px,
            "silhouette_iou": self.silhouette_iou,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "warm_started": self.warm_started,
            "distance_sigma_m": self.distance_sigma_m,
            # JSON has no NaN (the wire refuses it): no depth, no residual.
            "surface_residual_m": None if math.isnan(self.surface_residual_m) else self.surface_residual_m,
            "mirrored": self.mirrored,
        }


def skeleton(fit: BodyFit) -> Skeleton:
    """The fit's joints as a `Skeleton` (camera frame) for `/human_body` markers."""
    bones = tuple((p, c) for c, p in enumerate(fit.joint_parents) if p >= 0)
    return Skeleton(joints=fit.joints.astype(np.float32), names=fit.joint_names, bones=bones)


# ----------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class FitTargets:
    """What a fit matches for each of the body model's keypoints (also used by `pipeline/refine_body.py`)."""

    uv: torch.Tensor  # [K, 2] px
    weight: torch.Tensor  # [K] confidence x per-keypoint weight, 0 = unused
    xyz: torch.Tensor  # [K, 3] BlazePose world landmarks (hip-centred, camera axes)
    scale: float  # person box height, px


def fit_targets(perception: Perception, names: tuple[str, ...], cfg: FitConfig) -> FitTargets:
    """The 2D keypoints, weights and 3D landmarks a fit of the keypoints `names` matches in `perception`."""
    w, h = perception.image_size
    uv, weight, xyz = np.zeros((len(names), 2)), np.zeros(len(names)), np.zeros((len(names), 3))
    for k, name in enumerate(names):
        if name not in BLAZEPOSE_FOR_KEYPOINT:
            continue
        i = LANDMARK_NAMES.index(BLAZEPOSE_FOR_KEYPOINT[name])
        u, v, vis = perception.landmarks_2d[i]
        inside = 0 <= u < w and 0 <= v < h
        uv[k], xyz[k] = (u, v), perception.landmarks_3d[i]
        if inside and vis >= cfg.min_visibility:
            weight[k] = vis * (cfg.face_weight if name in FACE else 1.0)
    if not any(weight[names.index(n)] > 0 for n in ("left_shoulder", "right_shoulder")):
        raise NoPersonError("the shoulders are not visible: cannot place a body")
    scale = float(perception.bbox[3] - perception.bbox[1])
    uv = calibrated_uv(uv, names, weight > 0, scale, cfg.landmark_offset_scale)
    xyz = _lean_back(xyz, names, math.radians(cfg.landmarks_3d_lean_deg))
    legs = [names.index(n) for n in LEGS if n in names]
    seen = [uv[k, 1] for k in legs if weight[k] > 0]
    # The person's outline continues far below the lowest leg landmark (and not out of the image):
    # BlazePose folded the legs into the body (a long dress read as sitting); the outline knows better.
    if seen and perception.bbox[3] < h and perception.bbox[3] - max(seen) > cfg.legs_max_gap * scale:
        weight[legs] = 0.0
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return FitTargets(t(uv), t(weight), t(xyz), scale)


def torso_axes(get: Callable[[str], ArrayT]) -> tuple[ArrayT, ArrayT]:
    """A torso's unnormalised left (from the right shoulder and hip to the left ones) and up (from the
    hips' midpoint to the shoulders'), from `get(name)` of the `TORSO` points (2D or 3D; numpy or torch)."""
    left = (get("left_shoulder") - get("right_shoulder")) + (get("left_hip") - get("right_hip"))
    up = (get("left_shoulder") + get("right_shoulder") - get("left_hip") - get("right_hip")) / 2
    return left, up


def torso_frame_2d(points: dict[str, np.ndarray]) -> np.ndarray | None:
    """`[2, 2]` rows: the image directions of a person's left (from the right shoulder and hip to the
    left ones) and up (from the hips to the shoulders, made orthogonal to left), from the 2D points
    of `TORSO` (pixels, by name); None when one is missing, or the torso is under a fifth as wide as
    it is tall (seen from the side). Mirrored (determinant
    -1) for a person seen from behind, so offsets in it follow the body, not the image."""
    if any(n not in points for n in TORSO):
        return None
    left, up = torso_axes(lambda n: np.asarray(points[n], np.float64))
    if np.linalg.norm(up) < 1e-6 or np.linalg.norm(left) < 0.2 * np.linalg.norm(up):
        return None  # no torso height, or seen from the side: left is not defined well enough
    left = left / np.linalg.norm(left)
    up = up - (up @ left) * left
    if np.linalg.norm(up) < 1e-6:
        return None
    return np.stack([left, up / np.linalg.norm(up)])


def calibrated_uv(uv: np.ndarray, names: Sequence[str], used: np.ndarray, scale: float, amount: float) -> np.ndarray:
    """`uv [K, 2]`, BlazePose's landmarks (pixels) for the keypoints `names`, less `amount` times its
    calibrated offsets (`BLAZEPOSE_OFFSETS`, in `scale`-pixel person heights) in the torso frame of the
    `used` ones (`torso_frame_2d`). A copy; unchanged without a torso frame or with `amount` 0."""
    out = np.array(uv, np.float64)
    frame = torso_frame_2d({n: out[k] for k, n in enumerate(names) if n in TORSO and used[k]})
    if frame is None or not amount:
        return out
    for k, name in enumerate(names):
        if name in BLAZEPOSE_OFFSETS:
            out[k] -= amount * scale * (frame.T @ np.asarray(BLAZEPOSE_OFFSETS[name]))
    return out


def _lean_back(xyz: np.ndarray, names: tuple[str, ...], angle: float) -> np.ndarray:
    """`xyz [K, 3]` (BlazePose world landmarks in `names` order) with the upper body (all but `LEGS`)
    turned by `angle` (radians) about the hip midpoint and the torso's left axis, the top away from
    the body's front (`landmarks_3d_lean_deg`); unchanged without a torso. The legs keep their
    place: BlazePose's knees and feet lie as deep as the body model's (mean root-aligned depth error
    of the ankles -3 mm on the bench's 23 front views, +12 mm on 60 training subjects), and turning
    them with the torso put the feet 5-10 cm too near the camera."""
    R = _rotation_from_landmarks(torch.as_tensor(xyz, dtype=torch.float64), names)
    if R is None or angle == 0:
        return xyz
    left = R[:, 0].numpy()
    hips = xyz[[names.index("left_hip"), names.index("right_hip")]].mean(0)
    turn = cv2.Rodrigues(-left * angle)[0]  # about +left, a positive angle would tip the top forward
    upper = np.array([n not in LEGS for n in names])
    out = xyz.copy()
    out[upper] = (xyz[upper] - hips) @ turn.T + hips
    return out


def _feet_seen(tg: FitTargets, names: tuple[str, ...], bbox: tuple[int, int, int, int], cfg: FitConfig) -> bool:
    """Whether heels or toes are visible at the bottom of the person's mask (within
    `cfg.feet_max_gap` box heights of it): the feet stand where the person's outline ends. Feet
    landmarks far above it are a confused detection (e.g. legs hidden by a long skirt)."""
    seen = [float(tg.uv[names.index(n), 1]) for n in FEET if tg.weight[names.index(n)] > 0]
    return bool(seen) and bbox[3] - max(seen) <= cfg.feet_max_gap * tg.scale


def _unseen_joints(joints: tuple[str, ...], names: tuple[str, ...], weight: torch.Tensor) -> torch.Tensor:
    """`[len(joints)]` bool: limb joints (`DOWNSTREAM`) none of whose keypoints has a 2D target."""
    used = {n for n, w in zip(names, weight.tolist()) if w > 0}
    out = []
    for joint in joints:
        side, _, base = joint.partition("_")
        out.append(base in DOWNSTREAM and not any(f"{side}_{k}" in used for k in DOWNSTREAM[base]))
    return torch.tensor(out, dtype=torch.bool)


def _select(names: tuple[str, ...], wanted: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([n in wanted for n in names], dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# Differentiable silhouette terms


@dataclass(frozen=True)
class Silhouette:
    """A person mask prepared for the differentiable silhouette terms (`silhouette_distances`)."""

    outside: torch.Tensor  # [1, 1, H, W] distance (px) to the nearest mask pixel, 0 on the mask
    boundary: torch.Tensor  # [M, 2] mask contour pixels (continuous coords), image-edge ones excluded
    size: tuple[int, int]  # (W, H)


def silhouette_target(mask: np.ndarray, max_boundary: int) -> Silhouette:
    """`[H, W]` mask -> its distance field and at most `max_boundary` contour pixels."""
    h, w = mask.shape
    m = mask.astype(np.uint8)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5)
    # Replicated borders: where the person leaves the frame, the image edge is not their outline.
    contour = m & (1 - cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE))
    ys, xs = np.nonzero(contour)
    step = max(1, len(xs) // max_boundary)
    boundary = np.stack([xs[::step], ys[::step]], 1).astype(np.float32) + 0.5
    return Silhouette(torch.as_tensor(outside)[None, None], torch.as_tensor(boundary), (w, h))


def silhouette_distances(uv: torch.Tensor, target: Silhouette) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-sided silhouette chamfer for projected surface samples `uv [N, 2]` (px).

    Every surface point of a body projects inside its own silhouette, so the mesh silhouette
    matches the mask exactly when (a) no sample falls outside the mask and (b) every mask contour
    pixel has a sample nearby. Returns `(d_out [N], d_cover [M])` in pixels: (a) bilinear lookup
    of the mask's outside distance transform (0 for samples beyond the image edge, where the mask
    says nothing), (b) each contour pixel's distance to the nearest sample. Exact at full
    resolution and cheap (`N` lookups + `M` k-d tree queries).
    """
    w, h = target.size
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1)[None, None]
    d_out = torch.nn.functional.grid_sample(target.outside, grid, align_corners=False, padding_mode="border")[0, 0, 0]
    inside_image = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    d_out = torch.where(inside_image, d_out, torch.zeros_like(d_out))
    if len(target.boundary) == 0:
        return d_out, uv.new_zeros(0)
    # The nearest sample is a discrete choice (only its distance needs a gradient); a k-d tree
    # finds it ~20x faster than the full M x N distance matrix.
    nearest = torch.from_numpy(cKDTree(uv.detach().numpy()).query(target.boundary.numpy())[1])
    d_cover = (target.boundary - uv[nearest]).norm(dim=-1)
    return d_out, d_cover


# ----------------------------------------------------------------------------------------------
# Initialisation


def _rotation_from_landmarks(xyz: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor | None:
    """`[3, 3]` body->camera rotation from BlazePose's 3D torso (columns: left, up, forward)."""
    left, up = torso_axes(lambda n: xyz[names.index(n)])
    if left.norm() < 1e-3 or up.norm() < 1e-3:
        return None
    up = up / up.norm()
    left = left - (left @ up) * up
    left = left / left.norm()
    return torch.stack([left, up, torch.linalg.cross(left, up)], dim=1)


def _rotation_from_2d(tg: FitTargets, names: tuple[str, ...]) -> torch.Tensor:
    """Upright body facing towards / away from the camera (shoulder order), rolled like the 2D torso."""
    get = lambda n: tg.uv[names.index(n)]  # noqa: E731
    facing = get("left_shoulder")[0] >= get("right_shoulder")[0]
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0])) if facing else torch.diag(torch.tensor([-1.0, -1.0, 1.0]))
    hips = [n for n in ("left_hip", "right_hip") if tg.weight[names.index(n)] > 0]
    if hips:
        up = (get("left_shoulder") + get("right_shoulder")) / 2 - torch.stack([get(n) for n in hips]).mean(0)
        roll = math.atan2(float(up[0]), float(-up[1]))
        R = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, roll])) @ R
    return R


def _initial_params(model: BodyModel, tg: FitTargets, K: torch.Tensor, R0: torch.Tensor) -> BodyParams:
    """Rest pose, mean shape, `R0`, and the translation that lines the head+torso up in 2D at the
    depth where their 3D spread (mean body) matches their 2D spread."""
    params = model.rest_params()
    with torch.no_grad():
        kp = model(params).keypoints[0] @ R0.T  # root at the origin, camera axes
    use = (_select(model.keypoint_names, HEAD_AND_TORSO) * tg.weight) > 0
    xy3, uv = kp[use, :2], tg.uv[use]
    spread3 = (xy3 - xy3.mean(0)).norm(dim=-1).mean()
    spread2 = (uv - uv.mean(0)).norm(dim=-1).mean()
    f = float(K[0, 0] + K[1, 1]) / 2
    z = f * float(spread3) / max(float(spread2), 1.0)
    centre = torch.linalg.solve(K, torch.cat([uv.mean(0), torch.ones(1)])) * z
    params.transl = (centre - torch.cat([xy3.mean(0), kp[use, 2].mean()[None]]))[None]
    params.global_orient = roma.rotmat_to_rotvec(R0)[None]
    return params


# ----------------------------------------------------------------------------------------------
# The fit


def gmof(r2: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure on squared residuals."""
    return sigma**2 * r2 / (sigma**2 + r2)


def mesh_mask(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`[H, W]` bool silhouette of a camera-frame mesh (faces wholly in front of the camera), `size = (W, H)`."""
    front = (vertices[faces, 2] > 1e-3).all(1)
    uv = project_points(vertices, K, min_depth=1e-3)
    tri = np.round((uv[faces[front]] - 0.5) * 16).astype(np.int64)  # 4 fractional bits
    tri = tri[(np.abs(tri) < 2**26).all((1, 2))].astype(np.int32)
    render = np.zeros((size[1], size[0]), np.uint8)
    for t in tri:  # one call per triangle: a multi-polygon fillPoly would cancel overlaps (even-odd)
        cv2.fillConvexPoly(render, t, 1, lineType=cv2.LINE_8, shift=4)
    return render > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def fit_body(
    perception: Perception,
    K: np.ndarray | None,
    body_model: BodyModel,
    *,
    config: FitConfig | None = None,
    init: BodyParams | None = None,
    depth: np.ndarray | None = None,
    ground: np.ndarray | None = None,
) -> BodyFit:
    """Fit `body_model` to the person of `perception` (single view, metric, camera frame).

    Args:
        perception: landmarks, mask and box from `perceive` (or built by hand).
        K: `[3, 3]` intrinsics of the image the landmarks are in; None uses `perception.K`.
        body_model: any `BodyModel` (`AnnyBody()` by default in the pipeline).
        config: `FitConfig()` by default.
        init: batch-1 `BodyParams` of `body_model` in this camera's frame, typically the previous
            frame's `BodyFit.params` (see `warm_start_params`). The fit then starts from it and runs
            `config.warm_iterations` steps instead of the cold schedule; if that result fails the
            `warm_max_keypoint_error` / `warm_min_iou` check, the cold fit runs instead
            (`BodyFit.warm_started` tells which result was returned).
        depth: optional `[H, W]` depth image aligned with the landmarks' image (same K): float
            metres or uint16 millimetres, 0 / NaN = no measurement (`hgm_core.body.depth`). The
            fit then matches its visible surface to the measured one, which fixes the distance
            and the body's size; without usable depth on the person it fits from the image alone.
        ground: optional floor plane `[a, b, c, d]` in this camera's frame (`a x + b y + c z + d = 0`,
            `(a, b, c)` pointing up; `hgm_core.body.ground`), e.g. from the robot's camera mount.
            When the person's heels or toes are visible where the mask ends, the body's lowest point is put on it,
            which fixes the distance from one image.
    Raises:
        NoPersonError: the shoulders are not visible (nothing to anchor the body to).
        ValueError: `init` is not a batch-1 parameter set of `body_model` (e.g. another model's),
            or `depth` is not an image of the mask's size, or `ground` is not a plane below the camera.
    """
    cfg = config or FitConfig()
    start = time.perf_counter()
    K_np = np.asarray(perception.K if K is None else K, np.float64)
    Kt = torch.as_tensor(K_np, dtype=torch.float32)
    names = body_model.keypoint_names
    tg = fit_targets(perception, names, cfg)

    sampled = body_model.sampled(cfg.silhouette_points)
    measured = None if depth is None else depth_target(depth_metres(depth), perception.mask)
    floor = ground_plane(ground) if ground is not None and _feet_seen(tg, names, perception.bbox, cfg) else None
    problem = _Problem(sampled, Kt, tg, silhouette_target(perception.mask, cfg.contour_points), measured, floor, cfg)

    steps = 0
    if init is not None:
        _check_init(init, body_model)
        R0 = roma.rotvec_to_rotmat(init.global_orient[0].detach())
        params, out = problem.optimise(R0, init.detach(), [(2, cfg.warm_iterations, cfg.warm_pose_prior_scale, 1.0)], cfg.warm_lr, cfg.warm_iterations if cfg.warm_shape else 0)
        steps = cfg.warm_iterations
        fit = make_fit(body_model, params, out, tg, K_np, perception.mask, steps, time.perf_counter() - start,
                       *problem.uncertainty(params))
        if fit.keypoint_error_px <= cfg.warm_max_keypoint_error * tg.scale and fit.silhouette_iou >= cfg.warm_min_iou:
            return replace(fit, warm_started=True)

    R0 = None
    if cfg.landmarks_3d_weight > 0:
        R0 = _rotation_from_landmarks(tg.xyz, names)
    if R0 is None:
        R0 = _rotation_from_2d(tg, names)
    stages = [(1, cfg.camera_iterations, 1.0, 1.0), (2, cfg.iterations, 10.0, cfg.depth_sigma_start_m / cfg.depth_sigma_m)]
    params, out = problem.optimise(R0, _initial_params(body_model, tg, Kt, R0), stages, cfg.lr, cfg.shape_iterations)
    steps += cfg.camera_iterations + cfg.iterations
    fit = make_fit(body_model, params, out, tg, K_np, perception.mask, steps, time.perf_counter() - start,
                   *problem.uncertainty(params))
    if cfg.depth_mirror_check_m > 0 and fit.surface_residual_m > cfg.depth_mirror_check_m:
        other = fit_body(mirror_landmarks(perception), K, body_model, config=replace(cfg, depth_mirror_check_m=0.0), depth=depth, ground=ground)
        best = replace(other, mirrored=True) if other.surface_residual_m < fit.surface_residual_m else fit
        return replace(best, iterations=fit.iterations + other.iterations, seconds=time.perf_counter() - start)
    return fit


MIRRORED_LANDMARKS = tuple(LANDMARK_NAMES.index(n.replace("left", "@").replace("right", "left").replace("@", "right")) for n in LANDMARK_NAMES)
"""For each BlazePose landmark, the index of its left/right counterpart (itself on the midline)."""


def mirror_landmarks(perception: PerceptionT) -> PerceptionT:
    """The other reading of `perception`'s landmarks: the same 2D points with left and right swapped,
    and the 3D landmarks' depths mirrored about the hips (a person seen from the front with the
    detector's labels is one seen from behind with them swapped). Everything else stays; a
    landmarks-only `Landmarks` (the live tracker's) works the same."""
    index = list(MIRRORED_LANDMARKS)
    xyz = perception.landmarks_3d[index].copy()
    xyz[:, 2] *= -1
    return replace(perception, landmarks_2d=perception.landmarks_2d[index].copy(), landmarks_3d=xyz)


def _check_init(init: BodyParams, model: BodyModel) -> None:
    sizes = (init.global_orient.shape, init.transl.shape, init.pose.shape, init.shape.shape)
    if sizes != ((1, 3), (1, 3), (1, model.pose_dim), (1, model.shape_dim)):
        raise ValueError(
            f"init must be batch-1 {model.name} parameters (pose [1, {model.pose_dim}], shape "
            f"[1, {model.shape_dim}]), got shapes {[list(s) for s in sizes]}"
        )


@dataclass(frozen=True)
class _Problem:
    """The fitting energy of one frame and its Adam loop."""

    body: SampledBody  # the model at the silhouette samples
    K: torch.Tensor  # [3, 3]
    tg: FitTargets
    silhouette: Silhouette
    depth: DepthTarget | None  # usable aligned depth of the person, if any
    ground: GroundPlane | None  # the floor, when known and the feet are in view
    cfg: FitConfig

    def _depth_residuals(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[M]` measured minus modelled depth (metres, clothing included) of the visible samples
        `points [N, 3]` with usable depth, and their weights (`surface_residuals`)."""
        uv = project_points(points, self.K, min_depth=1e-4)
        show = visible(points, uv, self.cfg.depth_cell * self.tg.scale, self.cfg.depth_thickness_m)
        r, weight = surface_residuals(points, uv, self.depth, show)
        return r + self.cfg.depth_clothing_m, weight

    def uncertainty(self, params: BodyParams) -> tuple[float, float]:
        """`(BodyFit.distance_sigma_m, BodyFit.surface_residual_m)` of the body `params` (see there); the
        residual is the median |residual| of the visible samples with usable depth (NaN without depth
        or with fewer than 10 such samples)."""
        model, cfg = self.body.model, self.cfg
        with torch.no_grad():
            points = self.body(params).vertices[0]
        if self.depth is not None:
            r = self._depth_residuals(points)[0]
            if len(r) >= 10:
                spread = 1.4826 * float((r - r.median()).abs().median()) / math.sqrt(len(r))
                return math.hypot(cfg.depth_sigma_floor_m, spread), float(r.abs().median())
        if self.ground is not None:
            contact = points[self.ground.height(points).argmin()].double().numpy()
            return contact_distance_sigma(contact, self.ground, self.K.double().numpy(), cfg.ground_pixel_sigma), math.nan
        stature_sd = cfg.stature_sd if model.shape_population is None else model.shape_population.stature_sd
        return float(points.mean(0).norm()) * math.hypot(stature_sd, cfg.size_sd), math.nan

    def optimise(
        self, R0: torch.Tensor, init: BodyParams, stages: list[tuple[int, int, float, float]], lr: float, shape_steps: int
    ) -> tuple[BodyParams, BodyOutput]:
        """Run `stages` of `(stage, steps, pose-prior start multiplier, depth-scale start multiplier)`
        from `init` (orientation `R0`).

        Stage 1 fits orientation + translation to the torso keypoints; stage 2 fits everything
        (the shape during its first `shape_steps` steps only) to keypoints, silhouette and priors,
        the pose prior decaying from `multiplier x pose_prior_weight` to `pose_prior_weight`, as
        in SMPLify, and the depth term's scale from `multiplier x depth_sigma_m` to `depth_sigma_m`.
        Returns the parameters and the full model's output for them.
        """
        body, Kt, tg, cfg = self.body, self.K, self.tg, self.cfg
        model = body.model
        names = model.keypoint_names
        hip_sel = torch.tensor([names.index("left_hip"), names.index("right_hip")])
        w3d = tg.weight * (tg.weight[hip_sel] > 0).all().float()  # 3D offsets need both hips as origin
        torso = _select(names, TORSO)
        unseen = _unseen_joints(model.pose_joint_names, names, tg.weight)

        delta = torch.zeros(3, requires_grad=True)  # orientation update, left-multiplied onto R0
        transl = init.transl.clone().requires_grad_(True)
        pose = init.pose.clone().requires_grad_(True)
        shape = init.shape.clone().requires_grad_(shape_steps > 0)
        with torch.no_grad():
            # Stage 1 moves a rigid body: its keypoints relative to the pelvis are computed once.
            zero = init.global_orient.new_zeros(1, 3)
            torso_kp = body(BodyParams(zero, zero, init.pose, init.shape)).keypoints[0]

        def placed(rest: object, R: torch.Tensor) -> BodyOutput:
            """The sampled body of `pose` and the shape `rest` was made from, turned by `R [3, 3]` and
            moved to `transl`: `place` without its rotation matrix -> axis-angle -> matrix round
            trip (~1.5 ms a step with its gradient)."""
            out = body.posed(rest, BodyParams(zero, zero, pose, shape))  # pelvis at the origin
            move = lambda x: x @ R.T + transl[:, None]  # noqa: E731
            return BodyOutput(move(out.vertices), move(out.joints), move(out.keypoints))

        def energy(stage: int, prior_scale: float, depth_sigma: float, held: object) -> torch.Tensor:
            """The energy of `stage`; `held` is `body.rest` of the shape while it is not optimised."""
            R = rotvec_to_rotmat(delta) @ R0
            if stage == 1:
                kp = torso_kp @ R.T + transl[0]
            else:
                out = placed(body.rest(shape) if held is None else held, R)
                kp = out.keypoints[0]
            r2 = (project_points(kp, Kt, min_depth=1e-4) - tg.uv).square().sum(-1) / tg.scale**2
            w = tg.weight * (torso if stage == 1 else 1.0)
            loss = (w * gmof(r2, cfg.robust_sigma)).sum() / w.sum().clamp(min=1e-6) / cfg.robust_sigma**2
            if stage >= 2:
                d_out, d_cover = silhouette_distances(project_points(out.vertices[0], Kt, min_depth=1e-4), self.silhouette)
                sil = gmof((d_out / tg.scale).square(), cfg.robust_sigma).mean()
                if len(d_cover):
                    sil = sil + gmof((d_cover / tg.scale).square(), cfg.robust_sigma).mean()
                loss = loss + cfg.silhouette_weight * sil / cfg.robust_sigma**2
                loss = loss + cfg.pose_prior_weight * prior_scale * model.pose_prior(pose).sum()
                if unseen.any():
                    loss = loss + cfg.unseen_joint_weight * pose.reshape(-1, 3)[unseen].square().sum()
                loss = loss + cfg.shape_prior_weight * model.shape_prior(shape).sum()
                if cfg.landmarks_3d_weight > 0 and w3d.sum() > 0:
                    centred = kp - kp[hip_sel].mean(0)
                    ref = tg.xyz - tg.xyz[hip_sel].mean(0)
                    d2 = (centred - ref).square().sum(-1) / 0.1**2
                    loss = loss + cfg.landmarks_3d_weight * (w3d * d2).sum() / w3d.sum()
                if self.depth is not None:
                    r, weight = self._depth_residuals(out.vertices[0])
                    if len(r):
                        mean = (weight * gmof(r.square(), depth_sigma)).sum() / weight.sum()
                        loss = loss + cfg.depth_weight * mean / depth_sigma**2
                if self.ground is not None:
                    lowest = self.ground.height(out.vertices[0]).min() - cfg.ground_clearance_m
                    loss = loss + cfg.ground_weight * gmof(lowest.square(), cfg.ground_sigma_m) / cfg.ground_sigma_m**2
            return loss

        for stage, n, prior_start, depth_start in stages:
            free = [delta] if stage == 1 else [delta, pose, shape]
            opt = torch.optim.Adam([{"params": free, "lr": lr}, {"params": [transl], "lr": lr / 3}])
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(n, 1), eta_min=lr * 0.1)
            held = None
            if stage == 2 and self.depth is not None:
                with torch.no_grad():  # start stage 2 at the measured distance (along the pelvis ray)
                    points = placed(body.rest(shape), rotvec_to_rotmat(delta) @ R0).vertices[0]
                    r = self._depth_residuals(points)[0]
                    if len(r) >= 10:
                        transl.mul_(1 + float(r.median()) / float(transl[0, 2]))
            elif stage == 2 and self.ground is not None:
                with torch.no_grad():
                    # Start stage 2 at the distance where the lowest point stands on the floor: the
                    # placement scaled about the camera centre (the body then looks smaller or
                    # larger, and the image terms grow or shrink it through its shape).
                    points = placed(body.rest(shape), rotvec_to_rotmat(delta) @ R0).vertices[0]
                    lowest = points[self.ground.height(points).argmin()]
                    below = float(lowest @ self.ground.normal)  # < 0: the point is below the camera
                    if below < 0:  # adults differ from the mean body by well under 25 % in size
                        transl.mul_(min(max((cfg.ground_clearance_m - self.ground.offset) / below, 0.75), 1.33))
            for i in range(n):
                if stage == 2 and i == min(shape_steps, n) and held is None:
                    # From here on the shape is held: Adam skips a parameter without a gradient.
                    shape.requires_grad_(False)
                    with torch.no_grad():
                        held = body.rest(shape)
                opt.zero_grad(set_to_none=True)
                t = 1 - i / max(n - 1, 1)  # 1 -> 0 over the stage
                energy(stage, prior_start**t, cfg.depth_sigma_m * depth_start**t, held).backward()
                opt.step()
                sched.step()

        with torch.no_grad():
            R = rotvec_to_rotmat(delta) @ R0
            params = BodyParams(roma.rotmat_to_rotvec(R)[None], transl, pose, shape).detach()
            return params, model(params)


def warm_start_params(
    previous: BodyFit | None, perception: Perception, body_model: BodyModel, *, config: FitConfig | None = None
) -> BodyParams | None:
    """The previous frame's fit as `fit_body(init=...)` for `perception`, or None to fit cold.

    None when there is no previous fit, it was made with another body model (`previous.body_model
    != body_model.name` or other parameter sizes), it used the mirrored reading of its landmarks
    (`BodyFit.mirrored`: the new frame's landmarks are read the detector's way, so the cold fit and
    its depth check decide again), the new frame has no usable shoulders, or the
    person moved too much: the previous keypoints, projected with `perception.K`, lie on average
    further than `config.warm_max_displacement` (default 0.1) new-box heights from the new
    landmarks, or their bounding box overlaps the new landmarks' box with IoU below
    `config.warm_min_box_iou` (default 0.5). Both compare the keypoints that have a visible
    landmark. (A good fit reprojects within ~1-3 % of the box height, so 10 % leaves room for the
    motion of one frame while still catching a person who walked, turned or was swapped.)
    """
    if previous is None or previous.body_model != body_model.name or previous.mirrored:
        return None
    p = previous.params
    if p.pose.shape != (1, body_model.pose_dim) or p.shape.shape != (1, body_model.shape_dim):
        return None
    cfg = config or FitConfig()
    try:
        tg = fit_targets(perception, previous.keypoint_names, cfg)
    except NoPersonError:
        return None
    used = tg.weight.numpy() > 0
    xyz = previous.keypoints[used].astype(np.float64)
    if (xyz[:, 2] <= 1e-3).any():
        return None
    old, new = project_points(xyz, np.asarray(perception.K, np.float64)), tg.uv.numpy()[used].astype(np.float64)
    displacement = float(np.linalg.norm(old - new, axis=-1).mean()) / tg.scale
    if displacement > cfg.warm_max_displacement or _box_iou(old, new) < cfg.warm_min_box_iou:
        return None
    return p.detach()


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the axis-aligned boxes of two `[N, 2]` point sets."""
    lo, hi = np.maximum(a.min(0), b.min(0)), np.minimum(a.max(0), b.max(0))
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    area = lambda x: float(np.prod(x.max(0) - x.min(0)))  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def make_fit(
    model: BodyModel, params: BodyParams, out: BodyOutput, tg: FitTargets, K: np.ndarray, mask: np.ndarray, steps: int,
    seconds: float, distance_sigma: float, surface_residual: float = math.nan,
) -> BodyFit:
    """The `BodyFit` of `params` (body output `out`) with its residuals against `tg` and `mask`."""
    vertices = out.vertices[0].numpy()
    keypoints = out.keypoints[0].numpy()
    uv = project_points(out.keypoints[0], torch.as_tensor(K, dtype=torch.float32), min_depth=1e-4).numpy()
    used = tg.weight.numpy() > 0
    errors = np.where(used, np.linalg.norm(uv - tg.uv.numpy(), axis=-1), np.nan)
    w = tg.weight.numpy()
    faces = model.faces.numpy()
    return BodyFit(
        body_model=model.name,
        params=params,
        vertices=vertices,
        faces=faces,
        joints=out.joints[0].numpy(),
        joint_names=model.joint_names,
        joint_parents=model.joint_parents,
        keypoints=keypoints,
        keypoint_names=model.keypoint_names,
        keypoints_2d=uv,
        K=K,
        keypoint_errors_px=errors.astype(np.float32),
        keypoint_error_px=float(np.nansum(errors * w) / max(w[used].sum(), 1e-9)),
        silhouette_iou=_iou(mesh_mask(vertices, faces, K, mask.shape[::-1]), mask),
        iterations=steps,
        seconds=seconds,
        distance_sigma_m=distance_sigma,
        surface_residual_m=surface_residual,
    )
