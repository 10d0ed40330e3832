"""`gsplat_msgs/SplatArray` (RVizSplat's Gaussian-splat display) serialized from one numpy buffer.

rclpy builds nested messages one Python object at a time: tens of thousands of `Splat`s would take
seconds. Instead the CDR bytes are written here with numpy structured arrays, and the node
publishes them raw (`Publisher.publish(bytes)`) when `gsplat_msgs` is importable.

The message (RVizSplat's `gsplat_msgs`, docs/reference/environment.md):

    gsplat_msgs/SplatArray:  gsplat_msgs/Splat[] splats
    gsplat_msgs/Splat:       geometry_msgs/PoseWithCovarianceStamped pose
                             uint8 opacity
                             uint8 harmonics_deg
                             float32[] spherical_harmonics

What its display reads: centre = `pose.pose.pose.position`, orientation = the splat's quaternion,
the 3D covariance = top-left 3x3 of the row-major 6x6 `pose.pose.covariance` (R diag(s^2) R^T),
alpha = opacity / 255, harmonics coefficient-major with RGB interleaved (`[R0, G0, B0, R1, ...]`,
raw `f_dc` / `f_rest` values). Every splat carries the source image's stamp and frame_id.

CDR (XCDR1, little endian, as rmw_fastrtps writes it): a 4-byte encapsulation header, then
fields aligned to their size relative to the end of that header. A splat's float64 block sits
behind its frame_id string, and its length is 4 bytes short of a multiple of 8 when the number of
harmonics floats is odd; so the first splat (at offset 4) and every later one each have one fixed
layout, computed once (`_splat_dtype`).
"""

from __future__ import annotations

import numpy as np
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile

from hgm_core.io.live_stream import quat_to_rotmat
from hgm_core.layout import RAW_FIELDS

SPLAT_TYPE = "gsplat_msgs/msg/Splat"
SPLAT_ARRAY_TYPE = "gsplat_msgs/msg/SplatArray"
SPLAT_MSG = "geometry_msgs/PoseWithCovarianceStamped pose\nuint8 opacity\nuint8 harmonics_deg\nfloat32[] spherical_harmonics\n"
SPLAT_ARRAY_MSG = "gsplat_msgs/Splat[] splats\n"
CDR_LE = b"\x00\x01\x00\x00"


def _align(offset: int, size: int) -> int:
    return offset + (-offset % size)


def _splat_dtype(start: int, frame_id_len: int, n_coeffs: int) -> np.dtype:
    """Layout of one serialized Splat that starts at CDR offset `start` (a multiple of 4).

    `frame_id_len` counts the terminating NUL; `n_coeffs` floats of harmonics.
    """
    text_end = start + 12 + frame_id_len
    doubles = _align(text_end, 8) - start            # pose.pose: position, orientation, covariance
    after = doubles + 8 * (3 + 4 + 36)
    seq = _align(start + after + 2, 4) - start      # behind opacity and harmonics_deg
    layout = [("sec", "<i4", 0), ("nanosec", "<u4", 4), ("frame_id_len", "<u4", 8), ("frame_id", f"S{frame_id_len}", 12),
              ("position", ("<f8", 3), doubles), ("orientation", ("<f8", 4), doubles + 24),
              ("covariance", ("<f8", 36), doubles + 56), ("opacity", "u1", after), ("harmonics_deg", "u1", after + 1),
              ("sh_len", "<u4", seq), ("sh", ("<f4", n_coeffs), seq + 4)]
    return np.dtype({"names": [f[0] for f in layout], "formats": [f[1] for f in layout],
                     "offsets": [f[2] for f in layout], "itemsize": seq + 4 + 4 * n_coeffs})


