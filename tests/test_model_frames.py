"""Canonical frame <-> input camera optical frame."""

from __future__ import annotations

import pytest
import torch

from hgm_core.camera import Cameras, cameras_from_c2w_gl, intrinsics_from_fov
from hgm_core.gaussians import quat_to_rotmat
from hgm_core.model import (
    CanonicalFrame,
    FrameError,
    canonical_to_optical,
    canonical_to_optical_points,
    optical_to_canonical_points,
)
from tests.conftest import random_gaussians

CANONICAL_C2W = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]])


def test_hgm_training_convention() -> None:
    frame = CanonicalFrame.at_distance(2.0)
    assert frame.metres_per_unit == pytest.approx(1 / 0.75)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.5], [0.0, 0.75, 0.0], [0.75, 0.0, 0.0]])
    want = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, -1.0, 2.0], [1.0, 0.0, 2.0]])
    torch.testing.assert_close(canonical_to_optical_points(pts, frame), want)


@pytest.mark.parametrize("look_at", [(0.0, 0.0, 3.1), (0.4, -0.3, 2.5)])
def test_images_agree_between_canonical_and_real_camera(look_at) -> None:
    """A canonical point seen by the canonical camera lands on the same pixel as its optical-frame image
    seen by the real camera (identity pose), for on- and off-axis look-at points."""
    frame = CanonicalFrame.from_look_at(look_at)
    K = intrinsics_from_fov(256, 256, 50.0)
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(100, 3, generator=g) * 0.3
    real = Cameras(K[None], torch.eye(4)[None], 256, 256)
    uv_real, z_real = real.project(canonical_to_optical_points(pts, frame))
    if look_at[0] == 0.0:
        canon = cameras_from_c2w_gl(CANONICAL_C2W[None], K, 256, 256)
        uv_c, z_c = canon.project(pts)
        torch.testing.assert_close(uv_real, uv_c, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(z_real, z_c * frame.metres_per_unit, rtol=1e-5, atol=1e-5)
    origin = canonical_to_optical_points(torch.zeros(1, 3), frame)
    torch.testing.assert_close(origin[0], torch.tensor(look_at))
    camera = canonical_to_optical_points(torch.tensor([[0.0, 0.0, 1.5]]), frame)
    torch.testing.assert_close(camera[0], torch.zeros(3), atol=1e-6, rtol=0)
    back = optical_to_canonical_points(canonical_to_optical_points(pts, frame), frame)
    torch.testing.assert_close(back, pts, atol=1e-5, rtol=1e-5)


def test_gaussians_follow_the_points() -> None:
    frame = CanonicalFrame.from_look_at((0.2, 0.1, 2.7))
    g = random_gaussians(50)
    out = canonical_to_optical(g, frame)
    torch.testing.assert_close(out.means, canonical_to_optical_points(g.means, frame))
    torch.testing.assert_close(out.scales, g.scales * frame.metres_per_unit)
    R = frame.matrix(torch.float32)[:3, :3] / frame.metres_per_unit
    torch.testing.assert_close(quat_to_rotmat(out.quats), R @ quat_to_rotmat(g.quats), atol=1e-5, rtol=1e-5)
    assert torch.equal(out.colors, g.colors) and torch.equal(out.opacities, g.opacities)


def test_degenerate_frames_are_refused() -> None:
    with pytest.raises(FrameError, match="in front of the camera"):
        CanonicalFrame.from_look_at((0.0, 0.0, -2.0))
    with pytest.raises(FrameError, match="metres_per_unit"):
        CanonicalFrame(0.0)
