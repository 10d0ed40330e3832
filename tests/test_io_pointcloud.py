import array
import subprocess
import sys

import numpy as np
import pytest

from hgm_core.io.pointcloud import (
    FIELD_NAMES, FIELDS, FLOAT32, POINT_STEP, PointCloudLayoutError, PointField, pack_gaussians, pack_rgb, unpack_gaussians,
    unpack_rgb,
)
from hgm_core.layout import RAW_FIELDS, SH_C0


def _raw(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, 14)).astype(np.float32)
    raw[:, 3:6] = (rng.random((n, 3)) - 0.5) / SH_C0
    return raw


def test_layout_is_ply_named_float32_plus_rgb():
    assert FIELD_NAMES == (*RAW_FIELDS, "rgb")
    assert [f.name for f in FIELDS][:3] == ["x", "y", "z"]
    assert all(f.datatype == FLOAT32 and f.count == 1 for f in FIELDS)
    assert [f.offset for f in FIELDS] == list(range(0, 4 * 15, 4))
    assert POINT_STEP == 60


def test_pack_unpack_round_trip_is_exact():
    raw = _raw(1000)
    fields, step, data = pack_gaussians(raw)
    assert isinstance(data, array.array) and data.typecode == "B" and len(data) == 1000 * step
    back, rgb = unpack_gaussians(list(fields), step, data)
    np.testing.assert_array_equal(back, raw)
    # Field k of point i sits at byte i*step + offset, little endian — what any PointCloud2 reader assumes.
    i, f = 123, FIELDS[FIELD_NAMES.index("scale_1")]
    assert np.frombuffer(data, "<f4", count=1, offset=i * step + f.offset)[0] == raw[i, 8]
    np.testing.assert_array_equal(rgb, np.rint(np.clip(raw[:, 3:6] * SH_C0 + 0.5, 0, 1) * 255).astype(np.uint8))


def test_rgb_is_rviz_packed_float():
    f_dc = (np.array([[1.0, 0.0, 0.5]], np.float32) - 0.5) / SH_C0
    packed = pack_rgb(f_dc)
    assert packed.dtype == np.float32
    assert packed.view(np.uint32)[0] == (255 << 16) | (0 << 8) | 128
    np.testing.assert_array_equal(unpack_rgb(packed), [[255, 0, 128]])


def test_unpack_tolerates_other_order_padding_and_big_endian():
    raw = _raw(10, seed=2)
    names = list(reversed(RAW_FIELDS))
    step = 4 * len(names) + 8  # trailing padding
    buf = np.zeros((10, step), np.uint8)
    fields = []
    for k, n in enumerate(names):
        buf[:, 4 * k: 4 * k + 4] = raw[:, RAW_FIELDS.index(n)].astype(">f4").view(np.uint8).reshape(10, 4)
        fields.append(PointField(n, 4 * k))
    back, rgb = unpack_gaussians(fields, step, buf.tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(back, raw)
    assert (rgb == 0).all()  # no rgb field in that cloud


def test_unpack_rejects_wrong_layouts():
    fields, step, data = pack_gaussians(_raw(3))
    with pytest.raises(PointCloudLayoutError, match="lacks"):
        unpack_gaussians([f for f in fields if f.name != "opacity"], step, data)
    with pytest.raises(PointCloudLayoutError, match="multiple"):
        unpack_gaussians(list(fields), step, data[:-1])
    bad = [PointField(f.name, f.offset, datatype=8 if f.name == "x" else FLOAT32) for f in fields]
    with pytest.raises(PointCloudLayoutError, match="FLOAT32"):
        unpack_gaussians(bad, step, data)
    with pytest.raises(PointCloudLayoutError, match=r"\[N, 14\]"):
        pack_gaussians(np.zeros((3, 13), np.float32))


def test_module_is_torch_free():
    code = "import sys, hgm_core.io.pointcloud; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
