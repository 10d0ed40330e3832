"""Synthetic multi-view humans: determinism, geometric consistency of the written layout, reader frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("anny")
pytest.importorskip("open3d")

from hgm_core.data.reader import subject_distance  # noqa: E402
from hgm_core.data.render import RenderConfig, decode_depth, write_subject  # noqa: E402
from hgm_core.data.synth import (  # noqa: E402
    GENERATOR_VERSION, JOINT_LIMITS_DEG, SubjectSpec, SynthBody, SynthError, build_subject, sample_subject, subject_seed,
)

SIZE = 96
CONFIG = RenderConfig(size=SIZE, ssaa=2)


def _generate(root: Path, body: SynthBody, seed: int = 3) -> None:
    write_subject(root, "0000", build_subject(sample_subject(subject_seed(seed, 0), body), body), CONFIG)


@pytest.fixture(scope="module")
def body() -> SynthBody:
    return SynthBody()


@pytest.fixture(scope="module")
def layout(tmp_path_factory, body) -> Path:
    root = tmp_path_factory.mktemp("synth")
    _generate(root, body)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(layout, tmp_path):
    _generate(tmp_path, SynthBody())  # a fresh body: nothing carried over from the first build
    a, b = _files(layout), _files(tmp_path)
    assert len(a) == 12 * 6 + 5  # 12 views x (jpg, mask, depth, normal, K, E) + mesh, body json/npz, keypoints, sheet
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seeds_differ(body):
    a, b = sample_subject(subject_seed(0, 0), body), sample_subject(subject_seed(0, 1), body)
    assert a != b and a.seed != b.seed


def test_spec_json_round_trip_and_version_check(layout, body):
    saved = json.loads((layout / "body" / "0000.json").read_text())
    spec = SubjectSpec.from_json(saved["spec"])
    assert spec == sample_subject(subject_seed(3, 0), body)
    assert spec.version == GENERATOR_VERSION
    with pytest.raises(SynthError):
        build_subject(SubjectSpec.from_json({**saved["spec"], "version": "0"}), body)


def test_sampled_angles_respect_joint_limits(body):
    for i in range(40):
        spec = sample_subject(subject_seed(11, i), body)
        for name, deg in spec.joint_angles_deg.items():
            lo, hi = JOINT_LIMITS_DEG[name.rsplit(".", 1)[0]]
            assert lo <= deg <= hi, (name, deg)
        assert 0 <= min(spec.phenotypes.values()) and max(spec.phenotypes.values()) <= 1


def _cameras(root: Path, v: int) -> tuple[np.ndarray, np.ndarray]:
    parm = root / "parm" / f"0000_{v:03d}"
    return np.load(parm / "0_intrinsic.npy"), np.load(parm / "0_extrinsic.npy")


def test_gt_mesh_projects_inside_mask(layout):
    import cv2
    from plyfile import PlyData

    ply = PlyData.read(str(layout / "mesh" / "0000.ply"))  # an independent PLY reader
    verts = np.stack([ply["vertex"][c] for c in "xyz"], 1).astype(np.float64)
    assert len(ply["face"]) > 10000
    for v in range(12):
        K, E = _cameras(layout, v)
        pc = verts @ E[:, :3].T + E[:, 3]
        uv = pc[:, :2] / pc[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
        mask = cv2.imread(str(layout / "mask" / f"0000_{v:03d}" / "0.png"), cv2.IMREAD_GRAYSCALE)
        assert (uv >= 0).all() and (uv < SIZE).all(), "subject leaves the frame"
        # Pixels' distance to the nearest covered pixel: sub-pixel parts (fingers at 96 px) may fall
        # between the supersampling rays, so allow one pixel; anything further is a real mismatch.
        dist = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 5)
        px = np.floor(uv).astype(int)
        d = dist[px[:, 1], px[:, 0]]
        assert d.max() <= 1.5 and (d == 0).mean() > 0.97, (v, d.max(), (d == 0).mean())


def test_depth_agrees_with_mesh(layout):
    import cv2
    import open3d as o3d
    from plyfile import PlyData

    ply = PlyData.read(str(layout / "mesh" / "0000.ply"))
    verts = np.stack([ply["vertex"][c] for c in "xyz"], 1).astype(np.float32)
    faces = np.stack(ply["face"]["vertex_indices"]).astype(np.uint32)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(verts, faces)
    for v in (0, 4, 6):
        K, E = _cameras(layout, v)
        depth = decode_depth(cv2.imread(str(layout / "depth" / f"0000_{v:03d}" / "1.0.png"), cv2.IMREAD_UNCHANGED))
        mask = cv2.imread(str(layout / "mask" / f"0000_{v:03d}" / "0.png"), cv2.IMREAD_GRAYSCALE)
        yy, xx = np.nonzero(depth > 0)
        assert len(yy) > 200 and (mask[yy, xx] > 0).mean() > 0.99  # centre rays can hit slivers the 2x2 rays miss
        z = depth[yy, xx]
        cam = np.stack([(xx + 0.5 - K[0, 2]) / K[0, 0] * z, (yy + 0.5 - K[1, 2]) / K[1, 1] * z, z], 1)
        world = (cam - E[:, 3]) @ E[:, :3]
        d = scene.compute_distance(o3d.core.Tensor(world.astype(np.float32))).numpy()
        assert np.median(d) < 5e-4 and d.max() < 3e-3, (v, np.median(d), d.max())
        d = subject_distance(layout, "0000", 0.0)
        assert d - 0.8 < z.min() and z.max() < d + 0.8  # the subject sits around the ring centre


def test_reader_maps_cameras_into_canonical_frame(layout):
    torch = pytest.importorskip("torch")
    from hgm_core.data.reader import MultiViewDataset, ReaderConfig, canonical_transform, cameras

    E = np.stack([_cameras(layout, v)[1] for v in range(12)])
    spec = json.loads((layout / "body" / "0000.json").read_text())["spec"]
    c2w, w2c_canon = canonical_transform(E, subject_distance(layout, "0000", 2.0))
    np.testing.assert_allclose(c2w[0], np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(c2w[:, :3, 3], axis=1), 1.5, atol=1e-9)  # the look-at point is the origin
    # The back view sits across the ring at the same height: 2 * 1.5 * cos(elevation) from the input camera.
    across = 3.0 * np.cos(np.radians(spec["camera_elevation_deg"]))
    np.testing.assert_allclose(np.linalg.norm(c2w[6, :3, 3] - c2w[0, :3, 3]), across, atol=1e-9)

    item = MultiViewDataset(layout, ReaderConfig(input_size=64, output_size=48, num_input_views=2))[0]
    assert item["input"].shape == (2, 9, 64, 64) and item["images_output"].shape == (12, 3, 48, 48)
    torch.testing.assert_close(item["c2w_gl"][0], torch.from_numpy(c2w[0]).float())
    # Body vertices projected by the canonical cameras land on the same pixels as with the metric ones.
    body = np.load(layout / "body" / "0000.npz")["vertices"].astype(np.float64)
    uv_canon, _ = cameras(item).project(item["body_vertices"])
    for v in (0, 5):
        K, Ev = _cameras(layout, v)
        pc = body @ Ev[:, :3].T + Ev[:, 3]
        uv = (pc[:, :2] / pc[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]) * 48 / SIZE
        np.testing.assert_allclose(uv_canon[v].numpy(), uv, atol=2e-3)
    # ImageNet normalisation of a white background pixel.
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(item["images_input"][0, :, 0, 0], white, atol=1e-5, rtol=0)


def _long_haired(body: SynthBody) -> SubjectSpec:
    """The first long-haired subject of dataset seed 3, standing straight and facing +z (view 0)."""
    from dataclasses import replace

    spec = next(s for s in (sample_subject(subject_seed(3, i), body) for i in range(50))
                if any(g.kind == "hair" and g.style == "long" for g in s.garments))
    return replace(spec, yaw_deg=0.0, joint_angles_deg={})


def test_long_hair_parts_at_the_face(body):
    """Rays from the nose and eyes towards the cameras in front (up to 40 deg aside, -10..20 deg up,
    the ring's elevations) reach no hair; most of the same rays turned backwards do (the hair behind the head)."""
    import open3d as o3d

    geom = build_subject(_long_haired(body), body)
    hair = next(p for p in geom.parts if p.name == "hair")
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(hair.vertices.astype(np.float32), hair.faces.astype(np.uint32))
    face = geom.keypoints[[geom.keypoint_names.index(n) for n in ("nose", "left_eye", "right_eye")]]
    az, el = np.meshgrid(np.radians(np.arange(-40, 41, 10)), np.radians(np.arange(-10, 21, 10)))
    dirs = np.stack([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)], -1).reshape(-1, 3)

    def hits(d: np.ndarray) -> np.ndarray:
        rays = np.concatenate([np.repeat(face, len(d), 0), np.tile(d, (len(face), 1))], 1)
        return np.isfinite(scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))["t_hit"].numpy())

    assert not hits(dirs).any(), f"{hits(dirs).sum()} of {len(face) * len(dirs)} rays from the face hit the hair"
    assert hits(-dirs).mean() > 2 / 3  # some pass through the gaps between the strands and at the parting
