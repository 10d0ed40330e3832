"""The node's `depth` topic without a ROS graph: 16UC1 / 32FC1 Images -> the worker's depth arrays,
and pairing a depth image with its colour frame by stamp."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")

from sensor_msgs.msg import Image  # noqa: E402

from hgm_core.serve.schema import check_depth  # noqa: E402
from hgm_node.conversions import ImageConversionError, depth_to_array, nearest_stamp  # noqa: E402

BIG = 1 << 30


def _msg(depth: np.ndarray, encoding: str, *, bigendian: bool = False, pad: int = 0) -> Image:
    h, w = depth.shape
    rows = depth.astype(depth.dtype.newbyteorder(">" if bigendian else "<")).view(np.uint8).reshape(h, -1)
    rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=0xAB)  # row padding (step > row) must be skipped
    return Image(height=h, width=w, encoding=encoding, step=rows.shape[1], is_bigendian=bigendian, data=rows.tobytes())


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_16uc1_millimetres_arrive_unchanged(bigendian, pad):
    mm = np.random.default_rng(0).integers(0, 65536, (5, 7)).astype(np.uint16)
    out = depth_to_array(_msg(mm, "16UC1", bigendian=bigendian, pad=pad), BIG)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, mm)
    assert check_depth(out, (5, 7)) is out  # what the wire accepts


@pytest.mark.parametrize("bigendian", [False, True])
def test_32fc1_metres_with_rep118_specials_become_no_measurement(bigendian):
    m = np.array([[1.5, 0.0, np.nan], [np.inf, -np.inf, -0.2], [2.25, 3.0, 0.4]], np.float32)
    out = depth_to_array(_msg(m, "32FC1", bigendian=bigendian, pad=4), BIG)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out[~np.isnan(out)], np.float32([1.5, 0.0, 2.25, 3.0, 0.4]))
    assert np.isnan(out).sum() == 4  # NaN, +inf (too far), -inf (too near) and a negative value
    check_depth(out, (3, 3))  # finite or NaN, >= 0: the wire accepts it


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (_msg(np.zeros((4, 4), np.uint8), "mono8"), "16UC1"),
        (_msg(np.zeros((4, 4), np.uint16), "mono16"), "16UC1"),
        (Image(height=4, width=4, encoding="16UC1", step=6, data=bytes(32)), "step"),
        (Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(40)), "bytes"),
        (Image(height=0, width=4, encoding="16UC1", step=8, data=b""), "empty"),
        (_msg(np.zeros((40, 40), np.uint16), "16UC1"), "max_image_pixels"),
    ],
)
def test_unusable_depth_images_are_refused(msg, reason):
    with pytest.raises(ImageConversionError, match=reason):
        depth_to_array(msg, 1000)


def test_depth_pairs_with_the_nearest_stamp_within_the_skew():
    stamps = [(10, 0), (10, 33_000_000), (10, 66_000_000)]
    assert nearest_stamp((10, 33_000_000), stamps, 0.0) == (10, 33_000_000)
    assert nearest_stamp((10, 36_000_000), stamps, 0.01) == (10, 33_000_000)
    assert nearest_stamp((10, 36_000_000), stamps, 0.0) is None  # exact only
    assert nearest_stamp((9, 999_000_000), stamps, 0.005) == (10, 0)  # across a second boundary
    assert nearest_stamp((10, 50_000_000), stamps, 0.01) is None  # between frames: no depth, image only
    assert nearest_stamp((10, 0), [], 1.0) is None
