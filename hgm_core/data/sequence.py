"""Synthetic motion sequences for the camera-rate tracker (`hgm datagen --sequence`, issue #12).

One clothed synthetic subject (`sample_subject`: shape, clothes, light) in front of a fixed camera,
over `frames` frames at `fps`: it walks across the view (a gait in place while it moves sideways),
turns towards its left and back, then waves its right arm. Every frame is built and ray-cast like
a datagen subject (`build_subject`, `render_view`), so BlazePose sees the same kind of image the
rest of the project trains and tests on.

Ground truth per frame, in the camera's optical frame (metres): `AnnyBody` parameters (the subject's
shape from its phenotypes, the pose converted from the generator's joint angles) and their joints
and keypoints. `frame_ground_truth` checks the conversion against the generator's own keypoints
(`SequenceError` beyond `MAX_KEYPOINT_MISMATCH_M`).

Files (`write_sequence`), one folder per sequence:
    rgb/{f:04d}.jpg      the camera image (quality 95)
    mask/{f:04d}.png     the person's coverage, 0..255
    sequence.json        seed, generator version, fps, width, height, K, joint and keypoint names, subject spec
    ground_truth.npz     stamps [N] s, global_orient [N, 3], transl [N, 3], pose [N, 57], shape [6],
                         joints [N, 20, 3], keypoints [N, 23, 3], keypoints_2d [N, 23, 2] px
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import roma
import torch

from hgm_core.body.base import BodyParams
from hgm_core.camera import intrinsics_from_fov, project_points
from hgm_core.data.render import SubjectScene, render_view, subject_light
from hgm_core.data.synth import (
    GENERATOR_VERSION,
    SubjectSpec,
    SynthBody,
    _pose_deltas,
    _rotation,
    _walking_angles,
    build_subject,
    sample_subject,
)

if TYPE_CHECKING:
    from hgm_core.body.anny_body import AnnyBody

MAX_KEYPOINT_MISMATCH_M = 0.002
"""The AnnyBody ground truth must reproduce the generator's keypoints this closely (metres)."""


class SequenceError(ValueError):
    """A sequence that cannot be made or read (bad settings, inconsistent ground truth, missing files)."""


@dataclass(frozen=True)
class SequenceConfig:
    """What a sequence shows and how it is filmed.

    Attributes:
        frames / fps: length and rate.
        width / height: image size (px); fov_deg: field of view across the longer side (the
            perception default, so a client without camera_info sees the same camera).
        distance_m: camera distance from the subject's starting spot; camera_height_m / look_at_height_m:
            the camera's height and where it looks (metres above the floor).
        walk_share / turn_share: fractions of the sequence spent walking, then turning; the rest waves.
        walk_span_m: how far the subject moves sideways while walking; cadence_hz: gait cycles per second.
        turn_deg: how far it turns (towards its left) and back; wave_hz: forearm waves per second.
        ambient / ssaa: lighting share and supersampling of `hgm_core.data.render`.
    """

    frames: int = 60
    fps: float = 15.0
    width: int = 640
    height: int = 480
    fov_deg: float = 55.0
    distance_m: float = 3.2
    camera_height_m: float = 1.3
    look_at_height_m: float = 0.95
    walk_share: float = 0.4
    turn_share: float = 0.3
    walk_span_m: float = 0.8
    cadence_hz: float = 0.9
    turn_deg: float = 60.0
    wave_hz: float = 1.5
    ambient: float = 0.35
    ssaa: int = 1


@dataclass(frozen=True)
class SequenceFrame:
    """One frame: `rgb [H, W, 3]` uint8, `alpha [H, W]` float32 coverage and its ground truth
    (`params` batch-1 camera-frame `AnnyBody` parameters, `joints [20, 3]`, `keypoints [23, 3]`,
    `keypoints_2d [23, 2]`), all numpy except `params`."""

    index: int
    stamp_s: float
    rgb: np.ndarray
    alpha: np.ndarray
    params: BodyParams
    joints: np.ndarray
    keypoints: np.ndarray
    keypoints_2d: np.ndarray


