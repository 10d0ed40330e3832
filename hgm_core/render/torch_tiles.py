"""The `torch` backend: a tiled rasterizer in plain torch ops, for CUDA without gsplat (and any device).

Same result as the dense reference (`reference.py`: its `splat_alpha` and `composite` do the
per-pixel arithmetic here too), but each pixel only meets the splats whose 3.33-sigma box covers
its tile, instead of every splat. Differentiable through torch autograd. All cameras go through
one pass: tiles are numbered across cameras, so the number of kernel launches does not grow with
the camera count, and there is no Python loop over tiles or splats.

1. Project once (`project_gaussians`) and sort each camera's splats by depth.
2. Intersections (gsplat's `isect_tiles`): every kept splat is repeated once per tile its box
   covers, then the list is stable-sorted by tile, so each tile's splats stay front to back.
3. Tiles are sorted by their splat count and cut into chunks, each padded to its largest count K
   (`TilePlan`): on the CPU, where every element costs, no tile in a chunk has half of K or less;
   on CUDA, where each kernel launch costs, as few chunks as the size bound (`max_chunk` elements
   of `[B, K, tile * tile]`) allows.
4. Per chunk: gather the splats, alpha `[B, K, P]` (padding has opacity 0, so alpha 0), composite
   front to back with the reference's semantics, and scatter the tiles back into the images.

Two host syncs per call (the intersection count and the per-tile counts, to size the chunks).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch

from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians
from hgm_core.render.output import ALPHA_MIN, RenderError, RenderOutput
from hgm_core.render.projection import Projected, project_gaussians
from hgm_core.render.reference import composite, splat_alpha


@dataclass(frozen=True)
class TilePlan:
    """How the torch backend cuts its work (see `plan_chunks`).

    Attributes:
        tile: tile side in pixels.
        growth: a chunk's tiles all hold more than `K / growth` splats, K the chunk's padded count
            (padding at most multiplies the work by `growth`; `inf`: pad to the largest count).
        max_chunk: bound on the elements of one chunk's `[B, K, tile * tile]` alpha.
    """

    tile: int
    growth: float
    max_chunk: int

    def __post_init__(self):
        if self.tile < 1 or self.growth <= 1 or self.max_chunk < 1:
            raise RenderError(f"a tile plan needs tile >= 1, growth > 1 and max_chunk >= 1, got {self}")


CPU_PLAN = TilePlan(tile=4, growth=2.0, max_chunk=1 << 24)
"""The CPU pays per element, so: small tiles, padding below 2x, 16 M-element chunks. On the training
render (18k Gaussians, 4 x 96^2; `bench/render_torch.py`, one thread) tiles of 2, 4 and 8 pixels
evaluate 4.5 M, 7.7 M and 16 M splat-pixel pairs (dense: 664 M) and took 0.33 / 0.33 / 0.53 s
forward, 0.76 / 0.78 / 1.9 s forward + backward; 4 keeps the intersection list at 336 k (2: 790 k)."""
ACCEL_PLAN = TilePlan(tile=2, growth=math.inf, max_chunk=1 << 26)
"""CUDA pays per kernel launch, so: one chunk padded to the largest count while it stays under
64 M elements (0.25 GiB per float32 tensor). The training render then takes ~690 kernels for forward
+ backward (the CPU plan: ~2,300), and 2-pixel tiles move ~13 GB through memory against ~18 GB for
4-pixel ones (profiler operand sizes; an estimate, not yet timed on a GPU: `bench/render_torch.py
--device cuda` does)."""


def default_plan(device: torch.device) -> TilePlan:
    """`CPU_PLAN` on the CPU, `ACCEL_PLAN` elsewhere (CUDA)."""
    return CPU_PLAN if device.type == "cpu" else ACCEL_PLAN


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


def plan_chunks(sorted_counts: list[int], tile: int, max_chunk: int, growth: float) -> list[tuple[int, int, int]]:
    """Cut tiles sorted by splat count (descending) into chunks `(start, stop, K)` of that order.

    A chunk's tiles are padded to its first (largest) count K; every tile in it has more than
    `K / growth` splats (so padding at most multiplies the work by `growth`), and
    `(stop - start) * K * tile**2 <= max_chunk` unless a single tile is larger. Empty tiles are left out.
    """
    chunks = []
    start = 0
    while start < len(sorted_counts) and sorted_counts[start] > 0:
        k = sorted_counts[start]
        # First tile with at most K / growth splats (the list is descending, so bisect on -count).
        stop = bisect.bisect_left(sorted_counts, -k / growth, lo=start, key=lambda n: -n)
        stop = min(stop, start + max(1, max_chunk // (k * tile * tile)))
        chunks.append((start, stop, k))
        start = stop
    return chunks


def chunk_tiles(lists: TileLists, plan: TilePlan) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Tile ids `[T]` sorted by splat count (descending) and the chunks `plan_chunks` cuts them into."""
    sorted_counts, order = torch.sort(lists.counts, descending=True, stable=True)
    return order, plan_chunks(sorted_counts.tolist(), plan.tile, plan.max_chunk, plan.growth)  # the call's 2nd host sync


