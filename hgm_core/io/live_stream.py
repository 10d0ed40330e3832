"""The compact live stream in pure numpy (no torch: the node's frame path imports this).

Track mode (docs/live_stream.md) sends the canonical avatar and its binding once, then
per frame only the world transforms of the body's skinning bones; a client that skins re-poses
the avatar itself. This module is both halves of that contract: the binding file and the frame
codec, and the skinner that turns (canonical raw rows, binding, one frame) into posed raw rows
exactly like `hgm_core.body.skinning.pose` does in torch. The format is specified in
docs/live_stream.md; the math is the one described in `hgm_core.body.skinning`.

Raw rows are the `[N, 14]` layout of `hgm_core.layout.RAW_FIELDS` (position, SH DC colour, logit
opacity, log scales, quaternion w-first), so posed rows go straight to `pack_gaussians`.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import numpy as np

from hgm_core.layout import RAW_FIELDS

BINDING_FORMAT = "hgm-binding"
BINDING_VERSION = 1
FRAME_MAGIC = b"HGMB"
FRAME_VERSION = 1
_FRAME_HEADER = struct.Struct("<4sHHI")  # magic, version, joint count, binding id
FRAME_HEADER_BYTES = _FRAME_HEADER.size
POLAR_ITERATIONS = 5
"""Scaled Newton steps of the polar decomposition; LBS blends are near-rotations, where 5 steps
reach float32 precision (see `polar_rotation`)."""


class LiveStreamError(ValueError):
    """Raised for binding files or frames that do not follow docs/live_stream.md."""


@dataclass(frozen=True)
class BindingArrays:
    """An avatar's skinning binding as plain arrays (the binding file's content).

    Attributes:
        joint_index: `[N, K]` uint16 skinning joint per Gaussian and influence (row i of the canonical PLY).
        joint_weight: `[N, K]` float32 weights, rows summing to 1 (unused influences have weight 0).
        rest_transforms: `[J, 4, 4]` float32 rigid world transforms of the joints in the canonical pose.
        joint_names / joint_parents: the `J` skinning joints and their parents (-1 = root).
        binding_id: echoed by every frame, so a client never skins an avatar with another's frames.
        body_model: the body model the joints belong to ("anny", "smplx").
    """

    joint_index: np.ndarray
    joint_weight: np.ndarray
    rest_transforms: np.ndarray
    joint_names: tuple[str, ...]
    joint_parents: tuple[int, ...]
    binding_id: int = 0
    body_model: str = ""

    def __post_init__(self) -> None:
        n, k = self.joint_index.shape
        j = len(self.joint_names)
        if self.joint_weight.shape != (n, k) or self.rest_transforms.shape != (j, 4, 4) or len(self.joint_parents) != j:
            raise LiveStreamError(
                f"binding shapes disagree: joint_index {list(self.joint_index.shape)}, joint_weight "
                f"{list(self.joint_weight.shape)}, rest_transforms {list(self.rest_transforms.shape)}, {j} joint names"
            )
        if n and int(self.joint_index.max()) >= j:
            raise LiveStreamError(f"joint_index refers to joint {int(self.joint_index.max())} of {j}")


def write_binding(file: str | os.PathLike | io.IOBase, binding: BindingArrays) -> None:
    """Write the binding file (an uncompressed `.npz`, see docs/live_stream.md) to a path or binary file."""
    np.savez(
        file,
        format=np.array(BINDING_FORMAT),
        version=np.array(BINDING_VERSION, np.int32),
        binding_id=np.array(binding.binding_id, np.uint32),
        body_model=np.array(binding.body_model),
        joint_names=np.array(binding.joint_names),
        joint_parents=np.asarray(binding.joint_parents, np.int32),
        rest_transforms=np.asarray(binding.rest_transforms, np.float32),
        joint_index=np.asarray(binding.joint_index, np.uint16),
        joint_weight=np.asarray(binding.joint_weight, np.float32),
    )


def read_binding(file: str | os.PathLike | io.IOBase) -> BindingArrays:
    """Read a binding file written by `write_binding` (no pickles are loaded)."""
    with np.load(file, allow_pickle=False) as z:
        if str(z.get("format", "")) != BINDING_FORMAT or int(z["version"]) != BINDING_VERSION:
            raise LiveStreamError(f"not an {BINDING_FORMAT} v{BINDING_VERSION} file")
        return BindingArrays(
            joint_index=z["joint_index"],
            joint_weight=z["joint_weight"],
            rest_transforms=z["rest_transforms"],
            joint_names=tuple(str(n) for n in z["joint_names"]),
            joint_parents=tuple(int(p) for p in z["joint_parents"]),
            binding_id=int(z["binding_id"]),
            body_model=str(z["body_model"]),
        )


def encode_frame(bone_transforms: np.ndarray, binding_id: int = 0) -> bytes:
    """One frame of the compact stream: `[J, 4, 4]` rigid world transforms -> `12 + 28 J` bytes.

    A 12-byte header (magic "HGMB", uint16 version, uint16 J, uint32 binding id), then per joint
    7 little-endian float32: the rotation quaternion (w, x, y, z) and the translation.
    """
    T = np.asarray(bone_transforms, np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise LiveStreamError(f"bone transforms must be [J, 4, 4], got {list(T.shape)}")
    rows = np.concatenate((rotmat_to_quat(T[:, :3, :3]), T[:, :3, 3]), -1).astype("<f4")
    return _FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, len(T), binding_id) + rows.tobytes()


def decode_frame(data: bytes | memoryview) -> tuple[np.ndarray, int]:
    """Inverse of `encode_frame`: `([J, 4, 4]` float32 transforms, binding id)."""
    if len(data) < FRAME_HEADER_BYTES:
        raise LiveStreamError(f"frame of {len(data)} bytes is shorter than its header")
    magic, version, joints, binding_id = _FRAME_HEADER.unpack_from(data)
    if magic != FRAME_MAGIC or version != FRAME_VERSION:
        raise LiveStreamError(f"not an HGMB v{FRAME_VERSION} frame (magic {magic!r}, version {version})")
    if len(data) != FRAME_HEADER_BYTES + 28 * joints:
        raise LiveStreamError(f"frame of {len(data)} bytes does not hold {joints} joints")
    rows = np.frombuffer(data, "<f4", count=7 * joints, offset=FRAME_HEADER_BYTES).reshape(joints, 7)
    T = np.zeros((joints, 4, 4), np.float32)
    T[:, :3, :3] = quat_to_rotmat(rows[:, :4])
    T[:, :3, 3] = rows[:, 4:]
    T[:, 3, 3] = 1
    return T, binding_id


def skinning_transforms(bone_transforms: np.ndarray, rest_transforms: np.ndarray) -> np.ndarray:
    """`[J, 4, 4]` transforms taking the canonical pose to the frame's: `T @ inverse(T_rest)` (rigid inverse)."""
    R, t = rest_transforms[:, :3, :3], rest_transforms[:, :3, 3]
    inverse = np.zeros_like(rest_transforms)
    inverse[:, :3, :3] = R.transpose(0, 2, 1)
    inverse[:, :3, 3] = -np.einsum("jba,jb->ja", R, t)
    inverse[:, 3, 3] = 1
    return bone_transforms @ inverse


