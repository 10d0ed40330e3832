import numpy as np
import open3d as o3d
import plyfile
import pytest

from hgm_core.io.mesh import outward_faces, read_mesh_ply, write_mesh_ply
from hgm_core.io.ply import PlyError

TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def test_mesh_ply_read_by_independent_readers(tmp_path):
    colors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]], np.float32)
    path = write_mesh_ply(tmp_path / "m.ply", TETRA_V, TETRA_F, colors)
    ply = plyfile.PlyData.read(str(path))
    np.testing.assert_array_equal(np.stack([ply["vertex"][k] for k in "xyz"], -1), TETRA_V)
    np.testing.assert_array_equal(np.stack(ply["face"]["vertex_indices"]), TETRA_F)
    assert list(ply["vertex"]["red"]) == [255, 0, 0, 128]
    mesh = o3d.io.read_triangle_mesh(str(path))
    np.testing.assert_array_equal(np.asarray(mesh.triangles), TETRA_F)
    assert mesh.has_vertex_colors()
    v, f, c = read_mesh_ply(path)
    np.testing.assert_array_equal(v, TETRA_V)
    np.testing.assert_array_equal(f, TETRA_F)
    assert c.dtype == np.uint8 and c[3].tolist() == [128, 128, 128]


def test_reads_open3d_written_mesh(tmp_path):
    m = o3d.geometry.TriangleMesh.create_sphere(0.5, resolution=6)
    path = str(tmp_path / "sphere.ply")
    o3d.io.write_triangle_mesh(path, m, write_ascii=False)
    v, f, c = read_mesh_ply(path)
    np.testing.assert_allclose(v, np.asarray(m.vertices), rtol=1e-6)
    np.testing.assert_array_equal(f, np.asarray(m.triangles))


def test_rejects_bad_meshes(tmp_path):
    with pytest.raises(PlyError, match="face indices"):
        write_mesh_ply(tmp_path / "x.ply", TETRA_V, TETRA_F + 1)
    with pytest.raises(PlyError, match="colors"):
        write_mesh_ply(tmp_path / "x.ply", TETRA_V, TETRA_F, np.zeros((2, 3)))


def test_outward_faces_point_normals_away_from_the_inside():
    v = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) + 5.0  # off the origin
    inward = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])  # every normal points into the tetrahedron
    for faces in (inward, inward[:, ::-1]):
        out = outward_faces(v, faces)
        assert out.dtype == np.int64
        centre = v.mean(0)
        p0, p1, p2 = (v[out[:, i]] for i in range(3))
        assert (np.einsum("ij,ij->i", np.cross(p1 - p0, p2 - p0), p0 - centre) > 0).all()
    assert outward_faces(v, np.zeros((0, 3), np.int32)).shape == (0, 3)
