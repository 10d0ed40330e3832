"""fit_body on synthetic ground truth (Anny posed with known, plausible parameters) and on SMPL-X."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch

from hgm_core.body import AnnyBody, BodyModel, BodyParams, FitConfig, fit_body, mpjpe, pa_mpjpe, skeleton
from hgm_core.body.fit import BLAZEPOSE_FOR_KEYPOINT, BLAZEPOSE_OFFSETS, fit_targets, mesh_mask, torso_frame_2d
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
    gt, perception = render_case(body, params, K, noise_3d, seed)
    return params, gt, perception


def render_case(body: BodyModel, params: BodyParams, K: np.ndarray, noise_3d: float = 0.0, seed: int = 0):
    """GT output of `params` and a `Perception` with its keypoints projected and its mask."""
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
    return gt, perception


@pytest.fixture(scope="module")
def anny_body() -> AnnyBody:
    return AnnyBody()


def _errors(body: BodyModel, fit, gt) -> tuple[float, float]:
    gj = gt.joints[0].numpy()
    root = np.arange(len(gj)) == 0  # pelvis-aligned MPJPE over the skeleton joints
    return 1000 * mpjpe(fit.joints, gj, root), 1000 * pa_mpjpe(fit.joints, gj)


def _run_synthetic(body: AnnyBody, config: FitConfig, noise_3d: float, label: str, capsys) -> list[tuple]:
    K = default_intrinsics(*IMAGE_SIZE)
    rows = []
    for i in range(len(POSES)):
        params, gt, perception = synthetic_case(body, i, body.shape_from_phenotypes(SHAPES[i]), K, noise_3d=noise_3d, seed=i)
        fit = fit_body(perception, K, body, config=config)
        e, pa = _errors(body, fit, gt)
        t_err = 1000 * float(np.linalg.norm(fit.params.transl[0].numpy() - np.array(TRANSL[i])))
        rows.append((e, pa, fit.keypoint_error_px, fit.silhouette_iou, t_err, fit.seconds))
    with capsys.disabled():
        print(f"\n[fit synthetic, {label}]  case: MPJPE / PA-MPJPE mm, reprojection px, IoU, pelvis error mm, s")
        for i, r in enumerate(rows):
            print(f"  {i}: {r[0]:.1f} / {r[1]:.1f}, {r[2]:.2f}, {r[3]:.3f}, {r[4]:.0f}, {r[5]:.1f}")
        print(f"  mean MPJPE {np.mean([r[0] for r in rows]):.1f} mm, PA-MPJPE {np.mean([r[1] for r in rows]):.1f} mm")
    return rows


def test_synthetic_fit_with_3d_landmarks_meets_40mm(anny_body: AnnyBody, capsys) -> None:
    """The perceive() situation: 2D keypoints + mask + BlazePose-like metric 3D landmarks, here the
    GT keypoints with 5 cm Gaussian noise per axis (BlazePose world landmarks are that rough)."""
    # These landmarks are the model's own keypoints (+ noise), not BlazePose's: no lean or offsets to undo.
    config = FitConfig(landmarks_3d_lean_deg=0.0, landmark_offset_scale=0.0)
    rows = _run_synthetic(anny_body, config, 0.05, "2D + mask + 3D landmarks (5 cm noise)", capsys)
    assert np.mean([r[0] for r in rows]) <= 40.0
    assert all(r[2] < 3.0 and r[3] > 0.88 for r in rows)  # keypoints and silhouette are matched


@pytest.mark.slow
def test_synthetic_fit_2d_only(anny_body: AnnyBody, capsys) -> None:
    """2D keypoints + mask only: limb depth is ambiguous, so only image-space agreement is asserted."""
    rows = _run_synthetic(anny_body, FitConfig(landmarks_3d_weight=0.0), 0.0, "2D + mask only", capsys)
    assert all(r[2] < 3.0 and r[3] > 0.88 for r in rows)
    assert np.mean([r[1] for r in rows]) < 100.0


def test_fit_beats_its_initialisation_and_respects_joint_limits(anny_body: AnnyBody) -> None:
    K = default_intrinsics(*IMAGE_SIZE)
    _, gt, perception = synthetic_case(anny_body, 1, anny_body.shape_from_phenotypes(SHAPES[1]), K, noise_3d=0.05)
    short = fit_body(perception, K, anny_body, config=FitConfig(camera_iterations=5, iterations=1))
    fit = fit_body(perception, K, anny_body, config=FitConfig(camera_iterations=20, iterations=60))
    assert fit.keypoint_error_px < 0.5 * short.keypoint_error_px
    assert fit.silhouette_iou > short.silhouette_iou
    assert float(anny_body.joint_limits(fit.params.pose)) < 0.05  # (rad^2) essentially inside the limits
    sk = skeleton(fit)
    assert sk.joints.shape == (len(anny_body.joint_names), 3) and sk.joints.dtype == np.float32
    assert len(sk.bones) == len(sk.names) - 1 and all(0 <= a < len(sk.names) and 0 <= b < len(sk.names) for a, b in sk.bones)
    assert (sk.joints[:, 2] > 2.0).all()  # in front of the camera, metres
    # The fit's own params reproduce its vertices (camera frame).
    with torch.no_grad():
        again = anny_body(fit.params).vertices[0].numpy()
    np.testing.assert_allclose(again, fit.vertices, atol=1e-5)


def test_fit_with_smplx_body(tmp_path, capsys) -> None:
    """The same fitting code runs with SmplxBody (synthetic SMPL-X-format model)."""
    from hgm_core.body import SmplxBody
    from tests.test_body_smplx import write_synthetic_smplx

    body = SmplxBody(write_synthetic_smplx(tmp_path / "SMPLX_NEUTRAL.npz"))
    K = default_intrinsics(*IMAGE_SIZE)
    params, gt, perception = synthetic_case(body, 1, torch.zeros(1, body.shape_dim), K, noise_3d=0.02)
    fit = fit_body(perception, K, body)
    e, pa = _errors(body, fit, gt)
    with capsys.disabled():
        print(f"\n[fit smplx synthetic] MPJPE {e:.1f} mm PA {pa:.1f} mm reproj {fit.keypoint_error_px:.2f}px IoU {fit.silhouette_iou:.3f} {fit.seconds:.1f}s")
    assert fit.body_model == "smplx" and fit.vertices.shape == (body.num_vertices, 3)
    assert fit.keypoint_error_px < 5.0
    assert e < 100.0


def test_silhouette_distances() -> None:
    from hgm_core.body.fit import silhouette_target, silhouette_distances

    mask = np.zeros((100, 120), bool)
    mask[20:60, 30:90] = True  # x in [30, 90), y in [20, 60)
    target = silhouette_target(mask, max_boundary=10_000)
    uv = torch.tensor([[50.0, 40.0], [95.5, 40.5], [200.0, 40.0]], requires_grad=True)  # inside, 6 px right, off-image
    d_out, d_cover = silhouette_distances(uv, target)
    assert float(d_out[0]) == 0.0 and float(d_out[2]) == 0.0
    assert abs(float(d_out[1]) - 6.0) < 0.6
    d_out.sum().backward()
    assert float(uv.grad[1, 0]) > 0  # moving left (towards the mask) lowers the distance
    # Contour coverage: a sample on every contour pixel covers it exactly.
    d_out, d_cover = silhouette_distances(target.boundary.clone(), target)
    assert float(d_cover.max()) == 0.0 and float(d_out.max()) < 0.5
    # A mask cut by the image edge has no contour there.
    cut = np.zeros((100, 120), bool)
    cut[50:, 30:90] = True
    b = silhouette_target(cut, 10_000).boundary
    assert set(b[b[:, 1] > 99, 0].tolist()) == {30.5, 89.5}  # only the side edges reach the bottom row


def test_landmark_offsets_are_taken_off_in_the_torso_frame(anny_body: AnnyBody) -> None:
    """BlazePose's calibrated 2D offsets (`BLAZEPOSE_OFFSETS`) come off the landmarks in the person's
    own torso frame: mirrored for a person seen from behind, turned for one lying down, none in profile."""
    front = {"left_shoulder": (120, 100), "right_shoulder": (80, 100), "left_hip": (115, 180), "right_hip": (85, 180)}
    np.testing.assert_allclose(torso_frame_2d(front), [[1, 0], [0, -1]], atol=1e-12)
    back = {n: (200 - u, v) for n, (u, v) in front.items()}
    np.testing.assert_allclose(torso_frame_2d(back), [[-1, 0], [0, -1]], atol=1e-12)
    lying = {n: (v, -u) for n, (u, v) in front.items()}  # turned 90 degrees in the image
    np.testing.assert_allclose(torso_frame_2d(lying), [[0, -1], [-1, 0]], atol=1e-12)
    assert torso_frame_2d({n: (100 + 0.05 * (u - 100), v) for n, (u, v) in front.items()}) is None  # profile
    K = default_intrinsics(*IMAGE_SIZE)
    _, _, perception = synthetic_case(anny_body, 0, anny_body.shape_from_phenotypes(SHAPES[0]), K)
    names = anny_body.keypoint_names
    plain = fit_targets(perception, names, FitConfig(landmark_offset_scale=0.0))
    shifted = fit_targets(perception, names, FitConfig())
    frame = torso_frame_2d({n: plain.uv[names.index(n)].numpy() for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")})
    for name, offset in BLAZEPOSE_OFFSETS.items():
        k = names.index(name)
        expected = plain.uv[k].numpy() - plain.scale * frame.T @ np.asarray(offset)
        np.testing.assert_allclose(shifted.uv[k].numpy(), expected, atol=1e-3)
