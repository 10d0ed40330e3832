"""The `torch` backend: a tiled rasterizer in plain torch ops, for CUDA without gsplat (and any device).

Same result as the dense reference (`reference.py`: its `splat_alpha` and `composite` do the
per-pixel arithmetic here too), but each pixel only meets the splats whose 3.33-sigma box covers
its tile, instead of every splat. Differentiable through torch autograd. All cameras go through
one pass: tiles are numbered across cameras, so the number of kernel launches does not grow with
the camera count, and there is no Python loop over tiles or splats.

1. Project once (`project_gaussians`) and sort each camera's splats by depth.
2. Intersections (gsplat's `isect_tiles`): every kept splat is repeated once per tile its box
   covers, then the list is stable-sorted by tile, so each tile's splats stay front to back.
3. Tiles are grouped by their splat count (powers of two) and padded to the group's largest count
   K: padding wastes less than half of a group, and big groups are split so one chunk of
   `[B, K, tile * tile]` stays under `max_chunk` elements.
4. Per chunk: gather the splats, alpha `[B, K, P]` (padding has opacity 0, so alpha 0), composite
   front to back with the reference's semantics, and scatter the tiles back into the images.

Two host syncs per call (the intersection count and the per-tile counts, to size the chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians
from hgm_core.render.output import ALPHA_MIN, RenderError, RenderOutput
from hgm_core.render.projection import Projected, project_gaussians
from hgm_core.render.reference import composite, splat_alpha

TILE = 4
"""Default tile side in pixels. Small tiles fit a splat's footprint tightly: on the training render
(18k Gaussians, 4 x 96^2) 4-pixel tiles do 7.2 M splat-pixel pairs against 41 M for 16-pixel ones,
and the extra intersections (336 k vs 134 k) cost only gathers (`bench/render.py`)."""
MAX_CHUNK = 1 << 24
"""Default bound on the elements of one chunk's `[B, K, P]` alpha (a few such tensors are live at once)."""


@dataclass(frozen=True)
class TileLists:
    """Per-tile, front-to-back splat lists of C cameras, tiles numbered `(c * tiles_y + ty) * tiles_x + tx`.

    Attributes:
        splats: `[I]` flat splat index `c * N + n` of every intersection, grouped by tile, front to back.
        offsets: `[C * tiles_y * tiles_x]` start of each tile's run in `splats`.
        counts: `[C * tiles_y * tiles_x]` length of each tile's run.
        tiles_x, tiles_y: tiles across and down one image.
    """

    splats: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    tiles_x: int
    tiles_y: int