def skin_raw(canonical_raw: np.ndarray, binding: BindingArrays, bone_transforms: np.ndarray) -> np.ndarray:
    """Pose the canonical avatar for one frame: `[N, 14]` raw rows -> `[N, 14]` posed raw rows.

    `bone_transforms` are the frame's `[J, 4, 4]` world transforms (e.g. from `decode_frame`). With
    A, b the Gaussian's blended map (`sum_k w_k T_jk inverse(T_rest_jk)`): mean -> A mean + b;
    rotation -> polar(A R); scale i -> s_i |A r_i| (r_i the i-th axis). Colour and opacity are copied.
    """
    raw = np.asarray(canonical_raw, np.float32)
    if raw.ndim != 2 or raw.shape[1] != len(RAW_FIELDS) or len(raw) != len(binding.joint_index):
        raise LiveStreamError(f"canonical raw rows must be [{len(binding.joint_index)}, {len(RAW_FIELDS)}], got {list(raw.shape)}")
    G = skinning_transforms(np.asarray(bone_transforms, np.float64), binding.rest_transforms.astype(np.float64))
    # Component-major ([3, 3, N]: one contiguous [N] array per matrix entry): every step below is a
    # handful of whole-array multiply-adds instead of N tiny 3x3 products.
    M = blend(binding.joint_index, binding.joint_weight, G)
    A, b = M[:, :3], M[:, 3]
    R = _quat_to_rotmat(raw[:, 10:14].T)
    AR = np.einsum("ilk,ljk->ijk", A, R, optimize=False)
    out = raw.copy()
    out[:, 0:3] = (np.einsum("ijk,jk->ik", A, raw[:, 0:3].T) + b).T
    out[:, 7:10] += 0.5 * np.log(np.einsum("ijk,ijk->jk", AR, AR)).T
    out[:, 10:14] = _rotmat_to_quat(_polar(AR)).T
    return out


