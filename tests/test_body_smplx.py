"""SmplxBody on a synthetic SMPL-X-format model (the real files are licence-gated)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SMPLX_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15]
SMPLX_PARENTS += [20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38]  # left hand
SMPLX_PARENTS += [21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]  # right hand
NUM_VERTICES = 10475  # smplx's extra keypoints index real SMPL-X vertex ids, up to 9929


def _rest_joints() -> np.ndarray:
    """`[55, 3]` a T-posed stick figure in SMPL-X's frame (y up, facing +z), metres."""
    j = np.zeros((55, 3))
    body = {
        0: (0, 0, 0), 1: (0.09, -0.09, 0), 2: (-0.09, -0.09, 0), 3: (0, 0.11, 0), 4: (0.1, -0.5, 0),
        5: (-0.1, -0.5, 0), 6: (0, 0.25, 0), 7: (0.1, -0.9, -0.02), 8: (-0.1, -0.9, -0.02), 9: (0, 0.32, 0),
        10: (0.1, -0.95, 0.1), 11: (-0.1, -0.95, 0.1), 12: (0, 0.5, 0), 13: (0.07, 0.43, 0),
        14: (-0.07, 0.43, 0), 15: (0, 0.6, 0.02), 16: (0.18, 0.44, 0), 17: (-0.18, 0.44, 0),
        18: (0.45, 0.44, 0), 19: (-0.45, 0.44, 0), 20: (0.7, 0.44, 0), 21: (-0.7, 0.44, 0),
        22: (0, 0.57, 0.05), 23: (0.03, 0.65, 0.08), 24: (-0.03, 0.65, 0.08),
    }  # fmt: skip
    for k, v in body.items():
        j[k] = v
    for side, wrist, first in ((1, 20, 25), (-1, 21, 40)):
        for finger in range(5):
            for seg in range(3):
                j[first + 3 * finger + seg] = j[wrist] + (side * (0.04 + 0.025 * seg), 0, 0.04 - 0.02 * finger)
    return j


def _tube(a: np.ndarray, b: np.ndarray, radius: float, rings: int = 12, around: int = 12):
    """Vertices `[rings * around, 3]` and quad-split faces of a closed-ish tube from a to b."""
    d = b - a
    length = np.linalg.norm(d)
    d = d / length
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    w = np.cross(d, u)
    t = np.linspace(0, 1, rings)[:, None, None]
    ang = np.linspace(0, 2 * np.pi, around, endpoint=False)[None, :, None]
    pts = a + t * length * d + radius * (np.cos(ang) * u + np.sin(ang) * w)
    idx = np.arange(rings * around).reshape(rings, around)
    nxt = np.roll(idx, -1, axis=1)
    quads = np.stack([idx[:-1], nxt[:-1], nxt[1:], idx[1:]], -1).reshape(-1, 4)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    return pts.reshape(-1, 3), faces