def _tile_pixels(tiles: torch.Tensor, lists: TileLists, tile: int, dtype: torch.dtype) -> torch.Tensor:
    """Pixel centres `[B, tile * tile, 2]` (x, y) of tiles `[B]`, row-major inside the tile."""
    t = tiles % (lists.tiles_x * lists.tiles_y)
    ty, tx = torch.div(t, lists.tiles_x, rounding_mode="floor"), t % lists.tiles_x
    r = torch.arange(tile, device=tiles.device)
    px = (tx[:, None, None] * tile + r[None, None, :]).expand(-1, tile, tile)
    py = (ty[:, None, None] * tile + r[None, :, None]).expand(-1, tile, tile)
    return torch.stack((px, py), -1).reshape(-1, tile * tile, 2).to(dtype) + 0.5


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`values[index]` for `values [M, ...]` and any-shaped `index`, as `index_select`: its backward is an
    atomic `index_add_`, while advanced indexing's sorts the indices first (on CUDA that sort was 90%
    of a training step's render backward: 0.9 of 1.0 s for 16 samples x 4 views)."""
    return values.index_select(0, index.reshape(-1)).reshape(*index.shape, *values.shape[1:])


def _render_chunk(
    proj: Projected, colors: torch.Tensor, lists: TileLists, tiles: torch.Tensor, k: int, tile: int
) -> torch.Tensor:
    """Composite tiles `[B]` with their first `k` splats each: `[B, P, 6]` = rgb, alpha, sum(w z), median."""
    C, N = proj.depths.shape
    slot = torch.arange(k, device=tiles.device)
    valid = slot < lists.counts[tiles][:, None]  # [B, K]
    # Padding points at the tile's first splat (a real one, so its numbers are finite) with opacity 0.
    sid = lists.splats[lists.offsets[tiles][:, None] + torch.where(valid, slot, 0)]  # [B, K] flat c * N + n
    opac = torch.where(valid, _take(proj.opacities.reshape(-1), sid), 0.0)
    alpha = splat_alpha(_take(proj.means2d.reshape(-1, 2), sid), _take(proj.conics.reshape(-1, 3), sid), opac,
                        _tile_pixels(tiles, lists, tile, colors.dtype))  # [B, K, P]
    rgb, acc, depth_sum, median = composite(alpha, _take(colors, sid % N), _take(proj.depths.reshape(-1), sid))
    return torch.cat((rgb, acc[..., None], depth_sum[..., None], median[..., None]), -1)


def rasterize_torch_tiles(
    g: Gaussians,
    cameras: Cameras,
    background: torch.Tensor,
    *,
    near: float,
    far: float,
    eps2d: float,
    plan: TilePlan | None = None,
) -> RenderOutput:
    """Tiled rendering in torch ops on the Gaussians' device; see `hgm_core.render.rasterize`.

    `plan`: tile size and chunking (default: `default_plan` of the Gaussians' device).
    """
    if g.dtype not in (torch.float32, torch.float64):
        raise RenderError(f"the torch backend renders float32 or float64, got {g.dtype}")
    plan = plan or default_plan(g.device)
    tile = plan.tile
    proj = project_gaussians(g, cameras, near=near, far=far, eps2d=eps2d)
    H, W, C = cameras.height, cameras.width, len(cameras)
    lists = tile_lists(proj, W, H, tile)
    order, chunks = chunk_tiles(lists, plan)
    canvas = torch.zeros(C * lists.tiles_y * lists.tiles_x, tile * tile, 6, dtype=g.dtype, device=g.device)
    if chunks:
        values = [_render_chunk(proj, g.colors, lists, order[start:stop], k, tile) for start, stop, k in chunks]
        canvas = canvas.index_copy(0, order[: chunks[-1][1]], torch.cat(values))
    # [C, ty, tx, tile, tile, 6] -> [C, ty * tile, tx * tile, 6], cropped to the image.
    canvas = canvas.reshape(C, lists.tiles_y, lists.tiles_x, tile, tile, 6).permute(0, 1, 3, 2, 4, 5)
    canvas = canvas.reshape(C, lists.tiles_y * tile, lists.tiles_x * tile, 6)[:, :H, :W]
    color_sum, acc, depth_sum, median = canvas[..., :3], canvas[..., 3:4], canvas[..., 4:5], canvas[..., 5:6]
    rgb = color_sum + (1 - acc) * background
    depth = torch.where(acc > 0, depth_sum / acc.clamp_min(1e-10), torch.zeros_like(acc))
    return RenderOutput(rgb, acc, depth, median)


def splat_pixel_pairs(g: Gaussians, cameras: Cameras, *, plan: TilePlan | None = None, near: float = 0.01,
                      far: float = 1e10, eps2d: float = 0.3) -> dict[str, int]:
    """How much alpha work one render does: splat-pixel pairs of the padded tiles against the dense
    reference's (every splat that survives culling against every pixel of its camera), with `plan`
    (default: `default_plan` of the Gaussians' device).

    Returns `{"tiled": ..., "dense": ..., "intersections": ..., "chunks": ...}`.
    """
    plan = plan or default_plan(g.device)
    with torch.no_grad():
        proj = project_gaussians(g, cameras, near=near, far=far, eps2d=eps2d)
        lists = tile_lists(proj, cameras.width, cameras.height, plan.tile)
    _, chunks = chunk_tiles(lists, plan)
    return {
        "tiled": sum((stop - start) * k * plan.tile**2 for start, stop, k in chunks),
        "dense": int((proj.radii > 0).all(-1).sum()) * cameras.width * cameras.height,
        "intersections": int(lists.splats.numel()),
        "chunks": len(chunks),
    }
