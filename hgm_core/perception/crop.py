"""`crop_person`: the square, person-centred model input with its own intrinsics."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from hgm_core.camera import crop_intrinsics
from hgm_core.perception.perceive import Perception
from hgm_core.types import BadInputError


@dataclass(frozen=True)
class PersonCrop:
    """A square crop around the person, resized to `size x size`.

    Attributes:
        image: `[S, S, 3]` uint8 RGB; parts of the box outside the source image are black.
        mask: `[S, S]` bool person mask.
        K: `[3, 3]` float64 intrinsics of the crop (`crop_intrinsics` of the source K).
        box: `(x0, y0, x1, y1)` integer square box in source pixels (may extend past the image).
    """

    image: np.ndarray
    mask: np.ndarray
    K: np.ndarray
    box: tuple[int, int, int, int]

    @property
    def size(self) -> int:
        return self.image.shape[0]


def square_box(
    bbox: tuple[float, float, float, float], margin: float, *, whole_pixels: bool = True
) -> tuple[float, float, float, float]:
    """Square box `(x0, y0, x1, y1)` centred on `bbox`, its side the longer bbox side times `1 + 2 * margin`.

    With `whole_pixels` (a crop of the image) the side is rounded up and the corner down to integers;
    without, the box is exact (floats), for resampling on a grid of its own.
    """
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if not whole_pixels:
        return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    side = int(np.ceil(side))
    bx, by = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    return bx, by, bx + side, by + side


def _cut(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """`array[y0:y1, x0:x1]` with zero padding where the box leaves the array."""
    x0, y0, x1, y1 = box
    h, w = array.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0) + array.shape[2:], array.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def crop_person(image: np.ndarray, perception: Perception, size: int = 512, margin: float = 0.1) -> PersonCrop:
    """Cut the square box around `perception.bbox` (plus `margin` per side) and resize it to `size`.

    Args:
        image: `[H, W, 3]` uint8 RGB, the image `perception` came from.
        size: output side in pixels (HGM's `big` config takes 512).
        margin: extra border on each side as a fraction of the longer box side.
    """
    if image.shape[:2] != perception.mask.shape:
        raise BadInputError(f"image {list(image.shape)} does not match the perception's mask {list(perception.mask.shape)}")
    if size < 8 or margin < 0:
        raise BadInputError(f"crop size must be >= 8 and margin >= 0, got {size}, {margin}")
    box = square_box(perception.bbox, margin)
    side = box[2] - box[0]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(_cut(image, box), (size, size), interpolation=interp)
    mask = cv2.resize(_cut(perception.mask.astype(np.float32), box), (size, size), interpolation=interp) > 0.5
    K = crop_intrinsics(torch.as_tensor(perception.K, dtype=torch.float64), box, (size, size)).numpy()
    return PersonCrop(image=crop, mask=mask, K=K, box=box)
