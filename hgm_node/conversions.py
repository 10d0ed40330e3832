"""ROS message <-> numpy conversions for the hgm node (numpy + OpenCV only; no cv_bridge, no torch).

Inputs: sensor_msgs/Image (8- and 16-bit RGB/BGR/RGBA/BGRA/mono, honouring `step` and
`is_bigendian`), sensor_msgs/CompressedImage (JPEG/PNG), sensor_msgs/CameraInfo -> `[H, W, 3]`
uint8 RGB and `[3, 3]` intrinsics; depth Images (16UC1 mm, 32FC1 m) -> `[H, W]` depth arrays. Outputs: raw Gaussian rows -> PointCloud2 (one buffer,
docs/architecture.md §3), a skeleton -> MarkerArray + PoseArray, a mesh -> Marker TRIANGLE_LIST.

The `check_*` functions only read the header fields and are cheap enough for a subscription
callback; the `*_to_rgb` functions do the pixel work and run off the executor.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import cv2
import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, PoseArray
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from hgm_core.io.pointcloud import pack_gaussians
from hgm_core.serve.protocol import ProtocolError
from hgm_core.serve.schema import check_camera

# encoding -> (channels, bytes per channel, index of R, G, B in the stored channels)
IMAGE_ENCODINGS: dict[str, tuple[int, int, tuple[int, int, int]]] = {
    "rgb8": (3, 1, (0, 1, 2)),
    "bgr8": (3, 1, (2, 1, 0)),
    "rgba8": (4, 1, (0, 1, 2)),
    "bgra8": (4, 1, (2, 1, 0)),
    "mono8": (1, 1, (0, 0, 0)),
    "rgb16": (3, 2, (0, 1, 2)),
    "bgr16": (3, 2, (2, 1, 0)),
    "rgba16": (4, 2, (0, 1, 2)),
    "bgra16": (4, 2, (2, 1, 0)),
    "mono16": (1, 2, (0, 0, 0)),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
DEPTH_ENCODINGS: dict[str, str] = {"16UC1": "u2", "32FC1": "f4"}
"""Depth encoding -> numpy type code: REP 118's 16-bit millimetres and 32-bit float metres."""


class ImageConversionError(ValueError):
    """An input image the node cannot use (unsupported encoding, empty, inconsistent, too large)."""


# -- inputs -------------------------------------------------------------------------------------


def check_image(msg: Image, max_pixels: int) -> None:
    """Validate an Image's header fields against its data length without touching pixels.

    Raises:
        ImageConversionError: unsupported encoding, zero size, more than `max_pixels`, a `step`
            shorter than a row, or fewer data bytes than `step * height`.
    """
    layout = IMAGE_ENCODINGS.get(msg.encoding)
    if layout is None:
        raise ImageConversionError(f"unsupported encoding {msg.encoding!r} (supported: {', '.join(IMAGE_ENCODINGS)})")
    _check_size(msg.width, msg.height, max_pixels)
    channels, depth, _ = layout
    row = msg.width * channels * depth
    if msg.step < row:
        raise ImageConversionError(f"step {msg.step} is shorter than a row of {msg.width} {msg.encoding} pixels ({row} bytes)")
    if len(msg.data) < msg.step * msg.height:
        raise ImageConversionError(f"data has {len(msg.data)} bytes, step * height needs {msg.step * msg.height}")


def image_to_rgb(msg: Image, max_pixels: int) -> np.ndarray:
    """sensor_msgs/Image -> `[H, W, 3]` uint8 RGB (16-bit channels keep their high byte)."""
    check_image(msg, max_pixels)
    channels, depth, rgb = IMAGE_ENCODINGS[msg.encoding]
    h, w = msg.height, msg.width
    rows = np.frombuffer(msg.data, np.uint8, count=msg.step * h).reshape(h, msg.step)[:, : w * channels * depth]
    if depth == 2:
        rows = (rows.view(">u2" if msg.is_bigendian else "<u2") >> 8).astype(np.uint8)
    pixels = rows.reshape(h, w, channels)
    return np.ascontiguousarray(pixels[:, :, list(rgb)])


