"""`rasterize`: the one entry point and backend selection."""

from __future__ import annotations

import torch

from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians
from hgm_core.render.output import Backend, RenderError, RenderOutput

def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can render tensors on `device`, fastest first: gsplat (if installed), the tiled
    torch backend and the dense reference on CUDA; numba and the reference on the CPU."""
    if torch.device(device).type != "cuda":
        return ["numba", "reference"]
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return ["torch", "reference"]
    return ["gsplat", "torch", "reference"]


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
        backend: "auto" picks the first of `available_backends(gaussians.device)`: the Gaussians are
            rendered where they are (move them once, e.g. `gaussians.to("cuda")`, for gsplat).
    Returns:
        `RenderOutput` with batch dimension C. Differentiable w.r.t. every Gaussian parameter
        (for the numba, torch and reference backends).
    """
    if backend == "auto":
        backend = available_backends(gaussians.device)[0]  # type: ignore[assignment]
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
    if backend == "torch":
        from hgm_core.render.torch_tiles import rasterize_torch_tiles

        return rasterize_torch_tiles(gaussians, cameras, bg, near=near, far=far, eps2d=eps2d)
    if backend == "gsplat":
        from hgm_core.render.gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(gaussians, cameras, bg, near=near, far=far, eps2d=eps2d)
    raise RenderError(f"unknown backend {backend!r}; choose from auto, numba, torch, reference, gsplat")
