import numpy as np
import plyfile
import pytest
import torch

from hgm_core.gaussians import RAW_FIELDS, Gaussians
from hgm_core.io.ply import PlyError, ply_property_names, read_ply, read_ply_raw, write_ply, write_ply_raw
from tests.conftest import random_gaussians

REFERENCE_ORDER = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                   "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def test_layout_read_by_plyfile(tmp_path):
    g = random_gaussians(100)
    path = write_ply(tmp_path / "a" / "avatar.ply", g)
    ply = plyfile.PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    v = ply["vertex"]
    assert [p.name for p in v.properties] == REFERENCE_ORDER
    assert all(v.data.dtype[p.name] == np.dtype("<f4") for p in v.properties)
    assert len(v.data) == 100
    np.testing.assert_array_equal(v["nx"], 0)
    # Values in the reference encodings: logit opacity, log scale, SH DC, w-first quaternion.
    np.testing.assert_allclose(1 / (1 + np.exp(-v["opacity"])), g.opacities.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.exp(v["scale_1"]), g.scales[:, 1].numpy(), rtol=1e-5)
    np.testing.assert_allclose(v["f_dc_2"] * 0.28209479 + 0.5, g.colors[:, 2].numpy(), atol=1e-6)
    np.testing.assert_allclose(v["rot_0"], g.quats[:, 0].numpy(), rtol=1e-6)


def test_round_trip_is_exact_on_raw_values(tmp_path):
    g = random_gaussians(257, seed=3)
    path = write_ply(tmp_path / "g.ply", g)
    np.testing.assert_array_equal(read_ply_raw(path), g.to_raw().numpy())
    back = read_ply(path)
    torch.testing.assert_close(back.means, g.means, rtol=0, atol=0)
    torch.testing.assert_close(back.opacities, g.opacities)
    # Raw rows read back and written again give the same file, byte for byte.
    path2 = write_ply_raw(tmp_path / "g2.ply", read_ply_raw(path))
    assert path2.read_bytes() == path.read_bytes()


def test_sh_rest_is_channel_major(tmp_path):
    g0 = random_gaussians(7)
    sh = torch.arange(7 * 3 * 3, dtype=torch.float32).reshape(7, 3, 3)  # degree 1: K = 3
    g = Gaussians(g0.means, g0.quats, g0.scales, g0.opacities, g0.colors, sh=sh)
    path = write_ply(tmp_path / "sh.ply", g)
    v = plyfile.PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    assert names == ply_property_names(9)
    assert names.index("f_rest_8") + 1 == names.index("opacity")
    # f_rest_k for k < K is red channel coefficient k (3DGS: features_rest.transpose(1, 2).flatten(1)).
    np.testing.assert_array_equal(v["f_rest_1"], sh[:, 1, 0].numpy())
    np.testing.assert_array_equal(v["f_rest_3"], sh[:, 0, 1].numpy())
    back = read_ply(path)
    assert back.sh_degree == 1
    torch.testing.assert_close(back.sh, sh, rtol=0, atol=0)


def test_reads_foreign_files_with_extra_properties_and_other_order(tmp_path):
    # An HGM/LGM-style file: properties reordered, plus uint8 colours, big endian.
    g = random_gaussians(5)
    raw = g.to_raw().numpy()
    names = list(reversed(RAW_FIELDS))
    arr = np.empty(5, dtype=[(n, ">f4") for n in names] + [("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for n in names:
        arr[n] = raw[:, RAW_FIELDS.index(n)]
    arr["red"] = 7
    path = tmp_path / "foreign.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], byte_order=">").write(str(path))
    np.testing.assert_array_equal(read_ply_raw(path), raw)


def test_ascii_file_is_read(tmp_path):
    g = random_gaussians(4)
    raw = g.to_raw().numpy()
    arr = np.empty(4, dtype=[(n, "f4") for n in RAW_FIELDS])
    for i, n in enumerate(RAW_FIELDS):
        arr[n] = raw[:, i]
    path = tmp_path / "ascii.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=True).write(str(path))
    np.testing.assert_allclose(read_ply_raw(path), raw, rtol=1e-6)


@pytest.mark.parametrize("content,match", [
    (b"not a ply", "magic"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nend_header\n" + b"\0" * 8,
     "missing properties"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 100\n" + b"".join(
        f"property float {n}\n".encode() for n in RAW_FIELDS) + b"end_header\n" + b"\0" * 12, "truncated"),
    (b"ply\nformat binary_little_endian 1.0\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n", "first element must be"),
])
def test_bad_files_raise_plyerror(tmp_path, content, match):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(PlyError, match=match):
        read_ply(path)
