"""The `numba` backend: tiled CPU rasterizer, differentiable w.r.t. every Gaussian parameter.

When a gradient is needed, projection (and its gradient) is plain torch autograd
(`project_gaussians`); otherwise a fused numba kernel does the same arithmetic in one pass.
Depth sorting, tile binning, compositing and the compositing backward are numba kernels
(`_tile_kernels`) wrapped in one `torch.autograd.Function`. The kernels run on numba's thread
count, which `hgm_core.runtime.set_compute_threads` sets together with torch's.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians
import hgm_core.render._tile_kernels as K
from hgm_core.render.output import RenderError, RenderOutput
from hgm_core.render.projection import Projected, project_gaussians

_PARAMS = ("means", "quats", "scales", "opacities", "colors")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Composite(torch.autograd.Function):
    """Tile compositing of projected splats; returns (color_sum, depth_sum, T_final, median)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, depths, radii, width, height):
        C, N = depths.shape
        packed, offsets, ids, order = K.prepare(
            _np(means2d), _np(conics), _np(opacities), _np(depths), _np(colors), _np(radii), width, height
        )
        color_sum, depth_sum, t_final, last, median = K.rasterize_fwd(packed, offsets, ids, width, height, C)
        ctx.kernel_args = (packed, offsets, ids, width, height, C, t_final, last)
        ctx.order = torch.from_numpy(order)
        median = torch.from_numpy(median)
        ctx.mark_non_differentiable(median)
        return torch.from_numpy(color_sum), torch.from_numpy(depth_sum), torch.from_numpy(t_final), median

    @staticmethod
    def backward(ctx, g_color, g_depth, g_t, _g_median):
        packed, offsets, ids = ctx.kernel_args[:3]
        C, N = ctx.order.shape
        isect = K.rasterize_bwd(*ctx.kernel_args, _np(g_color), _np(g_depth), _np(g_t))
        by_rank = torch.zeros(C * N, K.N_GRAD, dtype=g_color.dtype)
        by_rank.index_add_(0, torch.from_numpy(ids), torch.from_numpy(isect))
        # Packed rows are in depth order; scatter them back to the callers' splat order.
        per_splat = torch.zeros(C, N, K.N_GRAD, dtype=g_color.dtype)
        per_splat.scatter_(1, ctx.order[..., None].expand(C, N, K.N_GRAD), by_rank.reshape(C, N, K.N_GRAD))
        g_means2d, g_conics, g_opac = per_splat[..., 0:2], per_splat[..., 2:5], per_splat[..., 5]
        g_colors, g_depths = per_splat[..., 6:9].sum(0), per_splat[..., 9]
        return g_means2d, g_conics, g_opac, g_colors, g_depths, None, None, None


def rasterize_tiled(
    g: Gaussians, cameras: Cameras, background: torch.Tensor, *, near: float, far: float, eps2d: float
) -> RenderOutput:
    """Tiled CPU rendering; see `hgm_core.render.rasterize` for the arguments and conventions."""
    if g.device.type != "cpu":
        raise RenderError(f"the numba backend runs on CPU; got Gaussians on {g.device}")
    if g.dtype not in (torch.float32, torch.float64):
        raise RenderError(f"the numba backend renders float32 or float64, got {g.dtype}")
    needs_grad = torch.is_grad_enabled() and any(getattr(g, k).requires_grad for k in _PARAMS)
    if needs_grad or cameras.K.requires_grad or cameras.viewmats.requires_grad:
        proj = project_gaussians(g, cameras, near=near, far=far, eps2d=eps2d)
    else:  # the fused kernel: one pass instead of ~70 torch ops on [C, N] tensors
        means2d, conics, depths, radii = (torch.from_numpy(x) for x in K.project(
            _np(g.means), _np(g.quats), _np(g.scales), _np(cameras.viewmats), _np(cameras.K),
            cameras.width, cameras.height, near, far, eps2d))
        proj = Projected(means2d, conics, depths, radii, g.opacities.expand_as(depths))
    color_sum, depth_sum, t_final, median = _Composite.apply(
        proj.means2d, proj.conics, proj.opacities, g.colors, proj.depths, proj.radii, cameras.width, cameras.height
    )
    alpha = 1 - t_final
    rgb = color_sum + t_final[..., None] * background
    depth = torch.where(alpha > 0, depth_sum / alpha.clamp_min(1e-10), torch.zeros_like(alpha))
    return RenderOutput(rgb, alpha[..., None], depth[..., None], median[..., None])


def compile_kernels(force: bool = False) -> str:
    """Compile (or load from the on-disk cache) the float32 kernels: forward, backward, fused projection.

    `hgm setup` runs this once so the first render of a session does not pay numba's compile time.
    `force` is accepted for the setup-step interface; numba recompiles by itself when the source changes.
    """
    from dataclasses import replace

    from hgm_core.camera import orbit_cameras

    gen = torch.Generator().manual_seed(0)
    g = Gaussians(
        means=torch.randn(64, 3, generator=gen) * 0.2,
        quats=torch.nn.functional.normalize(torch.randn(64, 4, generator=gen), dim=-1),
        scales=torch.full((64, 3), 0.03),
        opacities=torch.full((64,), 0.8),
        colors=torch.rand(64, 3, generator=gen),
    )
    cams = orbit_cameras(32, 32, n_views=1)
    with torch.no_grad():
        rasterize_tiled(g, cams, torch.ones(3), near=0.01, far=1e10, eps2d=0.3)
    means = g.means.clone().requires_grad_()
    rasterize_tiled(replace(g, means=means), cams, torch.ones(3), near=0.01, far=1e10, eps2d=0.3).rgb.sum().backward()
    return f"ready (cache: {numba.config.CACHE_DIR})"
