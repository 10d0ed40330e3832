"""The compact live stream (hgm_core.io.live_stream, docs/live_stream.md): binding file, frames, numpy skinner,
and a client written from the documentation alone reproducing the posed avatar."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from hgm_core.io import live_stream as ls


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """An anny avatar bound at one plausible pose, saved as the artifact, and a second pose's transforms."""
    from hgm_core.body import AnnyBody
    from hgm_core.body.skinning import bind_body, save_binding
    from tests.test_skinning import _surface_gaussians, plausible_params

    body = AnnyBody()
    fit = plausible_params(body, batch=1, seed=11)
    avatar, _ = _surface_gaussians(body, fit, 1500, seed=12)
    binding = bind_body(avatar, body, fit)
    folder = tmp_path_factory.mktemp("live")
    save_binding(binding, folder / "canonical.ply", folder / "binding.npz", binding_id=42, body_model="anny")
    with torch.no_grad():
        frame = body.bone_transforms(plausible_params(body, batch=1, seed=13))[0]
    return binding, folder, frame


def test_frame_round_trip_and_size() -> None:
    T = np.tile(np.eye(4, dtype=np.float32), (104, 1, 1))
    T[:, :3, :3] = Rotation.random(104, random_state=0).as_matrix()
    T[:, :3, 3] = np.random.default_rng(0).normal(size=(104, 3))
    T[0, :3, :3] = np.diag([1.0, -1.0, -1.0])  # 180 degrees: the quaternion's w is 0
    data = ls.encode_frame(T, binding_id=9)
    assert len(data) == 12 + 28 * 104  # 2,924 bytes for anny's 104 bones
    decoded, binding_id = ls.decode_frame(data)
    assert binding_id == 9
    np.testing.assert_allclose(decoded, T, atol=1e-6)
    with pytest.raises(ls.LiveStreamError):
        ls.decode_frame(data[:-4])
    with pytest.raises(ls.LiveStreamError):
        ls.decode_frame(b"XXXX" + data[4:])


def test_binding_file_round_trip_without_pickles(scene) -> None:
    binding, folder, _ = scene
    arrays = ls.read_binding(folder / "binding.npz")
    assert arrays.binding_id == 42 and arrays.body_model == "anny" and arrays.joint_names == binding.joint_names
    assert arrays.joint_index.dtype == np.uint16 and arrays.joint_weight.dtype == np.float32
    buf = io.BytesIO()
    ls.write_binding(buf, arrays)
    buf.seek(0)
    again = ls.read_binding(buf)
    assert np.array_equal(again.joint_index, arrays.joint_index) and again.joint_parents == arrays.joint_parents
    with zipfile.ZipFile(folder / "binding.npz") as z:  # plain .npy members a client can read anywhere
        assert {"joint_index.npy", "joint_weight.npy", "rest_transforms.npy", "joint_names.npy"} <= set(z.namelist())
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    with pytest.raises(ls.LiveStreamError):
        ls.BindingArrays(arrays.joint_index, arrays.joint_weight[:-1], arrays.rest_transforms, arrays.joint_names, arrays.joint_parents)


def test_numpy_skinner_matches_torch_pose(scene) -> None:
    from hgm_core.body.skinning import pose

    binding, folder, frame = scene
    posed = pose(binding, frame).to_raw().numpy()
    got = ls.skin_raw(binding.canonical.to_raw().numpy(), ls.read_binding(folder / "binding.npz"), frame.numpy())
    np.testing.assert_allclose(got[:, :10], posed[:, :10], atol=2e-6, rtol=0)
    np.testing.assert_allclose(np.abs((got[:, 10:] * posed[:, 10:]).sum(-1)), 1.0, atol=1e-6)  # same rotation


