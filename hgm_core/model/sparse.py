"""Sparse 3D volume of the body branch (docs/reference/hgm_official_code.md §3.4): voxelise, SparseConvNet, sample.

The convolutions are implemented here in plain torch (gather of the 27 neighbours + one matmul)
instead of calling spconv: spconv 2.3.8's CPU forward is silently wrong with more than one torch
thread, its backward needs monkey-patching (docs/reference/environment.md), and on this machine its
Native CPU results disagree with dense conv3d even on one thread (`tests/test_model_sparse.py`
keeps a strict xfail for it). The layers keep spconv's semantics and weight layout —
`[out, kD, kH, kW, in]` ("KRSC"), bias-free, SubM outputs exactly at the input's active sites, a
stride-2 conv (k 3, pad 1) activates every output whose 3^3 window touches an active input — so
official `xyzc_net.*` weights load by identity. The tests check forward and backward of both layers
against the equivalent dense, masked `conv3d` (weight permuted to `[out, in, kD, kH, kW]`).

Coordinates are integer `(batch, d, h, w)` with `(d, h, w) = (z, y, x)` voxel indices, as in the
official code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 3
_OFFSETS = torch.stack(
    torch.meshgrid(*(torch.arange(KERNEL),) * 3, indexing="ij"), -1
).reshape(-1, 3)  # [27, 3] (kd, kh, kw) in the weight's kernel order


@dataclass
class SparseVolume:
    """Active voxels of a batch of grids.

    Attributes:
        features: `[M, C]`.
        coords: `[M, 4]` int64 `(b, d, h, w)`, sorted by `keys` and unique.
        shape: spatial grid size `(D, H, W)` shared by the batch.
        batch_size: B.
    """

    features: torch.Tensor
    coords: torch.Tensor
    shape: tuple[int, int, int]
    batch_size: int
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def keys(self) -> torch.Tensor:
        """`[M]` int64 linear index of each voxel in the `[B, D, H, W]` grid (sorted ascending)."""
        if "keys" not in self._cache:
            self._cache["keys"] = linear_keys(self.coords, self.shape)
        return self._cache["keys"]

    def with_features(self, features: torch.Tensor) -> "SparseVolume":
        """Same sites (sharing the neighbour cache), new `[M, C']` features."""
        return SparseVolume(features, self.coords, self.shape, self.batch_size, self._cache)

    def dense(self) -> torch.Tensor:
        """`[B, C, D, H, W]` with zeros at inactive sites (differentiable w.r.t. features)."""
        D, H, W = self.shape
        out = self.features.new_zeros(self.batch_size, D, H, W, self.features.shape[1])
        b, d, h, w = self.coords.unbind(1)
        out = out.index_put((b, d, h, w), self.features)
        return out.permute(0, 4, 1, 2, 3)


def linear_keys(coords: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """`[M, 4]` (b, d, h, w) -> `[M]` linear index into `[B, D, H, W]`."""
    D, H, W = shape
    return ((coords[:, 0] * D + coords[:, 1]) * H + coords[:, 2]) * W + coords[:, 3]


def _lookup(keys: torch.Tensor, query: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Row of each `query` key in sorted `keys`, or `len(keys)` (the zero pad row) when absent/invalid."""
    if keys.numel() == 0:
        return torch.zeros_like(query)
    idx = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
    hit = valid & (keys[idx] == query)
    return torch.where(hit, idx, torch.full_like(idx, keys.numel()))


def neighbour_table(x: SparseVolume, out_coords: torch.Tensor, stride: int) -> torch.Tensor:
    """`[M_out, 27]` row of `x` feeding each output site through each kernel tap (pad row if inactive).

    Output `o` reads input `stride * o - 1 + k` for tap `k` in {0, 1, 2}^3 (padding 1).
    """
    offs = _OFFSETS.to(out_coords.device)
    pos = out_coords[:, None, 1:] * stride - 1 + offs[None]  # [M_out, 27, 3]
    size = torch.tensor(x.shape, device=pos.device)
    valid = ((pos >= 0) & (pos < size)).all(-1)
    b = out_coords[:, None, :1].expand(-1, offs.shape[0], 1)
    q = linear_keys(torch.cat((b, pos), -1).reshape(-1, 4), x.shape).reshape(valid.shape)
    return _lookup(x.keys, q, valid)