def write_synthetic_smplx(path: Path, num_betas: int = 10) -> Path:
    """Write a small SMPL-X-format `.npz` (every key `smplx.SMPLX` reads) of a tube-figure body."""
    from smplx.vertex_ids import vertex_ids

    joints = _rest_joints()
    radii = {0: 0.13, 3: 0.13, 6: 0.13, 9: 0.12, 12: 0.05, 15: 0.09, 1: 0.08, 2: 0.08, 4: 0.06, 5: 0.06}
    verts, faces, owner = [], [], []
    for child in range(1, 25):
        parent = SMPLX_PARENTS[child]
        if child in (22, 23, 24) or parent in (13, 14):  # face joints, collar->shoulder: no tube
            continue
        a, b = joints[parent], joints[child]
        pts, tri = _tube(a, b, radii.get(parent, 0.045))
        faces.append(tri + sum(len(v) for v in verts))
        verts.append(pts)
        owner += [parent] * len(pts)
    head, tri = _tube(joints[15] - (0, 0.02, 0), joints[15] + (0, 0.22, 0), 0.09)
    faces.append(tri + sum(len(v) for v in verts))
    verts.append(head)
    owner += [15] * len(head)
    mesh = np.concatenate(verts)
    mesh_faces = np.concatenate(faces)
    specials = {  # vertex id -> (position, owning joint)
        vertex_ids["smplx"]["nose"]: (joints[15] + (0, 0.05, 0.1), 15),
        vertex_ids["smplx"]["leye"]: (joints[15] + (0.035, 0.08, 0.08), 15),
        vertex_ids["smplx"]["reye"]: (joints[15] + (-0.035, 0.08, 0.08), 15),
        vertex_ids["smplx"]["lear"]: (joints[15] + (0.09, 0.06, 0), 15),
        vertex_ids["smplx"]["rear"]: (joints[15] + (-0.09, 0.06, 0), 15),
        vertex_ids["smplx"]["LBigToe"]: (joints[10] + (-0.02, -0.03, 0.08), 10),
        vertex_ids["smplx"]["LSmallToe"]: (joints[10] + (0.03, -0.03, 0.06), 10),
        vertex_ids["smplx"]["LHeel"]: (joints[7] + (0, -0.06, -0.06), 7),
        vertex_ids["smplx"]["RBigToe"]: (joints[11] + (0.02, -0.03, 0.08), 11),
        vertex_ids["smplx"]["RSmallToe"]: (joints[11] + (-0.03, -0.03, 0.06), 11),
        vertex_ids["smplx"]["RHeel"]: (joints[8] + (0, -0.06, -0.06), 8),
    }
    V = NUM_VERTICES
    free = [i for i in range(V) if i not in specials]
    mesh_ids = np.array(free[: len(mesh)])
    joint_ids = np.array(free[len(mesh) : len(mesh) + 55])
    pad_ids = np.array(free[len(mesh) + 55 :])
    v_template = np.zeros((V, 3))
    weights = np.zeros((V, 55))
    v_template[mesh_ids] = mesh
    weights[mesh_ids, owner] = 1
    v_template[joint_ids] = joints
    weights[joint_ids, np.arange(55)] = 1
    for vid, (pos, joint) in specials.items():
        v_template[vid] = pos
        weights[vid, joint] = 1
    v_template[pad_ids] = joints[0]
    weights[pad_ids, 0] = 1
    J_regressor = np.zeros((55, V))
    J_regressor[np.arange(55), joint_ids] = 1
    shapedirs = np.zeros((V, 3, 20))
    shapedirs[:, :, 0] = 0.05 * v_template  # beta 0: overall size
    shapedirs[:, 1, 1] = 0.05 * v_template[:, 1]  # beta 1: height only
    kintree = np.array([[2**32 - 1] + SMPLX_PARENTS[1:], list(range(55))], np.int64)
    np.savez_compressed(
        path,
        v_template=v_template.astype(np.float32),
        f=mesh_ids[mesh_faces].astype(np.uint32),
        J_regressor=J_regressor.astype(np.float32),
        weights=weights.astype(np.float32),
        kintree_table=kintree,
        shapedirs=shapedirs.astype(np.float32),
        posedirs=np.zeros((V, 3, 486), np.float32),
        hands_componentsl=np.eye(45, dtype=np.float32),
        hands_componentsr=np.eye(45, dtype=np.float32),
        hands_meanl=np.zeros(45, np.float32),
        hands_meanr=np.zeros(45, np.float32),
        lmk_faces_idx=np.zeros(51, np.int64),
        lmk_bary_coords=np.full((51, 3), 1 / 3, np.float32),
    )
    return path


@pytest.fixture(scope="module")
def smplx_body(tmp_path_factory):
    from hgm_core.body import SmplxBody

    return SmplxBody(write_synthetic_smplx(tmp_path_factory.mktemp("smplx") / "SMPLX_NEUTRAL.npz"))


def test_forward_shapes(smplx_body) -> None:
    from hgm_core.body import COCO_KEYPOINT_NAMES

    out = smplx_body(smplx_body.rest_params(batch_size=3))
    assert smplx_body.name == "smplx" and smplx_body.num_vertices == NUM_VERTICES
    assert out.vertices.shape == (3, NUM_VERTICES, 3) and out.vertices.dtype == torch.float32
    assert out.joints.shape == (3, 22, 3) and out.keypoints.shape == (3, len(COCO_KEYPOINT_NAMES), 3)
    assert smplx_body.pose_dim == 63 and smplx_body.shape_dim == 10
    np.testing.assert_allclose(out.joints[0, 0].numpy(), 0.0, atol=1e-6)  # pelvis at the origin


def test_keypoints_follow_the_model(smplx_body) -> None:
    """Keypoints are SMPL-X joints / landmark vertices by name; the pose moves the right one."""
    rest = smplx_body.rest_params()
    base = smplx_body(rest)
    kp = dict(zip(smplx_body.keypoint_names, base.keypoints[0]))
    joints = dict(zip(smplx_body.joint_names, base.joints[0]))
    torch.testing.assert_close(kp["left_elbow"], joints["left_elbow"])
    assert kp["nose"][1] > kp["left_hip"][1] > kp["left_heel"][1] and kp["nose"][2] > 0.05  # y up, facing +z
    pose = rest.pose.clone().reshape(-1, 3)
    pose[smplx_body.pose_joint_names.index("left_elbow")] = smplx_body.joint_limits.frames[17][:, 0] * 1.2
    moved = smplx_body(type(rest)(rest.global_orient, rest.transl, pose.reshape(1, -1), rest.shape))
    d = dict(zip(smplx_body.keypoint_names, moved.keypoints[0] - base.keypoints[0]))
    assert d["left_wrist"][2] > 0.1  # elbow flexion brings the forearm forward
    assert float(d["right_wrist"].norm()) < 1e-6
    assert float(smplx_body.joint_limits(pose.reshape(1, -1))) == 0.0


def test_missing_model_file(tmp_path) -> None:
    from hgm_core.body import SmplxBody

    with pytest.raises(FileNotFoundError):
        SmplxBody(tmp_path / "nope.npz")
