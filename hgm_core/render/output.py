"""What every rasterizer backend shares: the output record, the error, the compositing constants.

Its own module so the backends and `api.rasterize`, which picks among them, import it without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Backend = Literal["auto", "numba", "torch", "reference", "gsplat"]

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