def _tile_span(center: torch.Tensor, radius: torch.Tensor, tile: int, n_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First tile and tile count `[...]` whose pixel centres lie in `[center - radius, center + radius]`.

    Same rule as the numba backend's `_tile_range`: pixel centres are at +0.5.
    """
    p0 = torch.ceil(center - radius - 0.5).clamp_min(0).long()
    p1 = torch.floor(center + radius - 0.5).clamp_max(n_pixels - 1).long()
    first = torch.div(p0, tile, rounding_mode="floor")
    count = torch.div(p1, tile, rounding_mode="floor") + 1 - first
    return first, torch.where(p1 >= p0, count, torch.zeros_like(count))


def tile_lists(proj: Projected, width: int, height: int, tile: int) -> TileLists:
    """Bin the projected splats of every camera into `tile x tile` pixel tiles, front to back per tile.

    Args:
        proj: projection of N Gaussians into C cameras (`[C, N, ...]`).
    """
    C, N = proj.depths.shape
    tiles_x, tiles_y = -(-width // tile), -(-height // tile)
    # Splats that cannot reach ALPHA_MIN anywhere get no tiles (alpha <= opacity).
    keep = (proj.radii > 0).all(-1) & (proj.opacities.detach() >= ALPHA_MIN)  # [C, N]
    depths = torch.where(keep, proj.depths.detach(), torch.full_like(proj.depths, float("inf")))
    order = torch.argsort(depths, dim=1, stable=True)  # [C, N] front to back, culled last
    ranked = (order + N * torch.arange(C, device=order.device)[:, None]).reshape(-1)  # [C * N] flat ids
    means = torch.where(keep[..., None], proj.means2d.detach(), torch.zeros_like(proj.means2d)).reshape(-1, 2)[ranked]
    radii = proj.radii.reshape(-1, 2)[ranked].to(means.dtype)
    x0, nx = _tile_span(means[:, 0], radii[:, 0], tile, width)
    y0, ny = _tile_span(means[:, 1], radii[:, 1], tile, height)
    n_tiles = nx * ny * keep.reshape(-1)[ranked]  # [C * N] tiles each ranked splat covers
    total = int(n_tiles.sum())  # host sync 1: the intersection count sizes the next tensors
    src = torch.repeat_interleave(torch.arange(C * N, device=order.device), n_tiles, output_size=total)  # [I]
    local = torch.arange(total, device=order.device) - (torch.cumsum(n_tiles, 0) - n_tiles)[src]
    row = torch.div(local, nx[src], rounding_mode="floor")
    camera = torch.div(src, N, rounding_mode="floor")
    tile_id = (camera * tiles_y + y0[src] + row) * tiles_x + x0[src] + local - row * nx[src]
    # Intersections are in (camera, depth) order, so a stable sort by tile keeps each tile front to back.
    tile_id, perm = torch.sort(tile_id, stable=True)
    counts = torch.bincount(tile_id, minlength=C * tiles_y * tiles_x)
    return TileLists(ranked[src[perm]], torch.cumsum(counts, 0) - counts, counts, tiles_x, tiles_y)


def plan_chunks(counts: list[int], tile: int, max_chunk: int) -> list[tuple[list[int], int]]:
    """Group the non-empty tiles into chunks `(tile ids, K)` of `len(ids) * K * tile**2 <= max_chunk`.

    Tiles are grouped by the power of two above their count and padded to the group's largest
    count K, so padding never doubles the work. (A single tile larger than the bound is its own chunk.)
    """
    groups: dict[int, list[int]] = {}
    for t, n in enumerate(counts):
        if n > 0:
            groups.setdefault((n - 1).bit_length(), []).append(t)
    chunks = []
    for ids in groups.values():
        k = max(counts[t] for t in ids)
        per_chunk = max(1, max_chunk // (k * tile * tile))
        chunks += [(ids[i : i + per_chunk], k) for i in range(0, len(ids), per_chunk)]
    return chunks


def _tile_pixels(tiles: torch.Tensor, lists: TileLists, tile: int, dtype: torch.dtype) -> torch.Tensor:
    """Pixel centres `[B, tile * tile, 2]` (x, y) of tiles `[B]`, row-major inside the tile."""
    t = tiles % (lists.tiles_x * lists.tiles_y)
    ty, tx = torch.div(t, lists.tiles_x, rounding_mode="floor"), t % lists.tiles_x
    r = torch.arange(tile, device=tiles.device)
    px = (tx[:, None, None] * tile + r[None, None, :]).expand(-1, tile, tile)
    py = (ty[:, None, None] * tile + r[None, :, None]).expand(-1, tile, tile)
    return torch.stack((px, py), -1).reshape(-1, tile * tile, 2).to(dtype) + 0.5


def _render_chunk(
    proj: Projected, colors: torch.Tensor, lists: TileLists, tiles: torch.Tensor, k: int, tile: int
) -> torch.Tensor:
    """Composite tiles `[B]` with their first `k` splats each: `[B, P, 6]` = rgb, alpha, sum(w z), median."""
    C, N = proj.depths.shape
    slot = torch.arange(k, device=tiles.device)
    valid = slot < lists.counts[tiles][:, None]  # [B, K]
    # Padding points at the tile's first splat (a real one, so its numbers are finite) with opacity 0.
    sid = lists.splats[lists.offsets[tiles][:, None] + torch.where(valid, slot, 0)]  # [B, K] flat c * N + n
    opac = torch.where(valid, proj.opacities.reshape(-1)[sid], torch.zeros((), dtype=colors.dtype, device=sid.device))
    alpha = splat_alpha(proj.means2d.reshape(-1, 2)[sid], proj.conics.reshape(-1, 3)[sid], opac,
                        _tile_pixels(tiles, lists, tile, colors.dtype))  # [B, K, P]
    rgb, acc, depth_sum, median = composite(alpha, colors[sid % N], proj.depths.reshape(-1)[sid])
    return torch.cat((rgb, acc[..., None], depth_sum[..., None], median[..., None]), -1)


def rasterize_torch_tiles(
    g: Gaussians,
    cameras: Cameras,
    background: torch.Tensor,
    *,
    near: float,
    far: float,
    eps2d: float,
    tile: int = TILE,
    max_chunk: int = MAX_CHUNK,
) -> RenderOutput:
    """Tiled rendering in torch ops on the Gaussians' device; see `hgm_core.render.rasterize`.

    `tile` is the tile side in pixels; `max_chunk` bounds the elements of one chunk's alpha.
    """
    if g.dtype not in (torch.float32, torch.float64):
        raise RenderError(f"the torch backend renders float32 or float64, got {g.dtype}")
    if tile < 1 or max_chunk < 1:
        raise RenderError(f"tile and max_chunk must be positive, got {tile} and {max_chunk}")
    proj = project_gaussians(g, cameras, near=near, far=far, eps2d=eps2d)
    H, W, C = cameras.height, cameras.width, len(cameras)
    lists = tile_lists(proj, W, H, tile)
    ids, values = [], []
    for tiles, k in plan_chunks(lists.counts.tolist(), tile, max_chunk):  # host sync 2
        tiles_t = torch.tensor(tiles, device=g.device)
        ids.append(tiles_t)
        values.append(_render_chunk(proj, g.colors, lists, tiles_t, k, tile))
    canvas = torch.zeros(C * lists.tiles_y * lists.tiles_x, tile * tile, 6, dtype=g.dtype, device=g.device)
    if ids:
        canvas = canvas.index_copy(0, torch.cat(ids), torch.cat(values))
    # [C, ty, tx, tile, tile, 6] -> [C, ty * tile, tx * tile, 6], cropped to the image.
    canvas = canvas.reshape(C, lists.tiles_y, lists.tiles_x, tile, tile, 6).permute(0, 1, 3, 2, 4, 5)
    canvas = canvas.reshape(C, lists.tiles_y * tile, lists.tiles_x * tile, 6)[:, :H, :W]
    color_sum, acc, depth_sum, median = canvas[..., :3], canvas[..., 3:4], canvas[..., 4:5], canvas[..., 5:6]
    rgb = color_sum + (1 - acc) * background
    depth = torch.where(acc > 0, depth_sum / acc.clamp_min(1e-10), torch.zeros_like(acc))
    return RenderOutput(rgb, acc, depth, median)


def splat_pixel_pairs(g: Gaussians, cameras: Cameras, *, tile: int = TILE, near: float = 0.01, far: float = 1e10,
                      eps2d: float = 0.3) -> dict[str, int]:
    """How much alpha work one render does: splat-pixel pairs of the padded tiles against the dense
    reference's (every splat that survives culling against every pixel of its camera).

    Returns `{"tiled": ..., "dense": ..., "intersections": ..., "chunks": ...}`.
    """
    with torch.no_grad():
        proj = project_gaussians(g, cameras, near=near, far=far, eps2d=eps2d)
        lists = tile_lists(proj, cameras.width, cameras.height, tile)
    chunks = plan_chunks(lists.counts.tolist(), tile, MAX_CHUNK)
    return {
        "tiled": sum(len(ids) * k * tile * tile for ids, k in chunks),
        "dense": int((proj.radii > 0).all(-1).sum()) * cameras.width * cameras.height,
        "intersections": int(lists.splats.numel()),
        "chunks": len(chunks),
    }
