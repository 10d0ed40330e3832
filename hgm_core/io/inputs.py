"""What a user hands to a reconstruction as files: the photo, an optional person mask, an optional
aligned depth image and an optional camera_info YAML. Unreadable or malformed files raise `BadInputError` with the file in the message."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hgm_core.types import BadInputError, CameraInfo


def load_image(path: str | os.PathLike) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB from any format PIL reads; grey and RGBA are converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise BadInputError(f"no such image: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise BadInputError(f"cannot read image {path}: {e}") from None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """`[H, W]` uint8 mask (any image; nonzero in the first channel = person)."""
    return (load_image(path)[..., 0] > 127).astype(np.uint8)


def load_depth(path: str | os.PathLike) -> np.ndarray:
    """`[H, W]` depth aligned with the photo: a 16-bit PNG/TIFF in millimetres (uint16, what RGB-D
    drivers save) or a `.npy` of uint16 millimetres or float32 metres; 0 = no measurement."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            depth = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                depth = np.asarray(im)
    except FileNotFoundError:
        raise BadInputError(f"no such depth image: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadInputError(f"cannot read depth image {path}: {e}") from None
    if depth.ndim != 2 or depth.dtype not in (np.uint16, np.int32, np.float32, np.float64):
        raise BadInputError(f"{path}: depth must be one channel of 16-bit millimetres or float metres, "
                            f"got {list(depth.shape)} {depth.dtype}")
    if depth.dtype == np.int32:  # PIL opens 16-bit PNGs as 32-bit integer images
        if depth.min() < 0 or depth.max() > np.iinfo(np.uint16).max:
            raise BadInputError(f"{path}: depth in millimetres must lie in [0, 65535]")
        return depth.astype(np.uint16)
    return depth.astype(np.float32) if depth.dtype == np.float64 else depth


def load_camera_info(path: str | os.PathLike) -> CameraInfo:
    """Intrinsics from a ROS camera_info YAML (`camera_matrix: {data: [...]}`, `K: [...]` or `k: [...]`)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise BadInputError(f"cannot read camera info {path}: {e}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"cannot read camera info {path}: not a YAML mapping")
    try:
        k = data.get("camera_matrix", {}).get("data") if isinstance(data.get("camera_matrix"), dict) else None
        k = k or data.get("K") or data.get("k")
        K = np.asarray(k, np.float64).reshape(3, 3)
        width = int(data.get("image_width") or data.get("width"))
        height = int(data.get("image_height") or data.get("height"))
    except (AttributeError, TypeError, ValueError) as e:
        raise BadInputError(f"{path}: expected image_width, image_height and a 3x3 camera_matrix/K ({e})") from None
    return CameraInfo(K=K, width=width, height=height)