def image_to_mask(msg: Image, max_pixels: int) -> np.ndarray:
    """mono8/mono16 sensor_msgs/Image -> `[H, W]` uint8 person mask, 255 where the pixel is nonzero.

    Nonzero is person at either depth, so a 16-bit label image keeps small labels (`image_to_rgb`
    would keep only the high byte and lose them).

    Raises:
        ImageConversionError: not mono8/mono16, or the header checks of `check_image` fail.
    """
    if msg.encoding not in ("mono8", "mono16"):
        raise ImageConversionError(f"a mask must be mono8 or mono16, got {msg.encoding!r}")
    check_image(msg, max_pixels)
    h, w = msg.height, msg.width
    depth = IMAGE_ENCODINGS[msg.encoding][1]
    rows = np.frombuffer(msg.data, np.uint8, count=msg.step * h).reshape(h, msg.step)[:, : w * depth]
    if depth == 2:
        rows = rows.view(">u2" if msg.is_bigendian else "<u2")
    return np.where(rows != 0, 255, 0).astype(np.uint8)


def depth_to_array(msg: Image, max_pixels: int) -> np.ndarray:
    """sensor_msgs/Image depth -> `[H, W]` uint16 millimetres (16UC1) or float32 metres (32FC1), as
    the worker takes it (`ReconstructionRequest.depth`): 0 or NaN = no measurement.

    Honours `step` and `is_bigendian`. In 32FC1, REP 118's -inf / +inf (too near / too far) and any
    negative value become NaN: they are not a distance the body fit can use.

    Raises:
        ImageConversionError: another encoding, zero size, more than `max_pixels`, a `step` shorter
            than a row, or fewer data bytes than `step * height`.
    """
    code = DEPTH_ENCODINGS.get(msg.encoding)
    if code is None:
        raise ImageConversionError(f"a depth image must be 16UC1 (mm) or 32FC1 (m), got {msg.encoding!r}")
    _check_size(msg.width, msg.height, max_pixels)
    itemsize = int(code[1])
    row = msg.width * itemsize
    if msg.step < row:
        raise ImageConversionError(f"step {msg.step} is shorter than a row of {msg.width} {msg.encoding} pixels ({row} bytes)")
    if len(msg.data) < msg.step * msg.height:
        raise ImageConversionError(f"data has {len(msg.data)} bytes, step * height needs {msg.step * msg.height}")
    rows = np.frombuffer(msg.data, np.uint8, count=msg.step * msg.height).reshape(msg.height, msg.step)[:, :row]
    depth = rows.copy().view((">" if msg.is_bigendian else "<") + code).astype(np.dtype(code).newbyteorder("="))
    if depth.dtype == np.float32:
        depth[~np.isfinite(depth) | (depth < 0)] = np.nan
    return depth


def nearest_stamp(stamp: tuple[int, int], stamps: Iterable[tuple[int, int]], max_skew_s: float) -> tuple[int, int] | None:
    """The `(sec, nanosec)` of `stamps` nearest `stamp`, if within `max_skew_s` (0: only the same
    stamp), else None: how a depth image is paired with its colour frame."""
    target = stamp[0] * 10**9 + stamp[1]
    best = min(stamps, key=lambda s: abs(s[0] * 10**9 + s[1] - target), default=None)
    if best is None or abs(best[0] * 10**9 + best[1] - target) > round(max_skew_s * 1e9):
        return None
    return best


