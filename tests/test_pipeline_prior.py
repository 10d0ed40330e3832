"""The prior avatar on a synthetic body whose depth and silhouette are known exactly."""

import numpy as np
import open3d as o3d
import pytest
import torch

from hgm_core.camera import Cameras
from hgm_core.pipeline import PriorConfig, prior_gaussians
from hgm_core.types import NoPersonError
from hgm_core.pipeline.prior import body_depth_maps, extend_depth
from hgm_core.types import BadInputError
from hgm_core.render import rasterize

W, H = 160, 240
K = np.array([[200.0, 0, 80], [0, 200, 120], [0, 0, 1]])


@pytest.fixture(scope="module")
def body():
    m = o3d.geometry.TriangleMesh.create_sphere(0.3, resolution=16)
    V = np.asarray(m.vertices) * np.array([1.0, 2.5, 0.6]) + np.array([0.0, 0.0, 2.5])
    return V, np.asarray(m.triangles)


def _scene(body):
    V, F = body
    front, back = body_depth_maps(V, F, K, W, H)
    mask = np.isfinite(front)
    img = np.full((H, W, 3), 255, np.uint8)
    img[mask] = (200, 60, 30)
    img[mask & (np.arange(W)[None] < W // 2)] = (30, 90, 200)
    return img, mask, front, back


def test_depth_maps_front_before_back(body):
    _, mask, front, back = _scene(body)
    assert mask.sum() > 1000
    assert (back[mask] > front[mask]).all()
    # The ellipsoid's centre column: front at z = 2.5 - 0.18, back at 2.5 + 0.18.
    assert front[H // 2, W // 2] == pytest.approx(2.32, abs=0.01)
    assert back[H // 2, W // 2] == pytest.approx(2.68, abs=0.01)


def test_prior_rerenders_the_input_view(body):
    img, mask, front, _ = _scene(body)
    V, F = body
    g = prior_gaussians(img, mask, K, V, F, PriorConfig(resolution=128))
    g.validate()
    cams = Cameras(torch.tensor(K, dtype=torch.float32)[None], torch.eye(4)[None], W, H)
    out = rasterize(g, cams, background=(1.0, 1.0, 1.0))
    alpha = out.alpha[0, ..., 0].numpy() > 0.5
    iou = (alpha & mask).sum() / (alpha | mask).sum()
    assert iou > 0.9
    psnr = -10 * np.log10(((out.rgb[0].numpy() - img / 255.0)[mask] ** 2).mean())
    assert psnr > 20
    depth = out.depth[0, ..., 0].numpy()
    inner = mask & (np.abs(np.arange(W)[None] - W // 2) < 20)
    assert np.abs(depth[inner] - front[inner]).mean() < 0.01


def test_prior_closes_the_back_and_sides(body):
    img, mask, _, back = _scene(body)
    V, F = body
    g = prior_gaussians(img, mask, K, V, F, PriorConfig(resolution=96))
    z = g.means[:, 2].numpy()
    assert z.min() > 2.2 and z.max() < 2.8
    # Seen from behind (camera rotated 180° about the body's vertical axis), the silhouette is covered too.
    R = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    t = -R @ torch.tensor([0.0, 0.0, 5.0])
    view = torch.eye(4)
    view[:3, :3], view[:3, 3] = R, t
    cams = Cameras(torch.tensor(K, dtype=torch.float32)[None], view[None], W, H)
    out = rasterize(g, cams, background=(1.0, 1.0, 1.0))
    covered = out.alpha[0, ..., 0].numpy() > 0.5
    mirrored = mask[:, ::-1]
    assert (covered & mirrored).sum() / mirrored.sum() > 0.85


def test_depth_extension_fills_the_mask_smoothly():
    depth = np.full((20, 20), np.inf)
    depth[5:15, 5:10] = 2.0
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = extend_depth(depth, mask, smooth_px=1.0)
    assert np.isfinite(out[mask]).all() and np.isnan(out[~mask]).all()
    np.testing.assert_allclose(out[mask], 2.0)
    with pytest.raises(NoPersonError):
        extend_depth(np.full((4, 4), np.inf), np.ones((4, 4), bool), 1.0)


def test_bad_inputs(body):
    img, mask, _, _ = _scene(body)
    V, F = body
    with pytest.raises(BadInputError):
        prior_gaussians(img[..., :2], mask, K, V, F)
    with pytest.raises(BadInputError):
        prior_gaussians(img, mask[:-1], K, V, F)
    with pytest.raises(NoPersonError):
        prior_gaussians(img, np.zeros_like(mask), K, V, F)
