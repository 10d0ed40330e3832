"""Fusion transformer ("Trmix"): self-attention over the UNet Gaussians with their body-volume features.

The official fusion network (`res`, docs/reference/hgm_official_code.md §3.5) is a 108 M-parameter 1-D conv UNet whose
attention tokenises with a raw reshape (a bug). Here the Gaussians stay tokens: each is embedded
from `[xyz (3) | UNet feature | sparse-volume feature]`, then pre-norm transformer blocks attend
within square windows of the per-view splat map (Swin style: odd blocks shift the windows by half
a window, wrapping at the map border), so 65,536 tokens per view cost O(N * window^2) memory. Windows
are fed to `scaled_dot_product_attention` `chunk` at a time to bound peak memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: bool, chunk: int) -> None:
        super().__init__()
        self.heads, self.window, self.shift, self.chunk = heads, window, shift, chunk
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, V, S, S, D]` -> same shape."""
        B, V, S, _, D = x.shape
        w, n = self.window, S // self.window
        if self.shift:
            x = torch.roll(x, (-w // 2, -w // 2), dims=(2, 3))
        win = x.reshape(B * V, n, w, n, w, D).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, D)  # [windows, w*w, D]
        qkv = self.qkv(win).reshape(win.shape[0], w * w, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = torch.cat(
            [F.scaled_dot_product_attention(*(t[i : i + self.chunk] for t in qkv)) for i in range(0, win.shape[0], self.chunk)]
        )  # [windows, heads, w*w, D/heads]
        out = self.proj(out.transpose(1, 2).reshape(-1, w * w, D))
        out = out.reshape(B * V, n, n, w, w, D).permute(0, 1, 3, 2, 4, 5).reshape(B, V, S, S, D)
        if self.shift:
            out = torch.roll(out, (w // 2, w // 2), dims=(2, 3))
        return out


class FusionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: bool, chunk: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, shift, chunk)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FusionTransformer(nn.Module):
    """`tokens [B, V*S*S, in_dim]` (view-major, row-major) -> raw `[B, V*S*S, 14]`."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, window: int, chunk: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(FusionBlock(dim, heads, window, i % 2 == 1, chunk) for i in range(depth))
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 14)
        with torch.no_grad():  # the merged xyz starts as the UNet xyz
            self.head.weight[:3].mul_(0.01)
            self.head.bias[:3].zero_()

    def forward(self, tokens: torch.Tensor, num_views: int) -> torch.Tensor:
        B, N, _ = tokens.shape
        S = int(round((N // num_views) ** 0.5))
        x = self.embed(tokens).reshape(B, num_views, S, S, -1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_out(x)).reshape(B, N, 14)
