"""Evaluation metrics of the paper's tables.

Images (Table 1): PSNR, SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03),
LPIPS-VGG (`hgm_core.train.lpips`). Images are `[B, 3, H, W]` in [0, 1].

Meshes (Table 3, the PIFu / ICON conventions, distances in cm): points are sampled uniformly on
each surface (area-weighted, seeded) and distances are exact point-to-triangle distances computed
with open3d's `RaycastingScene`.
    P2S = mean distance from reconstructed-surface samples to the GT surface;
    Chamfer = mean of P2S and the reverse (GT samples to the reconstruction);
    NC = mean |cos| between a sample's normal and the normal of the closest point on the other
         surface, averaged over both directions (1 = identical orientation everywhere).

Bodies: MPJPE and PA-MPJPE are `hgm_core.body.metrics` (`scale=1000` for mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hgm_core.body.metrics import MetricError
from hgm_core.train.lpips import LPIPS


def _check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise MetricError(f"expected two [B, C, H, W] images of one shape, got {list(x.shape)} and {list(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`[B]` PSNR in dB for images in [0, 1]; `inf` where the images are identical.

    Args:
        mask: optional `[B, 1, H, W]` weights restricting the mean squared error.
    """
    _check_images(x, y)
    se = (x.double() - y.double()) ** 2
    if mask is None:
        mse = se.mean(dim=(1, 2, 3))
    else:
        w = mask.double().expand_as(se)
        mse = (se * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1e-12)
    return torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """`[B]` mean SSIM (valid-region Gaussian filtering, data range 1), channels averaged."""
    _check_images(x, y)
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.dtype, x.device)
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


def lpips(model: LPIPS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`[B]` LPIPS-VGG distances by `model` (`LPIPS.load()`, loaded once and kept by the caller)."""
    _check_images(x, y)
    with torch.no_grad():
        return model(x.float(), y.float())


# --------------------------------------------------------------------------------------------- meshes


@dataclass(frozen=True)
class MeshMetrics:
    """Chamfer, P2S in cm and normal consistency in [0, 1]."""

    chamfer_cm: float
    p2s_cm: float
    normal_consistency: float


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` area-uniform points `[n, 3]` and their face normals `[n, 3]` on a triangle mesh."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    if len(faces) == 0 or area.sum() <= 0:
        raise MetricError("cannot sample an empty or degenerate mesh")
    rng = np.random.default_rng(seed)
    f = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pts = np.einsum("nk,nkc->nc", w, tri[f])
    return pts, cross[f] / np.maximum(area[f], 1e-30)[:, None]


def _closest(vertices: np.ndarray, faces: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances `[N]` from `query` to the mesh and the face normals `[N, 3]` at the closest points."""
    import open3d as o3d

    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    faces = np.asarray(faces)[area2 > 1e-12]  # zero-area faces have no normal (NaN in open3d)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(np.asarray(vertices, np.float32), np.asarray(faces, np.uint32))
    q = o3d.core.Tensor(np.asarray(query, np.float32))
    out = scene.compute_closest_points(q)
    d = np.linalg.norm(out["points"].numpy().astype(np.float64) - query, axis=1)
    return d, out["primitive_normals"].numpy().astype(np.float64)


def mesh_metrics(
    pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray], n_samples: int = 20000, seed: int = 0
) -> MeshMetrics:
    """Chamfer / P2S / NC between `pred = (vertices [V, 3], faces [F, 3])` and `gt`, metres in, cm out."""
    p_pts, p_nrm = sample_surface(*pred, n_samples, seed)
    g_pts, g_nrm = sample_surface(*gt, n_samples, seed + 1)
    d_pg, n_on_g = _closest(*gt, p_pts)
    d_gp, n_on_p = _closest(*pred, g_pts)
    # float32 normals can overshoot 1; open3d returns NaN normals for near-degenerate triangles (seen on
    # a network avatar's TSDF mesh): those samples are left out rather than making NC NaN.
    cos = lambda a, b: np.nanmean(np.clip(np.abs(np.sum(a * b, 1)), 0, 1))  # noqa: E731
    nc = 0.5 * (cos(p_nrm, n_on_g) + cos(g_nrm, n_on_p))
    p2s = 100 * d_pg.mean()
    return MeshMetrics(chamfer_cm=float(0.5 * (p2s + 100 * d_gp.mean())), p2s_cm=float(p2s), normal_consistency=float(nc))
