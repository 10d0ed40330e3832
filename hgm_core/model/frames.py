"""HGM's canonical frame <-> the input camera's optical frame (docs/architecture.md §3; docs/reference/hgm_official_code.md §1.1).

Canonical frame: OpenGL axes (y up), the input camera at `(0, 0, 1.5)` with identity rotation,
looking down -z at the origin; the origin is the *look-at point*. HGM's training renders put the
camera 2.0 m from the look-at point, so one canonical unit is 1/0.75 m there. For a live camera
the body fit fixes the look-at point in metres (e.g. the body's centre along the optical axis);
scaling the scene about the camera centre does not change the image, so
`metres_per_unit = distance / 1.5` keeps the canonical camera consistent with the real one.

    x_optical = metres_per_unit * R @ GL_FROM_CV @ (x_canonical - (0, 0, 1.5))

`R` rotates the virtual camera (whose optical axis passes through the look-at point) into the real
camera's optical axes; it is the identity when the look-at point is on the optical axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hgm_core.camera import CANONICAL_CAM_RADIUS, GL_FROM_CV, look_at
from hgm_core.gaussians import Gaussians

HGM_TRAIN_DISTANCE = 2.0
"""Metres from the camera to the look-at point in HGM's training renders (1.5 / 2.0 = 0.75)."""


class FrameError(ValueError):
    """Raised for a degenerate canonical frame (look-at point at or behind the camera)."""


@dataclass(frozen=True)
class CanonicalFrame:
    """Similarity from the canonical frame to the input camera's optical frame (metres).

    Attributes:
        metres_per_unit: metres per canonical unit (> 0).
        rotation: `[3, 3]` virtual-camera optical axes -> real optical axes (identity by default).
    """

    metres_per_unit: float
    rotation: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.metres_per_unit > 0:
            raise FrameError(f"metres_per_unit must be > 0, got {self.metres_per_unit}")

    @staticmethod
    def from_look_at(look_at_optical: torch.Tensor | tuple[float, float, float]) -> "CanonicalFrame":
        """The frame whose origin is `look_at_optical [3]` (metres, optical frame, in front of the camera)."""
        p = torch.as_tensor(look_at_optical, dtype=torch.float64)
        dist = float(p.norm())
        if p.shape != (3,) or dist <= 0 or float(p[2]) <= 0:
            raise FrameError(f"look-at point must be 3 values in front of the camera (z > 0), got {p.tolist()}")
        # OpenGL pose of a camera at the optical origin looking at p with "up" = -y (optical y points down).
        c2w_gl = look_at(torch.zeros(3, dtype=torch.float64), p, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
        rotation = c2w_gl[:3, :3] @ GL_FROM_CV.double()  # virtual optical axes -> real optical axes
        return CanonicalFrame(dist / CANONICAL_CAM_RADIUS, rotation)

    @staticmethod
    def at_distance(distance_m: float = HGM_TRAIN_DISTANCE) -> "CanonicalFrame":
        """Look-at point on the optical axis `distance_m` ahead (HGM training: 2.0 m, units = metres * 0.75)."""
        return CanonicalFrame.from_look_at((0.0, 0.0, distance_m))

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`[4, 4]` homogeneous canonical -> optical similarity."""
        R = (torch.eye(3, dtype=torch.float64) if self.rotation is None else self.rotation.double()) @ GL_FROM_CV.double()
        M = torch.eye(4, dtype=torch.float64)
        M[:3, :3] = self.metres_per_unit * R
        M[:3, 3] = -self.metres_per_unit * R @ torch.tensor([0.0, 0.0, CANONICAL_CAM_RADIUS], dtype=torch.float64)
        return M.to(dtype)


def canonical_to_optical_points(points: torch.Tensor, frame: CanonicalFrame) -> torch.Tensor:
    """`[..., 3]` canonical -> optical-frame metres."""
    M = frame.matrix(points.dtype).to(points.device)
    return points @ M[:3, :3].T + M[:3, 3]


def optical_to_canonical_points(points: torch.Tensor, frame: CanonicalFrame) -> torch.Tensor:
    """`[..., 3]` optical-frame metres (e.g. fitted body vertices) -> canonical (network input)."""
    M = torch.linalg.inv(frame.matrix(torch.float64)).to(device=points.device, dtype=points.dtype)
    return points @ M[:3, :3].T + M[:3, 3]


def canonical_to_optical(gaussians: Gaussians, frame: CanonicalFrame) -> Gaussians:
    """Network Gaussians (canonical) -> the input camera's optical frame in metres (what is published)."""
    M = frame.matrix(torch.float64)
    R = M[:3, :3] / frame.metres_per_unit
    return gaussians.transform(R.to(gaussians.dtype), M[:3, 3].to(gaussians.dtype), frame.metres_per_unit)
