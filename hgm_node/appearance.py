"""How well the posed avatar still looks like the camera frame (live mode's drift check, issue #12).

Pure numpy (the node never imports torch). The avatar's raw rows, posed in the camera's optical
frame, are projected onto a coarse grid of the image (`cell_px` cells); in each cell the nearest
opaque Gaussian stands for the avatar's front surface there. Its colour (SH degree 0) is compared
with the frame's mean colour in the cell, over the cells inside the avatar's footprint (cells with
all four neighbours covered, so the silhouette's edge, half background, does not count). The
median of those differences is the frame's *appearance error*; live mode compares it with the
error of the keyframe's own avatar on the keyframe's frame, so the network's own colour bias
cancels and what remains is drift: the person turned or changed clothes, the light changed, or
the pose no longer lines the avatar up with the body.
"""

from __future__ import annotations

import numpy as np

from hgm_core.layout import SH_C0

MIN_CELLS = 8
"""Fewer inner cells than this (a tiny or off-screen avatar) give no error."""


def appearance_error(raw: np.ndarray, image: np.ndarray, K: np.ndarray, *, cell_px: int = 8,
                     min_opacity: float = 0.5) -> float | None:
    """Median colour difference (mean absolute RGB difference in [0, 1]) between the avatar's
    front surface and the frame, per inner grid cell of the avatar's footprint (module docstring).

    Args:
        raw: `[N, 14]` float32 raw rows (`hgm_core.layout`), posed, in the frame's optical frame.
        image: `[H, W, 3]` uint8 RGB frame.
        K: `[3, 3]` pixel intrinsics of `image`.
        cell_px: grid cell size in pixels.
        min_opacity: Gaussians below this opacity do not stand for the surface.
    Returns:
        The error, or None when fewer than `MIN_CELLS` inner cells are covered.
    """
    h, w = image.shape[:2]
    rows, cols = h // cell_px, w // cell_px
    xyz, opacity = raw[:, :3], 1.0 / (1.0 + np.exp(-raw[:, 6]))
    keep = (xyz[:, 2] > 1e-3) & (opacity >= min_opacity)
    xyz, colour = xyz[keep], np.clip(0.5 + SH_C0 * raw[keep, 3:6], 0.0, 1.0)
    z = xyz[:, 2]
    u = (K[0, 0] * xyz[:, 0] + K[0, 1] * xyz[:, 1]) / z + K[0, 2]  # continuous pixel coordinates
    v = K[1, 1] * xyz[:, 1] / z + K[1, 2]
    c, r = np.floor(u / cell_px).astype(np.int64), np.floor(v / cell_px).astype(np.int64)
    inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
    cell, z, colour = (r * cols + c)[inside], z[inside], colour[inside]
    order = np.lexsort((z, cell))  # by cell, nearest first
    first = np.ones(len(order), bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    front = order[first]
    grid = np.full((rows, cols, 3), np.nan, np.float32)
    grid.reshape(-1, 3)[cell[front]] = colour[front]
    covered = ~np.isnan(grid[..., 0])
    inner = covered.copy()
    inner[1:] &= covered[:-1]
    inner[:-1] &= covered[1:]
    inner[:, 1:] &= covered[:, :-1]
    inner[:, :-1] &= covered[:, 1:]
    inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
    if inner.sum() < MIN_CELLS:
        return None
    cells = image[: rows * cell_px, : cols * cell_px].reshape(rows, cell_px, cols, cell_px, 3).transpose(0, 2, 1, 3, 4)
    means = cells[inner].mean(axis=(1, 2)) / 255.0  # [M, 3]
    return float(np.median(np.abs(grid[inner] - means).mean(-1)))
