"""EWA projection of 3D Gaussians to 2D image-space Gaussians (pure torch, differentiable).

Matches gsplat's `_fully_fused_projection` conventions: covariance `R S S^T R^T`, the perspective
Jacobian with the camera-space mean clamped to 1.3x the field of view (as 3DGS/gsplat do, so
Gaussians far off-screen do not explode), then `eps2d` added to the 2D covariance diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians, quat_to_rotmat


@dataclass(frozen=True)
class Projected:
    """Per camera and Gaussian 2D footprints.

    Attributes:
        means2d: `[C, N, 2]` pixel coordinates (pixel centres at +0.5).
        conics: `[C, N, 3]` upper triangle (a, b, c) of the inverse 2D covariance.
        depths: `[C, N]` camera-space z.
        radii: `[C, N, 2]` integer 3.33-sigma pixel extents (x, y); 0 marks culled Gaussians.
        opacities: `[C, N]` opacity after the low-pass compensation (`antialiased`) or unchanged.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    opacities: torch.Tensor


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """`[N, 4]` quats (w-first) and `[N, 3]` scales -> `[N, 3, 3]` covariances `R S S^T R^T`."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    g: Gaussians,
    cameras: Cameras,
    *,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> Projected:
    """Project Gaussians into every camera (EWA splatting).

    Gaussians behind `near`, beyond `far`, or whose 3-sigma box misses the image get radius 0.
    """
    R = cameras.viewmats[:, :3, :3]  # [C, 3, 3]
    t = cameras.viewmats[:, :3, 3]  # [C, 3]
    mc = torch.einsum("cij,nj->cni", R, g.means) + t[:, None]  # [C, N, 3]
    M = quat_to_rotmat(g.quats) * g.scales[..., None, :]  # [N, 3, 3], covariance = M M^T

    fx, fy = cameras.K[:, 0, 0, None], cameras.K[:, 1, 1, None]
    cx, cy = cameras.K[:, 0, 2, None], cameras.K[:, 1, 2, None]
    W, H = cameras.width, cameras.height
    x, y, z = mc.unbind(-1)
    z_safe = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    # The Jacobian uses the clamped position (3DGS); the mean itself is projected unclamped.
    tan_x, tan_y = 0.5 * W / fx, 0.5 * H / fy
    lim_x_pos, lim_x_neg = (W - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (H - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = z_safe * torch.minimum(torch.maximum(x / z_safe, -lim_x_neg), lim_x_pos)
    ty = z_safe * torch.minimum(torch.maximum(y / z_safe, -lim_y_neg), lim_y_pos)
    # cov2d = (J R M)(J R M)^T with J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]. Written
    # row by row on [C, N, 3] tensors: batched 3x3 matmuls are several times slower on CPU.
    rows_x = (fx / z_safe)[..., None] * R[:, None, 0] - (fx * tx / z_safe**2)[..., None] * R[:, None, 2]  # (J R)[0]
    rows_y = (fy / z_safe)[..., None] * R[:, None, 1] - (fy * ty / z_safe**2)[..., None] * R[:, None, 2]  # (J R)[1]
    u_x = rows_x[..., 0:1] * M[:, 0] + rows_x[..., 1:2] * M[:, 1] + rows_x[..., 2:3] * M[:, 2]  # (J R M)[0]
    u_y = rows_y[..., 0:1] * M[:, 0] + rows_y[..., 1:2] * M[:, 1] + rows_y[..., 2:3] * M[:, 2]  # (J R M)[1]
    a0, b, c0 = (u_x * u_x).sum(-1), (u_x * u_y).sum(-1), (u_y * u_y).sum(-1)
    det_orig = a0 * c0 - b * b
    a, c = a0 + eps2d, c0 + eps2d
    det = a * c - b * b
    det_safe = det.clamp_min(1e-12)
    conics = torch.stack((c / det_safe, -b / det_safe, a / det_safe), -1)
    opac = g.opacities.expand_as(z)
    if antialiased:
        opac = opac * torch.sqrt((det_orig / det_safe).clamp_min(0))

    means2d = torch.stack((fx * x / z_safe + cx, fy * y / z_safe + cy), -1)
    # Per-axis 3.33-sigma extents, as gsplat 1.5 (a box, not a circle).
    rx = torch.ceil(3.33 * torch.sqrt(a.clamp_min(0))).detach()
    ry = torch.ceil(3.33 * torch.sqrt(c.clamp_min(0))).detach()
    u, v = means2d.detach().unbind(-1)
    visible = (
        (z > near) & (z < far) & (det > 0)
        & (u + rx > 0) & (u - rx < W) & (v + ry > 0) & (v - ry < H)
    )
    radii = torch.where(visible[..., None], torch.stack((rx, ry), -1), 0).to(torch.int32)
    return Projected(means2d, conics, z, radii, opac)
