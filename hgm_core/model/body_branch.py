"""Body branch pieces (docs/reference/hgm_official_code.md §3.3): vertex projection, feature sampling, token cross-attention,
and the per-vertex Gaussian head.

The body model is only seen through its vertices `[B, Nv, 3]` in the canonical frame; whichever
model produced them (Anny, SMPL-X) fixes Nv and therefore the number of learnable tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hgm_core.camera import project_points


def project_to_grid(points: torch.Tensor, K: torch.Tensor, viewmats: torch.Tensor, image_size: int) -> torch.Tensor:
    """Full perspective projection into each input view, as `grid_sample` coordinates.

    Args:
        points: `[B, P, 3]` canonical xyz.
        K: `[B, V, 3, 3]` intrinsics in input-image pixels (pixel centres at +0.5).
        viewmats: `[B, V, 4, 4]` world-to-camera, OpenCV axes.
        image_size: input resolution (square).
    Returns:
        `[B, V, P, 2]` in [-1, 1] (align_corners=False convention), clamped at the border.
    """
    cam = torch.einsum("bvij,bpj->bvpi", viewmats[..., :3, :3], points) + viewmats[:, :, None, :3, 3]
    uv = project_points(cam, K, min_depth=1e-6)
    return (2 * uv / image_size - 1).clamp(-1, 1)


def sample_views(feature_maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of per-view feature maps.

    Args:
        feature_maps: `[B*V, C, h, w]`.
        grid: `[B, V, P, 2]` from `project_to_grid`.
    Returns:
        `[B, P, V, C]`.
    """
    B, V, P, _ = grid.shape
    s = F.grid_sample(feature_maps, grid.reshape(B * V, P, 1, 2), mode="bilinear", padding_mode="border", align_corners=False)
    return s[..., 0].reshape(B, V, -1, P).permute(0, 3, 1, 2)


class VertexCrossAttention(nn.Module):
    """Each vertex token queries that vertex's V per-view samples (GP-NeRF `MultiHeadAttention`, sum=False).

    Parameter names follow the official `xyzc_attn` (`w_qs`, `w_ks`, `w_vs`, `fc`, all bias-free);
    its unused `layer_norm` is left out. Officially (`token_key=False`) the keys are the V samples
    only: with one view the softmax over a single key is 1, so the output ignores the token and
    `w_qs`, `w_ks` and the tokens get zero gradient. With `token_key=True` the token is one more
    key/value beside the views, so each vertex weighs its learnt prior against what the images show
    (e.g. when it is occluded), for any V. Same parameters either way.
    """

    def __init__(self, dim: int, heads: int, token_key: bool) -> None:
        super().__init__()
        self.heads, self.token_key = heads, token_key
        self.w_qs = nn.Linear(dim, dim, bias=False)
        self.w_ks = nn.Linear(dim, dim, bias=False)
        self.w_vs = nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """`tokens [Nv, C]`, `samples [B, Nv, V, C]` -> `[B, Nv, C]`."""
        if self.token_key:
            samples = torch.cat((tokens.expand(samples.shape[0], -1, -1)[:, :, None], samples), 2)
        B, Nv, V, C = samples.shape
        h, d = self.heads, C // self.heads
        q = self.w_qs(tokens).reshape(1, Nv, h, d)
        k = self.w_ks(samples).reshape(B, Nv, V, h, d)
        v = self.w_vs(samples).reshape(B, Nv, V, h, d)
        attn = torch.softmax(torch.einsum("bnhd,bnvhd->bnhv", q.expand(B, -1, -1, -1), k) / d**0.5, dim=-1)
        return self.fc(torch.einsum("bnhv,bnvhd->bnhd", attn, v).reshape(B, Nv, C))


class BodyGaussianHead(nn.Module):
    """Per-vertex MLP `[xyz (3), feature (C)] -> 14` raw Gaussian channels.

    The official head (`net`) is missing from the release; a 1-D UNet over the vertex index (its
    likely form) would depend on one body model's vertex order, so a point-wise MLP is used.
    """

    def __init__(self, feature_dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(3 + feature_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 14)
        )
        # Start with small offsets so the body Gaussians begin on the body surface.
        with torch.no_grad():
            self.mlp[-1].weight[:3].mul_(0.01)
            self.mlp[-1].bias[:3].zero_()

    def forward(self, vertices: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """`vertices [B, Nv, 3]`, `features [B, Nv, C]` -> raw `[B, Nv, 14]`."""
        return self.mlp(torch.cat((vertices, features), -1))
