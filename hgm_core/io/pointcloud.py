"""`/human_gaussians` PointCloud2 layout in pure numpy (no ROS import; `hgm_node` wraps it in a message).

One point per Gaussian; float32 fields named and encoded exactly as the 3DGS PLY
(`x y z f_dc_0..2 opacity scale_0..2 rot_0..3`, see `hgm_core.gaussians.RAW_FIELDS`) followed by
`rgb`: the colour packed as `0x00RRGGBB` in the bits of a float32, the encoding RViz's
PointCloud2 display colours by without a plugin. Little endian, `is_dense`, `height = 1`.
"""

from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np

from hgm_core.layout import RAW_FIELDS, SH_C0

FLOAT32 = 7
"""sensor_msgs/PointField.FLOAT32."""

FIELD_NAMES: tuple[str, ...] = (*RAW_FIELDS, "rgb")
POINT_STEP = 4 * len(FIELD_NAMES)


@dataclass(frozen=True)
class PointField:
    """Mirror of sensor_msgs/PointField, so the layout is testable without ROS."""

    name: str
    offset: int
    datatype: int = FLOAT32
    count: int = 1


FIELDS: tuple[PointField, ...] = tuple(PointField(n, 4 * i) for i, n in enumerate(FIELD_NAMES))

_DTYPE = np.dtype({"names": list(FIELD_NAMES), "formats": ["<f4"] * len(FIELD_NAMES),
                   "offsets": [f.offset for f in FIELDS], "itemsize": POINT_STEP})


class PointCloudLayoutError(ValueError):
    """Raised when a PointCloud2 buffer does not carry the Gaussian layout."""


_RGB_WEIGHTS = np.array([65536.0, 256.0, 1.0], np.float32)
"""Packs rounded 0..255 channels into 0x00RRGGBB; every partial sum stays below 2^24, so it is exact in float32."""


def pack_rgb(f_dc: np.ndarray) -> np.ndarray:
    """`[N, 3]` SH DC coefficients -> `[N]` float32 whose bits are `0x00RRGGBB`."""
    c = np.asarray(f_dc, np.float32) * np.float32(SH_C0 * 255.0) + np.float32(127.5)
    np.clip(c, 0.0, 255.0, out=c)
    np.rint(c, out=c)
    return (c @ _RGB_WEIGHTS).astype(np.uint32).view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """`[N]` packed float32 -> `[N, 3]` uint8."""
    lanes = np.ascontiguousarray(rgb, "<f4").reshape(-1, 1).view(np.uint8)
    return np.stack((lanes[:, 2], lanes[:, 1], lanes[:, 0]), -1)


def pack_gaussians(raw: np.ndarray) -> tuple[tuple[PointField, ...], int, array.array]:
    """Pack `[N, 14]` raw Gaussian rows (RAW_FIELDS order, float32) into the PointCloud2 layout.

    Returns:
        (fields, point_step, data): `data` is an `array.array('B')` of `N * point_step` bytes, little
        endian — the type rclpy keeps `uint8[]` fields in, so assigning it to `PointCloud2.data`
        stores it without another copy or per-byte checks.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2 or raw.shape[1] != len(RAW_FIELDS):
        raise PointCloudLayoutError(f"raw Gaussians must be [N, {len(RAW_FIELDS)}], got {list(raw.shape)}")
    data = array.array("B", bytes(raw.shape[0] * POINT_STEP))
    buf = np.frombuffer(data, "<f4").reshape(raw.shape[0], len(FIELD_NAMES))
    buf[:, : len(RAW_FIELDS)] = raw
    buf[:, -1] = pack_rgb(raw[:, 3:6])
    return FIELDS, POINT_STEP, data


def unpack_gaussians(fields: list, point_step: int, data: bytes | memoryview | np.ndarray, *,
                     is_bigendian: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `pack_gaussians`, tolerant of extra fields, another field order and padding.

    Args:
        fields: objects with `name`, `offset`, `datatype`, `count` (ours or sensor_msgs/PointField).
    Returns:
        raw `[N, 14]` float32 and rgb `[N, 3]` uint8 (zeros when the cloud has no `rgb` field).
    """
    by_name = {f.name: f for f in fields}
    missing = [n for n in RAW_FIELDS if n not in by_name]
    if missing:
        raise PointCloudLayoutError(f"PointCloud2 lacks Gaussian fields {missing}")
    bad = [n for n in FIELD_NAMES if n in by_name and (by_name[n].datatype != FLOAT32 or by_name[n].count != 1)]
    if bad:
        raise PointCloudLayoutError(f"fields {bad} must be single FLOAT32")
    buf = np.frombuffer(data, np.uint8)
    if buf.size % point_step:
        raise PointCloudLayoutError(f"{buf.size} data bytes is not a multiple of point_step {point_step}")
    n = buf.size // point_step
    offsets = [by_name[name].offset for name in FIELD_NAMES if name in by_name]
    if not is_bigendian and point_step % 4 == 0 and all(o % 4 == 0 for o in offsets):
        # Fast path (every cloud we publish): view the rows as float32 words and gather columns once.
        words = buf.view("<f4").reshape(n, point_step // 4)
        cols = [by_name[name].offset // 4 for name in RAW_FIELDS]
        contiguous = cols == list(range(cols[0], cols[0] + len(cols)))
        raw = words[:, cols[0]: cols[0] + len(cols)] if contiguous else words[:, cols]
        rgb_col = words[:, by_name["rgb"].offset // 4] if "rgb" in by_name else None
    else:
        names = [name for name in FIELD_NAMES if name in by_name]
        end = ">" if is_bigendian else "<"
        dt = np.dtype({"names": names, "formats": [end + "f4"] * len(names),
                       "offsets": [by_name[name].offset for name in names], "itemsize": point_step})
        arr = buf.view(dt)
        raw = np.stack([arr[name].astype(np.float32) for name in RAW_FIELDS], -1)
        rgb_col = arr["rgb"].astype(np.float32) if "rgb" in by_name else None
    rgb = unpack_rgb(rgb_col) if rgb_col is not None else np.zeros((n, 3), np.uint8)
    return np.ascontiguousarray(raw, np.float32), rgb