def _smoothstep(a: float, b: float, x: float) -> float:
    t = min(max((x - a) / (b - a), 0.0), 1.0)
    return t * t * (3 - 2 * t)


def motion_at(t: float, config: SequenceConfig) -> tuple[dict[str, float], float, float]:
    """The subject at time `t` (s): generator joint angles (degrees), yaw (degrees) and sideways offset (m).

    Walking: the generator's gait (`_walking_angles`) fading out at the end of the walk; turning:
    a smooth turn to `turn_deg` and back; waving: the right arm raised with the forearm swinging.
    The spine stays straight (anny's spine03, which the tracker's body does not articulate, stays at rest).
    """
    c = config
    u = t * c.fps / max(c.frames - 1, 1)
    walk = 1 - _smoothstep(c.walk_share - 0.05, c.walk_share + 0.05, u)
    angles = _walking_angles((c.cadence_hz * t) % 1.0, 0.9 * walk)
    turn_u = (u - c.walk_share) / c.turn_share
    yaw = c.turn_deg * math.sin(math.pi * min(max(turn_u, 0.0), 1.0))
    wave = _smoothstep(c.walk_share + c.turn_share - 0.05, c.walk_share + c.turn_share + 0.05, u)
    angles["shoulder_down.R"] += wave * (-110.0 - angles["shoulder_down.R"])  # the upper arm raised above the shoulder
    angles["shoulder_fwd.R"] += wave * (15.0 - angles["shoulder_fwd.R"])
    angles["elbow_flex.R"] += wave * (50.0 + 35.0 * math.sin(2 * math.pi * c.wave_hz * t) - angles["elbow_flex.R"])
    offset = c.walk_span_m * (_smoothstep(0.0, c.walk_share, u) - 0.5)
    return angles, yaw, offset


def camera(config: SequenceConfig) -> tuple[np.ndarray, np.ndarray]:
    """The fixed camera: K `[3, 3]` and world -> camera `[4, 4]` (OpenCV axes), float64.

    It stands on +z at `distance_m` and `camera_height_m`, looking at `look_at_height_m` on the y axis."""
    K = intrinsics_from_fov(config.width, config.height, config.fov_deg, across="longer", dtype=torch.float64).numpy()
    eye = np.array([0.0, config.camera_height_m, config.distance_m])
    fwd = np.array([0.0, config.look_at_height_m, 0.0]) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    R = np.stack([right, np.cross(fwd, right), fwd])
    E = np.eye(4)
    E[:3, :3], E[:3, 3] = R, -R @ eye
    return K, E


