"""The camera-rate pose tracker (hgm_core.body.pose_tracker) and its reduced chain (AnnyKinematics)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import roma
import torch

from hgm_core.body import AnnyBody, BodyParams
from hgm_core.body.anny_reduced import AnnyKinematics
from hgm_core.body.fit import BLAZEPOSE_FOR_KEYPOINT
from hgm_core.body.pose_tracker import LOST, TRACKING, PoseTrackConfig, PoseTracker
from hgm_core.camera import project_points
from hgm_core.perception.perceive import LANDMARK_NAMES, Perception, PerceptionConfig, default_intrinsics
from tests.test_skinning import plausible_params

SIZE = (640, 480)
ORACLE = PoseTrackConfig(landmark_offset_scale=0.0)
"""For `oracle_perception`'s landmarks, which are the model's own keypoints: no BlazePose offsets to take off."""


@pytest.fixture(scope="module")
def anny() -> AnnyBody:
    return AnnyBody()


def oracle_perception(body: AnnyBody, params: BodyParams, K: np.ndarray, size: tuple[int, int] = SIZE) -> Perception:
    """What a perfect landmark detector reports for `params` (visibility 1 where the model has the landmark)."""
    with torch.no_grad():
        kp = body(params).keypoints[0].double()
    uv = project_points(kp, torch.as_tensor(K)).numpy()
    names = body.keypoint_names
    hips = kp[[names.index("left_hip"), names.index("right_hip")]].mean(0)
    lm2, lm3 = np.zeros((33, 3), np.float32), np.zeros((33, 3), np.float32)
    for k, name in enumerate(names):
        if name in BLAZEPOSE_FOR_KEYPOINT:
            i = LANDMARK_NAMES.index(BLAZEPOSE_FOR_KEYPOINT[name])
            lm2[i] = (*uv[k], 1.0)
            lm3[i] = (kp[k] - hips).numpy()
    w, h = size
    return Perception(size, np.zeros((h, w), bool), "given", lm2, lm3, (0, 0, w, h), 1, K, "camera_info")


def motion(anny: AnnyBody, frames: int, seed: int = 0) -> list[BodyParams]:
    """A person facing the camera 3 m away who lifts the left arm, bends the right leg, turns and steps sideways."""
    g = torch.Generator().manual_seed(seed)
    shape = 0.5 * torch.randn(1, anny.shape_dim, generator=g)
    lim, names = anny.joint_limits, anny.pose_joint_names
    out = []
    for f in range(frames):
        s = math.sin(math.pi * f / (frames - 1))
        local = torch.zeros_like(lim.lo)
        local[names.index("left_shoulder"), 2] = 1.2 * s
        local[names.index("left_elbow"), 0] = 1.0 * s
        local[names.index("right_hip"), 0] = -0.6 * s
        local[names.index("right_knee"), 0] = 0.9 * s
        pose = torch.einsum("jl,jkl->jk", local, lim.frames).reshape(1, -1)
        orient = roma.rotmat_to_rotvec(roma.rotvec_to_rotmat(torch.tensor([0.0, 0.5 * s, 0.0])) @ roma.rotvec_to_rotmat(torch.tensor([math.pi, 0.0, 0.0])))
        out.append(BodyParams(orient[None], torch.tensor([[0.3 * s, 0.1, 3.0]]), pose, shape))
    return out


def joints(anny: AnnyBody, params: BodyParams) -> torch.Tensor:
    with torch.no_grad():
        return anny(params).joints[0]


def test_kinematics_reproduce_anny(anny: AnnyBody) -> None:
    params = plausible_params(anny, batch=3, seed=0)
    kin = AnnyKinematics.build(anny.sampled(1), params.shape[:1])
    params.shape = params.shape[:1].expand(3, -1)
    with torch.no_grad():
        out, bones = anny(params), anny.bone_transforms(params)
    R = roma.rotvec_to_rotmat(params.global_orient.double())
    j, k = kin.points(R, params.transl.double(), params.pose.double())
    assert (j - out.joints).norm(dim=-1).max() < 1e-5  # metres (anny itself runs in float32)
    assert (k - out.keypoints).norm(dim=-1).max() < 1e-4
    assert (kin.bone_transforms(R, params.transl.double(), params.pose.double()) - bones).abs().max() < 1e-5


def test_tracker_follows_a_known_motion(anny: AnnyBody) -> None:
    K = default_intrinsics(*SIZE)
    seq = motion(anny, 20)
    tracker = PoseTracker(anny, replace(ORACLE, min_cutoff_hz=0))  # unfiltered: the solver's own accuracy
    assert tracker.start(seq[0]) is None and tracker.state == TRACKING
    errors, across, reprojection = [], [], []
    for f, params in enumerate(seq):
        result = tracker.track(oracle_perception(anny, params, K), f / 15)
        assert result.state == TRACKING, result.reason
        d = result.joints - joints(anny, params)
        errors.append(float(d.norm(dim=-1).mean()))
        across.append(float(d[:, :2].norm(dim=-1).mean()))  # in the image plane
        reprojection.append(result.keypoint_error)
        assert result.bone_transforms.shape == (len(anny.skinning_joint_names), 4, 4)
    # Exact landmarks, 2 steps per frame, the wrist moving up to ~8 cm per frame: the keypoints land
    # within 1 % of the person's size (~3 px) and the joints within 2.5 cm across the image. Along
    # the depth the pull to the previous frame (tuned for BlazePose's noisy 3D landmarks) lets the
    # leg that swings towards the camera lag by up to ~6 cm.
    assert max(reprojection) < 0.01, reprojection
    assert max(across) < 0.025, across
    assert max(errors) < 0.07 and np.mean(errors) < 0.04, errors


def test_lost_on_an_empty_frame_and_recovers(anny: AnnyBody) -> None:
    K = default_intrinsics(*SIZE)
    seq = motion(anny, 11)
    tracker = PoseTracker(anny, ORACLE)
    assert tracker.track(oracle_perception(anny, seq[0], K)).reason == "not_started"
    tracker.start(seq[0], oracle_perception(anny, seq[0], K), 0.0)
    lost = tracker.track(None, 1 / 15)
    assert (lost.state, lost.reason, lost.params, lost.bone_transforms) == (LOST, "no_person", None, None)
    assert tracker.state == LOST
    # Recovery from the landmarks alone, at a pose far from the last tracked one (the keyframe's).
    back = tracker.track(oracle_perception(anny, seq[5], K), 2 / 15)
    assert back.state == TRACKING and back.reinitialised
    assert float((back.joints - joints(anny, seq[5])).norm(dim=-1).mean()) < 0.05


def test_a_stale_start_is_recovered_from_the_landmarks_not_lost(anny: AnnyBody) -> None:
    """The first frame after a keyframe taken seconds ago: the person has turned by 1.5 rad, moved the
    limbs and stepped 0.6 m aside. A few steps from the keyframe's pose cannot explain that; the
    tracker starts again from the landmarks in the same frame instead of reporting "lost" (which
    costs a keyframe)."""
    K = default_intrinsics(*SIZE)
    seq = motion(anny, 11)
    turned = roma.rotvec_to_rotmat(torch.tensor([0.0, 1.5, 0.0])) @ roma.rotvec_to_rotmat(seq[5].global_orient[0])
    far = BodyParams(roma.rotmat_to_rotvec(turned)[None], seq[5].transl + torch.tensor([[0.6, 0.0, 0.0]]), seq[5].pose, seq[5].shape)
    tracker = PoseTracker(anny, ORACLE)
    tracker.start(seq[0])
    result = tracker.track(oracle_perception(anny, far, K), 0.0)
    assert result.state == TRACKING and result.reinitialised, result.reason
    assert float((result.joints - joints(anny, far)).norm(dim=-1).mean()) < 0.05
    following = tracker.track(oracle_perception(anny, far, K), 1 / 15)  # and tracking goes on from there
    assert following.state == TRACKING and not following.reinitialised


def test_lost_when_the_torso_is_hidden_or_the_pose_cannot_explain_the_landmarks(anny: AnnyBody) -> None:
    K = default_intrinsics(*SIZE)
    seq = motion(anny, 3)
    tracker = PoseTracker(anny, ORACLE)
    tracker.start(seq[0])
    hidden = oracle_perception(anny, seq[1], K)
    hidden.landmarks_2d[[LANDMARK_NAMES.index(n) for n in ("left_shoulder", "right_shoulder")], 2] = 0.1
    assert tracker.track(hidden).reason == "low_visibility"
    tracker.start(seq[0])
    scrambled = oracle_perception(anny, seq[1], K)
    rng = np.random.default_rng(0)
    scrambled.landmarks_2d[:, :2] = rng.permutation(scrambled.landmarks_2d[:, :2])  # no body fits this
    result = tracker.track(scrambled)
    assert (result.state, result.reason) == (LOST, "residual") and result.keypoint_error > 0.08


def test_filter_damps_landmark_noise(anny: AnnyBody) -> None:
    K = default_intrinsics(*SIZE)
    still = motion(anny, 3)[1]
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(20):
        p = oracle_perception(anny, still, K)
        p.landmarks_2d[:, :2] += rng.normal(0, 2.0, p.landmarks_2d[:, :2].shape)  # ~2 px of detector noise
        p.landmarks_3d[:] += rng.normal(0, 0.02, p.landmarks_3d.shape)
        frames.append(p)

    def jitter(config: PoseTrackConfig) -> float:
        tracker = PoseTracker(anny, config)
        tracker.start(still)
        j = torch.stack([tracker.track(p, f / 15).joints for f, p in enumerate(frames)])
        return float((j[2:] - 2 * j[1:-1] + j[:-2]).norm(dim=-1).mean())

    assert jitter(PoseTrackConfig()) < 0.5 * jitter(PoseTrackConfig(min_cutoff_hz=0))


@pytest.mark.slow  # ~30 s: renders 12 frames of a clothed subject and runs BlazePose on them
def test_tracker_follows_a_rendered_walk_seen_by_blazepose(anny: AnnyBody) -> None:
    from itertools import islice

    from hgm_core.data.sequence import SequenceConfig, make_sequence
    from hgm_core.data.synth import SynthBody, subject_seed
    from hgm_core.perception.perceive import PoseEstimator, perceive_landmarks
    from hgm_core.types import CameraInfo

    config = SequenceConfig()
    frames = list(islice(make_sequence(subject_seed(4242, 0), SynthBody(), anny, config), 12))  # the walk
    K = default_intrinsics(config.width, config.height, config.fov_deg)
    tracker = PoseTracker(anny)
    tracker.start(frames[0].params)
    errors = []
    with PoseEstimator(video=True, segmentation=False) as estimator:  # the live pipeline's landmarks-only path
        for frame in frames:
            result = tracker.track(perceive_landmarks(frame.rgb, estimator, camera=CameraInfo(K, config.width, config.height)), frame.stamp_s)
            assert result.state == TRACKING, result.reason
            pred, truth = result.joints.numpy(), frame.joints
            errors.append(np.linalg.norm((pred - pred[0]) - (truth - truth[0]), axis=-1).mean())
    # bench/live.py measures 47-67 mm (pelvis-aligned) on such sequences; a tracker that drifts or
    # mirrors a limb is far above 100 mm.
    assert np.mean(errors) < 0.09 and max(errors) < 0.14, errors


def test_landmarks_only_perception_matches_perceive_on_a_photo() -> None:
    """`perceive_landmarks` (no segmentation) finds the landmarks `perceive` finds, boxes the visible
    ones, and refuses what `perceive` refuses; `perceive` refuses an estimator without segmentation."""
    from PIL import Image

    from hgm_core.paths import ASSETS_DIR
    from hgm_core.perception.perceive import PoseEstimator, perceive, perceive_landmarks
    from hgm_core.types import CropTooSmallError, NoPersonError

    photo = np.asarray(Image.open(ASSETS_DIR / "sample" / "person.jpg").convert("RGB"))
    with PoseEstimator() as full, PoseEstimator(segmentation=False) as bare:
        p = perceive(photo, full)
        lm = perceive_landmarks(photo, bare)
        assert full(photo)[2] is not None and bare(photo)[2] is None
        np.testing.assert_allclose(lm.landmarks_2d[:, :2], p.landmarks_2d[:, :2], atol=2.0)  # pixels
        np.testing.assert_allclose(lm.landmarks_3d, p.landmarks_3d, atol=0.02)  # metres
        np.testing.assert_array_equal(lm.K, p.K)
        assert lm.image_size == p.image_size and lm.intrinsics_source == "default_fov"
        # The landmark box lies within the person's mask box, give or take the joints' offsets from the outline.
        x0, y0, x1, y1 = lm.bbox
        assert x0 >= p.bbox[0] - 20 and y0 >= p.bbox[1] - 20 and x1 <= p.bbox[2] + 20 and y1 <= p.bbox[3] + 20
        assert (x1 - x0) * (y1 - y0) > 0.3 * (p.bbox[2] - p.bbox[0]) * (p.bbox[3] - p.bbox[1])
        with pytest.raises(NoPersonError):
            perceive_landmarks(np.full((240, 320, 3), 255, np.uint8), bare)
        with pytest.raises(CropTooSmallError):
            perceive_landmarks(photo, bare, config=PerceptionConfig(min_person_px=10_000))
        with pytest.raises(ValueError, match="segmentation"):
            perceive(photo, bare)
