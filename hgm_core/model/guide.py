"""Body-guided priors: the avatar the network corrects instead of predicting from scratch.

A first CPU training probe (issue #11) found that a network predicting every Gaussian attribute
from scratch spends its budget learning the silhouette, and that a pixel-aligned set started at a
tiny opacity never receives gradient (contributions below 1/255 are skipped by the rasterizer).
With `HGMConfig.body_guided` the heads predict *residuals* on top of raw values built here:

- body set: every vertex coloured from the input image(s) at its projection (the body-colour
  baseline), opaque (`BODY_OPACITY_LOGIT`), isotropic at about the vertex spacing;
- pixel-aligned set: one Gaussian per splat pixel on the input ray at the body's depth there
  (a z-buffer of the projected vertices), coloured by the pixel, sized to the pixel footprint,
  with an opacity start that still gets gradient (`PIXEL_OPACITY_LOGIT`) except on the white
  background (`BACKGROUND_WHITE`).

All functions are pure; shapes use B (batch), V (input views), Nv (vertices), S (splat side).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hgm_core.camera import flip_camera_axes, project_points

BODY_OPACITY_LOGIT = 2.0
"""sigmoid(2) = 0.88: the body set starts as an opaque skin."""
PIXEL_OPACITY_LOGIT = (0.0, -2.0, -7.0)
"""Start of the pixel-aligned set on the body's footprint (0.5), in a band of `BAND_PX` splat pixels
around it (0.12: loose clothes and hair live there; still well above 1/255, so it gets gradient),
and beyond (0.001: off). Seen edge-on from a side view a sheet of 0.12 Gaussians 64 pixels wide
stacks to an opaque stripe, which is why the far background starts off."""
BAND_PX = 3
"""Width of the band around the body footprint, in splat pixels (~5% of the image at 64^2)."""
BACKGROUND_WHITE = 0.97
"""Pixels whose darkest channel is above this are background (inputs are the person composited on
white): their Gaussians start off wherever they are. Otherwise white Gaussians at the body's depth
(body misfit, the band) show as a white veil from the side views, and a first run was slow to learn
them away (validation foreground PSNR fell below the baseline's for 1,200 steps)."""
BODY_SCALE_PER_HEIGHT = 0.0045
"""Isotropic body-Gaussian scale as a share of the body's height (~0.6 of anny's ~1.1 cm vertex spacing)."""
PIXEL_SCALE_PER_FOOTPRINT = 0.6
"""Pixel-Gaussian scale as a share of the pixel's footprint at its depth."""
COLOUR_EPS = 1e-3


SOLID = 0.9
"""Input pixels whose darkest channel is below this are solid person colour (not the white background
nor an edge pixel blended with it)."""
EXTEND_PX = 6
"""`extend_colours` carries the person's colours this many input pixels past the solid region."""


def extend_colours(images: torch.Tensor, iterations: int = EXTEND_PX) -> torch.Tensor:
    """Carry solid person colours outwards over the white background (masked 3x3 averaging).

    The body-colour prior samples the image at the projected vertices; a side vertex lands on the
    silhouette edge (blended with white) and a misfit one on the background, so without this the
    sides of the body start white. `images [N, 3, H, W]` in [0, 1] -> same shape."""
    solid = (images.amin(1, keepdim=True) < SOLID).to(images.dtype)
    colour = images * solid
    for _ in range(iterations):
        w = F.avg_pool2d(solid, 3, 1, 1)
        c = F.avg_pool2d(colour, 3, 1, 1)
        grow = (solid == 0) & (w > 0)
        colour = torch.where(grow, c / w.clamp_min(1e-6), colour)
        solid = torch.where(grow, torch.ones_like(solid), solid)
    return torch.where(solid > 0, colour, images)


def inverse_colour(rgb: torch.Tensor) -> torch.Tensor:
    """Raw colour whose activation `0.5 tanh(x) + 0.5` gives `rgb` (clamped away from 0 and 1)."""
    return torch.atanh((2 * rgb - 1).clamp(-1 + COLOUR_EPS, 1 - COLOUR_EPS))


def inverse_scale(scale: torch.Tensor) -> torch.Tensor:
    """Raw scale whose activation `0.1 softplus(x)` gives `scale` (> 0)."""
    s = (scale / 0.1).clamp_min(1e-6)
    return s + torch.log(-torch.expm1(-s))  # log(exp(s) - 1), stable for large s


def camera_points(points: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """`points [B, P, 3]` canonical -> `[B, V, P, 3]` in each view's optical camera axes (z forward).

    `c2w` is `[B, V, 4, 4]` OpenGL camera-to-world."""
    viewmats = torch.linalg.inv(flip_camera_axes(c2w))
    return torch.einsum("bvij,bpj->bvpi", viewmats[..., :3, :3], points) + viewmats[:, :, None, :3, 3]


def body_colours(images: torch.Tensor, vertices: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Body-colour baseline: each vertex takes the colour at its projection in the nearest input view.

    Occlusion is ignored on purpose (it is what the residual learns): with one view the back of the
    body repeats the front. The image's person colours are first extended past the silhouette
    (`extend_colours`), so side and misfit vertices take a near colour instead of white.

    Args:
        images: `[B, V, 3, H, W]` RGB in [0, 1]; vertices: `[B, Nv, 3]` canonical;
        K: `[B, V, 3, 3]` intrinsics of the images; c2w: `[B, V, 4, 4]` OpenGL camera-to-world.
    Returns:
        `[B, Nv, 3]` RGB in [0, 1].
    """
    B, V, _, H, W = images.shape
    cam = camera_points(vertices, c2w)  # [B, V, Nv, 3]
    uv = project_points(cam, K, min_depth=1e-6)
    grid = torch.stack((2 * uv[..., 0] / W - 1, 2 * uv[..., 1] / H - 1), -1).clamp(-1, 1)
    s = F.grid_sample(extend_colours(images.reshape(B * V, 3, H, W)), grid.reshape(B * V, -1, 1, 2), mode="bilinear",
                      padding_mode="border", align_corners=False)[..., 0]  # [B*V, 3, Nv]
    s = s.reshape(B, V, 3, -1).permute(0, 1, 3, 2)  # [B, V, Nv, 3]
    nearest = cam[..., 2].argmin(1)  # [B, Nv]: the view whose camera is closest sees that side
    return torch.gather(s, 1, nearest[:, None, :, None].expand(B, 1, s.shape[2], 3))[:, 0]


def body_depth_map(vertices: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, image_size: int, splat_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-buffer of the projected vertices on each view's splat grid, grown into a band around the body.

    Args:
        vertices: `[B, Nv, 3]` canonical; K: `[B, V, 3, 3]` at `image_size`; c2w: `[B, V, 4, 4]` OpenGL.
    Returns:
        depth `[B, V, S, S]` (camera z: the nearest vertex per pixel; pixels up to `BAND_PX` off the
        body take their nearest body depth, farther ones the view's median body depth) and
        region `[B, V, S, S]` long: 0 on the body (holes of one pixel closed), 1 in the band, 2 beyond.
    """
    B, V = K.shape[:2]
    S = splat_size
    cam = camera_points(vertices, c2w)
    z = cam[..., 2]
    Ks = K * torch.tensor([[S / image_size], [S / image_size], [1.0]], dtype=K.dtype, device=K.device)
    uv = torch.floor(project_points(cam, Ks, min_depth=1e-6)).long()
    ok = (z > 1e-3) & (uv >= 0).all(-1) & (uv < S).all(-1)
    far = torch.finfo(z.dtype).max
    flat = torch.full((B * V * S * S,), far, dtype=z.dtype, device=z.device)
    base = torch.arange(B * V, device=z.device).reshape(B, V, 1) * S * S
    index = (base + uv[..., 1] * S + uv[..., 0])[ok]
    depth = flat.scatter_reduce(0, index, z[ok], reduce="amin").reshape(B * V, 1, S, S)
    region = torch.full(depth.shape, 2, dtype=torch.long, device=z.device)
    for ring in range(BAND_PX + 1):  # ring 0 closes one-pixel holes; later rings grow the band
        grown = -F.max_pool2d(-depth, 3, 1, 1)
        region = torch.where((region == 2) & (grown < far), torch.full_like(region, 0 if ring == 0 else 1), region)
        depth = torch.where(depth < far, depth, grown)
    zs = torch.where(ok, z, torch.nan)
    median = zs.nanmedian(-1).values  # [B, V]; NaN when no vertex is in view
    fallback = torch.where(torch.isnan(median), c2w[..., :3, 3].norm(dim=-1), median).reshape(B * V, 1, 1, 1)
    depth = torch.where(depth < far, depth, fallback)
    return depth.reshape(B, V, S, S), region.reshape(B, V, S, S)


def splat_rays(K: torch.Tensor, c2w: torch.Tensor, image_size: int, splat_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the splat-pixel centres.

    Returns origins `[B, V, 1, 1, 3]` and directions `[B, V, S, S, 3]` in canonical coordinates, scaled
    so that camera z = 1 (a point at depth z is `o + z * d`)."""
    S = splat_size
    scale = image_size / S
    c = (torch.arange(S, dtype=K.dtype, device=K.device) + 0.5) * scale  # centres in input pixels
    fx, fy, cx, cy = (K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2])
    x = (c[None, None, None, :] - cx[..., None, None]) / fx[..., None, None]  # [B, V, 1, S]
    y = (c[None, None, :, None] - cy[..., None, None]) / fy[..., None, None]  # [B, V, S, 1]
    x, y = torch.broadcast_tensors(x, y)
    d_cv = torch.stack((x, y, torch.ones_like(x)), -1)  # optical axes
    R = flip_camera_axes(c2w)[..., :3, :3]  # optical camera axes -> canonical
    d = torch.einsum("bvij,bvhwj->bvhwi", R, d_cv)
    return c2w[:, :, None, None, :3, 3], d


def body_prior(images: torch.Tensor, vertices: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Raw `[B, Nv, 14]` body-set prior (xyz offset 0, opaque, vertex-sized, body colours)."""
    B, Nv, _ = vertices.shape
    height = (vertices[..., 1].amax(1) - vertices[..., 1].amin(1)).clamp_min(1e-3)  # [B]
    raw = vertices.new_zeros(B, Nv, 14)
    raw[..., 3] = BODY_OPACITY_LOGIT
    raw[..., 4:7] = inverse_scale(BODY_SCALE_PER_HEIGHT * height)[:, None, None]
    raw[..., 7] = 1.0  # identity rotation
    raw[..., 11:14] = inverse_colour(body_colours(images, vertices, K, c2w))
    return raw


def pixel_prior(images: torch.Tensor, vertices: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, splat_size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel-aligned prior.

    Returns:
        centres `[B, V*S*S, 3]`: each splat pixel's ray at the body's depth (canonical), and
        raw `[B, V*S*S, 14]` attributes (xyz channels 0): opacity start by region (off on white
        background pixels), pixel-sized,
        the pixel's colour. View-major then row-major, as the UNet set.
    """
    B, V, _, H, _ = images.shape
    S = splat_size
    depth, region = body_depth_map(vertices, K, c2w, H, S)
    origin, dirs = splat_rays(K, c2w, H, S)
    centres = (origin + depth[..., None] * dirs).reshape(B, V * S * S, 3)
    fy_splat = K[..., 1, 1] * S / H  # [B, V]
    footprint_size = depth / fy_splat[..., None, None]
    colour = F.adaptive_avg_pool2d(images.reshape(B * V, 3, H, H), S).reshape(B, V, 3, S, S).permute(0, 1, 3, 4, 2)
    raw = images.new_zeros(B, V, S, S, 14)
    background = colour.amin(-1) > BACKGROUND_WHITE
    raw[..., 3] = torch.tensor(PIXEL_OPACITY_LOGIT, dtype=raw.dtype, device=raw.device)[torch.where(background, 2, region)]
    raw[..., 4:7] = inverse_scale(PIXEL_SCALE_PER_FOOTPRINT * footprint_size)[..., None]
    raw[..., 7] = 1.0
    raw[..., 11:14] = inverse_colour(colour)
    return centres, raw.reshape(B, V * S * S, 14)
