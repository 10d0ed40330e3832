import math

import numpy as np
import pytest
import torch

from hgm_core.camera import (
    CameraError, Cameras, cameras_from_c2w_gl, crop_intrinsics, flip_camera_axes, fov_from_intrinsics, intrinsics,
    intrinsics_from_fov, look_at, orbit_cameras, orbit_poses, plucker_rays, plucker_rays_from_K, project_points, scale_intrinsics,
)


def test_orbit_ring_matches_hgm_convention():
    poses = orbit_poses(12, radius=1.5)
    assert poses.shape == (12, 4, 4)
    # View 0 is the canonical input pose [I | (0, 0, 1.5)] (docs/reference/hgm_official_code.md §1.1).
    torch.testing.assert_close(poses[0], torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1.0]]))
    centres = poses[:, :3, 3]
    torch.testing.assert_close(centres.norm(dim=-1), torch.full((12,), 1.5))
    # 30° apart, azimuth from +z towards +x: view 3 sits on +x, view 6 (the back view) on -z.
    torch.testing.assert_close(centres[3], torch.tensor([1.5, 0, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(centres[6], torch.tensor([0, 0, -1.5]), atol=1e-6, rtol=0)
    cosines = (centres[:-1] * centres[1:]).sum(-1) / 1.5**2
    torch.testing.assert_close(cosines, torch.full((11,), math.cos(math.radians(30))))
    # Every camera looks at the origin: OpenGL forward is -z of the pose.
    fwd = -poses[:, :3, 2]
    torch.testing.assert_close(fwd, -centres / 1.5, atol=1e-6, rtol=0)


def test_orbit_elevation_puts_camera_above():
    poses = orbit_poses(4, radius=2.0, elevation_deg=20, target=(0, 0.85, 0))
    assert (poses[:, 1, 3] > 0.85).all()


def test_opengl_optical_involution_and_projection():
    c2w_gl = look_at(torch.tensor([0.3, 0.2, 2.0]), torch.zeros(3))
    c2w_cv = flip_camera_axes(c2w_gl)
    torch.testing.assert_close(flip_camera_axes(c2w_cv), c2w_gl)
    cams = cameras_from_c2w_gl(c2w_gl[None], intrinsics_from_fov(64, 48, 50), 64, 48)
    # The look-at target projects to the principal point with positive depth (z forward in optical axes).
    uv, z = cams.project(torch.zeros(1, 3))
    torch.testing.assert_close(uv[0, 0], torch.tensor([32.0, 24.0]), atol=1e-4, rtol=0)
    assert z[0, 0] > 0
    # A point above the target (+y world, y up) appears higher in the image (smaller v: optical y points down).
    uv_up, _ = cams.project(torch.tensor([[0.0, 0.1, 0.0]]))
    assert uv_up[0, 0, 1] < 24.0


def test_crop_and_resize_update_intrinsics():
    K = intrinsics(500.0, 510.0, 320.0, 240.0)
    Kc = crop_intrinsics(K, (100, 50, 300, 250), (512, 512))
    # A world point's pixel maps through the crop exactly: (u - x0) * s.
    X = torch.tensor([0.2, -0.1, 2.0])
    p = K @ X
    u, v = p[:2] / p[2]
    pc = Kc @ X
    torch.testing.assert_close(pc[:2] / pc[2], torch.stack(((u - 100) * 512 / 200, (v - 50) * 512 / 200)))
    Ks = scale_intrinsics(K, 0.5, 0.25)
    assert Ks[0, 0] == 250 and Ks[1, 2] == 60
    with pytest.raises(CameraError, match="empty crop"):
        crop_intrinsics(K, (10, 10, 10, 20), (8, 8))


def test_cameras_validation_and_resize():
    with pytest.raises(CameraError, match="viewmats"):
        Cameras(torch.eye(3)[None], torch.eye(4)[None].repeat(2, 1, 1), 8, 8)
    cams = orbit_cameras(64, 64, n_views=3)
    r = cams.resized(32, 16)
    assert r.K[0, 0, 0] == cams.K[0, 0, 0] / 2 and r.K[0, 1, 1] == cams.K[0, 1, 1] / 4
    assert len(cams[1]) == 1


def _lgm_get_rays(pose: torch.Tensor, h: int, w: int, fovy: float) -> torch.Tensor:
    """LGM/HGM `core/utils.get_rays` + Plücker, transcribed from docs/reference/hgm_official_code.md §1.2 formula."""
    x, y = torch.meshgrid(torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64), indexing="xy")
    focal = h * 0.5 / math.tan(0.5 * math.radians(fovy))
    dirs = torch.stack(((x - w * 0.5 + 0.5) / focal, (y - h * 0.5 + 0.5) / focal * -1.0, -torch.ones_like(x)), -1)
    d = torch.nn.functional.normalize(dirs @ pose[:3, :3].T, dim=-1)
    o = pose[:3, 3].expand_as(d)
    return torch.cat((torch.cross(o, d, dim=-1), d), -1).permute(2, 0, 1)


def test_plucker_rays_match_hgm_formula():
    pose = orbit_poses(12)[2].double()
    ours = plucker_rays(pose, 24, 24, 49.1)
    torch.testing.assert_close(ours, _lgm_get_rays(pose, 24, 24, 49.1))
    # Unit directions and moments orthogonal to directions.
    d, m = ours[3:], ours[:3]
    torch.testing.assert_close(d.norm(dim=0), torch.ones(24, 24, dtype=torch.float64))
    torch.testing.assert_close((d * m).sum(0), torch.zeros(24, 24, dtype=torch.float64), atol=1e-12, rtol=0)


def test_fov_from_intrinsics_inverts_intrinsics_from_fov():
    for across in ("height", "longer"):
        for K in (intrinsics_from_fov(64, 48, 50.0, across=across, dtype=torch.float64), intrinsics_from_fov(48, 64, 50.0, across=across).numpy()):
            w, h = (64, 48) if K[0, 2] == 32 else (48, 64)
            assert fov_from_intrinsics(K, w, h, across=across) == pytest.approx(50.0, abs=1e-9 if K.dtype == torch.float64 else 1e-4)
    # "longer" of a landscape image spans the width: the vertical field of view is narrower.
    K = intrinsics_from_fov(64, 48, 50.0, across="longer", dtype=torch.float64)
    assert fov_from_intrinsics(K, 64, 48) == pytest.approx(math.degrees(2 * math.atan(24 / (32 / math.tan(math.radians(25))))))


def test_plucker_from_K_honours_principal_point():
    pose = orbit_poses(12)[0].double()
    f = 12 / math.tan(math.radians(49.1) / 2)
    centred = intrinsics(f, f, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(plucker_rays_from_K(pose, centred, 24, 24), plucker_rays(pose, 24, 24, 49.1))
    shifted = intrinsics(f, f, 13.5, 12.5, dtype=torch.float64)
    rays = plucker_rays_from_K(pose, shifted, 24, 24)
    # Pixel (v=12, u=13) has its centre on the principal point: it is the optical axis, -z for this pose.
    torch.testing.assert_close(rays[3:, 12, 13], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))


def test_turntable_poses_circle_the_centre_and_start_at_the_given_eye():
    from hgm_core.camera import turntable_poses

    center = torch.tensor([0.1, -0.2, 2.5])
    up = torch.tensor([0.0, -1.0, 0.0])  # optical frame: y points down
    poses = turntable_poses(center, up, torch.zeros(3), n_views=8)
    torch.testing.assert_close(poses[0, :3, 3], torch.zeros(3), atol=1e-6, rtol=0)
    eyes = poses[:, :3, 3]
    d = eyes - center
    torch.testing.assert_close(d.norm(dim=-1), torch.full((8,), float(center.norm())), atol=1e-5, rtol=0)
    torch.testing.assert_close(d[:, 1], torch.full((8,), float(-center[1])), atol=1e-5, rtol=0)  # stays level
    torch.testing.assert_close(eyes[4], 2 * center - torch.tensor([0, 2 * center[1], 0]), atol=1e-5, rtol=0)  # opposite side
    torch.testing.assert_close(-poses[:, :3, 2], torch.nn.functional.normalize(-d, dim=-1), atol=1e-5, rtol=0)


def test_intrinsics_from_fov_spans_the_height_or_the_longer_side():
    # Landscape 640x480: the vertical field of view spans 480 px, the longer-side one 640 px.
    for across, side in (("height", 480), ("longer", 640)):
        K = intrinsics_from_fov(640, 480, 55.0, across=across, dtype=torch.float64)
        assert math.degrees(2 * math.atan(side / 2 / K[0, 0])) == pytest.approx(55.0)
        assert K[0, 0] == K[1, 1] and (K[0, 2], K[1, 2]) == (320, 240)
    # Portrait: the longer side is the height, so both conventions agree.
    torch.testing.assert_close(intrinsics_from_fov(480, 640, 55.0, across="longer"), intrinsics_from_fov(480, 640, 55.0))


def test_project_points_numpy_and_torch_agree_and_clamp_depth():
    K = np.array([[100.0, 0.0, 32.0], [0.0, 120.0, 24.0], [0.0, 0.0, 1.0]])
    pts = np.array([[0.0, 0.0, 2.0], [0.2, -0.1, 1.0], [0.1, 0.1, -0.5]])
    uv = project_points(pts, K)
    np.testing.assert_allclose(uv[:2], [[32.0, 24.0], [52.0, 12.0]])
    torch.testing.assert_close(project_points(torch.from_numpy(pts), torch.from_numpy(K)), torch.from_numpy(uv))
    # A depth floor divides K @ X by the floor instead of the (negative) depth: (10 - 16, 12 - 12) / 0.01.
    assert project_points(pts, K, min_depth=1e-2)[2].tolist() == pytest.approx([-600.0, 0.0])
    batched = project_points(torch.from_numpy(pts).expand(2, 3, 3), torch.from_numpy(K).expand(2, 3, 3))
    torch.testing.assert_close(batched[1], torch.from_numpy(uv))