def encode_splat_array(raw: np.ndarray, stamp: tuple[int, int], frame_id: str,
                       sh_rest: np.ndarray | None = None) -> bytes:
    """Serialized `gsplat_msgs/SplatArray` (CDR, with its encapsulation header) of `[N, 14]` raw rows.

    Args:
        raw: raw Gaussian rows (`hgm_core.layout.RAW_FIELDS`: logit opacity, log scales, w-first quaternion).
        stamp: (sec, nanosec) of the source image; `frame_id` its frame (both go into every splat).
        sh_rest: optional `[N, M, 3]` higher-order SH coefficients, M = (d + 1)^2 - 1 for degree d <= 3.
    """
    raw = np.asarray(raw, np.float32)
    if raw.ndim != 2 or raw.shape[1] != len(RAW_FIELDS):
        raise ValueError(f"raw Gaussians must be [N, {len(RAW_FIELDS)}], got {list(raw.shape)}")
    n = len(raw)
    rest = np.zeros((n, 0, 3), np.float32) if sh_rest is None else np.asarray(sh_rest, np.float32)
    degree = round(np.sqrt(rest.shape[1] + 1)) - 1
    if rest.shape[:1] != (n,) or rest.ndim != 3 or rest.shape[2] != 3 or (degree + 1) ** 2 != rest.shape[1] + 1 or degree > 3:
        raise ValueError(f"sh_rest must be [N, (d+1)^2 - 1, 3] with d <= 3, got {list(rest.shape)}")
    name = frame_id.encode() + b"\x00"
    n_coeffs = 3 * (degree + 1) ** 2
    first = _splat_dtype(4, len(name), n_coeffs)
    rest_start = _align(4 + first.itemsize, 4)  # where the second splat starts; all later ones alike
    later = _splat_dtype(rest_start, len(name), n_coeffs)
    out = np.zeros(4 + 4 + (first.itemsize + later.itemsize * (n - 1) if n else 0), np.uint8)
    out[:4] = np.frombuffer(CDR_LE, np.uint8)
    out[4:8] = np.frombuffer(np.uint32(n).tobytes(), np.uint8)
    if n == 0:
        return out.tobytes()
    q = raw[:, 10:14] / np.linalg.norm(raw[:, 10:14], axis=-1, keepdims=True)
    R = quat_to_rotmat(q).astype(np.float64)
    cov = (R * np.exp(2.0 * raw[:, None, 7:10].astype(np.float64))) @ R.transpose(0, 2, 1)  # R diag(s^2) R^T
    values = {"sec": stamp[0], "nanosec": stamp[1], "frame_id_len": len(name), "frame_id": name, "position": raw[:, :3],
              "orientation": q[:, [1, 2, 3, 0]],  # ROS order x, y, z, w
              "opacity": np.rint(255.0 / (1.0 + np.exp(-raw[:, 6].astype(np.float64)))), "harmonics_deg": degree,
              "sh_len": n_coeffs, "sh": np.concatenate((raw[:, None, 3:6], rest), 1).reshape(n, n_coeffs)}
    # Written straight into the message (zeros: padding and the covariance's other entries): the first
    # splat in its own layout, every later one in the shared one.
    packed = out[8:]  # the splats, from CDR offset 4 (behind the sequence length)
    for view, rows in ((packed[: first.itemsize].view(first), slice(0, 1)), (packed[first.itemsize:].view(later), slice(1, None))):
        for field, value in values.items():
            view[field] = value[rows] if isinstance(value, np.ndarray) else value
        view["covariance"].reshape(-1, 6, 6)[:, :3, :3] = cov[rows]
    return out.tobytes()


def splat_publisher(node: Node, qos: QoSProfile, topic: str = "human_splats") -> Publisher | None:
    """A `gsplat_msgs/SplatArray` publisher on `node`, or None when gsplat_msgs is not importable
    (it is built from RVizSplat's sources; no wheel exists). Publish `encode_splat_array(...)` bytes."""
    try:
        from gsplat_msgs.msg import SplatArray
    except ImportError:
        return None
    return node.create_publisher(SplatArray, topic, qos)