def frame_ground_truth(spec: SubjectSpec, synth: SynthBody, anny: AnnyBody, E: np.ndarray,
                       geometry_keypoints: dict[str, np.ndarray]) -> BodyParams:
    """The camera-frame (`E`: world -> camera) `AnnyBody` parameters of the subject `spec`.

    The generator poses anny with per-bone rotations in anny's axes ("local-ref" deltas, the
    convention `AnnyBody.pose` uses in body axes) and places it by a yaw about the vertical and a
    shift; this is the same body as `AnnyBody` parameters. `geometry_keypoints` (world frame, by
    name) are the generator's own keypoints: the parameters must reproduce them, and their offset
    from the body's own keypoints is the translation.
    """
    from hgm_core.body.anny_body import ANNY_JOINTS

    A = anny._anny_from_body.double()
    pheno = {k: torch.tensor([v], dtype=torch.float64) for k, v in spec.phenotypes.items()}
    with torch.no_grad():
        heads = synth.model(phenotype_kwargs=pheno)["rest_bone_heads"][0].numpy()
    bone_index = synth.assets["bone_index"]
    deltas = _pose_deltas(spec.joint_angles_deg, heads, bone_index)
    pose = torch.zeros(len(ANNY_JOINTS) - 1, 3, dtype=torch.float64)
    for j, (_, bone) in enumerate(ANNY_JOINTS[1:]):
        if bone in deltas:
            pose[j] = roma.rotmat_to_rotvec(torch.from_numpy(deltas[bone][:3, :3])) @ A  # anny axes -> body axes
    unused = set(deltas) - {bone for _, bone in ANNY_JOINTS}
    if any(not np.allclose(deltas[b][:3, :3], np.eye(3)) for b in unused):
        raise SequenceError(f"the motion rotates bones the body model does not articulate: {sorted(unused)}")
    # World = the body frame turned by the yaw about +y (`build_subject`), then shifted.
    yaw = _rotation(np.array([0.0, 1.0, 0.0]), spec.yaw_deg)
    shape = anny.shape_from_phenotypes(spec.phenotypes)
    Rc, tc = E[:3, :3], E[:3, 3]
    orient = roma.rotmat_to_rotvec(torch.from_numpy(Rc @ yaw))[None].float()
    probe = BodyParams(orient, torch.zeros(1, 3), pose.reshape(1, -1).float(), shape)
    with torch.no_grad():
        out = anny(probe)
    names = anny.keypoint_names
    ours = out.keypoints[0].double().numpy()  # camera axes, pelvis at the origin
    theirs = np.stack([geometry_keypoints[n] for n in names]) @ Rc.T + tc
    transl = (theirs - ours).mean(0)
    mismatch = float(np.linalg.norm(theirs - ours - transl, axis=1).max())
    if mismatch > MAX_KEYPOINT_MISMATCH_M:
        raise SequenceError(f"AnnyBody misses the generator's keypoints by {mismatch * 1e3:.1f} mm")
    return BodyParams(orient, torch.as_tensor(transl, dtype=torch.float32)[None], probe.pose, shape)


def make_sequence(seed: int, synth: SynthBody, anny: AnnyBody, config: SequenceConfig = SequenceConfig()) -> Iterator[SequenceFrame]:
    """Render the sequence of subject `seed` frame by frame (about a second per frame on this CPU)."""
    c = config
    if c.frames < 2 or c.fps <= 0 or min(c.width, c.height) < 16 or c.ssaa < 1:
        raise SequenceError("need frames >= 2, fps > 0, width and height >= 16, ssaa >= 1")
    base = sample_subject(seed, synth)
    K, E = camera(c)
    size = max(c.width, c.height)  # render_view draws square images: render the square, keep the middle
    x0, y0 = (size - c.width) // 2, (size - c.height) // 2
    K_square = K.copy()
    K_square[0, 2] += x0
    K_square[1, 2] += y0
    for f in range(c.frames):
        t = f / c.fps
        angles, yaw, offset = motion_at(t, c)
        spec = replace(base, pose_family="sequence", joint_angles_deg=angles, walk_phase=None, yaw_deg=yaw)
        geom = build_subject(spec, synth)
        move = np.array([offset, 0.0, 0.0])
        for part in geom.parts:
            part.vertices = part.vertices + move
        view = render_view(SubjectScene(geom.parts), subject_light(geom, c.ambient), K_square, E, size, c.ssaa)
        keypoints = {n: p + move for n, p in zip(geom.keypoint_names, geom.keypoints)}
        params = frame_ground_truth(spec, synth, anny, E, keypoints)
        with torch.no_grad():
            out = anny(params)
        kp = out.keypoints[0].double()
        yield SequenceFrame(
            index=f,
            stamp_s=t,
            rgb=view.rgb[y0 : y0 + c.height, x0 : x0 + c.width],
            alpha=view.alpha[y0 : y0 + c.height, x0 : x0 + c.width],
            params=params,
            joints=out.joints[0].numpy(),
            keypoints=kp.float().numpy(),
            keypoints_2d=project_points(kp, torch.as_tensor(K)).float().numpy(),
        )


