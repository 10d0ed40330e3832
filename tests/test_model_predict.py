"""predict_avatar / network_view / check_avatar with a randomly initialised `tiny` network: shapes,
the optical <-> canonical round trip against the body, the crop's homography, the validity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hgm_core.gaussians import Gaussians
from hgm_core.model import HGM, InputError, config_for
from hgm_core.model.predict import (TRAIN_FOCAL_RATIO, ExtraView, body_centre, check_avatar, extra_network_view, network_view,
                                   predict_avatar)

CENTRE = np.array([0.35, -0.1, 2.6])  # metres, optical frame: right of and above the axis, 2.6 m away
SIZE = 320


def optical_body(n: int, seed: int = 0) -> np.ndarray:
    """`[n, 3]` points on a standing body-sized ellipsoid (1.7 m tall along optical -y) around CENTRE."""
    g = np.random.default_rng(seed)
    d = g.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * np.array([0.25, 0.85, 0.15]) + CENTRE


def photo(body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A `SIZE^2` image of the body's silhouette (red on grey), its mask and K (55° across)."""
    f = (SIZE / 2) / np.tan(np.radians(55) / 2)
    K = np.array([[f, 0, SIZE / 2], [0, f, SIZE / 2], [0, 0, 1.0]])
    uv = body @ K.T
    uv = (uv[:, :2] / uv[:, 2:]).astype(int)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    ok = (uv >= 0).all(1) & (uv < SIZE).all(1)
    mask[uv[ok, 1], uv[ok, 0]] = 255
    image = np.full((SIZE, SIZE, 3), 90, np.uint8)
    image[mask > 0] = (200, 30, 30)
    return image, mask, K


@pytest.fixture(scope="module")
def model() -> HGM:
    torch.manual_seed(0)
    return HGM(config_for("tiny")).eval()


def test_prediction_shapes_and_frame_round_trip(model):
    body = optical_body(model.config.num_vertices)
    image, mask, K = photo(body)
    g = predict_avatar(model, image, mask, K, body)
    assert len(g) == model.config.num_vertices + model.config.num_gaussians
    g.validate()
    # The untrained body set sits on its vertices (offsets start near zero): canonical -> optical
    # must put it back on the input body, in metres.
    err = np.linalg.norm(g.means[: len(body)].double().numpy() - body, axis=1)
    assert np.median(err) < 0.01 and err.max() < 0.05
    # The pixel-aligned set lies on the input rays at the body's depth: in front of the camera, near the body.
    pix = g.means[len(body):][g.opacities[len(body):] > 0.05].double().numpy()
    assert len(pix) > 100 and (pix[:, 2] > CENTRE[2] - 0.5).all() and (pix[:, 2] < CENTRE[2] + 0.5).all()
    assert check_avatar(g, body).ok


def test_network_view_looks_at_the_body_centre(model):
    body = optical_body(model.config.num_vertices)
    image, mask, K = photo(body)
    view = network_view(image, mask, K, body, 128)
    assert view.image.shape == (128, 128, 3) and view.K[0, 0] == TRAIN_FOCAL_RATIO * 128
    red = (view.image[..., 0] > 0.6) & (view.image[..., 1] < 0.3)
    ys, xs = np.nonzero(red)
    # The body's centre projects to the image centre of the virtual camera, so the silhouette is centred there.
    assert abs(np.mean(xs) - 64) < 3 and abs(np.mean(ys) - 64) < 3
    # Background is white (the person is composited on white, as in training).
    assert view.image[0, 0].min() > 0.99
    # Its size is the metric size at the training focal ratio: 1.7 m at the centre's distance.
    height_px = ys.max() - ys.min()
    expected = TRAIN_FOCAL_RATIO * 128 * 1.7 / np.linalg.norm(body_centre(body))
    assert abs(height_px - expected) < 0.1 * expected


def test_network_view_with_fill_frames_the_body_whatever_its_distance():
    # The same body at 2.6 m and 5.2 m: with `fill` the crop frames it alike (focal doubles), and
    # the silhouette's longer side spans `fill` of the view.
    near = optical_body(4000)
    far = (near - CENTRE) + 2 * CENTRE
    heights = []
    for body, scale in ((near, 1.0), (far, 2.0)):
        image, mask, K = photo(body)
        view = network_view(image, mask, K, body, 128, fill=0.8)
        red = (view.image[..., 0] > 0.6) & (view.image[..., 1] < 0.3)
        ys, xs = np.nonzero(red)
        heights.append(ys.max() - ys.min() + 1)
        assert abs(np.mean(xs) - 64) < 3 and abs(np.mean(ys) - 64) < 3
        assert view.K[0, 0] == view.K[1, 1] and view.K[0, 2] == 64
    assert abs(heights[0] - 0.8 * 128) < 4 and abs(heights[1] - heights[0]) < 4
    with pytest.raises(InputError, match="behind the camera"):
        network_view(*photo(near), near - CENTRE + np.array([0.0, 0.0, 0.05]), 128, fill=0.8)  # straddles z = 0