def blend(joint_index: np.ndarray, joint_weight: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """`[3, 4, N]` (component-major) per-Gaussian affine maps: the weighted sums of `transforms
    [J, 4, 4]` over each Gaussian's `[N, K]` influences."""
    table = np.ascontiguousarray(transforms[:, :3].reshape(len(transforms), 12), np.float32)  # [J, 12]
    M = np.zeros((len(joint_index), 12), np.float32)
    for k in range(joint_index.shape[1]):  # K is small (4); gathering whole rows is the fast gather
        M += table[joint_index[:, k]] * joint_weight[:, k, None]
    return np.ascontiguousarray(M.T).reshape(3, 4, -1)


def polar_rotation(A: np.ndarray, iterations: int = POLAR_ITERATIONS) -> np.ndarray:
    """`[..., 3, 3]` rotation factor Q of the polar decomposition A = Q P (the rotation nearest to A)."""
    return np.moveaxis(_polar(np.moveaxis(np.asarray(A, np.float32), (-2, -1), (0, 1)), iterations), (0, 1), (-2, -1))


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """`[..., 4]` quaternions (w, x, y, z; normalised here) -> `[..., 3, 3]` rotation matrices."""
    return np.moveaxis(_quat_to_rotmat(np.moveaxis(np.asarray(q, np.float32), -1, 0)), (0, 1), (-2, -1))


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """`[..., 3, 3]` rotations -> `[..., 4]` unit quaternions (w, x, y, z) with w >= 0."""
    return np.moveaxis(_rotmat_to_quat(np.moveaxis(np.asarray(R, np.float32), (-2, -1), (0, 1))), 0, -1)


def _polar(A: np.ndarray, iterations: int = POLAR_ITERATIONS) -> np.ndarray:
    """Rotation factor of `[3, 3, ...]` matrices by scaled Newton iteration X <- (g X + (g X)^-T) / 2,
    g = |det X|^(-1/3): quadratic convergence from any det A > 0. The inverse-transpose is the
    cofactor matrix (rows: cross products of the other two rows) over the determinant."""
    X = np.array(A, np.float32)
    cof = np.empty_like(X)
    for _ in range(iterations):
        for i, (a, b) in enumerate(((1, 2), (2, 0), (0, 1))):
            _cross(X[a], X[b], out=cof[i])
        det = X[0, 0] * cof[0, 0] + X[0, 1] * cof[0, 1] + X[0, 2] * cof[0, 2]
        g = np.cbrt(np.abs(det))  # 1 / the scale factor
        X *= 0.5 / g
        cof *= 0.5 * g / det
        X += cof
    return X


def _cross(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Cross product of `[3, ...]` component-major vectors, written into `out`."""
    np.multiply(a[1], b[2], out=out[0])
    out[0] -= a[2] * b[1]
    np.multiply(a[2], b[0], out=out[1])
    out[1] -= a[0] * b[2]
    np.multiply(a[0], b[1], out=out[2])
    out[2] -= a[1] * b[0]
    return out


def _quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """`[4, ...]` quaternions (w, x, y, z; any length, not zero) -> `[3, 3, ...]` rotation matrices."""
    w, x, y, z = q
    s = 2 / (w * w + x * x + y * y + z * z)  # the 2 of the unit formula, over |q|^2
    xs, ys, zs = x * s, y * s, z * s
    wx, wy, wz, xx, xy, xz, yy, yz, zz = w * xs, w * ys, w * zs, x * xs, x * ys, x * zs, y * ys, y * zs, z * zs
    R = np.empty((3, 3, *q.shape[1:]), np.float32)
    R[0, 0], R[0, 1], R[0, 2] = 1 - (yy + zz), xy - wz, xz + wy
    R[1, 0], R[1, 1], R[1, 2] = xy + wz, 1 - (xx + zz), yz - wx
    R[2, 0], R[2, 1], R[2, 2] = xz - wy, yz + wx, 1 - (xx + yy)
    return R


def _rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """`[3, 3, ...]` rotations -> `[4, ...]` unit quaternions (w, x, y, z), w >= 0.

    Per element, the branch of the largest of (trace, m00, m11, m22), so it is stable for every
    rotation, 180 degrees included.
    """
    m = R
    t = m[0, 0] + m[1, 1] + m[2, 2]
    cand = np.stack((
        np.stack((1 + t, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1])),
        np.stack((m[2, 1] - m[1, 2], 1 + m[0, 0] - m[1, 1] - m[2, 2], m[0, 1] + m[1, 0], m[0, 2] + m[2, 0])),
        np.stack((m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1 - m[0, 0] + m[1, 1] - m[2, 2], m[1, 2] + m[2, 1])),
        np.stack((m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1 - m[0, 0] - m[1, 1] + m[2, 2])),
    ))  # [4 branches, 4, ...]  fmt: skip
    best = np.stack((t, m[0, 0], m[1, 1], m[2, 2])).argmax(0)
    q = np.take_along_axis(cand, best[None, None], 0)[0]
    q = q / np.sqrt((q * q).sum(0))
    return np.where(q[0] < 0, -q, q)