def write_sequence(root: Path, seed: int, synth: SynthBody, anny: AnnyBody, config: SequenceConfig = SequenceConfig(),
                   progress: bool = True) -> Path:
    """Render the sequence of subject `seed` into the folder `root` (module docstring) and return it."""
    import cv2
    from tqdm import tqdm

    root = Path(root)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    K, _ = camera(config)
    frames = []
    for frame in tqdm(make_sequence(seed, synth, anny, config), total=config.frames, desc="frames", unit="frame", disable=not progress):
        cv2.imwrite(str(root / "rgb" / f"{frame.index:04d}.jpg"), frame.rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "mask" / f"{frame.index:04d}.png"), np.round(frame.alpha * 255).astype(np.uint8))
        frames.append(frame)
    spec = sample_subject(seed, synth)
    meta = {"generator": "hgm sequence", "version": GENERATOR_VERSION, "seed": seed, "fps": config.fps,
            "frames": config.frames, "width": config.width, "height": config.height, "K": K.tolist(),
            "joint_names": list(anny.joint_names), "keypoint_names": list(anny.keypoint_names),
            "config": config.__dict__, "subject": spec.to_json()}
    (root / "sequence.json").write_text(json.dumps(meta, indent=1))
    stack = lambda get: np.stack([get(fr) for fr in frames]).astype(np.float32)  # noqa: E731
    np.savez(root / "ground_truth.npz", stamps=np.array([fr.stamp_s for fr in frames]),
             global_orient=stack(lambda fr: fr.params.global_orient[0].numpy()), transl=stack(lambda fr: fr.params.transl[0].numpy()),
             pose=stack(lambda fr: fr.params.pose[0].numpy()), shape=frames[0].params.shape[0].numpy(),
             joints=stack(lambda fr: fr.joints), keypoints=stack(lambda fr: fr.keypoints),
             keypoints_2d=stack(lambda fr: fr.keypoints_2d))
    return root


@dataclass(frozen=True)
class Sequence:
    """A written sequence (`read_sequence`): `K [3, 3]`, `fps`, `size (W, H)`, `joint_names` and the
    ground-truth arrays of `ground_truth.npz` (`truth`); `image(f)` / `mask(f)` load frame `f`."""

    root: Path
    K: np.ndarray
    fps: float
    size: tuple[int, int]
    joint_names: tuple[str, ...]
    truth: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.truth["stamps"])

    def image(self, f: int) -> np.ndarray:
        """`[H, W, 3]` uint8 RGB of frame `f`."""
        import cv2

        img = cv2.imread(str(self.root / "rgb" / f"{f:04d}.jpg"), cv2.IMREAD_COLOR)
        if img is None:
            raise SequenceError(f"{self.root} has no frame {f}")
        return img[..., ::-1].copy()

    def mask(self, f: int) -> np.ndarray:
        """`[H, W]` bool person mask of frame `f` (coverage above one half)."""
        import cv2

        m = cv2.imread(str(self.root / "mask" / f"{f:04d}.png"), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise SequenceError(f"{self.root} has no mask {f}")
        return m > 127

    def params(self, f: int) -> BodyParams:
        """Batch-1 ground-truth `AnnyBody` parameters of frame `f` (camera frame)."""
        t = self.truth
        g = lambda k: torch.from_numpy(t[k][f : f + 1])  # noqa: E731
        return BodyParams(g("global_orient"), g("transl"), g("pose"), torch.from_numpy(t["shape"])[None])


def read_sequence(root: Path) -> Sequence:
    """Open a sequence folder written by `write_sequence`."""
    root = Path(root)
    try:
        meta = json.loads((root / "sequence.json").read_text())
        with np.load(root / "ground_truth.npz") as z:
            truth = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise SequenceError(f"{root} is not a sequence folder: {e}") from e
    return Sequence(root, np.asarray(meta["K"], np.float64), float(meta["fps"]), (int(meta["width"]), int(meta["height"])),
                    tuple(meta["joint_names"]), truth)
