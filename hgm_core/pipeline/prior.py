"""The `prior` stage: an avatar from one image and a body fit, with no network weights.

This is the zero-weights baseline every trained model must beat, and the fallback when no
checkpoint is configured. Everything is in the input camera's optical frame (metres).

How it is built, per pixel of a working grid laid over the person (at most `resolution` pixels
along the larger side of the person's box):
- Depth: the fitted body is ray cast from the camera; the first and last hits give its front and
  back depth. Over the whole mask, the surface sits around the body's medial depth (extended to
  mask pixels the body misses — loose clothes, hair, fit error — from the nearest covered pixel and
  smoothed), with a half-thickness that is the larger of the body's and `inflation` times the
  pixel's distance to the silhouette (see `body_layers`); at least `min_thickness_m` overall.
- Front Gaussians: one per mask pixel at the front depth, coloured by the pixel, flat discs
  oriented by the depth map's normal, sized by the pixel footprint (so neighbours overlap).
- Back Gaussians: one per mask pixel at the back depth. Colour heuristic (documented, visible in
  every turntable): the back shows the front pixel's colour darkened by `back_shade` — single-view
  methods without a generative back view (this stage) cannot know the back, and the mirrored
  colour keeps garments consistent front to back.
- Side Gaussians: along the silhouette band (`side_band_px`), `side_layers` Gaussians between
  front and back depth close the gap a side view would otherwise see through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from hgm_core.camera import crop_intrinsics, pixel_rays
from hgm_core.gaussians import Gaussians, quat_from_z
from hgm_core.perception.crop import square_box
from hgm_core.types import BadInputError, NoPersonError


@dataclass(frozen=True)
class PriorConfig:
    """Settings of the prior avatar (see the module docstring for what each does)."""

    resolution: int = 192
    margin: float = 0.05
    min_thickness_m: float = 0.04
    inflation: float = 0.6
    smooth_px: float = 1.5
    side_band_px: int = 2
    side_layers: int = 4
    back_shade: float = 0.8
    opacity: float = 0.95
    footprint_sigma: float = 0.6
    thickness_ratio: float = 0.25


def body_depth_maps(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Front and back depth of a mesh seen by a pinhole camera at the origin (optical axes).

    Args:
        vertices: `[V, 3]` camera-frame points; faces: `[F, 3]`; K: `[3, 3]`.
    Returns:
        front, back: `[H, W]` camera z of the first and last surface hit along each pixel's ray
        (inf where the ray misses).
    """
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, np.float32)),
                        o3d.core.Tensor(np.ascontiguousarray(faces, np.uint32)))
    dirs = pixel_rays(K, np.eye(4), (0, 0, width, height))[1].reshape(-1, 3)  # z = 1: hit distance = depth
    far = float(np.max(vertices[:, 2])) * 2.0 + 1.0
    zeros = np.zeros_like(dirs)
    front = scene.cast_rays(o3d.core.Tensor(np.concatenate((zeros, dirs), 1).astype(np.float32)))["t_hit"].numpy()
    from_back = np.concatenate((dirs * far, -dirs), 1).astype(np.float32)
    t_back = scene.cast_rays(o3d.core.Tensor(from_back))["t_hit"].numpy()
    back = np.where(np.isfinite(t_back), far - t_back, np.inf)
    return front.reshape(height, width), back.reshape(height, width)


def extend_depth(depth: np.ndarray, mask: np.ndarray, smooth_px: float) -> np.ndarray:
    """Fill `depth` inside `mask` where it is not finite, then smooth within the mask.

    Args:
        depth: `[H, W]` with inf where unknown; mask: `[H, W]` bool.
    Returns:
        `[H, W]` depth, finite inside the mask (nan outside).
    """
    known = np.isfinite(depth) & mask
    if not known.any():
        raise NoPersonError("the fitted body does not overlap the person mask")
    _, (iy, ix) = ndimage.distance_transform_edt(~known, return_indices=True)
    filled = depth[iy, ix]
    if smooth_px > 0:
        # Normalised convolution: average only over mask pixels so the background does not leak in.
        m = mask.astype(np.float64)
        num = ndimage.gaussian_filter(np.where(mask, filled, 0.0), smooth_px)
        den = ndimage.gaussian_filter(m, smooth_px)
        filled = np.where(den > 1e-6, num / np.maximum(den, 1e-6), filled)
    return np.where(mask, filled, np.nan)