def check_compressed(msg: CompressedImage, max_pixels: int) -> None:
    """Validate a CompressedImage's format and, from the PNG/JPEG header, its size (no decoding)."""
    if _compressed_kind(msg.format) is None:
        raise ImageConversionError(f"unsupported compressed format {msg.format!r} (supported: jpeg, png)")
    size = _encoded_size(bytes(msg.data[:65536]))
    if size is None:
        raise ImageConversionError(f"data is not a readable {msg.format} image ({len(msg.data)} bytes)")
    _check_size(*size, max_pixels)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> `[H, W, 3]` uint8 RGB."""
    check_compressed(msg, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(f"OpenCV could not decode the {msg.format} data ({len(msg.data)} bytes)")
    # image_transport compresses bgr8, so decoded BGR is the true colour whatever the source encoding was.
    return np.ascontiguousarray(bgr[:, :, ::-1])


def camera_info_to_K(msg: CameraInfo, width: int, height: int) -> np.ndarray | None:
    """CameraInfo -> `[3, 3]` float64 intrinsics for a `width` x `height` image, or None if
    uncalibrated (all zeros) or unusable: intrinsics the worker would refuse
    (`hgm_core.serve.schema.check_camera`: non-finite, a focal length far out of range, ...).

    A CameraInfo of another size (e.g. a resized stream) is scaled to the image.
    """
    K = np.asarray(msg.k, np.float64).reshape(3, 3)
    if msg.width and msg.height and (msg.width, msg.height) != (width, height):
        with np.errstate(all="ignore"):  # inf * 0 in a hostile K: check_camera refuses the result
            K = np.diag([width / msg.width, height / msg.height, 1.0]) @ K
    try:
        return check_camera(K, width, height).K
    except ProtocolError:
        return None


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width == 0 or height == 0:
        raise ImageConversionError(f"empty image ({width} x {height})")
    if width * height > max_pixels:
        raise ImageConversionError(f"image of {width} x {height} pixels exceeds max_image_pixels={max_pixels}")


def _compressed_kind(fmt: str) -> str | None:
    # image_transport writes e.g. "rgb8; jpeg compressed bgr8"; bare "jpeg"/"png" is also common.
    words = fmt.lower().replace(";", " ").split()
    if "compresseddepth" in words:
        return None
    return next((w for w in words if w in COMPRESSED_FORMATS), None)


def _encoded_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or a JPEG SOF marker, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if not head.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:  # no length field
            i += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        i += 2 + struct.unpack(">H", head[i + 2 : i + 4])[0]
    return None


# -- outputs ------------------------------------------------------------------------------------


def gaussians_to_pointcloud2(raw: np.ndarray, header: Header) -> PointCloud2:
    """`[N, 14]` raw Gaussian rows -> PointCloud2 in the `/human_gaussians` layout (docs/architecture.md §3).

    `data` is assigned one `bytes` object: rclpy copies it into its array in C.
    """
    fields, point_step, data = pack_gaussians(raw)
    n = len(raw)
    return PointCloud2(
        header=header,
        height=1,
        width=n,
        fields=[PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields],
        is_bigendian=False,
        point_step=point_step,
        row_step=point_step * n,
        data=data,
        is_dense=True,
    )


def skeleton_to_markers(
    joints: np.ndarray, bones: tuple[tuple[int, int], ...], header: Header, *, ns: str = "hgm_body",
    joint_radius: float = 0.04, bone_width: float = 0.02,
) -> MarkerArray:
    """`[J, 3]` joints + bone index pairs -> MarkerArray: bones as one LINE_LIST (id 0), joints as
    one SPHERE_LIST (id 1). Fixed ids, so each new skeleton replaces the previous one in RViz."""
    points = _points(np.asarray(joints, np.float64))
    pairs = [(a, b) for a, b in bones if 0 <= a < len(points) and 0 <= b < len(points)]
    lines = _marker(header, ns, 0, Marker.LINE_LIST, (bone_width, 0.0, 0.0), (0.1, 0.9, 0.3, 1.0))
    lines.points = [points[i] for pair in pairs for i in pair]
    spheres = _marker(header, ns, 1, Marker.SPHERE_LIST, (joint_radius,) * 3, (0.9, 0.2, 0.2, 1.0))
    spheres.points = points
    return MarkerArray(markers=[lines, spheres])


def joints_to_pose_array(joints: np.ndarray, header: Header) -> PoseArray:
    """`[J, 3]` joints -> PoseArray (identity orientations: the joints carry positions only)."""
    return PoseArray(header=header, poses=[Pose(position=p) for p in _points(np.asarray(joints, np.float64))])


def mesh_to_marker(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, header: Header, *, ns: str = "hgm_mesh",
) -> Marker:
    """`[V, 3]` vertices, `[F, 3]` faces, optional `[V, 3]` uint8 colours -> Marker TRIANGLE_LIST
    with one point (and colour) per triangle corner, as RViz expects."""
    corners = np.asarray(faces, np.int64).reshape(-1)
    marker = _marker(header, ns, 0, Marker.TRIANGLE_LIST, (1.0, 1.0, 1.0), (0.8, 0.8, 0.8, 1.0))
    marker.points = _points(np.asarray(vertices, np.float64)[corners])
    if colors is not None:
        rgb = np.asarray(colors, np.float64)[corners] / 255.0
        marker.colors = [ColorRGBA(r=r, g=g, b=b, a=1.0) for r, g, b in rgb.tolist()]
    return marker


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=x, y=y, z=z) for x, y, z in xyz.tolist()]


def _marker(header: Header, ns: str, marker_id: int, kind: int, scale: tuple[float, float, float],
            rgba: tuple[float, float, float, float]) -> Marker:
    marker = Marker(header=header, ns=ns, id=marker_id, type=kind, action=Marker.ADD, lifetime=Duration())
    marker.pose.orientation.w = 1.0
    marker.scale.x, marker.scale.y, marker.scale.z = scale
    marker.color = ColorRGBA(r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3])
    return marker
