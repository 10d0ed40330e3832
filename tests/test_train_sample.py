"""Training samples: the input view aimed as inference aims it, and supervision on person windows."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from hgm_core.camera import Cameras, flip_camera_axes, look_at
from hgm_core.gaussians import Gaussians
from hgm_core.render import rasterize
from hgm_core.train import metrics
from hgm_core.train.sample import Sample, crop_supervision, make_sample, person_box

S = 128


def _subject(rng: np.random.Generator, n_views: int = 12) -> dict[str, np.ndarray]:
    """A ring of cameras 2.4 m away, 10° above their look-at point (0, 0.9, 0), around a 'body' whose
    box centre is off that point (crouched low and to one side), as in `hgm_core.data.cache`."""
    body = rng.normal(size=(2000, 3)) * [0.15, 0.35, 0.1] + [0.25, 0.6, -0.1]
    az = np.arange(n_views) * 2 * math.pi / n_views
    el, d = math.radians(10.0), 2.4
    target = torch.tensor([0.0, 0.9, 0.0], dtype=torch.float64)
    eye = target + d * torch.stack((torch.sin(torch.tensor(az)) * math.cos(el), torch.full((n_views,), math.sin(el), dtype=torch.float64),
                                    torch.cos(torch.tensor(az)) * math.cos(el)), -1)
    E = torch.linalg.inv(flip_camera_axes(look_at(eye, target.expand_as(eye)))).numpy()  # world -> OpenCV camera
    K = np.array([[0.8 * S, 0, S / 2], [0, 0.8 * S, S / 2], [0, 0, 1.0]])
    images = np.full((n_views, S, S, 3), 255, np.uint8)
    images[:, 40:90, 50:80] = (200, 60, 30)
    return {"images": images, "masks": np.zeros((n_views, S, S), np.uint8), "extrinsics": E, "intrinsics": np.tile(K, (n_views, 1, 1)),
            "distance": np.float64(d), "body": body.astype(np.float32)}


def test_aimed_input_looks_at_the_body_and_keeps_the_supervision_geometry():
    rng = np.random.default_rng(0)
    subject = _subject(rng)
    views = [1, 4, 6]
    plain = make_sample(subject, 1, views, 1, None, np.random.default_rng(0))
    aimed = make_sample(subject, 1, views, 1, None, np.random.default_rng(0), aim=True)
    torch.testing.assert_close(aimed.c2w[0, 0], torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]]))
    # The input camera (canonical, looking down -z from 1.5) looks at the body's box centre (a box
    # taken in the real camera's axes, hence not exactly this frame's box) ...
    def box_centre(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (v.min(0).values + v.max(0).values)

    assert float(box_centre(aimed.vertices[0])[:2].norm()) < 0.02
    # ... which the ring camera did not: it looks at the ring's centre.
    assert float(box_centre(plain.vertices[0])[:2].norm()) > 0.1
    # The supervision cameras see the body exactly where they saw it before (a change of frame only).
    uv_plain, _ = plain.cameras.project(plain.vertices[0])
    uv_aimed, _ = aimed.cameras.project(aimed.vertices[0])
    torch.testing.assert_close(uv_aimed, uv_plain, atol=2e-3, rtol=0)
    torch.testing.assert_close(aimed.target_rgb, plain.target_rgb)
    # The aimed image is the ring image turned about the camera centre: the red patch moved.
    assert not torch.allclose(aimed.images, plain.images)


def test_two_view_sample_aims_the_back_view_from_its_own_camera():
    """A two-view aimed sample: the back input camera (ring view input + n/2) keeps its ring position,
    is turned to look at the body's box centre, and agrees with the same ring camera as a supervision view."""
    subject = _subject(np.random.default_rng(0))
    sample = make_sample(subject, 1, [7, 4], 2, None, np.random.default_rng(0), aim=True)
    assert sample.images.shape == (1, 2, 3, S, S) and sample.K.shape == (1, 2, 3, 3)
    back = sample.c2w[0, 1].double()
    torch.testing.assert_close(back[:3, :3].T @ back[:3, :3], torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    # Same camera centre as ring view 7 (the back of view 1) seen as a supervision camera ...
    sup = torch.linalg.inv(sample.cameras.viewmats[0].double())
    torch.testing.assert_close(back[:3, 3], sup[:3, 3], atol=1e-4, rtol=0)
    # ... but looking at the body's box centre (OpenGL cameras look down -z), which the ring camera does not.
    v = sample.vertices[0].double()
    centre = 0.5 * (v.min(0).values + v.max(0).values)
    to_centre = torch.nn.functional.normalize(centre - back[:3, 3], dim=0)
    assert float(to_centre @ -back[:3, 2]) > 0.9995
    assert float(to_centre @ sup[:3, 2]) < 0.999
    # The back image is the ring image resampled, not the front one.
    assert not torch.allclose(sample.images[0, 0], sample.images[0, 1])


def _blob_scene(rng: np.random.Generator) -> Gaussians:
    n = 400
    means = torch.from_numpy(rng.normal(size=(n, 3)) * [0.05, 0.2, 0.04]).float()
    return Gaussians(means=means, opacities=torch.full((n,), 0.9), scales=torch.full((n, 3), 0.02),
                     quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).contiguous(),
                     colors=torch.from_numpy(rng.uniform(size=(n, 3))).float())


