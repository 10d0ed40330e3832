"""The tiled pure-torch backend (`render/torch_tiles.py`) against the dense reference: images and gradients."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import pytest
import torch

from hgm_core.camera import orbit_cameras
from hgm_core.render import available_backends, rasterize
from hgm_core.render.output import RenderError
from hgm_core.render.torch_tiles import (
    ACCEL_PLAN, CPU_PLAN, TilePlan, plan_chunks, rasterize_torch_tiles, splat_pixel_pairs, tile_lists,
)
from tests.conftest import random_gaussians
from tests.test_render import assert_outputs_close, deep_stack, scene_with_outliers, skewed_cameras

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def render(g, cams, bg=(0.2, 0.6, 0.9), **kw):
    bg = torch.tensor(bg, dtype=g.dtype)
    return rasterize_torch_tiles(g, cams, bg, near=0.01, far=1e10, eps2d=0.3, **kw)


@pytest.mark.parametrize(
    "seed, n_cams, width, height, plan",
    [(0, 1, 37, 29, CPU_PLAN), (1, 2, 48, 40, TilePlan(16, 2.0, 1 << 24)), (2, 3, 33, 50, ACCEL_PLAN),
     (3, 2, 21, 19, TilePlan(5, 1.2, 1 << 24)), (4, 2, 30, 26, TilePlan(8, math.inf, 1 << 26))],
)
def test_matches_dense_reference_float64(seed, n_cams, width, height, plan):
    g = scene_with_outliers(400, seed)  # a tenth far off-screen or behind the cameras
    cams = skewed_cameras(n_cams, width, height, seed=seed)
    ref = rasterize(g, cams, background=(0.2, 0.6, 0.9), backend="reference")
    out = render(g, cams, plan=plan)
    assert out.rgb.shape == (n_cams, height, width, 3) and out.median_depth.shape == (n_cams, height, width, 1)
    assert float(ref.alpha.max()) > 0.9 and float(ref.alpha.min()) == 0.0  # covered and empty pixels both occur
    assert float(ref.median_depth.max()) > 0  # the median rule is exercised
    assert_outputs_close(out, ref, atol=1e-10)


def test_rasterize_torch_backend_float32():
    g = scene_with_outliers(400, 5, dtype=torch.float32)
    cams = skewed_cameras(2, 40, 36, seed=5, dtype=torch.float32)
    ref = rasterize(g, cams, backend="reference")
    out = rasterize(g, cams, backend="torch")
    assert out.rgb.dtype == torch.float32
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-5, rtol=0, msg=name)
    # The median is a discrete choice: float32 rounding may flip it where T is ~0.5, so compare most pixels.
    same = (out.median_depth - ref.median_depth).abs() < 1e-5
    assert float(same.float().mean()) > 0.99


def test_early_termination_and_tiny_chunks_match_reference():
    """A deep opaque stack ends compositing early; a 1-tile chunk bound splits the work into many chunks."""
    g = deep_stack()
    cams = orbit_cameras(40, 40, n_views=2, radius=1.5).to(dtype=torch.float64)
    ref = rasterize(g, cams, background=(0.2, 0.6, 0.9), backend="reference")
    out = render(g, cams, plan=TilePlan(tile=8, growth=1.5, max_chunk=8 * 8 * 80))
    assert float(1 - out.alpha.max()) < 1e-3  # the centre really saturates
    assert_outputs_close(out, ref, atol=1e-10)


@pytest.mark.parametrize("plan", [CPU_PLAN, ACCEL_PLAN])  # the CPU's chunking and CUDA's (one chunk)
def test_gradients_match_reference(plan):
    g0 = scene_with_outliers(150, 2)
    cams = skewed_cameras(2, 40, 32, seed=2)
    w = torch.rand(2, 32, 40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def grads(tiled):
        params = {k: getattr(g0, k).clone().requires_grad_() for k in PARAMS}
        if tiled:
            out = render(replace(g0, **params), cams, bg=(0.1, 0.2, 0.3), plan=plan)
        else:
            out = rasterize(replace(g0, **params), cams, background=(0.1, 0.2, 0.3), backend="reference")
        (torch.cat((out.rgb, out.alpha, out.depth), -1) * w).sum().backward()
        return {k: v.grad for k, v in params.items()}

    ref, tiled = grads(False), grads(True)
    for k in PARAMS:
        assert float(ref[k].abs().max()) > 0, k
        torch.testing.assert_close(tiled[k], ref[k], atol=1e-9, rtol=1e-7, msg=k)


def test_empty_scene_and_bad_input():
    cams = orbit_cameras(20, 20, n_views=1, radius=1.5)
    behind = replace(random_gaussians(5), means=torch.tensor([[0.0, 0.0, 5.0]]).expand(5, 3).clone())
    out = rasterize(behind, cams, background=(0.5, 0.5, 0.5), backend="torch")
    assert torch.all(out.rgb == 0.5) and torch.all(out.alpha == 0) and torch.all(out.depth == 0)
    g = random_gaussians(10)
    with pytest.raises(RenderError, match="float32 or float64"):
        rasterize(g.to(dtype=torch.float16), cams.to(dtype=torch.float16), backend="torch")
    with pytest.raises(RenderError, match="growth > 1"):
        TilePlan(tile=4, growth=1.0, max_chunk=1 << 20)


def test_tile_lists_are_front_to_back_and_complete():
    g = scene_with_outliers(300, 3)
    cams = skewed_cameras(2, 45, 38, seed=3)
    from hgm_core.render.projection import project_gaussians

    proj = project_gaussians(g, cams)
    lists = tile_lists(proj, 45, 38, 8)
    assert lists.tiles_x == 6 and lists.tiles_y == 5 and lists.counts.shape == (2 * 5 * 6,)
    assert int(lists.counts.sum()) == lists.splats.numel() > 0
    depths = proj.depths.reshape(-1)
    for t in lists.counts.nonzero().squeeze(1).tolist():
        run = lists.splats[lists.offsets[t] : lists.offsets[t] + lists.counts[t]]
        assert torch.all(torch.div(run, 300, rounding_mode="floor") == t // 30)  # the tile's own camera
        assert torch.all(depths[run][1:] >= depths[run][:-1])  # front to back


@pytest.mark.parametrize("growth", [2.0, 3.0, math.inf])
def test_plan_chunks_bounds_padding_and_size(growth):
    counts = [100, 17, 16, 9, 5, 4, 3, 2, 1, 1, 0, 0]
    chunks = plan_chunks(counts, tile=4, max_chunk=16 * 40, growth=growth)
    assert chunks[0][0] == 0 and chunks[-1][1] == 10  # every non-empty tile, in order, once
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    for start, stop, k in chunks:
        assert k == counts[start] and all(counts[t] > k / growth for t in range(start, stop))
        assert stop - start == 1 or (stop - start) * k * 16 <= 16 * 40
    assert len(plan_chunks(counts, tile=4, max_chunk=1 << 20, growth=math.inf)) == 1


def test_person_scene_does_far_less_work_than_dense():
    """The training render (a person of ~18k Gaussians into 4 views of 96 x 96) with the default tiles."""
    from hgm_core.render.scenes import person_scene, turntable_cameras

    g, cams = person_scene(18000), turntable_cameras(96, n_views=4)
    cpu, cuda = splat_pixel_pairs(g, cams), splat_pixel_pairs(g, cams, plan=ACCEL_PLAN)
    assert cpu["dense"] > 5e8
    assert cpu["intersections"] * CPU_PLAN.tile**2 <= cpu["tiled"] < cpu["dense"] / 50  # padding only adds
    # CUDA pads more for fewer launches, still far below dense.
    assert cuda["chunks"] < cpu["chunks"] and cpu["tiled"] <= cuda["tiled"] < cuda["dense"] / 20


def test_cuda_prefers_torch_tiles_over_the_dense_reference(monkeypatch):
    assert available_backends("cpu") == ["numba", "reference"]
    with_gsplat = available_backends("cuda:0")
    assert with_gsplat.index("torch") < with_gsplat.index("reference")
    monkeypatch.setitem(sys.modules, "gsplat", None)  # import gsplat now raises ImportError
    assert available_backends(torch.device("cuda")) == ["torch", "reference"]


def test_float32_person_gradients_match_numba():
    """Deep per-tile stacks in float32 (up to 900 splats per 4 x 4 tile, median 271): finite
    gradients, equal to the numba backend's analytic backward up to float32 rounding."""
    from hgm_core.render.scenes import person_scene, turntable_cameras

    g, cams = person_scene(6000), turntable_cameras(64, n_views=2)
    w = torch.rand(2, 64, 64, 5, generator=torch.Generator().manual_seed(0))

    def grads(backend):
        params = {k: getattr(g, k).clone().requires_grad_() for k in PARAMS}
        out = rasterize(replace(g, **params), cams, background=(1.0, 1.0, 1.0), backend=backend)
        (torch.cat((out.rgb, out.alpha, out.depth), -1) * w).sum().backward()
        return {k: v.grad for k, v in params.items()}

    ref, tiled = grads("numba"), grads("torch")
    for k in PARAMS:
        assert bool(torch.isfinite(tiled[k]).all()), k
        assert float((tiled[k] - ref[k]).norm() / ref[k].norm()) < 1e-4, k