def apply_kernel(x: SparseVolume, table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gather `[M_out, 27, C_in]` neighbours and contract with `weight [C_out, 3, 3, 3, C_in]` -> `[M_out, C_out]`."""
    padded = torch.cat((x.features, x.features.new_zeros(1, x.features.shape[1])), 0)
    cols = padded.index_select(0, table.reshape(-1)).reshape(table.shape[0], -1)
    return cols @ weight.reshape(weight.shape[0], -1).T


class SubMConv3d(nn.Module):
    """Submanifold 3x3x3 convolution (spconv `SubMConv3d(cin, cout, 3, bias=False)`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, KERNEL, KERNEL, KERNEL, in_channels))
        nn.init.kaiming_uniform_(self.weight.view(out_channels, -1), a=math.sqrt(5))

    def forward(self, x: SparseVolume) -> SparseVolume:
        if "subm" not in x._cache:  # consecutive SubM layers on the same sites share one table
            x._cache["subm"] = neighbour_table(x, x.coords, 1)
        return x.with_features(apply_kernel(x, x._cache["subm"], self.weight))


class SparseConv3d(nn.Module):
    """Stride-2 3x3x3 sparse convolution, padding 1 (spconv `SparseConv3d(cin, cout, 3, 2, 1, bias=False)`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, KERNEL, KERNEL, KERNEL, in_channels))
        nn.init.kaiming_uniform_(self.weight.view(out_channels, -1), a=math.sqrt(5))

    def forward(self, x: SparseVolume) -> SparseVolume:
        shape = tuple((s - 1) // 2 + 1 for s in x.shape)  # floor((s + 2 - 3) / 2) + 1
        coords = downsampled_sites(x.coords, shape)
        table = neighbour_table(x, coords, 2)
        out = SparseVolume(x.features.new_zeros(0), coords, shape, x.batch_size)
        return out.with_features(apply_kernel(x, table, self.weight))


def downsampled_sites(coords: torch.Tensor, out_shape: tuple[int, int, int]) -> torch.Tensor:
    """Sorted unique `[M_out, 4]` output sites of a stride-2, k-3, pad-1 conv over active `coords [M, 4]`.

    Input `p` reaches output `o` through tap `k` when `2 o - 1 + k = p`.
    """
    offs = _OFFSETS.to(coords.device)
    num = coords[:, None, 1:] + 1 - offs[None]  # [M, 27, 3] = 2 o
    o = torch.div(num, 2, rounding_mode="floor")
    ok = ((num % 2) == 0).all(-1) & (o >= 0).all(-1) & (o < torch.tensor(out_shape, device=o.device)).all(-1)
    b = coords[:, None, :1].expand(-1, offs.shape[0], 1)
    cand = torch.cat((b, o), -1)[ok]
    keys = torch.unique(linear_keys(cand, out_shape))
    return unravel_keys(keys, out_shape)


def unravel_keys(keys: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """`[M]` linear keys -> `[M, 4]` (b, d, h, w)."""
    D, H, W = shape
    w = keys % W
    h = (keys // W) % H
    d = (keys // (W * H)) % D
    b = keys // (W * H * D)
    return torch.stack((b, d, h, w), 1)


class SparseSequential(nn.Sequential):
    """`nn.Sequential` over a `SparseVolume`: conv layers see the volume, the rest (BN, ReLU) its features."""

    def forward(self, x: SparseVolume) -> SparseVolume:  # type: ignore[override]
        for m in self:
            x = m(x) if isinstance(m, (SubMConv3d, SparseConv3d)) else x.with_features(m(x.features))
        return x


def _bn(c: int) -> nn.BatchNorm1d:
    # Official spconv BN settings; statistics run over active voxels only.
    return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)


class SparseConvNet(nn.Module):
    """Official `xyzc_net`: a SubM double block, then `levels` x (stride-2 conv, SubM double block).

    `forward` returns the volume after every stride level (voxel edge x2, x4, ...), as the official
    code samples those. Module indices match the official state_dict (`net.{0..8}.{0,1,3,4}`).
    """

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [self._double(channels)]
        for _ in range(levels):
            blocks += [SparseSequential(SparseConv3d(channels, channels), _bn(channels), nn.ReLU()), self._double(channels)]
        self.net = nn.ModuleList(blocks)

    @staticmethod
    def _double(c: int) -> SparseSequential:
        return SparseSequential(SubMConv3d(c, c), _bn(c), nn.ReLU(), SubMConv3d(c, c), _bn(c), nn.ReLU())

    def forward(self, x: SparseVolume) -> list[SparseVolume]:
        x = self.net[0](x)
        levels = []
        for i in range(1, len(self.net), 2):
            x = self.net[i + 1](self.net[i](x))
            levels.append(x)
        return levels


@dataclass(frozen=True)
class VoxelGrid:
    """Placement of the level-0 grid of each sample.

    Attributes:
        origin: `[B, 3]` canonical xyz of voxel (0, 0, 0) per sample.
        voxel_size: level-0 voxel edge.
        shape: `(D, H, W)` = (z, y, x) level-0 size shared by the batch.
    """

    origin: torch.Tensor
    voxel_size: float
    shape: tuple[int, int, int]


def voxelize(points: torch.Tensor, features: torch.Tensor, voxel_size: float, padding: float, levels: int) -> tuple[SparseVolume, VoxelGrid]:
    """Scatter per-point features into a sparse grid around each sample's points.

    Each sample gets its own bounding box (min - padding, max + padding), so batches > 1 work; the
    grid shape is the batch maximum, rounded up to a multiple of 2^levels so every stride level
    halves it exactly. Points falling in the same voxel are averaged (spconv needs unique sites).

    Args:
        points: `[B, P, 3]` canonical xyz (not differentiated through: indices are integers).
        features: `[B, P, C]`.
    Returns:
        the volume (`[M, C]` features at unique sites) and its `VoxelGrid`.
    """
    B, P, _ = points.shape
    p = points.detach()
    origin = p.amin(1) - padding  # [B, 3]
    extent = (p.amax(1) + padding - origin).amax(0)  # [3] xyz
    mult = 2**levels
    size_xyz = [int(math.ceil((float(e) / voxel_size + 1) / mult) * mult) for e in extent]
    shape = (size_xyz[2], size_xyz[1], size_xyz[0])
    idx = torch.round((p - origin[:, None]) / voxel_size).long()  # [B, P, 3] xyz
    idx = torch.minimum(idx.clamp_min(0), torch.tensor(size_xyz, device=idx.device) - 1)
    b = torch.arange(B, device=idx.device)[:, None, None].expand(B, P, 1)
    coords = torch.cat((b, idx.flip(-1)), -1).reshape(-1, 4)  # (b, z, y, x)
    keys, inverse = torch.unique(linear_keys(coords, shape), return_inverse=True)
    C = features.shape[-1]
    summed = features.new_zeros(keys.numel(), C).index_add(0, inverse, features.reshape(-1, C))
    count = torch.bincount(inverse, minlength=keys.numel()).to(features.dtype)
    vol = SparseVolume(summed / count[:, None], unravel_keys(keys, shape), shape, B)
    return vol, VoxelGrid(origin, voxel_size, shape)


def sample_volumes(levels: list[SparseVolume], grid: VoxelGrid, points: torch.Tensor) -> torch.Tensor:
    """Trilinear features of every level at canonical `points [B, N, 3]` -> `[B, N, sum C]`.

    Level l (l = 1..L) has voxel edge `voxel_size * 2^l`; its voxel j sits at level-0 index `2^l j`
    (stride-2 convs with padding 1), so `align_corners=True` with normaliser `size - 1` is exact.
    Points outside a grid take the border value (the official code clamps to [-1, 1] likewise).
    """
    outs = []
    for lvl, vol in enumerate(levels, start=1):
        D, H, W = vol.shape
        sizes = torch.tensor([W, H, D], dtype=points.dtype, device=points.device)
        idx = (points - grid.origin[:, None].to(points.dtype)) / (grid.voxel_size * 2**lvl)
        norm = 2 * idx / (sizes - 1).clamp_min(1) - 1  # (x, y, z) order, as grid_sample wants
        feat = F.grid_sample(vol.dense(), norm[:, :, None, None], mode="bilinear", padding_mode="border", align_corners=True)
        outs.append(feat[:, :, :, 0, 0].transpose(1, 2))  # [B, N, C]
    return torch.cat(outs, -1)