def test_the_tiny_preset_sees_a_person_crop(model):
    # predict_avatar uses the config's fill: the body set still lands on the input body.
    assert model.config.input_fill > 0
    body = optical_body(model.config.num_vertices)
    g = predict_avatar(model, *photo(body), body)
    err = np.linalg.norm(g.means[: len(body)].double().numpy() - body, axis=1)
    assert np.median(err) < 0.01


def test_check_avatar_rejects_garbage():
    body = optical_body(2000)
    n = len(body)
    good = Gaussians(means=torch.from_numpy(body).float(), quats=torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(),
                     scales=torch.full((n, 3), 0.01), opacities=torch.full((n,), 0.9), colors=torch.full((n, 3), 0.5))
    assert check_avatar(good, body, min_visible=1000).ok
    far = Gaussians(**{**good.__dict__, "means": good.means + torch.tensor([0.0, 0.0, 1.0])})
    assert not check_avatar(far, body).ok
    faint = Gaussians(**{**good.__dict__, "opacities": torch.full((n,), 0.01)})
    assert "opacity" in check_avatar(faint, body).reason
    nan = good.means.clone()
    nan[0, 0] = float("nan")
    assert "non-finite" in check_avatar(Gaussians(**{**good.__dict__, "means": nan}), body).reason


def test_bad_inputs_fail_clearly(model):
    body = optical_body(model.config.num_vertices)
    image, mask, K = photo(body)
    with pytest.raises(InputError, match="body_vertices"):
        predict_avatar(model, image, mask, K, body[:100])
    with pytest.raises(InputError, match="uint8"):
        predict_avatar(model, image.astype(np.float32), mask, K, body)
    with pytest.raises(InputError, match="mask"):
        predict_avatar(model, image, mask[:10], K, body)


def test_an_extra_view_from_the_input_camera_is_the_input_view(model):
    """`extra_network_view` with the identity pose makes exactly the input view: same image, same K,
    and the canonical input camera `[I | (0, 0, 1.5)]`."""
    body = optical_body(model.config.num_vertices)
    image, mask, K = photo(body)
    image[mask == 0] = 255  # extra views arrive on white
    cfg = model.config
    view = network_view(image, np.full(mask.shape, 255, np.uint8), K, body, cfg.input_size, cfg.input_fill)
    img2, K2, c2w = extra_network_view(ExtraView(image, K, np.eye(4)), body, view.frame, cfg.input_size, cfg.input_fill)
    np.testing.assert_allclose(img2, view.image)
    np.testing.assert_allclose(K2, view.K)
    expected = np.eye(4)
    expected[2, 3] = 1.5
    np.testing.assert_allclose(c2w, expected, atol=1e-9)


def test_two_view_prediction_and_view_count_errors(model):
    torch.manual_seed(0)
    two = HGM(config_for("tiny", num_views=2)).eval()
    body = optical_body(two.config.num_vertices)
    image, mask, K = photo(body)
    # The back camera: half a turn about the body's vertical axis (optical y) through its centre.
    turn = np.diag([-1.0, 1.0, -1.0])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = turn, CENTRE - turn @ CENTRE  # back optical -> input optical
    back_body = (body - pose[:3, 3]) @ pose[:3, :3]
    back, back_mask, _ = photo(back_body)
    back[back_mask == 0] = 255
    g = predict_avatar(two, image, mask, K, body, ExtraView(back, K, pose))
    assert len(g) == two.config.num_vertices + two.config.num_gaussians
    # Both views' pixel-aligned sets start on their rays at the body's depth: near the body, in metres.
    assert check_avatar(g, body).ok
    with pytest.raises(InputError, match="num_views=2"):
        predict_avatar(two, image, mask, K, body)
    with pytest.raises(InputError, match="num_views=1"):
        predict_avatar(model, image, mask, K, body, ExtraView(back, K, pose))
    with pytest.raises(InputError, match="rigid"):
        predict_avatar(two, image, mask, K, body, ExtraView(back, K, 2 * pose))


