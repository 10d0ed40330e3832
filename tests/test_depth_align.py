"""`align_depth`: the avatar's visible surface moves onto a measured depth image, along camera rays."""

from __future__ import annotations

import numpy as np
import torch

from hgm_core.camera import project_points
from hgm_core.gaussians import Gaussians
from hgm_core.pipeline.depth_align import DepthAlignConfig, shift_gaussians, surface_shift

K = np.array([[200.0, 0, 64], [0, 200.0, 64], [0, 0, 1]])
SIZE = 128


def _layer(z: float, n: int = 48) -> Gaussians:
    """A square sheet of opaque Gaussians at depth `z`, one per pixel-ish, covering the image centre."""
    u, v = np.meshgrid(np.linspace(24, 104, n), np.linspace(24, 104, n))
    rays = np.linalg.solve(K, np.stack([u.ravel(), v.ravel(), np.ones(u.size)]))
    means = torch.as_tensor((rays * z).T, dtype=torch.float32)
    m = len(means)
    scale = torch.tensor([0.012 * z / 2.0, 0.012 * z / 2.0, 0.002]).expand(m, 3)
    return Gaussians(means, torch.tensor([1.0, 0, 0, 0]).expand(m, 4).clone(), scale.clone(),
                     torch.full((m,), 0.99), torch.full((m, 3), 0.5))


def _measured(z: float, bump: float) -> tuple[np.ndarray, np.ndarray]:
    """A plane at `z` with a `bump` (metres, towards the camera) over its left 3/8; its mask."""
    depth = np.zeros((SIZE, SIZE), np.float32)
    depth[24:104, 24:104] = z
    depth[24:104, 24:54] -= bump
    mask = depth > 0
    return depth, mask


def test_front_layer_follows_the_measurement_and_keeps_its_pixels():
    front, back = _layer(2.0), _layer(2.25)
    avatar = Gaussians.concat([front, back])
    depth, mask = _measured(2.05, 0.03)
    shift = surface_shift(avatar, K, depth, mask, DepthAlignConfig())
    assert shift is not None
    assert abs(shift.global_shift - 0.05) < 1e-3  # the median: most of the surface is 5 cm further
    assert shift.before_m > 0.015 and shift.after_m < 0.006
    moved = shift_gaussians(avatar, shift, DepthAlignConfig().front_thickness_m)
    new_front, new_back = moved.means[: len(front)].numpy(), moved.means[len(front):].numpy()
    # Every Gaussian keeps its pixel: it slid along its ray.
    np.testing.assert_allclose(project_points(moved.means.numpy(), K), project_points(avatar.means.numpy(), K), atol=1e-3)
    # The front follows the measured surface (away from the bump's edge, which the smoothing blurs) ...
    u = project_points(new_front, K)[:, 0]
    left, right = u < 44, u > 64
    assert np.allclose(new_front[left, 2], 2.02, atol=0.006) and np.allclose(new_front[right, 2], 2.05, atol=0.006)
    # ... and the unseen back layer moves with the avatar as a whole only, keeping the thickness.
    np.testing.assert_allclose(new_back[:, 2], 2.25 + shift.global_shift, atol=1e-4)
    # Scales grow with the distance, so the footprint in the image stays.
    ratio = moved.scales[:, 0] / avatar.scales[:, 0]
    np.testing.assert_allclose(ratio.numpy(), (moved.means[:, 2] / avatar.means[:, 2]).numpy(), rtol=1e-5)


def test_outliers_are_clipped_and_too_little_depth_changes_nothing():
    avatar = _layer(2.0)
    depth, mask = _measured(2.0, 0.0)
    depth[60:70, 60:70] = 1.7  # something 30 cm in front of the person (an object, a flying pixel)
    shift = surface_shift(avatar, K, depth, mask, DepthAlignConfig())
    assert shift is not None and abs(shift.global_shift) < 1e-3
    assert np.abs(shift.local).max() <= DepthAlignConfig().max_shift_m + 1e-6
    sparse = np.zeros_like(depth)
    sparse[60:64, 60:64] = 2.0  # 16 usable pixels: not enough to trust
    assert surface_shift(avatar, K, sparse, mask, DepthAlignConfig()) is None


def test_the_pipeline_aligns_rgbd_requests_only():
    """A request with depth runs `align_depth` after the avatar and before the mesh; its report says
    how far the surface was off and is now; one without depth, or with the stage off, does not."""
    from hgm_core.io.inputs import load_camera_info, load_image
    from hgm_core.paths import ASSETS_DIR
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.prior import body_depth_maps
    from hgm_core.types import ReconstructionRequest

    config = ReconstructorConfig().override({"coarse.checkpoint": None, "fuse.checkpoint": None, "body.track.enabled": False})
    rec = Reconstructor.from_config(config)
    image, camera = load_image(ASSETS_DIR / "sample" / "person.jpg"), load_camera_info(ASSETS_DIR / "sample" / "camera_info.yaml")
    plain, _ = rec.run_frame(ReconstructionRequest(image, camera=camera))
    front, _ = body_depth_maps(plain.body.vertices.astype(np.float64), plain.body.faces, camera.K, camera.width, camera.height)
    depth = np.where(np.isfinite(front), front - 0.02, 0.0).astype(np.float32)  # clothes 2 cm in front of the body
    request = ReconstructionRequest(image, camera=camera, depth=depth, mesh=True)
    assert rec.plan(request) == ("perceive", "fit_body", "prior", "align_depth", "mesh")
    assert "align_depth" not in rec.plan(ReconstructionRequest(image, camera=camera))
    frame, _ = rec.run_frame(request)
    report = frame.reports["align_depth"]
    assert report["surface_error_after_m"] < 0.005 < report["surface_error_before_m"], report
    # What `from_config` builds with `align_depth.enabled` off: the same components but this one.
    off = Reconstructor([s for n, s in rec.stages.items() if n != "align_depth"], config.override({"align_depth.enabled": False}))
    assert "align_depth" not in off.plan(request)
