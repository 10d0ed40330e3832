"""Person-window packs: a render layout's subjects cut to square windows around the person, compactly.

A frame of our layouts shows the person small (at the 128² cache size about 64 px tall and 22 px
wide), so most of its pixels are white background. A pack keeps, for every view, only a square
window around the person, cut from the SOURCE resolution and resampled to `size`², with the
intrinsics of that window. Images are JPEG, masks PNG and the GT body quantised to millimetres, so a
subject of 12 views at 128² takes well under 100 KB: a training set small enough to travel with the
repository, and sharper targets than the whole-frame cache (`cache.py`).

The folder: `{sid}.npz` per subject (written atomically, so a pack being built can be read) and
`dataset.json` (`"generator": "hgm pack"`, the source layout's `seed` so that the trainer's seed
check still applies, the source path, size, margin, JPEG quality, subjects and bytes). A subject file
holds only plain arrays (no pickled objects):

    rgb_jpeg, rgb_offsets    uint8 [B], int64 [V + 1]    JPEG files of the windows (RGB on white), concatenated
    mask_png, mask_offsets   uint8 [B], int64 [V + 1]    PNG files of the windows' coverage 0..255
    extrinsics               float64 [V, 4, 4]           world -> camera, OpenCV axes (as the source)
    intrinsics               float64 [V, 3, 3]           of the windows at `size`
    windows                  int64 [V, 3]                (x0, y0, side) of each window in source pixels
    distance                 float64 []                  ring distance in metres (`reader.subject_distance`)
    body_origin              float64 [3]                 the body code's origin (metres)
    body_code                uint8 [B]                   `encode_body`; empty when the layout has no body
    body_count               int64 []                    vertices in the body
    depth_png, depth_offsets uint8 [B], int64 [V + 1]    (when the layout has depth maps) 16-bit PNGs of the
                                                         windows' depth, `data.render.encode_depth` (2^15 / z)

`load_packed_subject` decodes one into exactly the `cache.CACHE_KEYS` dict of `load_cached_subject`
(with the windows' images and intrinsics), so `train.sample.make_sample` consumes it unchanged.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hgm_core.data.reader import DatasetLayoutError, ReaderConfig, count_views, list_subjects, load_view, subject_distance

GENERATOR = "hgm pack"
PACK_VERSION = 2
"""2: depth windows (nearest-sampled, so no depth is blended across the silhouette) when the layout has them."""
INDEX_NAME = "dataset.json"
BODY_STEP_M = 1e-3
"""Body quantisation step: millimetres (rounding error <= 0.5 mm)."""


class PackError(ValueError):
    """A pack that cannot be written or read (bad settings, settings unlike the existing pack's, a
    missing or corrupt subject)."""


# ------------------------------------------------------------------------------------------ windows


def person_window(mask: np.ndarray, margin: float) -> tuple[int, int, int]:
    """Square window `(x0, y0, side)` in pixels around the person in `mask [H, W]` (> 0.5): the box's
    longer side plus `margin` of it on every side, centred on the box; it may reach past the image.
    The whole image (its longer side) when the mask is empty."""
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) == 0:
        return 0, 0, max(mask.shape[:2])
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = int(round(max(y1 - y0, x1 - x0) * (1 + 2 * margin)))
    return (x0 + x1 - side) // 2, (y0 + y1 - side) // 2, side


def cut_window(image: np.ndarray, window: tuple[int, int, int], size: int, fill: float, nearest: bool = False) -> np.ndarray:
    """`image [H, W, ...]` float32 cut to `window` (`fill` past the image edge) and resampled to
    `size`² (area averaging when shrinking, bilinear when enlarging; `nearest`: the nearest pixel,
    for values that must not be blended such as depth) -> `[size, size, ...]` float32."""
    import cv2

    x0, y0, side = window
    h, w = image.shape[:2]
    out = np.full((side, side) + image.shape[2:], fill, np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if size < side else cv2.INTER_LINEAR
    return cv2.resize(out, (size, size), interpolation=interp)


def window_intrinsics(K: np.ndarray, window: tuple[int, int, int], size: int) -> np.ndarray:
    """`K [3, 3]` (pixel centres at +0.5) of the image cut to `window` and resampled to `size`²."""
    x0, y0, side = window
    K = np.array(K, np.float64)
    K[0, 2] -= x0
    K[1, 2] -= y0
    K[:2] *= size / side
    return K


# --------------------------------------------------------------------------------------------- body


def encode_body(vertices: np.ndarray, step: float = BODY_STEP_M) -> tuple[np.ndarray, np.ndarray]:
    """`[Nv, 3]` metres -> (origin float64 [3], code uint8 [B]).

    Quantised to `step` about the vertices' mean, delta-coded along the vertex order (neighbouring
    indices are neighbours on the mesh, so deltas are small), zigzag-mapped to unsigned, split into
    low and high byte planes per axis, zlib-compressed (zlib: ~10x faster to decode than lzma for a
    few KB more)."""
    v = np.asarray(vertices, np.float64)
    origin = v.mean(0) if len(v) else np.zeros(3)
    q = np.round((v - origin) / step).astype(np.int64)
    d = np.diff(q, axis=0, prepend=np.zeros((1, 3), np.int64))
    if len(d) and np.abs(d).max() >= 2**15:
        raise PackError(f"body too large for its {step * 1e3:g} mm code (a delta of {np.abs(d).max()} steps)")
    zigzag = ((d << 1) ^ (d >> 63)).astype(np.uint16)  # [Nv, 3]
    planes = np.ascontiguousarray(zigzag.T).view(np.uint8).reshape(3, -1, 2).transpose(2, 0, 1)  # [2, 3, Nv]
    return origin, np.frombuffer(zlib.compress(np.ascontiguousarray(planes).tobytes(), 9), np.uint8)


def decode_body(origin: np.ndarray, code: np.ndarray, count: int, step: float = BODY_STEP_M) -> np.ndarray:
    """Inverse of `encode_body` -> `[count, 3]` float32 metres."""
    if count == 0:
        return np.zeros((0, 3), np.float32)
    planes = np.frombuffer(zlib.decompress(code.tobytes()), np.uint8).reshape(2, 3, count)
    zigzag = np.ascontiguousarray(planes.transpose(1, 2, 0)).view(np.uint16)[..., 0].astype(np.int64)  # [3, Nv]
    d = (zigzag >> 1) ^ -(zigzag & 1)
    return (np.cumsum(d, axis=1).T * step + origin).astype(np.float32)


# ---------------------------------------------------------------------------------------- subjects


def _concat(files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings -> (uint8 [B] concatenation, int64 [n + 1] offsets)."""
    offsets = np.cumsum([0] + [len(b) for b in files]).astype(np.int64)
    return np.frombuffer(b"".join(files), np.uint8), offsets


