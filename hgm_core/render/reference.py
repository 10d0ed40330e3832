"""Dense reference rasterizer: every Gaussian against every pixel, exact depth order, plain torch.

O(C * N * H * W) memory and time — the readable ground truth the fast backends are tested
against, not something to render people with.
"""

from __future__ import annotations

import torch

from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians
from hgm_core.render.output import ALPHA_MAX, ALPHA_MIN, T_MIN, RenderOutput
from hgm_core.render.projection import project_gaussians


def splat_alpha(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """Per-splat alpha at pixel centres (leading batch dims `...` broadcast, e.g. tiles).

    Args:
        means2d: `[..., N, 2]`, conics: `[..., N, 3]`, opacities: `[..., N]`, pix: `[..., P, 2]` pixel centres.
    Returns:
        `[..., N, P]` alpha, clamped to `ALPHA_MAX` and zeroed below `ALPHA_MIN` (gsplat semantics).
    """
    d = pix[..., None, :, :] - means2d[..., :, None, :]  # [..., N, P, 2]
    a, b, c = conics[..., 0:1], conics[..., 1:2], conics[..., 2:3]
    sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = (opacities[..., None] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    return torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))


def composite(alpha: torch.Tensor, colors: torch.Tensor, depths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Front-to-back compositing of depth-sorted splats (leading batch dims `...`, e.g. tiles).

    Args:
        alpha: `[..., N, P]` (front first), colors: `[..., N, 3]`, depths: `[..., N]`.
    Returns:
        rgb `[..., P, 3]` (no background), accumulated alpha `[..., P]`, sum(w z) `[..., P]`,
        median depth `[..., P]`.
    """
    ones = torch.ones_like(alpha[..., :1, :])
    T = torch.cumprod(torch.cat((ones, 1 - alpha[..., :-1, :]), -2), -2)  # transmittance before each splat
    # Early termination (exclusive, as gsplat): a splat is skipped once the transmittance *after* it
    # would fall to T_MIN, and so is every splat behind it.
    w = torch.where(T * (1 - alpha) > T_MIN, alpha * T, torch.zeros_like(alpha))
    rgb = w.transpose(-1, -2) @ colors
    acc = w.sum(-2)
    depth_sum = (w.transpose(-1, -2) @ depths[..., None])[..., 0]
    crossed = (T * (1 - alpha) < 0.5) & (w > 0)
    # argmax returns the first maximum: the first splat after which transmittance is below 0.5.
    first = torch.where(crossed.any(-2), crossed.float().argmax(-2), torch.full_like(acc, -1, dtype=torch.long))
    median = torch.where(first >= 0, depths.gather(-1, first.clamp_min(0)), torch.zeros_like(acc))
    return rgb, acc, depth_sum, median


def rasterize_dense(
    g: Gaussians, cameras: Cameras, background: torch.Tensor, *, near: float, far: float, eps2d: float
) -> RenderOutput:
    proj = project_gaussians(g, cameras, near=near, far=far, eps2d=eps2d)
    H, W = cameras.height, cameras.width
    v, u = torch.meshgrid(
        torch.arange(H, dtype=g.dtype, device=g.device), torch.arange(W, dtype=g.dtype, device=g.device), indexing="ij"
    )
    pix = torch.stack((u, v), -1).reshape(-1, 2) + 0.5
    outs = []
    for ci in range(len(cameras)):
        keep = (proj.radii[ci] > 0).all(-1)
        order = torch.argsort(proj.depths[ci][keep])
        idx = keep.nonzero().squeeze(1)[order]
        alpha = splat_alpha(proj.means2d[ci, idx], proj.conics[ci, idx], proj.opacities[ci, idx], pix)
        rgb, acc, dsum, med = composite(alpha, g.colors[idx], proj.depths[ci, idx])
        rgb = rgb + (1 - acc)[:, None] * background
        depth = torch.where(acc > 0, dsum / acc.clamp_min(1e-10), torch.zeros_like(acc))
        outs.append((rgb.reshape(H, W, 3), acc.reshape(H, W, 1), depth.reshape(H, W, 1), med.reshape(H, W, 1)))
    rgb, alpha, depth, median = (torch.stack(x) for x in zip(*outs))
    return RenderOutput(rgb, alpha, depth, median)
