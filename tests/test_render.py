"""Rasterizer correctness: projection vs gsplat's own torch reference, tiled vs dense, analytic cases, gradients."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from hgm_core.camera import Cameras, flip_camera_axes, intrinsics, look_at, orbit_cameras
from hgm_core.gaussians import Gaussians
from hgm_core.render import project_gaussians, rasterize
from hgm_core.render.output import ALPHA_MAX, RenderError
from hgm_core.render.projection import covariance_3d
from tests.conftest import random_gaussians

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def skewed_cameras(n: int, width: int, height: int, *, seed: int, dtype=torch.float64) -> Cameras:
    """n cameras on a sphere looking near the origin, with off-centre principal points and fx != fy."""
    gen = torch.Generator().manual_seed(seed)
    eye = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1) * 1.3
    target = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 0.05
    viewmats = torch.linalg.inv(flip_camera_axes(look_at(eye, target)))
    K = torch.stack([
        intrinsics(width * (0.9 + 0.3 * i), width * (1.0 + 0.2 * i), width * (0.4 + 0.15 * i), height * (0.6 - 0.1 * i),
                   dtype=torch.float64)
        for i in range(n)
    ])
    return Cameras(K, viewmats, width, height).to(dtype=dtype)


def scene_with_outliers(n: int, seed: int, dtype=torch.float64) -> Gaussians:
    """Random Gaussians plus some far off-screen and some behind every camera (they must be culled)."""
    g = random_gaussians(n, seed=seed, dtype=dtype)
    means = g.means.clone()
    means[: n // 10] *= 8.0  # mostly far outside the image, some behind the cameras
    return replace(g, means=means)


def test_covariance_matches_gsplat():
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    g = random_gaussians(64, seed=3, dtype=torch.float64)
    expected, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)
    torch.testing.assert_close(covariance_3d(g.quats, g.scales), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_projection_matches_gsplat(seed):
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    g = scene_with_outliers(300, seed)
    cams = skewed_cameras(3, 48, 40, seed=seed)
    covars, _ = _quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        g.means, covars, cams.viewmats, cams.K, cams.width, cams.height, eps2d=0.3, near_plane=0.01, far_plane=1e10
    )
    proj = project_gaussians(g, cams, eps2d=0.3, near=0.01, far=1e10)
    assert torch.equal(proj.radii, radii)
    assert 0 < int((radii > 0).all(-1).sum()) < radii.shape[0] * radii.shape[1]  # the outliers really are culled
    vis = (radii > 0).all(-1)
    torch.testing.assert_close(proj.depths, depths)
    torch.testing.assert_close(proj.means2d[vis], means2d[vis])
    torch.testing.assert_close(proj.conics[vis], conics[vis])


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fused_projection_kernel_matches_torch_projection(dtype, rtol):
    """The no-gradient fast path of the tiled backend projects exactly like `project_gaussians`."""
    from hgm_core.render import _tile_kernels

    g = scene_with_outliers(500, 1, dtype=dtype)
    cams = skewed_cameras(3, 48, 40, seed=1, dtype=dtype)
    proj = project_gaussians(g, cams, near=0.05, far=50.0, eps2d=0.3)
    means2d, conics, depths, radii = (torch.from_numpy(x) for x in _tile_kernels.project(
        *(t.numpy() for t in (g.means, g.quats, g.scales, cams.viewmats, cams.K)), 48, 40, 0.05, 50.0, 0.3))
    assert torch.equal(radii, proj.radii)
    vis = (radii > 0).all(-1)
    torch.testing.assert_close(depths, proj.depths, rtol=rtol, atol=0)
    torch.testing.assert_close(means2d[vis], proj.means2d[vis], rtol=rtol, atol=rtol)
    torch.testing.assert_close(conics[vis], proj.conics[vis], rtol=rtol, atol=rtol)


def test_no_grad_and_grad_paths_render_the_same():
    g = scene_with_outliers(300, 4, dtype=torch.float32)
    cams = skewed_cameras(2, 40, 36, seed=4, dtype=torch.float32)
    with torch.no_grad():
        fast = rasterize(g, cams, backend="numba")
    slow = rasterize(replace(g, means=g.means.clone().requires_grad_()), cams, backend="numba")
    # float32 rounding differs between the two projections; the median may flip where T ~ 0.5.
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name).detach(), atol=1e-4, rtol=0, msg=name)


def assert_outputs_close(a, b, atol):
    for name in ("rgb", "alpha", "depth", "median_depth"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize(
    "seed, n_cams, width, height",
    [(0, 1, 37, 29), (1, 2, 48, 40), (2, 3, 33, 50)],
)
def test_tiled_matches_dense_reference(seed, n_cams, width, height):
    g = scene_with_outliers(400, seed)
    cams = skewed_cameras(n_cams, width, height, seed=seed)
    bg = (0.2, 0.6, 0.9)
    ref = rasterize(g, cams, background=bg, backend="reference")
    out = rasterize(g, cams, background=bg, backend="numba")
    assert out.rgb.shape == (n_cams, height, width, 3) and out.alpha.shape == (n_cams, height, width, 1)
    assert float(ref.alpha.max()) > 0.9 and float(ref.alpha.min()) == 0.0  # covered and empty pixels both occur
    assert_outputs_close(out, ref, atol=1e-10)


def test_tiled_matches_reference_in_float32():
    g = scene_with_outliers(400, 5, dtype=torch.float32)
    cams = skewed_cameras(2, 40, 36, seed=5, dtype=torch.float32)
    ref = rasterize(g, cams, backend="reference")
    out = rasterize(g, cams, backend="numba")
    torch.testing.assert_close(out.rgb, ref.rgb, atol=2e-4, rtol=0)
    torch.testing.assert_close(out.alpha, ref.alpha, atol=2e-4, rtol=0)


def deep_stack(n: int = 80, seed: int = 7) -> Gaussians:
    """`n` opaque (0.9) float64 splats stacked along the optical axis near the origin: compositing a
    pixel through them drives the transmittance below T_MIN (early termination)."""
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.cat((torch.randn(n, 2, generator=gen, dtype=torch.float64) * 0.03,
                         torch.linspace(-0.3, 0.3, n, dtype=torch.float64)[:, None]), -1),
        quats=torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(n, 4),
        scales=torch.full((n, 3), 0.08, dtype=torch.float64),
        opacities=torch.full((n,), 0.9, dtype=torch.float64),
        colors=torch.rand(n, 3, generator=gen, dtype=torch.float64),
    )


def test_early_termination_matches_reference():
    """A deep stack of opaque splats drives transmittance below T_MIN inside the tile lists."""
    g = deep_stack()
    cams = orbit_cameras(40, 40, n_views=1, radius=1.5).to(dtype=torch.float64)
    ref = rasterize(g, cams, backend="reference")
    out = rasterize(g, cams, backend="numba")
    assert float(1 - out.alpha.max()) < 1e-3  # the centre really saturates
    assert_outputs_close(out, ref, atol=1e-10)


def test_threads_do_not_change_the_image():
    g = random_gaussians(500, seed=11)
    cams = orbit_cameras(64, 64, n_views=2, radius=1.2)
    one = rasterize(g, cams, backend="numba")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = rasterize(g, cams, backend="numba")
    finally:
        torch.set_num_threads(before)
    assert_outputs_close(one, two, atol=0)


def single_gaussian(mean, opacity, color, scale=0.05, dtype=torch.float64) -> Gaussians:
    return Gaussians(
        means=torch.tensor([mean], dtype=dtype),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype),
        scales=torch.full((1, 3), scale, dtype=dtype),
        opacities=torch.tensor([opacity], dtype=dtype),
        colors=torch.tensor([color], dtype=dtype),
    )


def front_camera(width=32, height=32, f=40.0) -> Cameras:
    """Camera at z=+2 looking down -z (world), principal point at the image centre."""
    viewmat = torch.linalg.inv(flip_camera_axes(look_at(torch.tensor([0.0, 0.0, 2.0]), torch.zeros(3))))
    return Cameras(intrinsics(f, f, width / 2, height / 2)[None].double(), viewmat[None].double(), width, height)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_single_gaussian_centred_on_a_pixel(backend):
    cam = front_camera()
    # Pixel (16, 16) has its centre at 16.5: put the mean on the ray through it.
    x = (16.5 - 16) / 40.0 * 2.0
    g = single_gaussian([x, -x, 0.0], 0.7, [1.0, 0.5, 0.25])
    bg = torch.tensor([0.0, 0.2, 1.0], dtype=torch.float64)
    out = rasterize(g, cam, background=bg, backend=backend)
    assert float(out.alpha[0, 16, 16, 0]) == pytest.approx(0.7, abs=1e-12)
    expected = 0.7 * torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) + 0.3 * bg
    torch.testing.assert_close(out.rgb[0, 16, 16], expected, atol=1e-12, rtol=0)
    assert float(out.depth[0, 16, 16, 0]) == pytest.approx(2.0, abs=1e-12)
    # Symmetric falloff around the centre pixel, background far away.
    assert float(out.alpha[0, 16, 15, 0]) == pytest.approx(float(out.alpha[0, 16, 17, 0]), abs=1e-12)
    assert float(out.alpha[0, 16, 15, 0]) < 0.7
    torch.testing.assert_close(out.rgb[0, 0, 0], bg)
    assert float(out.alpha[0, 0, 0, 0]) == 0.0 and float(out.depth[0, 0, 0, 0]) == 0.0


def test_alpha_is_clamped():
    g = single_gaussian([0.0, 0.0, 0.0], 0.999, [1.0, 1.0, 1.0], scale=0.6)
    out = rasterize(g, front_camera(), backend="numba")
    assert float(out.alpha.max()) == pytest.approx(ALPHA_MAX)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_overlapping_gaussians_composite_in_depth_order(backend):
    cam = front_camera()
    red, green = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]

    def render(z_red, z_green):
        g = Gaussians.concat([single_gaussian([0.0, 0.0, z_red], 0.8, red, scale=0.2),
                              single_gaussian([0.0, 0.0, z_green], 0.8, green, scale=0.2)])
        return rasterize(g, cam, backend=backend).rgb[0, 16, 16]

    red_front, green_front = render(0.3, -0.3), render(-0.3, 0.3)
    assert red_front[0] > red_front[1] and green_front[1] > green_front[0]
    # Front splat weight ~0.8, the one behind gets ~0.8 * 0.2 (alpha slightly below opacity off-centre).
    assert float(red_front[0]) == pytest.approx(0.8, abs=0.02)
    assert float(red_front[1]) == pytest.approx(0.16, abs=0.02)
    torch.testing.assert_close(red_front[[1, 0, 2]], green_front, atol=1e-3, rtol=0)


def grad_scene():
    g = random_gaussians(6, seed=4, dtype=torch.float64, spread=0.15)
    g = replace(g, scales=g.scales * 3, opacities=g.opacities.clamp(0.2, 0.9))
    cams = orbit_cameras(20, 18, n_views=2, radius=1.0).to(dtype=torch.float64)  # 2x2 tiles
    return g, cams


def gradcheck_tiled(param: str, fast_mode: bool) -> bool:
    g, cams = grad_scene()
    bg = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)

    def f(x):
        out = rasterize(replace(g, **{param: x}), cams, background=bg, backend="numba")
        return out.rgb, out.alpha, out.depth

    x = getattr(g, param).clone().requires_grad_()
    return torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=fast_mode)


@pytest.mark.parametrize("param", PARAMS)
def test_gradcheck_tiled(param):
    # fast_mode checks random projections v^T J u of the full Jacobian: one backward per check.
    assert gradcheck_tiled(param, fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize("param", PARAMS)
def test_gradcheck_tiled_full_jacobian(param):
    assert gradcheck_tiled(param, fast_mode=False)


def test_tiled_gradients_match_reference():
    g0 = scene_with_outliers(150, 2)
    cams = skewed_cameras(2, 40, 32, seed=2)
    w = torch.rand(2, 32, 40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def grads(backend):
        params = {k: getattr(g0, k).clone().requires_grad_() for k in PARAMS}
        out = rasterize(replace(g0, **params), cams, background=(0.1, 0.2, 0.3), backend=backend)
        loss = (torch.cat((out.rgb, out.alpha, out.depth), -1) * w).sum()
        loss.backward()
        return {k: v.grad for k, v in params.items()}

    ref, tiled = grads("reference"), grads("numba")
    for k in PARAMS:
        assert float(ref[k].abs().max()) > 0, k
        torch.testing.assert_close(tiled[k], ref[k], atol=1e-9, rtol=1e-7, msg=k)


def test_bad_inputs_raise_render_errors():
    g = random_gaussians(10)
    cams = orbit_cameras(16, 16, n_views=1)
    with pytest.raises(RenderError, match="float32 or float64"):
        rasterize(g.to(dtype=torch.float16), cams.to(dtype=torch.float16), backend="numba")
    with pytest.raises(RenderError, match="background"):
        rasterize(g, cams, background=(1.0, 1.0), backend="numba")
    with pytest.raises(RenderError, match="unknown backend"):
        rasterize(g, cams, backend="vulkan")  # type: ignore[arg-type]


def test_empty_and_fully_culled_scenes_render_background():
    cams = orbit_cameras(20, 20, n_views=1, radius=1.5)
    behind = replace(random_gaussians(5), means=torch.tensor([[0.0, 0.0, 5.0]]).expand(5, 3).clone())
    out = rasterize(behind, cams, background=(0.5, 0.5, 0.5), backend="numba")
    assert torch.all(out.rgb == 0.5) and torch.all(out.alpha == 0)


def test_person_scene_renders_a_person():
    from hgm_core.render.scenes import person_scene, turntable_cameras

    g = person_scene(8192, seed=1).validate()
    assert len(g) == 8192 and g.dtype == torch.float32
    height = float(g.means[:, 1].max() - g.means[:, 1].min())
    assert 1.6 < height < 1.8 and abs(float(g.means[:, 1].mean())) < 0.2
    torch.testing.assert_close(person_scene(8192, seed=1).means, g.means)
    out = rasterize(g, turntable_cameras(64, n_views=2), background=(1.0, 1.0, 1.0), backend="numba")
    coverage = out.alpha[..., 0] > 0.5
    assert 0.05 < float(coverage.float().mean()) < 0.5
    # Feet to head fill most of the image height, the corners stay background.
    rows = coverage.any(-1)[0].nonzero()
    assert int(rows.max() - rows.min()) > 0.7 * 64
    assert math.isclose(float(out.rgb[0, 0, 0].min()), 1.0)
