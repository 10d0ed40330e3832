"""Stage 7: `gaussians_to_mesh` on analytic surfaces, and the Reconstructor's `mesh` option."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from hgm_core.gaussians import Gaussians, rotmat_to_quat
from hgm_core.io.inputs import load_camera_info, load_image
from hgm_core.paths import ASSETS_DIR
from hgm_core.pipeline import Reconstructor, ReconstructorConfig
from hgm_core.types import BadInputError, ReconstructionRequest
from hgm_core.pipeline.mesh import MeshConfig, gaussians_to_mesh

VOXEL = 0.01
CONFIG = MeshConfig(voxel_size=VOXEL)


def surface_discs(points: np.ndarray, normals: np.ndarray, colors: np.ndarray, spacing: float) -> Gaussians:
    """Opaque flat Gaussians `[N]` tangent to a surface at `points` with unit `normals`, overlapping neighbours."""
    n = torch.as_tensor(normals, dtype=torch.float32)
    helper = torch.where(n[:, :1].abs() < 0.9, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
    t1 = torch.nn.functional.normalize(torch.cross(n, helper, dim=-1), dim=-1)
    t2 = torch.cross(n, t1, dim=-1)
    R = torch.stack((t1, t2, n), -1)  # columns: local x, y, z (flat along z)
    scales = torch.tensor([spacing * 0.7, spacing * 0.7, 1e-3]).expand(len(n), 3).contiguous()
    return Gaussians(
        means=torch.as_tensor(points, dtype=torch.float32),
        quats=rotmat_to_quat(R),
        scales=scales,
        opacities=torch.full((len(n),), 0.95),
        colors=torch.as_tensor(colors, dtype=torch.float32),
    )


def fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = np.sqrt(1 - z * z)
    return np.stack((r * np.cos(phi), r * np.sin(phi), z), -1)


def sphere_gaussians(center, radius: float, n: int, colors: np.ndarray | None = None) -> Gaussians:
    d = fibonacci_sphere(n)
    if colors is None:
        # Two hemispheres of different colour, so colour transfer is checked where it matters.
        colors = np.where(d[:, 2:] > 0, [[0.9, 0.2, 0.1]], [[0.1, 0.3, 0.8]])
    spacing = radius * math.sqrt(4 * math.pi / n)
    return surface_discs(np.asarray(center) + radius * d, d, colors, spacing)


def edge_counts(faces: np.ndarray) -> np.ndarray:
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    return np.unique(e, axis=0, return_counts=True)[1]


def signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6)


def sample_surface(mesh, n: int = 20000) -> np.ndarray:
    """`[n, 3]` points uniformly on the mesh (area-weighted triangles, uniform barycentrics)."""
    rng = np.random.default_rng(0)
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(tri), n, p=area / area.sum())
    u, w = rng.random((2, n, 1))
    flip = u + w > 1
    u, w = np.where(flip, 1 - u, u), np.where(flip, 1 - w, w)
    t = tri[idx]
    return t[:, 0] + u * (t[:, 1] - t[:, 0]) + w * (t[:, 2] - t[:, 0])


def test_sphere_mesh_is_accurate_closed_outward_and_coloured():
    center, r = np.array([0.1, -0.2, 1.5]), 0.3
    g = sphere_gaussians(center, r, 6000)
    mesh = gaussians_to_mesh(g, config=CONFIG)
    v, f = mesh.vertices, mesh.faces
    assert v.dtype == np.float32 and f.dtype == np.int64 and mesh.colors.dtype == np.float32
    assert v.shape == mesh.colors.shape and f.shape[1] == 3 and len(f) > 1000
    assert mesh.colors.min() >= 0 and mesh.colors.max() <= 1
    # Chamfer to the analytic sphere: mesh -> sphere exactly, sphere -> mesh through dense samples.
    pts = sample_surface(mesh, 100_000)
    to_sphere = np.abs(np.linalg.norm(pts - center, axis=1) - r)
    to_mesh = cKDTree(pts).query(center + r * fibonacci_sphere(20_000))[0]
    assert to_sphere.mean() + to_mesh.mean() < VOXEL
    assert to_sphere.max() < 2 * VOXEL
    # Closed: every edge has exactly two faces, and one piece of genus 0.
    counts = edge_counts(f)
    assert (counts == 2).all()
    assert len(v) - len(counts) + len(f) == 2
    # Outward: positive enclosed volume close to the ball's, and face normals point away from the centre.
    assert signed_volume(v.astype(np.float64), f) == pytest.approx(4 / 3 * math.pi * r**3, rel=0.05)
    tri = v[f].astype(np.float64)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = (normals * (tri.mean(1) - center)).sum(-1) > 0
    area = np.linalg.norm(normals, axis=1)  # slivers from marching cubes have arbitrary normals
    assert area[outward].sum() > 0.999 * area.sum()
    # Colours follow the hemispheres (away from the seam).
    dz = v[:, 2] - center[2]
    top, bottom = mesh.colors[dz > 0.1 * r], mesh.colors[dz < -0.1 * r]
    assert np.abs(np.median(top, 0) - [0.9, 0.2, 0.1]).max() < 0.05
    assert np.abs(np.median(bottom, 0) - [0.1, 0.3, 0.8]).max() < 0.05


def test_ellipsoid_any_frame_and_explicit_up():
    # A tall ellipsoid lying along a tilted axis: the orbit must follow its principal axis.
    axes = np.array([0.12, 0.12, 0.5])
    d = fibonacci_sphere(8000)
    p = d * axes
    n = d / axes**2
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    a = math.radians(50)
    R = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    g = surface_discs(p @ R.T, n @ R.T, np.full((len(d), 3), 0.5), spacing=0.012)
    for up in (None, R[:, 2]):
        mesh = gaussians_to_mesh(g, up=up, config=CONFIG)
        local = sample_surface(mesh) @ R  # back to the ellipsoid's axes
        # Algebraic distance ~ radial error / semi-axis: |(x/a)^2 + ... - 1| / 2 * min axis is below a voxel.
        err = np.abs(np.sqrt(((local / axes) ** 2).sum(1)) - 1) * axes.min()
        assert err.mean() < 0.5 * VOXEL
        assert (edge_counts(mesh.faces) == 2).all()
        assert signed_volume(mesh.vertices.astype(np.float64), mesh.faces) > 0
    with pytest.raises(BadInputError):
        gaussians_to_mesh(g, up=np.zeros(3), config=CONFIG)


def test_keeps_both_blobs_and_drops_floaters():
    big = sphere_gaussians([-0.35, 0, 2.0], 0.2, 3000)
    small = sphere_gaussians([0.3, 0, 2.0], 0.13, 1500)
    # A few stray splats (the kind of debris a network leaves around an avatar).
    floaters = [np.array([0.0, 0.35, 2.1]), np.array([0.05, -0.3, 1.9])]
    debris = [sphere_gaussians(c, 0.012, 12, colors=np.full((12, 3), 0.5)) for c in floaters]
    g = Gaussians.concat([big, small, *debris])
    mesh = gaussians_to_mesh(g, config=CONFIG)
    v = mesh.vertices
    near_big = np.abs(np.linalg.norm(v - [-0.35, 0, 2.0], axis=1) - 0.2) < 0.03
    near_small = np.abs(np.linalg.norm(v - [0.3, 0, 2.0], axis=1) - 0.13) < 0.03
    assert near_big.sum() > 1000 and near_small.sum() > 500
    assert (near_big | near_small).all()
    for c in floaters:
        assert np.linalg.norm(v - c, axis=1).min() > 0.05
    # Without the clean-up the floaters are there (so the test above can fail).
    raw = gaussians_to_mesh(g, config=MeshConfig(voxel_size=VOXEL, min_cluster_fraction=0.0))
    assert min(np.linalg.norm(raw.vertices - c, axis=1).min() for c in floaters) < 0.03


def test_empty_input_is_a_clear_error():
    with pytest.raises(BadInputError):
        gaussians_to_mesh(sphere_gaussians([0, 0, 1], 0.1, 50).subset(slice(0, 0)))


@pytest.fixture(scope="module")
def sample_reconstruction():
    rec = Reconstructor.from_config(ReconstructorConfig().override({"body.fit.iterations": 40, "mesh_by_default": True}))
    image = load_image(str(ASSETS_DIR / "sample" / "person.jpg"))
    camera = load_camera_info(str(ASSETS_DIR / "sample" / "camera_info.yaml"))
    return rec.run(ReconstructionRequest(image, camera=camera))


def test_reconstructor_mesh_option_on_the_sample_frame(sample_reconstruction):
    out = sample_reconstruction
    mesh, g = out.mesh, out.gaussians
    assert mesh is not None and "mesh" in out.timings
    assert len(mesh.faces) > 10_000 and mesh.colors is not None
    means = g.means.numpy()
    lo, hi = np.percentile(means, 0.5, 0), np.percentile(means, 99.5, 0)
    assert np.abs(mesh.vertices.min(0) - lo).max() < 0.06
    assert np.abs(mesh.vertices.max(0) - hi).max() < 0.06
    height = np.ptp(mesh.vertices[:, 1])  # camera optical frame: y is down, the person stands upright
    assert 1.5 < height < 2.0
    assert signed_volume(mesh.vertices.astype(np.float64), mesh.faces) > 0
    # Mesh colours come from the avatar: close to the colour of the nearest Gaussian.
    nearest = cKDTree(means).query(mesh.vertices)[1]
    assert np.median(np.abs(mesh.colors - g.colors.numpy()[nearest]).max(1)) < 0.1


def test_cli_mesh_flag_writes_a_readable_mesh(tmp_path):
    import plyfile

    from hgm_core.cli import main as hgm_main

    out = tmp_path / "out"
    code = hgm_main(["reconstruct", str(ASSETS_DIR / "sample" / "person.jpg"), "--camera-info",
                     str(ASSETS_DIR / "sample" / "camera_info.yaml"), "-o", str(out), "--fit-iterations", "10",
                     "--views", "1", "--mesh"])
    assert code == 0
    ply = plyfile.PlyData.read(str(out / "mesh.ply"))
    faces = np.stack(ply["face"]["vertex_indices"])
    assert len(faces) > 10_000 and faces.max() < ply["vertex"].count
    assert {"red", "green", "blue"} <= {p.name for p in ply["vertex"].properties}