def test_person_windows_match_renders_through_the_cropped_cameras():
    rng = np.random.default_rng(1)
    g = _blob_scene(rng)
    az = torch.tensor([0.0, 1.2, 3.0])
    eye = torch.stack((2.5 * torch.sin(az) + 0.3, torch.full_like(az, 0.2), 2.5 * torch.cos(az)), -1)
    viewmats = torch.linalg.inv(flip_camera_axes(look_at(eye, torch.zeros_like(eye))))
    K = torch.tensor([[0.8 * S, 0, S / 2], [0, 0.8 * S, S / 2], [0, 0, 1.0]]).expand(3, 3, 3).contiguous()
    cams = Cameras(K, viewmats, S, S)
    full = rasterize(g, cams, background=(1.0, 1.0, 1.0), backend="auto")
    sample = Sample(images=torch.zeros(1, 1, 3, S, S), K=K[:1][None], c2w=torch.eye(4)[None, None], vertices=torch.zeros(1, 1, 3),
                    cameras=cams, views=[0, 1, 2], target_rgb=full.rgb.clamp(0, 1), target_mask=full.alpha)
    crop = crop_supervision(sample, 64, 0.1)
    assert crop.target_rgb.shape == (3, 64, 64, 3) and crop.cameras.width == 64
    # The person fills much more of a window than of the frame.
    assert float((crop.target_mask > 0.5).float().mean()) > 2 * float((sample.target_mask > 0.5).float().mean())
    ours = rasterize(g, crop.cameras, background=(1.0, 1.0, 1.0), backend="auto")
    p = metrics.psnr(ours.rgb.clamp(0, 1).permute(0, 3, 1, 2), crop.target_rgb.permute(0, 3, 1, 2))
    assert (p > 28).all(), p  # resampling blur only


def test_person_box_is_square_with_margin_and_may_leave_the_image():
    mask = torch.zeros(100, 100)
    mask[10:50, 0:20] = 1  # 40 tall, 20 wide, touching the left edge
    x0, y0, side = person_box(mask, 0.25)
    assert side == 60 and y0 == 0 and x0 == -20
    assert person_box(torch.zeros(100, 100), 0.25) == (0, 0, 100)


def test_warm_start_from_a_run_or_a_checkpoint(tmp_path):
    import pytest

    from hgm_core.model import HGM, config_for
    from hgm_core.train.config import TrainConfig
    from hgm_core.train.trainer import (
        RunState,
        TrainError,
        build_optimizer,
        init_weights,
        save_state,
    )

    torch.manual_seed(0)
    source = HGM(config_for("tiny"))
    save_state(tmp_path, source, build_optimizer(source, TrainConfig()), RunState(step=7), np.random.default_rng(0))
    source.save_pretrained(tmp_path / "ckpt")
    for where in (tmp_path, tmp_path / "ckpt"):
        torch.manual_seed(1)
        model = HGM(config_for("tiny"))
        assert not torch.equal(model.conv.weight, source.conv.weight)
        info = init_weights(model, where)
        assert info["step"] == (7 if where == tmp_path else 0) and info["source"] == str(where)
        for (k, a), b in zip(model.state_dict().items(), source.state_dict().values()):
            assert torch.equal(a, b), k
        for other in (config_for("tiny", num_views=2), config_for("tiny", input_fill=0.5)):
            warm = HGM(other)  # fuse's two-view network; another input framing: the same weights
            init_weights(warm, where)
            assert torch.equal(warm.conv.weight, source.conv.weight)
    with pytest.raises(TrainError, match="another model config"):
        init_weights(HGM(config_for("small")), tmp_path)
    with pytest.raises(TrainError, match="nothing to warm-start"):
        init_weights(HGM(config_for("tiny")), tmp_path / "nowhere")


def test_depth_term_scores_pixels_covered_in_the_target_and_the_render():
    from hgm_core.camera import Cameras
    from hgm_core.train.config import TrainConfig
    from hgm_core.train.sample import Sample
    from hgm_core.train.trainer import loss_terms

    S = 4
    mask = torch.ones(1, S, S, 1)
    mask[0, 0] = 0.0  # first row: background in the target
    target_depth = torch.where(mask > 0, torch.ones_like(mask), torch.zeros_like(mask))
    sample = Sample(images=torch.zeros(1, 1, 3, S, S), K=torch.eye(3)[None, None], c2w=torch.eye(4)[None, None],
                    vertices=torch.zeros(1, 1, 3), cameras=Cameras(torch.eye(3)[None], torch.eye(4)[None], S, S), views=[0],
                    target_rgb=torch.ones(1, S, S, 3), target_mask=mask, target_depth=target_depth)
    alpha = torch.full((1, S, S, 1), 0.9)
    alpha[0, 1, 0] = 0.2  # not covered by the render: the mask term's business
    depth = torch.full((1, S, S, 1), 1.25, requires_grad=True)
    config = TrainConfig(lpips_views=0, lambda_depth=1.0)
    terms = loss_terms(torch.ones(1, S, S, 3), alpha, depth, sample, config, None, np.random.default_rng(0))
    assert terms["depth"].item() == pytest.approx(0.25)
    terms["depth"].backward()
    assert (depth.grad[0, 0] == 0).all() and depth.grad[0, 1, 0] == 0 and depth.grad[0, 2, 2] > 0
    no_depth = loss_terms(torch.ones(1, S, S, 3), alpha, depth, dataclasses.replace(sample, target_depth=None), config, None,
                          np.random.default_rng(0))
    assert "depth" not in no_depth
