"""Views of an avatar in the input camera's optical frame: input view, front-view scores, turntable, up axis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgm_core.perception import default_intrinsics
from hgm_core.render.scenes import person_scene
from hgm_core.render.views import body_up, front_view_scores, render_input_view, render_turntable
from hgm_core.types import Skeleton

SIZE = 64


@pytest.fixture(scope="module")
def avatar():
    """The procedural person 3 m in front of the camera, upright in the optical frame (y down), facing it."""
    turn = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # half turn about x: canonical y up, +z front -> optical
    return person_scene(4096).transform(turn, torch.tensor([0.0, 0.0, 3.0]))


def test_front_view_scores_of_an_avatar_against_its_own_render(avatar):
    K = default_intrinsics(SIZE, SIZE)
    out = render_input_view(avatar, K, SIZE, SIZE)
    assert out.rgb.shape == (1, SIZE, SIZE, 3)
    mask = out.alpha[0, ..., 0].numpy() > 0.5
    assert 0.05 < mask.mean() < 0.6  # the person, not the whole frame
    image = (out.rgb[0].numpy() * 255).round().astype(np.uint8)
    scores = front_view_scores(avatar, K, image, mask)
    assert scores["front_iou"] == 1.0 and scores["front_psnr_masked"] > 45
    shifted = np.roll(mask, SIZE // 8, axis=1)
    assert front_view_scores(avatar, K, image, shifted)["front_iou"] < 0.8


def test_turntable_grid_circles_the_avatar(avatar):
    sheet = render_turntable(avatar, np.array([0.0, -1.0, 0.0]), views=6, size=32)
    assert sheet.shape == (2 * 32, 4 * 32, 3) and sheet.dtype == np.uint8
    tiles = [sheet[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] for r in range(2) for c in range(4)][:6]
    for tile in tiles:  # every view sees the person on white
        assert 0.05 < (np.abs(tile.astype(int) - 255).sum(-1) > 30).mean() < 0.9


def test_body_up_points_from_hips_to_head():
    joints = np.array([[0.0, 0.1, 3.0], [0.1, 0.1, 3.0], [0.05, -0.5, 3.2]], np.float32)
    tilted = Skeleton(joints=joints, names=("left_hip", "right_hip", "neck"), bones=((0, 2), (1, 2)))
    up = body_up(tilted)
    np.testing.assert_allclose(up, [0.0, -0.6, 0.2] / np.linalg.norm([0.0, -0.6, 0.2]), rtol=1e-6)
    unnamed = Skeleton(joints=joints, names=("a", "b", "c"), bones=())
    np.testing.assert_array_equal(body_up(unnamed), [0.0, -1.0, 0.0])  # the optical frame's up
