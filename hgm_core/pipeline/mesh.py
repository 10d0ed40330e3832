"""The `mesh` stage (docs/architecture.md §4): a coloured triangle mesh from an avatar's Gaussians.

    from hgm_core.pipeline.mesh import MeshConfig, gaussians_to_mesh
    mesh = gaussians_to_mesh(result.gaussians)               # hgm_core.types.Mesh

The Gaussians are rendered (depth where the splats are opaque, and colour) from rings of views
around their principal axis plus one view down each end of it; the depth maps are fused into a
TSDF with open3d's tensor `VoxelBlockGrid` (the legacy `ScalableTSDFVolume` integrates nothing in
open3d 0.20.0, see docs/reference/environment.md), background pixels carving free space; scikit-image's
marching cubes extracts the zero level set and small disconnected pieces are dropped. This is the
official `rgbd_to_mesh` (docs/reference/hgm_official_code.md §6.2 item 8) made to run: depth comes from
the rasterizer, views cover the whole body in any frame, and the cluster threshold is relative to
the largest piece.

Accuracy: on a 30 cm ball of opaque 1 cm discs with 1 cm voxels the surface is closed (genus 0)
and sits 1-2 mm outside the true sphere (TSDF truncation bias on curved surfaces).
Cost on the bundled sample avatar (15k Gaussians, 1.8 m tall; default config: 26 views of
384 x 384 px, 1 cm voxels), 1 torch thread on the shared 2-core reference machine: ~1.4 s
(rendering 0.6 s, TSDF fusion 0.3 s, marching cubes 0.3 s, clean-up 0.2 s); ~85k triangles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hgm_core.camera import cameras_from_c2w_gl, intrinsics_from_fov, look_at
from hgm_core.gaussians import Gaussians
from hgm_core.io.mesh import outward_faces
from hgm_core.types import BadInputError, Mesh


@dataclass(frozen=True)
class MeshConfig:
    """How `gaussians_to_mesh` renders, fuses and cleans.

    Attributes:
        voxel_size: TSDF voxel edge in world units; None scales it to the avatar: its extent along
            the principal axis / `voxels_per_extent` (1 cm for a 1.8 m person).
        voxels_per_extent: see `voxel_size`.
        truncation_voxels: TSDF truncation distance in voxels (4 -> 4 cm at 1 cm voxels). Larger
            fills holes better but merges parts closer than about twice this (fingers, legs).
        views_per_ring: cameras per ring around the up axis.
        elevations_deg: ring elevations above the plane perpendicular to the up axis.
        end_views: also look along the up axis from both ends (head top, soles).
        image_size: square render size in pixels.
        alpha_threshold: pixels whose rendered opacity is below this are background (free space).
        weight_threshold: minimum number of views that must have seen a voxel for it to be meshed.
        min_cluster_fraction: connected pieces with fewer triangles than this fraction of the
            largest piece are dropped (floaters, splat debris).
        smooth_iterations: Taubin smoothing iterations after clean-up (0 = none; volume-preserving,
            so it only removes marching-cubes terracing).
    """

    voxel_size: float | None = None
    voxels_per_extent: float = 180.0
    truncation_voxels: float = 4.0
    views_per_ring: int = 8
    elevations_deg: tuple[float, ...] = (-35.0, 0.0, 35.0)
    end_views: bool = True
    image_size: int = 384
    alpha_threshold: float = 0.5
    weight_threshold: float = 2.0
    min_cluster_fraction: float = 0.05
    smooth_iterations: int = 5


def gaussians_to_mesh(
    gaussians: Gaussians, *, up: np.ndarray | None = None, config: MeshConfig = MeshConfig(),
    device: torch.device | str = "cpu",
) -> Mesh:
    """Extract the avatar's surface as a coloured triangle mesh, in the Gaussians' frame.

    Args:
        gaussians: N Gaussians (any frame; the pipeline's are in the camera optical frame).
        up: `[3]` axis the camera rings circle; None uses the Gaussians' principal axis (a standing
            person's height direction). Its sign does not matter.
        config: see `MeshConfig`.
        device: where the views are rendered (gsplat on CUDA; the Gaussians move there once and
            the depth and colour images come back once). The TSDF fusion runs on the CPU.
    Returns:
        `Mesh` with float32 `[V, 3]` vertices, int64 `[F, 3]` faces counter-clockwise seen from
        outside, float32 `[V, 3]` colours in [0, 1]. Empty (0 faces) if nothing opaque was seen.
    Raises:
        BadInputError: no Gaussians, or a zero-length `up`.
    """
    if len(gaussians) == 0:
        raise BadInputError("cannot mesh an empty set of Gaussians")
    g = gaussians.detach().to(dtype=torch.float32)
    means = g.means.numpy().astype(np.float64)
    center, axes, lengths = _principal_frame(means)
    if up is not None:
        axes = _frame_around(np.asarray(up, np.float64))
    voxel = config.voxel_size or float(lengths[0]) / config.voxels_per_extent
    # Bounding sphere of the splats' 3-sigma ellipsoids, so every view frames the whole avatar.
    radius = float(np.linalg.norm(means - center, axis=1).max() + 3 * g.scales.max().item())
    cameras = _orbit_cameras(center, axes, radius, config)
    depth, color = _render_rgbd(g.to(device=device), cameras, config.alpha_threshold, voxel)
    far = float(np.linalg.norm(cameras.centers.numpy() - center, axis=1).max()) + radius
    voxels = _fuse_tsdf(depth, color, cameras, voxel, float(config.truncation_voxels), far)
    v, f, c = _marching_cubes(*voxels, voxel, config.weight_threshold)
    v, f, c = _clean(v, f, c, config.min_cluster_fraction, config.smooth_iterations)
    return Mesh(vertices=v.astype(np.float32), faces=outward_faces(v, f), colors=c.astype(np.float32))


def _principal_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre `[3]` (bounding-box middle), axes `[3, 3]` (rows, largest extent first) and extents `[3]`."""
    mean = points.mean(0)
    _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
    proj = (points - mean) @ vt.T
    lo, hi = proj.min(0), proj.max(0)
    return mean + ((lo + hi) / 2) @ vt, vt, hi - lo


def _frame_around(up: np.ndarray) -> np.ndarray:
    """Orthonormal rows `[3, 3]`: `up` first, then two axes perpendicular to it."""
    n = np.linalg.norm(up)
    if up.shape != (3,) or not np.isfinite(n) or n < 1e-9:
        raise BadInputError(f"up must be a non-zero 3-vector, got {up!r}")
    u = up / n
    helper = np.eye(3)[np.argmin(np.abs(u))]
    a = np.cross(u, helper)
    a /= np.linalg.norm(a)
    return np.stack((u, a, np.cross(u, a)))


def _orbit_cameras(center: np.ndarray, axes: np.ndarray, radius: float, config: MeshConfig):
    """Square pinhole cameras on rings around `axes[0]`, each framing the sphere (center, radius)."""
    up, a, b = (torch.as_tensor(x, dtype=torch.float64) for x in axes)
    dirs, ups = [], []
    for el in config.elevations_deg:
        for k in range(config.views_per_ring):
            # Stagger alternate rings so their views do not line up.
            az = 2 * math.pi * (k + 0.5 * (len(dirs) // config.views_per_ring % 2)) / config.views_per_ring
            e = math.radians(el)
            dirs.append(math.cos(e) * (math.cos(az) * a + math.sin(az) * b) + math.sin(e) * up)
            ups.append(up)
    if config.end_views:
        dirs += [up, -up]
        ups += [a, a]  # looking along the axis, any perpendicular direction is a valid image up
    if not dirs:
        raise BadInputError("MeshConfig has no views (views_per_ring or elevations_deg is empty)")
    dist = 2.5 * radius
    c = torch.as_tensor(center, dtype=torch.float64)
    eyes = c + dist * torch.stack(dirs)
    c2w = look_at(eyes, c.expand_as(eyes), torch.stack(ups))
    half_fov = math.asin(radius / dist) * 1.05
    s = config.image_size
    K = intrinsics_from_fov(s, s, 2 * math.degrees(half_fov), dtype=torch.float64)
    return cameras_from_c2w_gl(c2w, K, s, s)


def _render_rgbd(g: Gaussians, cameras, alpha_threshold: float, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth `[C, H, W]` (0 where not opaque) and un-premultiplied colour `[C, H, W, 3]`, float32."""
    from hgm_core.render import rasterize

    with torch.no_grad():
        out = rasterize(g, cameras.to(dtype=torch.float32), background=(0.0, 0.0, 0.0))
    alpha = out.alpha[..., 0]
    # The median depth (of the splat where transmittance crosses 0.5) is biased by a few mm on
    # curved surfaces; the expected depth is not, but mixes front and back surfaces at silhouettes
    # and depth edges. Take the expected depth where the two agree within `tolerance`.
    depth = out.depth[..., 0]
    if out.median_depth is not None:
        median = out.median_depth[..., 0]
        depth = torch.where((depth - median).abs() < tolerance, depth, median)
    depth = torch.where(alpha >= alpha_threshold, depth, torch.zeros_like(depth))
    color = (out.rgb / alpha.clamp_min(1e-6)[..., None]).clamp(0, 1)
    return depth.cpu().numpy().astype(np.float32), color.cpu().numpy().astype(np.float32)


def _fuse_tsdf(depth: np.ndarray, color: np.ndarray, cameras, voxel: float, trunc_voxels: float,
               far: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integrate RGB-D views into TSDF volumes (open3d `VoxelBlockGrid`).

    Returns:
        The observed voxels: integer grid indices `[M, 3]` (world position = index * voxel), TSDF
        values `[M]` in [-1, 1] (positive outside) and weights `[M]` (number of views); then the
        voxels near a seen surface `[K, 3]` and their colours `[K, 3]` in [0, 1].
    """
    import open3d as o3d

    o3c = o3d.core

    def grid(names, channels):
        return o3d.t.geometry.VoxelBlockGrid(names, (o3c.float32,) * len(names), channels, voxel_size=voxel,
                                             block_resolution=8, block_count=20_000)  # grows on demand

    # Two volumes: geometry sees background pixels as free space (see below); colour averages
    # only real surface observations, so free space does not darken the surface colours.
    geometry, paint = grid(("tsdf", "weight"), ((1), (1))), grid(("tsdf", "weight", "color"), ((1), (1), (3)))
    Ks = cameras.K.double().numpy()
    viewmats = cameras.viewmats.double().numpy()
    for i in range(len(depth)):
        if not depth[i].any():
            continue
        d = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth[i][..., None])))
        c = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(color[i])))
        K, E = o3c.Tensor(Ks[i]), o3c.Tensor(viewmats[i])
        blocks = geometry.compute_unique_block_coordinates(d, K, E, 1.0, far, trunc_voxels)
        # Background pixels become a surface behind everything, so the voxels they see are marked
        # as free space (TSDF +1) instead of left unobserved: silhouettes carve the volume, and
        # voxels just outside the surface are seen by every view that sees past it.
        carve = o3d.t.geometry.Image(o3c.Tensor(np.where(depth[i] > 0, depth[i], 2 * far)[..., None]))
        geometry.integrate(blocks, carve, K, E, 1.0, 3 * far, trunc_voxels)
        paint.integrate(blocks, d, c, K, E, 1.0, far, trunc_voxels)

    def voxels(vbg, name, channels):
        coords, index = vbg.voxel_coordinates_and_flattened_indices()
        index = index.numpy()
        seen = vbg.attribute("weight").reshape((-1,)).numpy()[index] > 0
        values = vbg.attribute(name).reshape((-1, channels)).numpy()[index][seen]
        return np.rint(coords.numpy()[seen] / voxel).astype(np.int64), values

    if geometry.hashmap().size() == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0), np.zeros(0), np.zeros((0, 3), np.int64), np.zeros((0, 3))
    ijk, tsdf = voxels(geometry, "tsdf", 1)
    _, weight = voxels(geometry, "weight", 1)
    paint_ijk, rgb = voxels(paint, "color", 3)
    return ijk, tsdf[:, 0], weight[:, 0], paint_ijk, rgb / 255.0  # open3d stores float colours x 255


