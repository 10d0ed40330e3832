"""`rasterize`: the one entry point; backend selection and the shared output type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians

Backend = Literal["auto", "numba", "reference", "gsplat"]

ALPHA_MIN = 1.0 / 255.0
"""Splat contributions below this alpha are skipped (3DGS / gsplat)."""
ALPHA_MAX = 0.99
"""Per-splat alpha is clamped here so transmittance never reaches exactly zero (3DGS / gsplat)."""
T_MIN = 1e-4
"""Compositing stops once the transmittance falls below this (early termination)."""


@dataclass(frozen=True)
class RenderOutput:
    """Images for C cameras.

    Attributes:
        rgb: `[C, H, W, 3]` colours composited over the background.
        alpha: `[C, H, W, 1]` accumulated opacity.
        depth: `[C, H, W, 1]` expected camera depth `sum(w z) / alpha` (0 where alpha is 0).
        median_depth: `[C, H, W, 1]` depth of the splat where transmittance crosses 0.5, or None
            when the backend does not provide it.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    median_depth: torch.Tensor | None = None


class RenderError(RuntimeError):
    """Raised when a backend cannot run here (e.g. gsplat without CUDA) or gets bad arguments."""


def available_backends() -> list[str]:
    """Backends that can run on this machine, fastest first."""
    out = []
    if torch.cuda.is_available():
        try:
            import gsplat  # noqa: F401

            out.append("gsplat")
        except ImportError:
            pass
    return out + ["numba", "reference"]


def rasterize(
    gaussians: Gaussians,
    cameras: Cameras,
    *,
    background: torch.Tensor | tuple[float, float, float] | None = None,
    backend: Backend = "auto",
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> RenderOutput:
    """Render `gaussians` from every camera in `cameras`.

    Args:
        gaussians: N Gaussians in world coordinates (activated values).
        cameras: C cameras sharing `width x height`; `viewmats` world-to-camera in OpenCV axes.
        background: `[3]` RGB in [0, 1] (default black).
        backend: "auto" picks the first of `available_backends()`.
    Returns:
        `RenderOutput` with batch dimension C. Differentiable w.r.t. every Gaussian parameter
        (for the numba and reference backends).
    """
    if backend == "auto":
        backend = available_backends()[0]  # type: ignore[assignment]
    dtype, device = gaussians.dtype, gaussians.device
    bg = torch.zeros(3, dtype=dtype, device=device) if background is None else torch.as_tensor(background, dtype=dtype, device=device)
    if bg.shape != (3,):
        raise RenderError(f"background must be 3 values, got shape {list(bg.shape)}")
    cameras = cameras.to(device=device, dtype=dtype)
    if backend == "reference":
        from hgm_core.render.reference import rasterize_dense

        return rasterize_dense(gaussians, cameras, bg, near=near, far=far, eps2d=eps2d)
    if backend == "numba":
        from hgm_core.render.tiled import rasterize_tiled

        return rasterize_tiled(gaussians, cameras, bg, near=near, far=far, eps2d=eps2d)
    if backend == "gsplat":
        from hgm_core.render.gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(gaussians, cameras, bg, near=near, far=far, eps2d=eps2d)
    raise RenderError(f"unknown backend {backend!r}; choose from auto, numba, reference, gsplat")
