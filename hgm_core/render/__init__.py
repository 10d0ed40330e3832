"""Gaussian rasterization: one public entry point, `rasterize`, over interchangeable backends.

Backends share conventions (pinhole `Cameras` with OpenCV optical axes, EWA projection with a
0.3 px² low-pass, front-to-back alpha compositing sorted by camera depth, colours composited over
`background`):
- `reference`: dense, every Gaussian x every pixel, plain torch. Readable and exact; only for tiny scenes.
- `numba`: the tiled CPU renderer (numba kernels under torch autograd, differentiable); the default on CPU.
- `torch`: tiled, in plain torch ops on any device (autograd); the default on CUDA without gsplat.
- `gsplat`: `gsplat.rasterization` (needs CUDA).
"""

from hgm_core.render.api import available_backends, rasterize
from hgm_core.render.output import RenderError, RenderOutput
from hgm_core.render.projection import project_gaussians

__all__ = ["RenderError", "RenderOutput", "available_backends", "project_gaussians", "rasterize"]
