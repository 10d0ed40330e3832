"""A known floor plane for the body fit: feet on the ground make one image metric.

One image fixes a body's direction and its size-to-distance ratio, not its size. A robot knows where
its floor is in the camera frame (its camera's mounting height and tilt); the pixels where the feet
touch that floor then fix the distance, whatever the person's height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GroundPlane:
    """The floor in the camera's optical frame: `normal . X + offset = 0`, `normal` a unit vector
    pointing up, away from the floor (for a level camera about `(0, -1, 0)`)."""

    normal: torch.Tensor
    offset: float

    def height(self, points: torch.Tensor) -> torch.Tensor:
        """`[...]` signed height (metres) above the floor of camera-frame `points [..., 3]`."""
        return points @ self.normal + self.offset


def ground_plane(plane: np.ndarray) -> GroundPlane:
    """`GroundPlane` from `[a, b, c, d]` with `a x + b y + c z + d = 0` on the floor and `(a, b, c)`
    pointing up (any length).

    Raises:
        ValueError: not four finite numbers, a zero normal, or the camera below the floor
            (`d <= 0`: the camera centre must be above it).
    """
    p = np.asarray(plane, np.float64).reshape(-1)
    if p.shape != (4,) or not np.isfinite(p).all() or np.linalg.norm(p[:3]) < 1e-9:
        raise ValueError(f"ground must be [a, b, c, d] with a nonzero normal, got {np.asarray(plane).tolist()}")
    p = p / np.linalg.norm(p[:3])
    if p[3] <= 0:
        raise ValueError(f"the camera is not above the ground plane {p.tolist()} (its offset d must be > 0)")
    return GroundPlane(torch.tensor(p[:3], dtype=torch.float32), float(p[3]))


def contact_distance_sigma(contact: np.ndarray, plane: GroundPlane, K: np.ndarray, pixel_sigma: float) -> float:
    """How far (metres) the distance of a floor `contact [3]` point moves when its pixel moves by
    `pixel_sigma` along the image column: the distance uncertainty a foot's pixel error gives.
    Grows with the square of the distance and shrinks with the camera's height above the floor."""
    n, d = plane.normal.double().numpy(), plane.offset
    uvw = K @ contact
    u, v = uvw[:2] / uvw[2]
    hits = []
    for dv in (-pixel_sigma, pixel_sigma):
        ray = np.linalg.solve(K, [u, v + dv, 1.0])
        along = -d / float(n @ ray)
        hits.append(np.linalg.norm(ray * along) if along > 0 else np.inf)  # a ray above the horizon never lands
    return float(abs(hits[1] - hits[0]) / 2) if np.isfinite(hits).all() else float("inf")
