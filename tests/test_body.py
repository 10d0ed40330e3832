"""AnnyBody: shapes, frames and units, parameters, joint limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hgm_core.body import COCO_KEYPOINT_NAMES, AnnyBody, BodyParams, mpjpe, pa_mpjpe


@pytest.fixture(scope="module")
def body() -> AnnyBody:
    return AnnyBody()


def test_forward_shapes_and_dtype(body: AnnyBody) -> None:
    out = body(body.rest_params(batch_size=2))
    assert body.num_vertices == 13718 and body.faces.shape == (27420, 3) and body.faces.dtype == torch.int64
    assert out.vertices.shape == (2, 13718, 3) and out.vertices.dtype == torch.float32
    assert out.joints.shape == (2, len(body.joint_names), 3)
    assert out.keypoints.shape == (2, len(COCO_KEYPOINT_NAMES), 3) and body.keypoint_names == COCO_KEYPOINT_NAMES
    assert body.pose_dim == 3 * 19 and body.shape_dim == 6
    assert len(body.joint_parents) == len(body.joint_names) and body.joint_parents[0] == -1


def test_body_frame_is_y_up_facing_z_metres(body: AnnyBody) -> None:
    out = body(body.rest_params())
    v, kp = out.vertices[0], dict(zip(body.keypoint_names, out.keypoints[0]))
    height = float(v[:, 1].max() - v[:, 1].min())
    assert 1.5 < height < 1.9  # an adult, metres
    np.testing.assert_allclose(out.joints[0, 0].numpy(), 0.0, atol=1e-6)  # pelvis at the origin
    assert kp["nose"][1] > kp["left_hip"][1] > kp["left_ankle"][1]  # y up
    assert kp["nose"][2] > kp["left_ear"][2]  # facing +z
    assert kp["left_shoulder"][0] > 0 > kp["right_shoulder"][0]  # x to the body's left
    # Outward faces: the signed volume is positive and about a human's (~0.06 m^3).
    a, b, c = v[body.faces].unbind(1)
    volume = float((a * torch.cross(b, c, dim=-1)).sum() / 6)
    assert 0.03 < volume < 0.12


def test_global_orient_and_transl(body: AnnyBody) -> None:
    rest = body.rest_params()
    base = body(rest).vertices[0]
    params = BodyParams(torch.tensor([[math.pi, 0.0, 0.0]]), torch.tensor([[0.1, 0.2, 3.0]]), rest.pose, rest.shape)
    placed = body(params).vertices[0]
    # Facing the camera in the optical frame: y down, z towards the camera.
    expected = base * torch.tensor([1.0, -1.0, -1.0]) + torch.tensor([0.1, 0.2, 3.0])
    torch.testing.assert_close(placed, expected, atol=1e-5, rtol=0)


def test_pose_moves_the_right_limb(body: AnnyBody) -> None:
    rest = body.rest_params()
    pose = rest.pose.clone().reshape(-1, 3)
    knee = body.pose_joint_names.index("left_knee")
    pose[knee] = torch.tensor([math.radians(90), 0.0, 0.0])  # knee flexion: shin swings backwards
    out = body(BodyParams(rest.global_orient, rest.transl, pose.reshape(1, -1), rest.shape))
    base = body(rest)
    k = dict(zip(body.keypoint_names, range(23)))
    d = out.keypoints[0] - base.keypoints[0]
    assert d[k["left_ankle"], 2] < -0.3 and abs(float(d[k["right_ankle"]].norm())) < 1e-5
    assert float(body.joint_limits(pose.reshape(1, -1))) == 0.0  # 90 deg flexion is allowed
    pose[knee] = torch.tensor([math.radians(-40), 0.0, 0.0])  # hyper-extension is not
    assert float(body.joint_limits(pose.reshape(1, -1))) > 0.1


def test_joint_limits_are_mirror_symmetric(body: AnnyBody) -> None:
    lo, hi = body.joint_limits.lo, body.joint_limits.hi
    names = body.pose_joint_names
    for j, name in enumerate(names):
        if name.startswith("left_") and "elbow" not in name and "knee" not in name:
            r = names.index("right_" + name.removeprefix("left_"))
            torch.testing.assert_close(lo[r], torch.stack([lo[j, 0], -hi[j, 1], -hi[j, 2]]), atol=1e-2, rtol=0)
    assert (body.joint_limits(torch.zeros(1, body.pose_dim)) == 0).all()


def test_shape_parameters(body: AnnyBody) -> None:
    tall = body.shape_from_phenotypes({"height": 0.9})
    short = body.shape_from_phenotypes({"height": 0.1})
    torch.testing.assert_close(body.phenotypes(tall)[0, body.phenotype_labels.index("height")], torch.tensor(0.9))
    rest = body.rest_params()
    h = lambda s: float(np.ptp(body(BodyParams(rest.global_orient, rest.transl, rest.pose, s)).vertices[0, :, 1].numpy()))  # noqa: E731
    assert h(tall) > h(body.rest_params().shape) + 0.05 > h(short) + 0.1
    assert float(body.shape_prior(torch.zeros(1, 6))) == 0.0


def test_params_roundtrip_and_validation(body: AnnyBody) -> None:
    p = body.rest_params()
    p.pose = torch.randn(1, body.pose_dim) * 0.1
    again = BodyParams.from_dict(p.to_dict())
    torch.testing.assert_close(again.pose, p.pose)
    with pytest.raises(ValueError):
        body(BodyParams(p.global_orient, p.transl, torch.zeros(1, 5), p.shape))
    with pytest.raises(ValueError):
        AnnyBody(topology="smplx")  # would download non-commercial data


def test_metrics() -> None:
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(20, 3))
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    R *= np.sign(np.linalg.det(R))
    moved = 1.3 * gt @ R + 0.5
    assert pa_mpjpe(moved, gt) < 1e-9
    assert mpjpe(gt + 0.5, gt) == pytest.approx(np.sqrt(3) * 0.5)
    assert mpjpe(gt + 0.5, gt, root=np.arange(20) == 0) < 1e-12
