"""Subjects of a render layout cached at the training resolution: one uncompressed `.npz` each.

Decoding 12 JPEG/PNG pairs and resizing them costs tens of milliseconds per subject, as much as a
third of a CPU training step; the cache pays it once. A cached subject holds (V views, S the cache
size):

    images      uint8   [V, S, S, 3]  RGB composited on white (area-resampled)
    masks       uint8   [V, S, S]     coverage 0..255
    extrinsics  float64 [V, 4, 4]     world -> camera, OpenCV axes
    intrinsics  float64 [V, 3, 3]     at S
    distance    float64 []            ring distance in metres (`reader.subject_distance`)
    body        float32 [Nv, 3]       GT body vertices, world frame (empty [0, 3] when the layout has none)

A subject counts as complete once its contact sheet exists: `write_subject` writes it last, so a
layout still being generated can be read while it grows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hgm_core.data.reader import DatasetLayoutError, ReaderConfig, count_views, list_subjects, load_view, subject_distance

CACHE_KEYS = ("images", "masks", "extrinsics", "intrinsics", "distance", "body")


def complete_subjects(root: Path) -> list[str]:
    """Subject ids of `root` whose files are all written (sorted).

    Our generator's layouts have `sheet/{id}.png` as the last file; a layout without a `sheet/`
    folder (real THuman2.0 renders) counts every subject found under `img/`."""
    root = Path(root)
    found = list_subjects(root)
    sheet = root / "sheet"
    if not sheet.is_dir():
        return list(found)
    done = {p.stem for p in sheet.iterdir() if p.suffix == ".png"}
    return [s for s in found if s in done]


def build_cached_subject(root: Path, sid: str, size: int) -> dict[str, np.ndarray]:
    """Read every view of `sid` and resample it to `size` (see the module docstring for the keys)."""
    import cv2

    n = count_views(root, sid)
    if n == 0:
        raise DatasetLayoutError(f"{root} has no views of subject {sid!r}")
    images, masks, E, K = [], [], [], []
    for v in range(n):
        rgb, mask, ext, intr = load_view(root, sid, v)
        h, w = mask.shape
        if h != w:
            raise DatasetLayoutError(f"{root}: subject {sid} view {v} is {w}x{h}; the cache needs square images")
        interp = cv2.INTER_AREA if size < h else cv2.INTER_LINEAR
        images.append(np.round(np.clip(cv2.resize(rgb, (size, size), interpolation=interp), 0, 1) * 255).astype(np.uint8))
        masks.append(np.round(np.clip(cv2.resize(mask, (size, size), interpolation=interp), 0, 1) * 255).astype(np.uint8))
        E.append(ext)
        K.append(intr * np.array([[size / w], [size / h], [1.0]]))
    body_path = Path(root) / "body" / f"{sid}.npz"
    body = np.load(body_path)["vertices"].astype(np.float32) if body_path.exists() else np.zeros((0, 3), np.float32)
    return {"images": np.stack(images), "masks": np.stack(masks), "extrinsics": np.stack(E), "intrinsics": np.stack(K),
            "distance": np.float64(subject_distance(root, sid, ReaderConfig().distance)), "body": body}


def cache_path(cache_dir: Path, root: Path, sid: str, size: int) -> Path:
    """Where `sid` of `root` is cached: one folder per (layout, size)."""
    return Path(cache_dir) / f"{Path(root).resolve().name}_{size}" / f"{sid}.npz"


def load_cached_subject(root: Path, sid: str, size: int, cache_dir: Path) -> dict[str, np.ndarray]:
    """The cached subject, building (and atomically writing) it on first use."""
    path = cache_path(cache_dir, root, sid, size)
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in CACHE_KEYS}
    item = build_cached_subject(root, sid, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **item)
    tmp.replace(path)
    return item
