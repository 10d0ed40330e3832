"""Image helpers shared by the turntables, contact sheets and eval figures."""

from __future__ import annotations

import numpy as np
import torch


def image_grid(images: torch.Tensor | np.ndarray, columns: int) -> np.ndarray:
    """`[C, H, W, 3]` floats in [0, 1] (tensor) or uint8 (array) -> one `[rows * H, columns * W, 3]`
    uint8 image, row-major, white where the last row is short."""
    if isinstance(images, torch.Tensor):
        images = (images.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    pixels = np.asarray(images, np.uint8)
    C, H, W, _ = pixels.shape
    rows = -(-C // columns)
    grid = np.full((rows * H, columns * W, 3), 255, np.uint8)
    for i in range(C):
        r, c = divmod(i, columns)
        grid[r * H:(r + 1) * H, c * W:(c + 1) * W] = pixels[i]
    return grid