@pytest.mark.slow
def test_wild_path_matches_the_training_path(model, tmp_path):
    """`predict_avatar` on a generated subject's view-0 image (camera optical frame, metres) renders the
    same novel views as the training/validation path in the canonical frame."""
    pytest.importorskip("anny")
    pytest.importorskip("open3d")
    from hgm_core.camera import Cameras
    from hgm_core.data.cache import load_cached_subject
    from hgm_core.data.reader import load_view
    from hgm_core.data.render import RenderConfig, write_subject
    from hgm_core.data.synth import SynthBody, build_subject, sample_subject, subject_seed
    from hgm_core.render import rasterize
    from hgm_core.train import metrics
    from hgm_core.train.sample import make_sample
    from hgm_core.train.validate import avatar, render_rgb

    synth = SynthBody()
    write_subject(tmp_path, "0000", build_subject(sample_subject(subject_seed(7, 0), synth), synth), RenderConfig(size=256, ssaa=1))
    rgb, mask, E0, K0 = load_view(tmp_path, "0000", 0)
    body = np.load(tmp_path / "body" / "0000.npz")["vertices"].astype(np.float64) @ E0[:3, :3].T + E0[:3, 3]
    g = predict_avatar(model, (rgb * 255).round().astype(np.uint8), (mask * 255).astype(np.uint8), K0, body)
    views = [3, 6, 9]
    rel = np.stack([load_view(tmp_path, "0000", v)[2] for v in views]) @ np.linalg.inv(E0)  # view-0 optical -> view v
    K = np.stack([load_view(tmp_path, "0000", v)[3] for v in views]) * np.array([[0.5], [0.5], [1.0]])
    with torch.no_grad():
        wild = rasterize(g, Cameras(torch.from_numpy(K).float(), torch.from_numpy(rel).float(), 128, 128),
                         background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)
        sample = make_sample(load_cached_subject(tmp_path, "0000", 128, tmp_path / "cache"), 0, views, 1, None,
                             np.random.default_rng(0))
        canonical = render_rgb(avatar(model, sample), sample)
    # Only the look-at point differs (body box centre vs the renders' mid-height of every part): a few mm.
    assert metrics.psnr(wild.permute(0, 3, 1, 2), canonical.permute(0, 3, 1, 2)).min() > 28


@pytest.mark.slow
def test_two_view_wild_path_matches_the_training_path(tmp_path):
    """The two-view path: `predict_avatar` with the ground-truth back view (view 6) as its `ExtraView`
    renders the same novel views as a two-view aimed training sample of the same subject."""
    pytest.importorskip("anny")
    pytest.importorskip("open3d")
    from hgm_core.camera import Cameras
    from hgm_core.data.cache import load_cached_subject
    from hgm_core.data.reader import load_view
    from hgm_core.data.render import RenderConfig, write_subject
    from hgm_core.data.synth import SynthBody, build_subject, sample_subject, subject_seed
    from hgm_core.render import rasterize
    from hgm_core.train import metrics
    from hgm_core.train.sample import make_sample
    from hgm_core.train.validate import avatar, render_rgb

    torch.manual_seed(0)
    two = HGM(config_for("tiny", num_views=2)).eval()
    synth = SynthBody()
    write_subject(tmp_path, "0000", build_subject(sample_subject(subject_seed(7, 0), synth), synth), RenderConfig(size=128, ssaa=1))
    rgb, mask, E0, K0 = load_view(tmp_path, "0000", 0)
    rgb6, mask6, E6, K6 = load_view(tmp_path, "0000", 6)
    body = np.load(tmp_path / "body" / "0000.npz")["vertices"].astype(np.float64) @ E0[:3, :3].T + E0[:3, 3]

    def on_white(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return ((rgb * mask[..., None] + 1 - mask[..., None]) * 255).round().astype(np.uint8)

    extra = ExtraView(on_white(rgb6, mask6), K6, E0 @ np.linalg.inv(E6))
    g = predict_avatar(two, (rgb * 255).round().astype(np.uint8), (mask * 255).astype(np.uint8), K0, body, extra)
    views = [3, 9]
    rel = np.stack([load_view(tmp_path, "0000", v)[2] for v in views]) @ np.linalg.inv(E0)
    K = np.stack([load_view(tmp_path, "0000", v)[3] for v in views])
    with torch.no_grad():
        wild = rasterize(g, Cameras(torch.from_numpy(K).float(), torch.from_numpy(rel).float(), 128, 128),
                         background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)
        sample = make_sample(load_cached_subject(tmp_path, "0000", 128, tmp_path / "cache"), 0, views, 2, None,
                             np.random.default_rng(0), aim=True, input_size=128, fill=two.config.input_fill)
        canonical = render_rgb(avatar(two, sample), sample)
    # Same 128^2 images and the same aiming code: equal up to float error (a back camera 30° off gives ~36 dB).
    assert metrics.psnr(wild.permute(0, 3, 1, 2), canonical.permute(0, 3, 1, 2)).min() > 60