def body_layers(front: np.ndarray, back: np.ndarray, mask: np.ndarray, focal: float,
                config: PriorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Front and back depth over the whole mask, from the body's and the silhouette's thickness.

    Around the body's medial depth `(front + back) / 2`, the half-thickness is the larger of the
    body's own and `inflation` times the pixel's distance to the silhouette in metres (a round
    cross-section, as a garment or limb has): where the body explains the silhouette its surface is
    kept; where clothes or hair reach past it (a skirt around two legs), the silhouette's width
    gives the depth the body cannot.

    Args:
        front, back: `[H, W]` body depth (inf where the ray misses); mask: `[H, W]` bool; focal: px.
    Returns:
        front, back: `[H, W]`, finite in the mask, `back >= front + min_thickness_m`.
    """
    hit = np.isfinite(front) & np.isfinite(back)
    front, back = np.where(hit, front, 0.0), np.where(hit, back, 0.0)  # no inf - inf below
    mid = extend_depth(np.where(hit, (front + back) / 2, np.inf), mask, config.smooth_px)
    half_body = extend_depth(np.where(hit, (back - front) / 2, np.inf), mask, config.smooth_px)
    inside_px = ndimage.distance_transform_edt(mask)
    half = np.maximum(half_body, config.inflation * inside_px * mid / focal)
    half = np.maximum(half, config.min_thickness_m / 2)
    return mid - half, mid + half


def _normals(points: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` points -> `[H, W, 3]` unit normals from central differences (sign arbitrary)."""
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))


def _disc_quats(normals: np.ndarray) -> np.ndarray:
    """`[M, 3]` unit normals -> `[M, 4]` quaternions (w first) turning local +z onto ±normal.

    A flat disc is symmetric, so the normal is flipped to z >= 0: the turn stays far from the
    ambiguous half turn of -z."""
    return quat_from_z(torch.from_numpy(np.where(normals[:, 2:3] < 0, -normals, normals))).numpy()