def pack_subject(root: Path, sid: str, size: int = 128, margin: float = 0.12, jpeg_quality: int = 92) -> dict[str, np.ndarray]:
    """Every view of subject `sid` of layout `root` as a person window (see the module docstring for the keys)."""
    import cv2

    from hgm_core.data.render import decode_depth, encode_depth

    n = count_views(root, sid)
    if n == 0:
        raise DatasetLayoutError(f"{root} has no views of subject {sid!r}")
    jpegs, pngs, depths, E, K, windows = [], [], [], [], [], []
    for v in range(n):
        rgb, mask, ext, intr = load_view(root, sid, v)
        window = person_window(mask, margin)
        image = np.round(np.clip(cut_window(rgb, window, size, 1.0), 0, 1) * 255).astype(np.uint8)
        coverage = np.round(np.clip(cut_window(mask, window, size, 0.0), 0, 1) * 255).astype(np.uint8)
        ok_j, jpg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        ok_p, png = cv2.imencode(".png", coverage, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not (ok_j and ok_p):
            raise PackError(f"could not encode subject {sid} view {v}")
        jpegs.append(jpg.tobytes())
        pngs.append(png.tobytes())
        depth_file = Path(root) / "depth" / f"{sid}_{v:03d}" / "1.0.png"
        if depth_file.exists():
            depth = decode_depth(cv2.imread(str(depth_file), cv2.IMREAD_UNCHANGED)).astype(np.float32)
            ok_d, dpng = cv2.imencode(".png", encode_depth(cut_window(depth, window, size, 0.0, nearest=True)),
                                      [cv2.IMWRITE_PNG_COMPRESSION, 9])
            if not ok_d:
                raise PackError(f"could not encode subject {sid} view {v}'s depth")
            depths.append(dpng.tobytes())
        E.append(ext)
        K.append(window_intrinsics(intr, window, size))
        windows.append(window)
    body_path = Path(root) / "body" / f"{sid}.npz"
    body = np.load(body_path)["vertices"] if body_path.exists() else np.zeros((0, 3), np.float32)
    origin, code = encode_body(body)
    rgb_jpeg, rgb_offsets = _concat(jpegs)
    mask_png, mask_offsets = _concat(pngs)
    item = {"rgb_jpeg": rgb_jpeg, "rgb_offsets": rgb_offsets, "mask_png": mask_png, "mask_offsets": mask_offsets,
            "extrinsics": np.stack(E), "intrinsics": np.stack(K), "windows": np.asarray(windows, np.int64),
            "distance": np.float64(subject_distance(root, sid, ReaderConfig().distance)),
            "body_origin": origin, "body_code": code, "body_count": np.int64(len(body))}
    if len(depths) == n:  # all or nothing: a layout without depth maps packs none
        item["depth_png"], item["depth_offsets"] = _concat(depths)
    return item


def subject_path(pack: Path, sid: str) -> Path:
    return Path(pack) / f"{sid}.npz"


def write_packed_subject(pack: Path, sid: str, item: dict[str, np.ndarray]) -> int:
    """Write one packed subject atomically (tmp + rename); returns its bytes on disk."""
    path = subject_path(pack, sid)
    tmp = path.with_name(f".{sid}.tmp{os.getpid()}.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **item)  # uncompressed: the payloads are compressed already
    tmp.replace(path)
    return path.stat().st_size


def decode_packed(item: dict[str, np.ndarray] | np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    """A packed subject's arrays -> the `cache.CACHE_KEYS` dict (images uint8 [V, S, S, 3] RGB,
    masks uint8 [V, S, S], extrinsics, intrinsics, distance, body float32 [Nv, 3]), plus `depth`
    float32 [V, S, S] (metres along each camera's axis, 0 = no surface) when the pack has depth."""
    import cv2

    from hgm_core.data.render import decode_depth

    rgb, ro, masks, mo = item["rgb_jpeg"], item["rgb_offsets"], item["mask_png"], item["mask_offsets"]
    images = [cv2.imdecode(rgb[ro[v]:ro[v + 1]], cv2.IMREAD_COLOR) for v in range(len(ro) - 1)]
    coverage = [cv2.imdecode(masks[mo[v]:mo[v + 1]], cv2.IMREAD_GRAYSCALE) for v in range(len(mo) - 1)]
    if any(x is None for x in images + coverage):
        raise PackError("a packed view does not decode")
    images = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for bgr in images]  # 10x faster than a reversed-stride copy
    out = {"images": np.stack(images), "masks": np.stack(coverage),
           "extrinsics": item["extrinsics"], "intrinsics": item["intrinsics"], "distance": item["distance"][()],
           "body": decode_body(item["body_origin"], item["body_code"], int(item["body_count"]))}
    if "depth_png" in item:
        dp, do = item["depth_png"], item["depth_offsets"]
        depth = [cv2.imdecode(dp[do[v]:do[v + 1]], cv2.IMREAD_UNCHANGED) for v in range(len(do) - 1)]
        if any(x is None for x in depth):
            raise PackError("a packed depth window does not decode")
        out["depth"] = np.stack([decode_depth(d) for d in depth]).astype(np.float32)
    return out


def load_packed_subject(root: Path, sid: str) -> dict[str, np.ndarray]:
    """Subject `sid` of pack `root` as the `cache.CACHE_KEYS` dict that `load_cached_subject` returns,
    with the person windows' images, masks and intrinsics."""
    path = subject_path(root, sid)
    if not path.exists():
        raise PackError(f"{root} has no packed subject {sid!r}")
    with np.load(path) as f:
        return decode_packed(f)


# ------------------------------------------------------------------------------------------- folder


def is_pack(root: Path) -> bool:
    """Whether `root` is a pack (its `dataset.json` names the pack generator)."""
    index = Path(root) / INDEX_NAME
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("generator") == GENERATOR
    except json.JSONDecodeError:
        return False


def packed_subjects(root: Path) -> list[str]:
    """Ids of the subjects written to pack `root` so far (sorted; temporary files excluded)."""
    if not is_pack(root):
        raise PackError(f"{root} is not a pack (no {INDEX_NAME} from {GENERATOR!r})")
    return sorted(p.stem for p in Path(root).glob("*.npz") if not p.name.startswith("."))


def read_index(root: Path) -> dict:
    """A pack's `dataset.json`."""
    if not is_pack(root):
        raise PackError(f"{root} is not a pack (no {INDEX_NAME} from {GENERATOR!r})")
    return json.loads((Path(root) / INDEX_NAME).read_text())


def write_index(root: Path, index: dict) -> None:
    """Write `dataset.json` atomically."""
    path = Path(root) / INDEX_NAME
    tmp = path.with_name(f".{INDEX_NAME}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    tmp.replace(path)


# ------------------------------------------------------------------------------------------ packing


def _source_seed(source: Path) -> int | None:
    index = Path(source) / INDEX_NAME
    return json.loads(index.read_text()).get("seed") if index.exists() else None


def open_pack(source: Path, out: Path, size: int, margin: float, jpeg_quality: int) -> dict:
    """Create pack `out` of layout `source` (or reopen it to resume) and return its index.

    Raises `PackError` for bad settings, a source that is not a render layout, or an existing pack
    made from another source or with other settings (resuming it would mix two kinds of windows)."""
    if size < 8 or not 0 <= margin <= 1 or not 1 <= jpeg_quality <= 100:
        raise PackError(f"need size >= 8, 0 <= margin <= 1, 1 <= jpeg quality <= 100 (got {size}, {margin}, {jpeg_quality})")
    if is_pack(source):
        raise PackError(f"{source} is a pack already, not a render layout")
    list_subjects(source)  # raises DatasetLayoutError when `source` is not a layout
    settings = {"generator": GENERATOR, "version": PACK_VERSION, "source": str(Path(source).resolve()),
                "seed": _source_seed(source), "size": size, "margin": margin, "jpeg_quality": jpeg_quality}
    out = Path(out)
    if (out / INDEX_NAME).exists():
        index = read_index(out)
        different = {k: (index.get(k), v) for k, v in settings.items() if index.get(k) != v}
        if different:
            raise PackError(f"{out} was packed with other settings ({different}, as (pack, now)); use another folder")
        return index
    out.mkdir(parents=True, exist_ok=True)
    index = {**settings, "subjects": [], "total_bytes": 0}
    write_index(out, index)
    return index


def update_index(out: Path) -> dict:
    """Record the subjects written so far and their bytes in the pack's `dataset.json`; returns the index."""
    index = read_index(out)
    subjects = packed_subjects(out)
    index["subjects"] = subjects
    index["total_bytes"] = int(sum(subject_path(out, s).stat().st_size for s in subjects))
    write_index(out, index)
    return index


def _pack_one(job: tuple[Path, Path, str, int, float, int]) -> tuple[str, int]:
    source, out, sid, size, margin, quality = job
    return sid, write_packed_subject(out, sid, pack_subject(source, sid, size, margin, quality))


def pack_subjects(source: Path, out: Path, subjects: list[str], index: dict, workers: int = 1) -> Iterator[tuple[str, int]]:
    """Pack `subjects` of `source` into `out` (opened with `open_pack`, whose `index` gives the
    settings), yielding `(sid, bytes)` as each is written; `workers` > 1 packs in that many processes."""
    jobs = [(Path(source), Path(out), sid, index["size"], index["margin"], index["jpeg_quality"]) for sid in subjects]
    if workers <= 1:
        yield from map(_pack_one, jobs)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_pack_one, jobs)
