"""hgm_node message conversions, without a ROS graph: images in, PointCloud2/markers out.

PointCloud2 bytes are serialised by rclpy and decoded by rosbags (an independent CDR implementation).
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from hgm_core.io.pointcloud import FIELD_NAMES, POINT_STEP, pack_rgb, unpack_gaussians  # noqa: E402
from hgm_node.conversions import (  # noqa: E402
    ImageConversionError,
    camera_info_to_K,
    check_compressed,
    compressed_to_rgb,
    gaussians_to_pointcloud2,
    image_to_mask,
    image_to_rgb,
    joints_to_pose_array,
    mesh_to_marker,
    skeleton_to_markers,
)

BIG = 1 << 30


def _rgb(h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _image_msg(rgb: np.ndarray, encoding: str, *, pad: int = 3, bigendian: bool = False) -> Image:
    """Encode `rgb` the way a camera driver would, with `pad` junk bytes at the end of every row."""
    order = {"rgb": [0, 1, 2], "bgr": [2, 1, 0], "rgba": [0, 1, 2, 0], "bgra": [2, 1, 0, 0], "mono": [0]}
    base = encoding.rstrip("0123456789")
    pixels = rgb[:, :, order[base]]
    if base in ("rgba", "bgra"):
        pixels = pixels.copy()
        pixels[:, :, 3] = 77  # alpha must be ignored
    if encoding.endswith("16"):
        pixels = (pixels.astype(np.uint16) * 257 + 3).astype(">u2" if bigendian else "<u2")  # high byte = value
    rows = pixels.reshape(rgb.shape[0], -1).view(np.uint8)
    junk = np.full((rgb.shape[0], pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], 1)
    return Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, is_bigendian=bigendian,
                 step=data.shape[1], data=data.tobytes())


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_color_encodings_honour_step_and_endianness(encoding, bigendian):
    rgb = _rgb()
    out = image_to_rgb(_image_msg(rgb, encoding, bigendian=bigendian), BIG)
    assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["mono8", "mono16"])
def test_mono_becomes_grey_rgb(encoding):
    rgb = _rgb()
    grey = rgb[:, :, :1].repeat(3, 2)
    np.testing.assert_array_equal(image_to_rgb(_image_msg(grey, encoding), BIG), grey)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_label_mask_keeps_small_labels(bigendian):
    """A 16-bit mask labelled 1 (high byte 0) is still a person; mono8 nonzero too; padding ignored."""
    labels = np.zeros((5, 7), np.uint16)
    labels[1:4, 2:5] = 1
    labels[0, 0] = 300
    data = np.concatenate([labels.astype(">u2" if bigendian else "<u2").view(np.uint8), np.full((5, 3), 0xAB, np.uint8)], 1)
    msg = Image(height=5, width=7, encoding="mono16", is_bigendian=bigendian, step=data.shape[1], data=data.tobytes())
    np.testing.assert_array_equal(image_to_mask(msg, BIG), np.where(labels > 0, 255, 0))
    grey = _rgb()
    grey[0, :, 0] = 0
    np.testing.assert_array_equal(image_to_mask(_image_msg(grey, "mono8"), BIG), np.where(grey[:, :, 0] > 0, 255, 0))
    with pytest.raises(ImageConversionError, match="mono8 or mono16"):
        image_to_mask(_image_msg(_rgb(), "rgb8"), BIG)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(encoding="yuv422"), "unsupported encoding"),
        (dict(encoding="32FC1"), "unsupported encoding"),
        (dict(width=0, height=0, step=0, data=b""), "empty image"),
        (dict(step=10), "shorter than a row"),
        (dict(data=b"\0" * 20), "data has 20 bytes"),
    ],
)
def test_bad_images_raise(change, match):
    msg = _image_msg(_rgb(), "rgb8")
    for k, v in change.items():
        setattr(msg, k, v)
    with pytest.raises(ImageConversionError, match=match):
        image_to_rgb(msg, BIG)


def test_pixel_limit():
    msg = _image_msg(_rgb(), "rgb8")
    assert image_to_rgb(msg, 35).shape == (5, 7, 3)
    with pytest.raises(ImageConversionError, match="exceeds max_image_pixels=34"):
        image_to_rgb(msg, 34)


def _compressed(rgb: np.ndarray, ext: str, fmt: str, *params: int) -> CompressedImage:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), list(params))
    assert ok
    return CompressedImage(format=fmt, data=buf.tobytes())


def test_png_round_trip_is_exact():
    rgb = _rgb(40, 50)
    np.testing.assert_array_equal(compressed_to_rgb(_compressed(rgb, ".png", "bgr8; png compressed bgr8"), BIG), rgb)


@pytest.mark.parametrize("progressive", [0, 1])
def test_jpeg_decodes_to_rgb(progressive):
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (250, 10, 10)  # red left half: a channel swap would turn it blue
    rgb[:, 32:] = (10, 10, 250)
    msg = _compressed(rgb, ".jpg", "rgb8; jpeg compressed bgr8", cv2.IMWRITE_JPEG_QUALITY, 95,
                      cv2.IMWRITE_JPEG_PROGRESSIVE, progressive)
    check_compressed(msg, 48 * 64)
    with pytest.raises(ImageConversionError, match="64 x 48"):  # size read from the SOF marker
        check_compressed(msg, 48 * 64 - 1)
    out = compressed_to_rgb(msg, BIG)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 6


@pytest.mark.parametrize(
    "fmt, data, match",
    [
        ("tiff", b"II*\0", "unsupported compressed format"),
        ("16UC1; compressedDepth png", b"\x89PNG", "unsupported compressed format"),
        ("jpeg", b"\xff\xd8\xff\xe0\0\x10garbage", "not a readable"),
        ("png", b"not a png at all", "not a readable"),
        ("jpeg", b"", "not a readable"),
    ],
)
def test_bad_compressed_raise(fmt, data, match):
    with pytest.raises(ImageConversionError, match=match):
        compressed_to_rgb(CompressedImage(format=fmt, data=data), BIG)


def test_png_bomb_rejected_before_decoding():
    msg = _compressed(np.zeros((2000, 3000, 3), np.uint8), ".png", "png")
    assert len(msg.data) < 100_000  # tiny on the wire, 18 MB decoded
    with pytest.raises(ImageConversionError, match="3000 x 2000"):
        compressed_to_rgb(msg, 1_000_000)


def test_camera_info_to_K():
    K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    info = CameraInfo(width=640, height=480, k=K.reshape(-1).tolist())
    np.testing.assert_array_equal(camera_info_to_K(info, 640, 480), K)
    np.testing.assert_allclose(camera_info_to_K(info, 320, 240), [[250, 0, 160], [0, 255, 120], [0, 0, 1]])
    assert camera_info_to_K(CameraInfo(width=640, height=480), 640, 480) is None  # uncalibrated: all zeros
    for fx in (1e39, 1e-30, -500.0, float("nan")):  # what the worker would refuse is dropped here
        assert camera_info_to_K(CameraInfo(width=640, height=480, k=[fx, 0.0, 320, 0, fx, 240, 0, 0, 1]), 640, 480) is None


def _header() -> Header:
    return Header(stamp=Time(sec=12, nanosec=345), frame_id="cam_optical")


def test_pointcloud2_layout_and_independent_cdr_decode():
    from rosbags.typesys import Stores, get_typestore

    rng = np.random.default_rng(3)
    raw = rng.normal(size=(1000, 14)).astype(np.float32)
    msg = gaussians_to_pointcloud2(raw, _header())
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 1000, POINT_STEP, 1000 * POINT_STEP)
    assert [f.name for f in msg.fields] == list(FIELD_NAMES) and msg.is_dense and not msg.is_bigendian

    store = get_typestore(Stores.ROS2_KILTED)
    decoded = store.deserialize_cdr(serialize_message(msg), "sensor_msgs/msg/PointCloud2")
    assert (decoded.header.stamp.sec, decoded.header.stamp.nanosec, decoded.header.frame_id) == (12, 345, "cam_optical")
    got, rgb = unpack_gaussians(decoded.fields, decoded.point_step, decoded.data)
    np.testing.assert_array_equal(got, raw)
    np.testing.assert_array_equal(rgb, np.stack([(pack_rgb(raw[:, 3:6]).view(np.uint32) >> s) & 255 for s in (16, 8, 0)], -1))


def test_skeleton_markers_and_poses():
    joints = np.array([[0, 0, 2], [0, -0.5, 2], [0.2, -0.4, 2]], np.float32)
    markers = skeleton_to_markers(joints, ((0, 1), (1, 2), (2, 9)), _header())  # (2, 9) is out of range
    lines, spheres = markers.markers
    assert (lines.type, spheres.type) == (Marker.LINE_LIST, Marker.SPHERE_LIST)
    np.testing.assert_allclose([(p.x, p.y, p.z) for p in lines.points], joints[[0, 1, 1, 2]], rtol=1e-6)
    assert len(spheres.points) == 3 and lines.header.frame_id == "cam_optical" and spheres.id != lines.id
    poses = joints_to_pose_array(joints, _header())
    assert [p.position.y for p in poses.poses] == pytest.approx([0, -0.5, -0.4])
    assert all(p.orientation.w == 1.0 for p in poses.poses)


def test_mesh_marker_has_a_point_and_colour_per_corner():
    verts = np.array([[0, 0, 2], [1, 0, 2], [1, 1, 2], [0, 1, 2]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
    m = mesh_to_marker(verts, faces, colors, _header())
    assert m.type == Marker.TRIANGLE_LIST and len(m.points) == 6 and len(m.colors) == 6
    assert (m.points[4].x, m.points[4].y) == (1.0, 1.0)
    assert (m.colors[5].r, m.colors[5].g, m.colors[5].b) == (1.0, 1.0, 1.0)


def test_node_modules_never_import_torch():
    code = (
        "import sys, hgm_node.node, hgm_node.main, hgm_node.conversions, hgm_node.worker_link;"
        "bad = [m for m in ('torch', 'hgm_core.gaussians') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