def test_rest_frame_reproduces_the_canonical_avatar(scene) -> None:
    binding, folder, _ = scene
    arrays = ls.read_binding(folder / "binding.npz")
    canonical = binding.canonical.to_raw().numpy()
    got = ls.skin_raw(canonical, arrays, ls.decode_frame(ls.encode_frame(arrays.rest_transforms))[0])
    np.testing.assert_allclose(got[:, :10], canonical[:, :10], atol=2e-6, rtol=0)
    np.testing.assert_allclose(np.abs((got[:, 10:] * canonical[:, 10:]).sum(-1)), 1.0, atol=1e-6)


def test_a_client_built_from_the_docs_reproduces_the_posed_avatar(scene) -> None:
    """The canonical PLY read with plyfile, the binding with zipfile + numpy, the frame with struct,
    skinned per Gaussian in float64 with the SVD polar factor and scipy's rotations."""
    from plyfile import PlyData

    from hgm_core.body.skinning import pose

    binding, folder, frame = scene
    v = PlyData.read(str(folder / "canonical.ply"))["vertex"]
    means = np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float64)
    log_scales = np.stack([v[f"scale_{i}"] for i in range(3)], -1).astype(np.float64)
    quat_wxyz = np.stack([v[f"rot_{i}"] for i in range(4)], -1).astype(np.float64)
    with zipfile.ZipFile(folder / "binding.npz") as z:
        npy = {name[:-4]: np.lib.format.read_array(io.BytesIO(z.read(name))) for name in z.namelist()}
    index, weight, rest = npy["joint_index"], npy["joint_weight"], npy["rest_transforms"].astype(np.float64)

    data = ls.encode_frame(frame.numpy(), binding_id=int(npy["binding_id"]))
    magic, version, joints, binding_id = struct.unpack_from("<4sHHI", data)
    assert (magic, version, joints, binding_id) == (b"HGMB", 1, len(rest), 42)
    bones = np.zeros((joints, 4, 4))
    for j in range(joints):
        w, x, y, z, tx, ty, tz = struct.unpack_from("<7f", data, 12 + 28 * j)
        bones[j, :3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix()  # scipy is x, y, z, w
        bones[j, :3, 3] = (tx, ty, tz)
        bones[j, 3, 3] = 1
    skin = bones @ np.linalg.inv(rest)

    M = np.einsum("nk,nkab->nab", weight.astype(np.float64), skin[index.astype(np.int64)])
    A, b = M[:, :3, :3], M[:, :3, 3]
    AR = A @ Rotation.from_quat(quat_wxyz[:, [1, 2, 3, 0]]).as_matrix()
    U, _, Vt = np.linalg.svd(AR)
    posed_means = np.einsum("nab,nb->na", A, means) + b
    posed_scales = np.exp(log_scales) * np.linalg.norm(AR, axis=1)
    posed_rot = U @ Vt  # the polar factor; AR stays near a rotation, so det > 0

    ref = pose(binding, frame)
    np.testing.assert_allclose(posed_means, ref.means.numpy(), atol=2e-6)
    np.testing.assert_allclose(posed_scales, ref.scales.numpy(), rtol=2e-5)
    ref_rot = Rotation.from_quat(ref.quats.numpy()[:, [1, 2, 3, 0]]).as_matrix()
    np.testing.assert_allclose(posed_rot, ref_rot, atol=2e-5)
    assert float(np.abs(posed_means - means).max()) > 0.05  # the frame really moved the avatar


def test_polar_rotation_and_quaternions() -> None:
    rng = np.random.default_rng(3)
    R = Rotation.random(500, random_state=1).as_matrix()
    A = R @ (np.eye(3) + 0.15 * rng.normal(size=(500, 3, 3)))  # near-rotations, as LBS blends are
    U, _, Vt = np.linalg.svd(A)
    np.testing.assert_allclose(ls.polar_rotation(A), U @ Vt, atol=2e-6)
    R[:3] = [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]  # 180 degree turns
    q = ls.rotmat_to_quat(R)
    assert bool((q[:, 0] >= 0).all())
    np.testing.assert_allclose(ls.quat_to_rotmat(q), R, atol=2e-6)


def test_the_stream_module_does_not_import_torch() -> None:
    code = "import sys, hgm_core.io.live_stream; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
