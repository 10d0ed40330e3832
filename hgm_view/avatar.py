"""What the page shows and the one binary WebSocket message that carries it.

Message (little endian): `b"HGV1"`, uint32 header length, a JSON header padded with spaces to a
multiple of 4 bytes, then float32 arrays back to back: the raw Gaussian rows `[N, 14]`
(`hgm_core.layout.RAW_FIELDS`, as in the PLY and on `human_gaussians`), the skeleton's line
segments `[S, 2, 3]` and its joints `[J, 3]`. Everything in the source camera's optical frame
(docs/architecture.md §3). `web/view.js` decodes it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hgm_core.io.ply import read_ply_raw
from hgm_core.layout import RAW_FIELDS

MAGIC = b"HGV1"


class ViewInputError(ValueError):
    """A path the viewer cannot show (not a PLY, no avatar.ply in the folder, a bad body.json)."""


@dataclass(frozen=True)
class AvatarUpdate:
    """One avatar for the page.

    Attributes:
        raw: `[N, 14]` float32 raw Gaussian rows.
        segments: `[S, 2, 3]` float32 skeleton bones as line segments (S may be 0).
        joints: `[J, 3]` float32 joint positions (J may be 0).
        stamp: source time in seconds (the image's header stamp), or 0 when unknown.
        frame_id: the source camera's frame.
        source: where it came from, shown on the page.
        K: `[3, 3]` intrinsics of the source camera and `image_size` (width, height), or None: the
            page starts from that camera when it has them.
    """

    raw: np.ndarray
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 3), np.float32))
    joints: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    stamp: float = 0.0
    frame_id: str = ""
    source: str = ""
    K: np.ndarray | None = None
    image_size: tuple[int, int] | None = None


def bone_segments(joints: np.ndarray, bones: list | tuple) -> np.ndarray:
    """`[J, 3]` joints and index pairs -> `[S, 2, 3]` float32 segments (pairs out of range are skipped)."""
    joints = np.asarray(joints, np.float32).reshape(-1, 3)
    pairs = np.array([(a, b) for a, b in bones if 0 <= a < len(joints) and 0 <= b < len(joints)], np.int64).reshape(-1, 2)
    return joints[pairs]


def encode_update(update: AvatarUpdate, seq: int = 0) -> bytes:
    """The binary message for `update` (module docstring); `seq` counts updates for the page."""
    raw = np.ascontiguousarray(update.raw, "<f4")
    if raw.ndim != 2 or raw.shape[1] != len(RAW_FIELDS):
        raise ViewInputError(f"raw Gaussians must be [N, {len(RAW_FIELDS)}], got {list(raw.shape)}")
    segments = np.ascontiguousarray(update.segments, "<f4").reshape(-1, 2, 3)
    joints = np.ascontiguousarray(update.joints, "<f4").reshape(-1, 3)
    header = {
        "seq": seq, "n": len(raw), "segments": len(segments), "joints": len(joints),
        "stamp": update.stamp, "frame_id": update.frame_id, "source": update.source,
        "K": None if update.K is None else np.asarray(update.K, float).tolist(),
        "image_size": None if update.image_size is None else list(update.image_size),
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 4)
    return b"".join((MAGIC, struct.pack("<I", len(text)), text, raw.tobytes(), segments.tobytes(), joints.tobytes()))


def decode_update(data: bytes) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of `encode_update`: (header, raw `[N, 14]`, segments `[S, 2, 3]`, joints `[J, 3]`)."""
    if data[:4] != MAGIC:
        raise ViewInputError("not an hgm view message")
    (length,) = struct.unpack_from("<I", data, 4)
    header = json.loads(data[8: 8 + length])
    floats = np.frombuffer(data, "<f4", offset=8 + length)
    n, s = header["n"] * len(RAW_FIELDS), header["segments"] * 6
    return (header, floats[:n].reshape(-1, len(RAW_FIELDS)), floats[n: n + s].reshape(-1, 2, 3),
            floats[n + s:].reshape(-1, 3))


def watched_file(path: str | os.PathLike) -> Path:
    """The file whose change means a new avatar: the PLY itself, or a folder's `avatar.ply`.

    Raises:
        ViewInputError: no such file, or a folder without `avatar.ply`.
    """
    path = Path(path)
    ply = path / "avatar.ply" if path.is_dir() else path
    if not ply.is_file():
        where = f"{path} has no avatar.ply (is it a `hgm reconstruct` output folder?)" if path.is_dir() else f"{path} does not exist"
        raise ViewInputError(where)
    return ply


def load_path(path: str | os.PathLike) -> AvatarUpdate:
    """A 3DGS PLY, or a `hgm reconstruct` output folder (avatar.ply + body.json's joints, bones and
    camera) -> `AvatarUpdate`.

    Raises:
        ViewInputError: see `watched_file`; an unreadable PLY or body.json.
    """
    ply = watched_file(path)
    try:
        raw = read_ply_raw(ply)
    except ValueError as e:
        raise ViewInputError(f"{ply}: {e}") from None
    body_file = ply.parent / "body.json"
    if not Path(path).is_dir() or not body_file.is_file():
        return AvatarUpdate(raw=raw, source=str(ply))
    try:
        body = json.loads(body_file.read_text())
        joints = np.asarray(body.get("joints", []), np.float32).reshape(-1, 3)
        K = np.asarray(body["K"], float).reshape(3, 3) if "K" in body else None
    except (ValueError, KeyError) as e:
        raise ViewInputError(f"{body_file}: {e}") from None
    size = _image_size(ply.parent / "report.json")
    return AvatarUpdate(raw=raw, segments=bone_segments(joints, body.get("bones", [])), joints=joints,
                        source=str(path), K=K if size else None, image_size=size)


def _image_size(report: Path) -> tuple[int, int] | None:
    """(width, height) of the reconstructed photo from report.json's `image_size`, if present."""
    try:
        w, h = json.loads(report.read_text())["image_size"][:2]
        return int(w), int(h)
    except (OSError, ValueError, KeyError, TypeError):
        return None
