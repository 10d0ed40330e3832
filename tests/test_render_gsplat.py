"""The gsplat backend: identical conventions to the CPU backends (needs CUDA; a clear error without)."""

from __future__ import annotations

import pytest
import torch

from hgm_core.camera import orbit_cameras
from hgm_core.render import available_backends, rasterize
from hgm_core.render.output import RenderError
from tests.conftest import random_gaussians

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat kernels)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gsplat_backend_without_cuda_raises_a_clear_error():
    assert "gsplat" not in available_backends()
    with pytest.raises(RenderError, match="needs CUDA"):
        rasterize(random_gaussians(8), orbit_cameras(16, 16, n_views=1), backend="gsplat")


@needs_cuda
@pytest.mark.cuda
def test_gsplat_matches_tiled_cpu_backend():
    g = random_gaussians(2000, seed=3)
    cams = orbit_cameras(96, 80, n_views=3, radius=1.2)
    bg = (0.2, 0.4, 0.6)
    cpu = rasterize(g, cams, background=bg, backend="numba")
    gpu = rasterize(g.to("cuda"), cams.to("cuda"), background=bg, backend="gsplat")
    # gsplat clamps per-splat alpha at 0.999 (ours 0.99): only nearly opaque pixels may differ.
    for name, atol in (("rgb", 2e-2), ("alpha", 2e-2), ("depth", 2e-2)):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), atol=atol, rtol=0, msg=name)
    assert gpu.median_depth is None


@needs_cuda
@pytest.mark.cuda
def test_gsplat_single_gaussian_centre_alpha_equals_opacity():
    from tests.test_render import front_camera, single_gaussian

    cam = front_camera()
    x = (16.5 - 16) / 40.0 * 2.0
    g = single_gaussian([x, -x, 0.0], 0.7, [1.0, 0.5, 0.25], dtype=torch.float32)
    out = rasterize(g.to("cuda"), cam.to("cuda", torch.float32), backend="gsplat")
    assert float(out.alpha[0, 16, 16, 0]) == pytest.approx(0.7, abs=1e-6)
