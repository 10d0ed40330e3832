"""UNet branch: LGM's multi-view UNet (docs/reference/hgm_official_code.md §3.1), same topology and parameter names.

Keeping LGM's names (`conv_in`, `down_blocks.i.nets.j.conv1`, `attns`, `mid_block`, `up_blocks`,
`norm_out`, `conv_out`) makes the official HGM / LGM `unet.*` weights load by identity for `big`.
The view count is passed to `forward` rather than frozen into the modules, so one set of weights
serves the one-view and the two-view network (their parameter shapes are identical).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SKIP_SCALE = math.sqrt(0.5)


class SelfAttention(nn.Module):
    """Multi-head self-attention on tokens `[B, L, C]` (xFormers `MemEffAttention` layout: qkv, proj)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, C/heads]
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class MVAttention(nn.Module):
    """GroupNorm + self-attention over all pixels of all V views of one sample, residual * sqrt(1/2)."""

    def __init__(self, dim: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-5)
        self.attn = SelfAttention(dim, num_heads)

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        """`x [B*V, C, H, W]` -> same shape; tokens of the V views of a sample attend to each other."""
        BV, C, H, W = x.shape
        B = BV // num_views
        t = self.norm(x).reshape(B, num_views, C, H, W).permute(0, 1, 3, 4, 2).reshape(B, num_views * H * W, C)
        t = self.attn(t).reshape(B, num_views, H, W, C).permute(0, 1, 4, 2, 3).reshape(BV, C, H, W)
        return (t + x) * SKIP_SCALE


class ResnetBlock(nn.Module):
    """GN-SiLU-conv3x3-GN-SiLU-conv3x3 plus a 1x1 shortcut when the width changes; sum * sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-5)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, downsample: bool, attention: bool, heads: int, groups: int) -> None:
        super().__init__()
        self.nets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers))
        self.attns = nn.ModuleList(MVAttention(cout, heads, groups) for _ in range(layers)) if attention else None
        self.downsample = nn.Conv2d(cout, cout, 3, 2, 1) if downsample else None

    def forward(self, x: torch.Tensor, num_views: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, net in enumerate(self.nets):
            x = net(x)
            if self.attns is not None:
                x = self.attns[i](x, num_views)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, channels: int, attention: bool, heads: int, groups: int) -> None:
        super().__init__()
        self.nets = nn.ModuleList(ResnetBlock(channels, channels, groups) for _ in range(2))
        self.attns = nn.ModuleList([MVAttention(channels, heads, groups)]) if attention else None

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        x = self.nets[0](x)
        if self.attns is not None:
            x = self.attns[0](x, num_views)
        return self.nets[1](x)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, layers: int, upsample: bool, attention: bool, heads: int, groups: int) -> None:
        super().__init__()
        # Layer i concatenates a skip of width cout, except the last which takes the down path's width.
        self.nets = nn.ModuleList(
            ResnetBlock((cin if i == 0 else cout) + (cskip if i == layers - 1 else cout), cout, groups) for i in range(layers)
        )
        self.attns = nn.ModuleList(MVAttention(cout, heads, groups) for _ in range(layers)) if attention else None
        self.upsample = nn.Conv2d(cout, cout, 3, 1, 1) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], num_views: int) -> torch.Tensor:
        for i, net in enumerate(self.nets):
            x = net(torch.cat((x, skips.pop()), 1))
            if self.attns is not None:
                x = self.attns[i](x, num_views)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class UNet(nn.Module):
    """LGM UNet. `forward(x [B*V, Cin, H, W], V)` -> (out `[B*V, Cout, S, S]`, feats `[B*V, up_channels[-1], S, S]`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        down_channels: tuple[int, ...],
        down_attention: tuple[bool, ...],
        mid_attention: bool,
        up_channels: tuple[int, ...],
        up_attention: tuple[bool, ...],
        layers_per_block: int,
        attention_heads: int,
        norm_groups: int,
    ) -> None:
        super().__init__()
        h, g = attention_heads, norm_groups
        self.conv_in = nn.Conv2d(in_channels, down_channels[0], 3, 1, 1)
        n_down = len(down_channels)
        self.down_blocks = nn.ModuleList(
            DownBlock(down_channels[max(i - 1, 0)], down_channels[i], layers_per_block, i != n_down - 1, down_attention[i], h, g)
            for i in range(n_down)
        )
        self.mid_block = MidBlock(down_channels[-1], mid_attention, h, g)
        self.up_blocks = nn.ModuleList(
            UpBlock(up_channels[max(i - 1, 0)], down_channels[max(-2 - i, -n_down)], up_channels[i], layers_per_block + 1,
                    i != len(up_channels) - 1, up_attention[i], h, g)
            for i in range(len(up_channels))
        )
        self.norm_out = nn.GroupNorm(g, up_channels[-1], eps=1e-5)
        self.conv_out = nn.Conv2d(up_channels[-1], out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, num_views: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, num_views)
            skips.extend(s)
        x = self.mid_block(x, num_views)
        for block in self.up_blocks:
            x = block(x, skips, num_views)  # pops the newest skips it needs
        feats = x
        return self.conv_out(F.silu(self.norm_out(x))), feats
