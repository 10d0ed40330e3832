"""Numba kernels of the tiled CPU rasterizer: tile binning, forward compositing, analytic backward.

Conventions follow gsplat's `isect_tiles` / `rasterize_to_pixels` (3DGS): 16x16 tiles, per-tile
lists sorted front to back, pixel centres at +0.5, `sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`,
`alpha = min(ALPHA_MAX, o exp(-sigma))` skipped below `ALPHA_MIN`, a pixel stops (exclusively)
once its transmittance would fall to `T_MIN`.

Two CPU-specific choices keep the result identical while doing far less work than "every pixel of
the tile against every splat of the tile":
- the splat loop is outside the pixel loop, so a splat visits only its own pixels, row by row over
  the exact span where `o exp(-sigma) >= ALPHA_MIN` (a quadratic in x; the span is widened a
  little so rounding never drops a pixel the alpha test would accept);
- each row of a tile keeps a bit mask of its unfinished pixels, so finished rows cost one test,
  and a tile stops as soon as all of its pixels are done.

Splats are depth-sorted (radix sort) and packed once per call into one row each (`P_*` columns),
in depth order per camera, so the tile loops read memory forwards, one cache line per splat.

The backward is the 3DGS one: walk each tile's list back to front, recover the transmittance
before every splat from the final one, and carry the colour/depth composited behind it. Gradients
are written per intersection (each belongs to one tile, so threads never share a slot) and summed
per Gaussian by the caller.

Kernels are compiled lazily per dtype (float32 for rendering, float64 for gradcheck) and cached
on disk where `NUMBA_CACHE_DIR` points (`hgm_core.runtime.configure_process` sets it).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from hgm_core.render.output import ALPHA_MAX, ALPHA_MIN, T_MIN

TILE = 16
MEDIAN_T = 0.5
"""Median depth: the depth of the first splat after which the transmittance is below this."""
SPAN_SLACK = 0.01
"""Added to the exponent bound when computing row spans; the alpha test then decides exactly."""
N_GRAD = 10
"""Per-splat gradient slots: mean2d (x, y), conic (a, b, c), opacity, colour (r, g, b), depth."""

# Columns of a packed splat row.
P_MX, P_MY, P_A, P_B, P_C, P_O, P_Z, P_R, P_G, P_BL, P_2ASMAX, P_DYMAX, P_DET, P_INVA = range(14)
P_WIDTH = 16  # padded: a float32 row is one 64-byte cache line

_jit = dict(cache=True, fastmath=False, nogil=True)


@numba.njit(**_jit)
def _tile_range(lo: float, hi: float, size: int, n_pixels: int) -> tuple[int, int]:
    """Tiles `[t0, t1)` whose pixel centres may lie in the closed interval `[lo, hi]`."""
    p0 = max(int(np.ceil(lo - 0.5)), 0)
    p1 = min(int(np.floor(hi - 0.5)), n_pixels - 1)
    if p1 < p0:
        return 0, 0
    return p0 // size, p1 // size + 1


@numba.njit(**_jit)
def depth_order(depths, radii):
    """`[C, N]` indices sorting each camera's visible splats front to back (culled ones last).

    A stable LSD radix sort on the IEEE bits of the depths as float64: for positive numbers the bit
    patterns sort like the values, and only splats in front of the near plane are visible.
    """
    C, N = depths.shape
    order = np.empty((C, N), np.int64)
    keys = np.empty(N, np.uint64)
    tmp_keys = np.empty(N, np.uint64)
    idx = np.empty(N, np.int64)
    tmp_idx = np.empty(N, np.int64)
    bits = np.empty(1, np.float64)
    for c in range(C):
        for n in range(N):
            bits[0] = depths[c, n]
            visible = radii[c, n, 0] > 0 and radii[c, n, 1] > 0 and depths[c, n] > 0
            keys[n] = bits.view(np.uint64)[0] if visible else np.uint64(0xFFFFFFFFFFFFFFFF)
            idx[n] = n
        for shift in range(0, 64, 16):
            counts = np.zeros(65537, np.int64)
            for n in range(N):
                counts[1 + ((keys[n] >> np.uint64(shift)) & np.uint64(0xFFFF))] += 1
            if counts.max() == N:  # every key has the same digit here: the pass would not move anything
                continue
            counts = np.cumsum(counts)
            for n in range(N):
                d = (keys[n] >> np.uint64(shift)) & np.uint64(0xFFFF)
                tmp_keys[counts[d]], tmp_idx[counts[d]] = keys[n], idx[n]
                counts[d] += 1
            keys, tmp_keys = tmp_keys, keys
            idx, tmp_idx = tmp_idx, idx
        order[c] = idx
    return order


@numba.njit(**_jit)
def prepare(means2d, conics, opacities, depths, colors, radii, width, height):
    """Pack splats in depth order and build the per-tile lists (gsplat's `isect_tiles`).

    Args:
        means2d `[C, N, 2]`, conics `[C, N, 3]`, opacities `[C, N]`, depths `[C, N]`, colors `[N, 3]`,
        radii `[C, N, 2]` int (0 = culled).
    Returns:
        packed `[C * N, P_WIDTH]` (row `c * N + i` is camera c's i-th nearest splat), offsets
        `[C * TH * TW + 1]` into ids `[M]` (packed row indices, front to back within each tile),
        order `[C, N]` (packed row `c * N + i` holds splat `order[c, i]`).
    """
    order = depth_order(depths, radii)
    C, N = order.shape
    dt = means2d.dtype
    alpha_min = dt.type(ALPHA_MIN)
    tw, th = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    packed = np.zeros((C * N, P_WIDTH), dt)
    rect = np.zeros((C * N, 4), np.int64)
    counts = np.zeros(C * th * tw + 1, np.int64)
    for c in range(C):
        for i in range(N):
            n, row = order[c, i], c * N + i
            a, b, cc, o = conics[c, n, 0], conics[c, n, 1], conics[c, n, 2], opacities[c, n]
            det = a * cc - b * b
            rx, ry = radii[c, n, 0], radii[c, n, 1]
            # Splats that cannot reach ALPHA_MIN anywhere get no tiles.
            if rx <= 0 or ry <= 0 or o < alpha_min or det <= 0:
                continue
            p = packed[row]
            p[P_MX], p[P_MY], p[P_A], p[P_B], p[P_C] = means2d[c, n, 0], means2d[c, n, 1], a, b, cc
            p[P_O], p[P_Z] = o, depths[c, n]
            p[P_R], p[P_G], p[P_BL] = colors[n, 0], colors[n, 1], colors[n, 2]
            s_max = np.log(o / alpha_min) + SPAN_SLACK  # sigma <= s_max  <=>  o exp(-sigma) >= ALPHA_MIN
            p[P_2ASMAX], p[P_DYMAX], p[P_DET], p[P_INVA] = 2 * a * s_max, np.sqrt(2 * s_max * a / det), det, 1 / a
            x0, x1 = _tile_range(p[P_MX] - rx, p[P_MX] + rx, TILE, width)
            y0, y1 = _tile_range(p[P_MY] - ry, p[P_MY] + ry, TILE, height)
            rect[row, 0], rect[row, 1], rect[row, 2], rect[row, 3] = x0, x1, y0, y1
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    counts[1 + (c * th + ty) * tw + tx] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    ids = np.empty(offsets[-1], np.int64)
    for c in range(C):
        for row in range(c * N, (c + 1) * N):  # rows are already in depth order
            for ty in range(rect[row, 2], rect[row, 3]):
                for tx in range(rect[row, 0], rect[row, 1]):
                    t = (c * th + ty) * tw + tx
                    ids[fill[t]] = row
                    fill[t] += 1
    return packed, offsets, ids, order


@numba.njit(**_jit)
def _rows(my, dy_max, y0, y1):
    """Rows `[r0, r1)` of `[y0, y1)` whose pixel centres lie within `dy_max` of `my`."""
    r0 = max(int(np.floor(my - dy_max - 0.5)), y0)
    r1 = min(int(np.ceil(my + dy_max - 0.5)) + 1, y1)
    return r0, max(r0, r1)


@numba.njit(**_jit)
def _cols(mx, dy, b, inv_a, two_a_smax, det, x0, x1):
    """Columns `[q0, q1)` of `[x0, x1)` where `sigma <= s_max` may hold on the row at offset `dy`."""
    # sigma(dx) = s_max is a quadratic in dx with (scaled) discriminant 2 a s_max - det dy^2.
    disc = two_a_smax - det * dy * dy
    if disc < 0:
        return x0, x0
    mid = mx - b * dy * inv_a
    half = np.sqrt(disc) * inv_a
    q0 = max(int(np.floor(mid - half - 0.5)), x0)
    q1 = min(int(np.ceil(mid + half - 0.5)) + 1, x1)
    return q0, max(q0, q1)


@numba.njit(**_jit)
def _splat(packed, i):
    """Mean (x, y), conic (a, b, c), opacity and depth of packed splat `i`."""
    return (packed[i, P_MX], packed[i, P_MY], packed[i, P_A], packed[i, P_B], packed[i, P_C],
            packed[i, P_O], packed[i, P_Z])


@numba.njit(**_jit)
def _pixel_centres(n, like):
    """`[n]` pixel-centre coordinates `i + 0.5` in the dtype of `like` (keeps float32 math float32)."""
    return (np.arange(n) + 0.5).astype(like.dtype)


@numba.njit(parallel=True, **_jit)
def rasterize_fwd(packed, offsets, ids, width, height, n_cameras):
    """Front-to-back compositing of every tile (parallel over tiles).

    Args:
        packed, offsets, ids: from `prepare`.
    Returns:
        color_sum `[C, H, W, 3]` (no background), depth_sum `[C, H, W]`, T_final `[C, H, W]`,
        last `[C, H, W]` (position in `ids` of each pixel's last contributor, -1 if none),
        median `[C, H, W]`.
    """
    dt = packed.dtype
    tw, th = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    cx, cy = _pixel_centres(width, packed), _pixel_centres(height, packed)
    alpha_max, alpha_min, t_min, median_t = dt.type(ALPHA_MAX), dt.type(ALPHA_MIN), dt.type(T_MIN), dt.type(MEDIAN_T)
    half, one = dt.type(0.5), dt.type(1)
    color_sum = np.zeros((n_cameras, height, width, 3), dt)
    depth_sum = np.zeros((n_cameras, height, width), dt)
    t_final = np.ones((n_cameras, height, width), dt)
    last = np.full((n_cameras, height, width), -1, np.int64)
    median = np.zeros((n_cameras, height, width), dt)
    for job in prange(n_cameras * th * tw):
        start, end = offsets[job], offsets[job + 1]
        if start == end:
            continue
        cam = job // (th * tw)
        x0, y0 = (job % tw) * TILE, ((job // tw) % th) * TILE
        x1, y1 = min(x0 + TILE, width), min(y0 + TILE, height)
        # Tile-local state, pixel q = (y - y0) * TILE + (x - x0); `alive` holds one bit per
        # unfinished pixel of each row, so rows whose pixels are all done cost one test.
        T = np.ones(TILE * TILE, dt)
        acc = np.zeros((TILE * TILE, 4), dt)  # r, g, b, depth
        lst = np.full(TILE * TILE, -1, np.int64)
        med = np.zeros(TILE * TILE, dt)
        alive = np.full(TILE, (1 << (x1 - x0)) - 1, np.int64)
        n_left = (x1 - x0) * (y1 - y0)
        for k in range(start, end):
            i = ids[k]
            mx, my, a, b, c, o, z = _splat(packed, i)
            r0, r1 = _rows(my, packed[i, P_DYMAX], y0, y1)
            for y in range(r0, r1):
                mask = alive[y - y0]
                if mask == 0:
                    continue
                dy = cy[y] - my
                q0, q1 = _cols(mx, dy, b, packed[i, P_INVA], packed[i, P_2ASMAX], packed[i, P_DET], x0, x1)
                base = (y - y0) * TILE - x0
                for x in range(q0, q1):
                    bit = 1 << (x - x0)
                    if not mask & bit:
                        continue
                    q = base + x
                    dx = cx[x] - mx
                    sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                    alpha = min(alpha_max, o * np.exp(-sigma))
                    if sigma < 0 or alpha < alpha_min:
                        continue
                    t = T[q]
                    next_t = t * (one - alpha)
                    if next_t <= t_min:
                        mask &= ~bit
                        alive[y - y0] = mask
                        n_left -= 1
                        continue
                    w = alpha * t
                    acc[q, 0] += w * packed[i, P_R]
                    acc[q, 1] += w * packed[i, P_G]
                    acc[q, 2] += w * packed[i, P_BL]
                    acc[q, 3] += w * z
                    if t >= median_t and next_t < median_t:
                        med[q] = z
                    T[q] = next_t
                    lst[q] = k
            if n_left == 0:
                break
        for y in range(y0, y1):
            for x in range(x0, x1):
                q = (y - y0) * TILE + (x - x0)
                color_sum[cam, y, x, 0], color_sum[cam, y, x, 1], color_sum[cam, y, x, 2] = acc[q, 0], acc[q, 1], acc[q, 2]
                depth_sum[cam, y, x] = acc[q, 3]
                t_final[cam, y, x] = T[q]
                last[cam, y, x] = lst[q]
                median[cam, y, x] = med[q]
    return color_sum, depth_sum, t_final, last, median


@numba.njit(parallel=True, **_jit)
def rasterize_bwd(packed, offsets, ids, width, height, n_cameras, t_final, last, g_color, g_depth, g_t):
    """Analytic gradients of `rasterize_fwd`'s color_sum, depth_sum and T_final.

    Args:
        packed, offsets, ids: from `prepare`; t_final, last: from `rasterize_fwd`; incoming
        gradients g_color `[C, H, W, 3]`, g_depth `[C, H, W]`, g_t `[C, H, W]`.
    Returns:
        `[M, N_GRAD]` gradients per intersection (the order of `ids`).
    """
    dt = packed.dtype
    tw, th = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    cx, cy = _pixel_centres(width, packed), _pixel_centres(height, packed)
    alpha_max, alpha_min, half, one = dt.type(ALPHA_MAX), dt.type(ALPHA_MIN), dt.type(0.5), dt.type(1)
    grads = np.zeros((ids.shape[0], N_GRAD), dt)
    for job in prange(n_cameras * th * tw):
        start = offsets[job]
        cam = job // (th * tw)
        x0, y0 = (job % tw) * TILE, ((job // tw) % th) * TILE
        x1, y1 = min(x0 + TILE, width), min(y0 + TILE, height)
        T = np.ones(TILE * TILE, dt)
        behind = np.zeros((TILE * TILE, 4), dt)  # colour and depth composited behind, per unit transmittance
        lst = np.full(TILE * TILE, -1, np.int64)
        row_last = np.full(TILE, -1, np.int64)  # a row is skipped for splats after all its pixels' last contributors
        for y in range(y0, y1):
            for x in range(x0, x1):
                q = (y - y0) * TILE + (x - x0)
                T[q], lst[q] = t_final[cam, y, x], last[cam, y, x]
                row_last[y - y0] = max(row_last[y - y0], lst[q])
        for k in range(row_last.max(), start - 1, -1):
            i = ids[k]
            mx, my, a, b, c, o, z = _splat(packed, i)
            cr, cg, cb = packed[i, P_R], packed[i, P_G], packed[i, P_BL]
            g_mx = g_my = g_a = g_b = g_c = g_o = g_r = g_g = g_bl = g_z = dt.type(0)
            r0, r1 = _rows(my, packed[i, P_DYMAX], y0, y1)
            for y in range(r0, r1):
                if k > row_last[y - y0]:
                    continue
                dy = cy[y] - my
                q0, q1 = _cols(mx, dy, b, packed[i, P_INVA], packed[i, P_2ASMAX], packed[i, P_DET], x0, x1)
                base = (y - y0) * TILE - x0
                for x in range(q0, q1):
                    q = base + x
                    if k > lst[q]:
                        continue
                    q = base + x
                    dx = cx[x] - mx
                    sigma = half * (a * dx * dx + c * dy * dy) + b * dx * dy
                    vis = o * np.exp(-sigma)
                    alpha = min(alpha_max, vis)
                    if sigma < 0 or alpha < alpha_min:
                        continue
                    t = T[q] / (one - alpha)  # transmittance in front of this splat
                    w = alpha * t
                    gc0, gc1, gc2 = g_color[cam, y, x, 0], g_color[cam, y, x, 1], g_color[cam, y, x, 2]
                    gd = g_depth[cam, y, x]
                    g_r += w * gc0
                    g_g += w * gc1
                    g_bl += w * gc2
                    g_z += w * gd
                    g_alpha = t * ((cr - behind[q, 0]) * gc0 + (cg - behind[q, 1]) * gc1 + (cb - behind[q, 2]) * gc2
                                   + (z - behind[q, 3]) * gd) - g_t[cam, y, x] * t_final[cam, y, x] / (one - alpha)
                    behind[q, 0] = alpha * cr + (one - alpha) * behind[q, 0]
                    behind[q, 1] = alpha * cg + (one - alpha) * behind[q, 1]
                    behind[q, 2] = alpha * cb + (one - alpha) * behind[q, 2]
                    behind[q, 3] = alpha * z + (one - alpha) * behind[q, 3]
                    T[q] = t
                    if vis > alpha_max:  # clamped: no gradient to opacity or shape
                        continue
                    g_o += g_alpha * np.exp(-sigma)
                    g_sigma = -g_alpha * alpha
                    g_mx -= g_sigma * (a * dx + b * dy)
                    g_my -= g_sigma * (b * dx + c * dy)
                    g_a += g_sigma * half * dx * dx
                    g_b += g_sigma * dx * dy
                    g_c += g_sigma * half * dy * dy
            grads[k, 0], grads[k, 1], grads[k, 2], grads[k, 3], grads[k, 4] = g_mx, g_my, g_a, g_b, g_c
            grads[k, 5], grads[k, 6], grads[k, 7], grads[k, 8], grads[k, 9] = g_o, g_r, g_g, g_bl, g_z
    return grads


@numba.njit(parallel=True, **_jit)
def project(means, quats, scales, viewmats, Ks, width, height, near, far, eps2d):
    """Fused EWA projection, the same arithmetic as `projection.project_gaussians` (forward only).

    The tiled backend uses it when no gradient is needed; with gradients it uses the torch version.
    Args:
        means `[N, 3]`, quats `[N, 4]` (w first, any norm), scales `[N, 3]`, viewmats `[C, 4, 4]`, Ks `[C, 3, 3]`.
    Returns:
        means2d `[C, N, 2]`, conics `[C, N, 3]`, depths `[C, N]`, radii `[C, N, 2]` int32 (0 = culled).
    """
    dt = means.dtype
    N, C = means.shape[0], viewmats.shape[0]
    means2d = np.zeros((C, N, 2), dt)
    conics = np.zeros((C, N, 3), dt)
    depths = np.zeros((C, N), dt)
    radii = np.zeros((C, N, 2), np.int32)
    for n in prange(N):
        qn = np.sqrt(quats[n, 0] ** 2 + quats[n, 1] ** 2 + quats[n, 2] ** 2 + quats[n, 3] ** 2)
        qn = max(qn, dt.type(1e-12))  # as torch.nn.functional.normalize
        w, x, y, z = quats[n, 0] / qn, quats[n, 1] / qn, quats[n, 2] / qn, quats[n, 3] / qn
        R = np.empty((3, 3), dt)
        R[0, 0], R[0, 1], R[0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
        R[1, 0], R[1, 1], R[1, 2] = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
        R[2, 0], R[2, 1], R[2, 2] = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
        M = np.empty((3, 3), dt)  # covariance = M M^T
        for i in range(3):
            for j in range(3):
                M[i, j] = R[i, j] * scales[n, j]
        for c in range(C):
            V = viewmats[c]
            mc0 = V[0, 0] * means[n, 0] + V[0, 1] * means[n, 1] + V[0, 2] * means[n, 2] + V[0, 3]
            mc1 = V[1, 0] * means[n, 0] + V[1, 1] * means[n, 1] + V[1, 2] * means[n, 2] + V[1, 3]
            mc2 = V[2, 0] * means[n, 0] + V[2, 1] * means[n, 1] + V[2, 2] * means[n, 2] + V[2, 3]
            fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
            zs = mc2 if abs(mc2) >= 1e-6 else dt.type(1e-6)
            tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
            tx = zs * min(max(mc0 / zs, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x)
            ty = zs * min(max(mc1 / zs, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y)
            jx0, jx2 = fx / zs, fx * tx / zs**2
            jy1, jy2 = fy / zs, fy * ty / zs**2
            a0 = b = c0 = dt.type(0)
            for k in range(3):  # u = (J R_cam M)[:, k]
                ux = (jx0 * V[0, 0] - jx2 * V[2, 0]) * M[0, k] + (jx0 * V[0, 1] - jx2 * V[2, 1]) * M[1, k] \
                    + (jx0 * V[0, 2] - jx2 * V[2, 2]) * M[2, k]
                uy = (jy1 * V[1, 0] - jy2 * V[2, 0]) * M[0, k] + (jy1 * V[1, 1] - jy2 * V[2, 1]) * M[1, k] \
                    + (jy1 * V[1, 2] - jy2 * V[2, 2]) * M[2, k]
                a0 += ux * ux
                b += ux * uy
                c0 += uy * uy
            a, cc = a0 + eps2d, c0 + eps2d
            det = a * cc - b * b
            det_safe = max(det, dt.type(1e-12))
            u, v = fx * mc0 / zs + cx, fy * mc1 / zs + cy
            means2d[c, n, 0], means2d[c, n, 1] = u, v
            conics[c, n, 0], conics[c, n, 1], conics[c, n, 2] = cc / det_safe, -b / det_safe, a / det_safe
            depths[c, n] = mc2
            rx, ry = np.ceil(3.33 * np.sqrt(max(a, 0))), np.ceil(3.33 * np.sqrt(max(cc, 0)))
            if (near < mc2 < far and det > 0 and u + rx > 0 and u - rx < width and v + ry > 0 and v - ry < height):
                radii[c, n, 0], radii[c, n, 1] = int(rx), int(ry)
    return means2d, conics, depths, radii
