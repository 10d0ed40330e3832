"""The `gsplat` backend: `gsplat.rasterization` (CUDA) with the conventions of the other backends.

Same inputs (world-to-camera viewmats in OpenCV axes, pixel centres at +0.5, EWA with `eps2d`,
classic rasterization without opacity compensation), same outputs (colour over the background,
accumulated alpha, expected depth). Differences that stay: gsplat clamps a splat's alpha at 0.999
(our CPU backends at 0.99, as 3DGS) and has no median depth here (`median_depth` is None).
"""

from __future__ import annotations

import torch

from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians
from hgm_core.render.output import RenderError, RenderOutput


def rasterize_gsplat(
    g: Gaussians, cameras: Cameras, background: torch.Tensor, *, near: float, far: float, eps2d: float
) -> RenderOutput:
    """Render with gsplat's CUDA kernels; see `hgm_core.render.rasterize` for the arguments."""
    if not torch.cuda.is_available():
        raise RenderError("the gsplat backend needs CUDA (gsplat's kernels have no CPU build); use backend='numba'")
    try:
        from gsplat import rasterization
    except ImportError as e:
        raise RenderError(f"the gsplat backend needs the `gsplat` package (pip install 'hgm[gsplat]'): {e}") from e
    if g.device.type != "cuda":
        raise RenderError(f"the gsplat backend renders CUDA tensors; move the Gaussians with .to('cuda') (got {g.device})")
    C = len(cameras)
    image, alpha, _ = rasterization(
        means=g.means,
        quats=g.quats,
        scales=g.scales,
        opacities=g.opacities,
        colors=g.colors,
        viewmats=cameras.viewmats,
        Ks=cameras.K,
        width=cameras.width,
        height=cameras.height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        backgrounds=background.expand(C, 3),
        render_mode="RGB+ED",
        packed=False,
        rasterize_mode="classic",
    )
    # gsplat returns depth 0-ish where alpha is 0 (sum / 1e-10 of zeros); make it exactly 0 like the others.
    depth = torch.where(alpha > 0, image[..., 3:4], torch.zeros_like(alpha))
    return RenderOutput(image[..., :3], alpha, depth, None)
