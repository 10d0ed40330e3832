"""Sparse 3D convolution of the body branch against dense conv3d and against spconv (one thread)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hgm_core.model.sparse import (
    SparseConv3d,
    SparseConvNet,
    SparseVolume,
    SubMConv3d,
    VoxelGrid,
    linear_keys,
    sample_volumes,
    voxelize,
)

SHAPE = (9, 12, 10)


def random_volume(batch: int = 2, channels: int = 4, density: float = 0.15, seed: int = 0) -> SparseVolume:
    g = torch.Generator().manual_seed(seed)
    active = torch.rand(batch, *SHAPE, generator=g) < density
    coords = active.nonzero()  # row-major = sorted by linear key
    feats = torch.randn(coords.shape[0], channels, generator=g, dtype=torch.float64)
    return SparseVolume(feats, coords, SHAPE, batch)


def dense_reference(x: SparseVolume, weight: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense conv3d with the spconv weight permuted to [out, in, kD, kH, kW]; output mask by max-pool."""
    dense = x.dense()
    out = F.conv3d(dense, weight.permute(0, 4, 1, 2, 3), stride=stride, padding=1)
    mask = (dense.abs().sum(1, keepdim=True) > 0).to(dense.dtype)
    if stride == 1:
        out_mask = mask
    else:
        out_mask = F.max_pool3d(mask, 3, stride, 1)
    return out * out_mask, out_mask[:, 0] > 0


@pytest.mark.parametrize("layer,stride", [(SubMConv3d, 1), (SparseConv3d, 2)])
def test_matches_dense_conv3d_forward_and_backward(layer, stride: int) -> None:
    x = random_volume()
    x.features.requires_grad_(True)
    conv = layer(4, 5).double()
    y = conv(x)
    ref, ref_mask = dense_reference(x, conv.weight, stride)
    assert torch.equal(ref_mask.nonzero(), y.coords)  # same active output sites, same order
    b, d, h, w = y.coords.unbind(1)
    torch.testing.assert_close(y.features, ref.permute(0, 2, 3, 4, 1)[b, d, h, w], rtol=1e-10, atol=1e-10)
    # gradients w.r.t. weight and features agree with the dense formulation
    gy = torch.randn_like(y.features)
    gw, gx = torch.autograd.grad((y.features * gy).sum(), (conv.weight, x.features))
    ref_loss = (ref.permute(0, 2, 3, 4, 1)[b, d, h, w] * gy).sum()
    rgw, rgx = torch.autograd.grad(ref_loss, (conv.weight, x.features))
    torch.testing.assert_close(gw, rgw, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx, rgx, rtol=1e-9, atol=1e-9)


@pytest.mark.xfail(
    strict=True,
    reason="spconv 2.3.8 CPU (Native algo) disagrees with dense conv3d here even on one thread once a site "
    "has several active neighbours (all-ones kernels agree, random ones do not), so hgm_core uses its own "
    "layers; strict, so a fixed spconv shows up as XPASS",
)
def test_matches_spconv_single_threaded() -> None:
    spconv = pytest.importorskip("spconv.pytorch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's CPU forward is wrong with more threads (environment.md)
    try:
        x = random_volume(channels=8, seed=1)
        x = x.with_features(x.features.float())
        sp_in = spconv.SparseConvTensor(x.features, x.coords.int(), list(SHAPE), x.batch_size)
        for ours, theirs in (
            (SubMConv3d(8, 6), spconv.SubMConv3d(8, 6, 3, bias=False, indice_key="s")),
            (SparseConv3d(8, 6), spconv.SparseConv3d(8, 6, 3, 2, 1, bias=False)),
        ):
            assert theirs.weight.shape == ours.weight.shape  # [out, kD, kH, kW, in] (KRSC)
            with torch.no_grad():
                theirs.weight.copy_(ours.weight)
                y, ref = ours(x), theirs(sp_in)
            key = linear_keys(ref.indices.long(), tuple(ref.spatial_shape))
            order = torch.argsort(key)
            assert tuple(ref.spatial_shape) == y.shape
            assert torch.equal(ref.indices.long()[order], y.coords)
            torch.testing.assert_close(y.features, ref.features[order], rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_voxelize_averages_duplicates_and_pads_grid() -> None:
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.001, 0.0, 0.0], [0.3, 0.5, 0.1]]])
    feats = torch.tensor([[[1.0], [3.0], [5.0]]])
    vol, grid = voxelize(pts, feats, voxel_size=0.05, padding=0.05, levels=2)
    assert all(s % 4 == 0 for s in grid.shape)
    assert vol.features.shape == (2, 1)
    assert sorted(vol.features[:, 0].tolist()) == [2.0, 5.0]
    # the voxel of the first two points sits one padding (= one voxel) from the origin on each axis
    assert torch.equal(vol.coords[0], torch.tensor([0, 1, 1, 1]))


def test_volume_sampling_is_exact_at_every_level() -> None:
    """A level whose features equal the x/y/z index is sampled back as the point's index (trilinear exact)."""
    vs, origin = 0.1, torch.tensor([[-0.4, -0.8, -0.2]])
    levels = []
    for shape in ((4, 8, 6), (2, 4, 3)):  # levels 1 and 2 of an (8, 16, 12) grid
        coords = torch.ones(1, *shape, dtype=torch.bool).nonzero()
        feats = coords[:, [3, 2, 1]].double()  # (x, y, z) voxel index
        levels.append(SparseVolume(feats, coords, shape, 1))
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.13, -0.41, 0.05]]], dtype=torch.float64)
    out = sample_volumes(levels, VoxelGrid(origin.double(), vs, (8, 16, 12)), pts)
    for i, lvl in enumerate((1, 2)):
        torch.testing.assert_close(out[0, :, 3 * i : 3 * i + 3], (pts[0] - origin.double()) / (vs * 2**lvl))


def test_sparse_conv_net_levels_and_names() -> None:
    net = SparseConvNet(8, 4).double()
    names = {k for k in net.state_dict() if k.endswith("weight") and net.state_dict()[k].ndim == 5}
    assert names == {"net.0.0.weight", "net.0.3.weight"} | {f"net.{i}.0.weight" for i in (1, 3, 5, 7)} | {
        f"net.{i}.{j}.weight" for i in (2, 4, 6, 8) for j in (0, 3)}
    x = random_volume(channels=8, density=0.3)
    vol = SparseVolume(x.features, x.coords, (16, 16, 16), 2)
    levels = net(vol)
    assert [v.shape for v in levels] == [(8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)]
    assert all(v.features.shape[1] == 8 for v in levels)
