"""Aligned depth images for the body fit (RGB-D cameras): usable pixels, visible-surface residuals,
and a sensor model to test with.

A depth image makes the fit metric: one image fixes a body's
direction and its size-to-distance ratio, the depth of its visible surface fixes the distance.
Depth images are `[H, W]`, aligned with the colour image (same intrinsics), holding camera z:
float metres (32FC1) or uint16 millimetres (16UC1); 0, NaN and inf mean "no measurement".
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


def depth_metres(depth: np.ndarray) -> np.ndarray:
    """`[H, W]` float32 metres, 0 where there is no measurement, from 16UC1 millimetres or float metres."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an [H, W] image, got shape {list(depth.shape)}")
    if depth.dtype == np.uint16:
        return depth.astype(np.float32) / 1000.0
    if not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(f"depth must be uint16 millimetres or float metres, got {depth.dtype}")
    out = depth.astype(np.float32)
    out[~np.isfinite(out) | (out < 0)] = 0.0
    return out


@dataclass(frozen=True)
class DepthTarget:
    """The usable depth of one person.

    Attributes:
        depth: `[1, 1, H, W]` metres, 0 where unusable.
        usable: `[1, 1, H, W]` 1.0 where usable: on the person mask away from its outline (edge
            pixels mix the person with the background), measured, and near the person's median
            depth (background and flying pixels that the mask let through are not the person).
        median: the median usable depth (metres).
        count: number of usable pixels.
    """

    depth: torch.Tensor
    usable: torch.Tensor
    median: float
    count: int


def depth_target(depth_m: np.ndarray, mask: np.ndarray, *, edge_px: int = 3, max_offset_m: float = 0.6) -> DepthTarget | None:
    """Usable depth of the person `mask [H, W]` in `depth_m [H, W]` (metres), or None when fewer
    than 50 pixels are usable (no depth on the person: the fit stays monocular).

    Args:
        edge_px: pixels of the mask's outline that are ignored.
        max_offset_m: pixels further than this from the person's median depth are ignored (a
            person is well under 1.2 m deep).
    """
    if depth_m.shape != mask.shape:
        raise ValueError(f"depth {list(depth_m.shape)} and mask {list(mask.shape)} must be the same size")
    inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * edge_px + 1,) * 2, np.uint8)) > 0
    measured = inner & (depth_m > 0)
    if measured.sum() < 50:
        return None
    median = float(np.median(depth_m[measured]))
    usable = measured & (np.abs(depth_m - median) < max_offset_m)
    if usable.sum() < 50:
        return None
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)[None, None]  # noqa: E731
    return DepthTarget(t(np.where(usable, depth_m, 0.0)), t(usable), median, int(usable.sum()))


def visible(points: torch.Tensor, uv: torch.Tensor, cell_px: float, thickness_m: float) -> torch.Tensor:
    """`[N]` bool: which of the camera-frame surface samples `points [N, 3]` (pixels `uv [N, 2]`)
    face the camera unoccluded: within `thickness_m` of the nearest sample in their `cell_px`
    image cell (a coarse z-buffer of the samples themselves; no gradient)."""
    with torch.no_grad():
        cell = torch.floor(uv / cell_px).long()
        cell = cell - cell.min(0).values
        key = cell[:, 1] * (int(cell[:, 0].max()) + 1) + cell[:, 0]
        z = points[:, 2]
        nearest = torch.full((int(key.max()) + 1,), float("inf")).scatter_reduce(0, key, z, reduce="amin")
        return z <= nearest[key] + thickness_m


def surface_residuals(points: torch.Tensor, uv: torch.Tensor, target: DepthTarget, show: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Measured minus model depth (metres) `[M]` and each one's weight `[M]` in (0, 1] at the samples
    `show` (`[N]` bool) with usable depth at any bilinear neighbour: the measurement is the bilinear
    mean over the usable neighbours, and the weight their bilinear share, so a sample sliding onto a
    hole or the mask's edge fades out instead of dropping out. Differentiable in `points` and `uv`."""
    h, w = target.depth.shape[-2:]
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1)[None, None]
    sample = lambda img: torch.nn.functional.grid_sample(img, grid, align_corners=False)[0, 0, 0]  # noqa: E731
    share = sample(target.usable)
    keep = show & (share > 1e-3)
    return sample(target.depth)[keep] / share[keep] - points[keep, 2], share[keep]


def simulate_sensor(depth_m: np.ndarray, rng: np.random.Generator, *, dropout: float = 0.03, edge_px: int = 2) -> np.ndarray:
    """A consumer RGB-D camera's view of a perfect depth image `depth_m [H, W]` (metres, 0 = none),
    as 16UC1 millimetres: axial noise growing with distance (sigma = 1.2 mm + 1.9 mm (z - 0.4 m)^2 / m^2),
    no return on depth discontinuities (`edge_px` wide, where structured light and ToF both fail),
    `dropout` of the remaining pixels missing in small blobs, and millimetre quantisation."""
    z = depth_m.astype(np.float64)
    valid = z > 0
    sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
    noisy = z + rng.normal(0.0, 1.0, z.shape) * sigma
    # Discontinuities: a neighbour more than 5 cm away in depth (or no surface at all).
    near = np.where(valid, z, 1e3).astype(np.float32)
    grown = cv2.dilate(near, np.ones((2 * edge_px + 1,) * 2, np.float32))
    shrunk = cv2.erode(near, np.ones((2 * edge_px + 1,) * 2, np.float32))
    edge = (grown - shrunk) > 0.05
    blobs = cv2.dilate((rng.random(z.shape) < dropout / 9).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    keep = valid & ~edge & ~blobs
    return np.where(keep, np.clip(np.round(noisy * 1000.0), 1, 65535), 0).astype(np.uint16)