def _marching_cubes(ijk: np.ndarray, tsdf: np.ndarray, weight: np.ndarray, paint_ijk: np.ndarray, rgb: np.ndarray,
                    voxel: float, weight_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero level set of the fused voxels: vertices `[V, 3]`, faces `[F, 3]`, colours `[V, 3]`.

    open3d's own `extract_triangle_mesh` (0.20.0) leaves small holes where the surface crosses
    voxels that are all well observed, so the sparse voxels go into a dense grid around them
    (small: ~1.5M voxels for a person at 1 cm) and scikit-image does the marching cubes.
    """
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree
    from skimage.measure import marching_cubes

    seen = weight >= weight_threshold
    if not seen.any():
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3))
    ijk, tsdf = ijk[seen], tsdf[seen]
    origin = ijk.min(0) - 1
    shape = tuple(ijk.max(0) - origin + 2)
    volume = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    volume[tuple((ijk - origin).T)], mask[tuple((ijk - origin).T)] = tsdf, True
    if volume[mask].min() >= 0 or volume[mask].max() <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 3))
    # Unobserved voxels (the never-seen inside, gaps in the band) take the nearest observed value,
    # so the zero crossings are exactly the observed ones and the surface closes over small gaps.
    volume = volume[tuple(distance_transform_edt(~mask, return_distances=False, return_indices=True))]
    verts, faces, _, _ = marching_cubes(volume, level=0.0)
    verts = verts + origin
    # Colour of the nearest painted voxel (they hug the surface; the mesh is finer than the colour anyway).
    col = rgb[cKDTree(paint_ijk).query(verts)[1]] if len(paint_ijk) else np.full((len(verts), 3), 0.5)
    return verts * voxel, faces.astype(np.int64), col


def _clean(v: np.ndarray, f: np.ndarray, c: np.ndarray, min_fraction: float,
           smooth_iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop connected pieces smaller than `min_fraction` of the largest, then Taubin-smooth."""
    import open3d as o3d

    if len(f) == 0:
        return v, f, c
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f.astype(np.int32)))
    m.vertex_colors = o3d.utility.Vector3dVector(np.clip(c, 0, 1))
    labels, sizes, _ = m.cluster_connected_triangles()
    labels, sizes = np.asarray(labels), np.asarray(sizes)
    m.remove_triangles_by_mask(sizes[labels] < min_fraction * sizes.max())
    m.remove_degenerate_triangles()  # marching cubes emits zero-area faces, which have no normal
    m.remove_unreferenced_vertices()
    if smooth_iterations > 0:
        m = m.filter_smooth_taubin(number_of_iterations=smooth_iterations)
    return np.asarray(m.vertices), np.asarray(m.triangles).astype(np.int64), np.clip(np.asarray(m.vertex_colors), 0, 1)