def working_grid(mask: np.ndarray, K: np.ndarray, config: PriorConfig) -> tuple[tuple[float, float, float, float], np.ndarray, int]:
    """Square box around the person and the K of an `R x R` grid over it.

    Returns:
        (box (x0, y0, x1, y1) in image pixels, K_grid `[3, 3]`, R).
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise NoPersonError("the person mask is empty")
    box = square_box((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), config.margin, whole_pixels=False)
    R = int(min(config.resolution, max(8, round(box[2] - box[0]))))
    Kg = crop_intrinsics(torch.as_tensor(K, dtype=torch.float64), box, (R, R)).numpy()
    return box, Kg, R


def _sample(image: np.ndarray, box: tuple[float, float, float, float], R: int, order: int) -> np.ndarray:
    """Resample `[H, W, C]` over `box` onto an `R x R` grid of pixel centres (edge-clamped)."""
    x0, y0, x1, y1 = box
    s = (x1 - x0) / R
    g = (np.arange(R) + 0.5) * s - 0.5
    yy, xx = np.meshgrid(y0 + g, x0 + g, indexing="ij")
    return np.stack(
        [ndimage.map_coordinates(image[..., c].astype(np.float64), (yy, xx), order=order, mode="nearest") for c in range(image.shape[-1])],
        -1,
    )


def prior_gaussians(
    image: np.ndarray,
    mask: np.ndarray,
    K: np.ndarray,
    body_vertices: np.ndarray,
    body_faces: np.ndarray,
    config: PriorConfig = PriorConfig(),
) -> Gaussians:
    """Build the prior avatar.

    Args:
        image: `[H, W, 3]` uint8 RGB; mask: `[H, W]` bool person mask; K: `[3, 3]` intrinsics.
        body_vertices: `[V, 3]` fitted body in the camera optical frame (metres); body_faces: `[F, 3]`.
    Returns:
        Gaussians in the camera optical frame (front, then back, then side layers).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadInputError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise BadInputError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    box, Kg, R = working_grid(mask, K, config)
    rgb = np.clip(_sample(image, box, R, order=1) / 255.0, 0, 1)
    m = _sample(mask[..., None].astype(np.float64), box, R, order=1)[..., 0] > 0.5
    if not m.any():
        raise NoPersonError("the person mask vanishes at the working resolution")
    front_raw, back_raw = body_depth_maps(body_vertices, body_faces, Kg, R, R)
    front, back = body_layers(front_raw, back_raw, m, Kg[0, 0], config)

    rays = pixel_rays(Kg, np.eye(4), (0, 0, R, R))[1]
    p_front = rays * np.nan_to_num(front)[..., None]
    p_back = rays * np.nan_to_num(back)[..., None]
    footprint = np.nan_to_num(front) / Kg[0, 0]  # metres per grid pixel at the front surface

    sel = np.nonzero(m)
    band = m & (ndimage.distance_transform_edt(m) <= config.side_band_px)
    sb = np.nonzero(band)
    t = (np.arange(config.side_layers) + 1.0) / (config.side_layers + 1.0)
    side_pts = (p_front[sb][None] * (1 - t)[:, None, None] + p_back[sb][None] * t[:, None, None]).reshape(-1, 3)
    gap = (back[sb] - front[sb]) / (config.side_layers + 1.0)

    sig_f = config.footprint_sigma * footprint[sel]
    sig_b = config.footprint_sigma * (np.nan_to_num(back) / Kg[0, 0])[sel]
    # Side Gaussians are needles along the pixel ray: long enough to close the gap between layers,
    # no wider than a front splat so they never widen the silhouette.
    sig_s_lat = np.tile(config.footprint_sigma * footprint[sb], config.side_layers)
    sig_s_ray = np.tile(np.maximum(config.footprint_sigma * footprint[sb], 0.6 * gap), config.side_layers)
    means = np.concatenate((p_front[sel], p_back[sel], side_pts))
    quats = np.concatenate((
        _disc_quats(_normals(p_front)[sel]),
        _disc_quats(_normals(p_back)[sel]),
        np.tile(_disc_quats(rays[sb] / np.linalg.norm(rays[sb], axis=-1, keepdims=True)), (config.side_layers, 1)),
    ))
    scales = np.concatenate((
        np.stack((sig_f, sig_f, config.thickness_ratio * sig_f), -1),
        np.stack((sig_b, sig_b, config.thickness_ratio * sig_b), -1),
        np.stack((sig_s_lat, sig_s_lat, sig_s_ray), -1),
    ))
    # Silhouette pixels mix person and background; the unseen back and sides take their colour from
    # the nearest pixel a few pixels inside the mask instead, so no background fringe wraps around.
    inner = ndimage.binary_erosion(m, iterations=config.side_band_px + 1)
    if inner.any():
        _, (iy, ix) = ndimage.distance_transform_edt(~inner, return_indices=True)
        hidden_rgb = rgb[iy, ix]
    else:
        hidden_rgb = rgb
    colors = np.concatenate((rgb[sel], config.back_shade * hidden_rgb[sel], np.tile(hidden_rgb[sb], (config.side_layers, 1))))
    n = len(means)
    return Gaussians(
        means=torch.from_numpy(means).float(),
        quats=torch.from_numpy(quats).float(),
        scales=torch.from_numpy(np.maximum(scales, 1e-5)).float(),
        opacities=torch.full((n,), config.opacity),
        colors=torch.from_numpy(np.clip(colors, 0, 1)).float(),
    )
