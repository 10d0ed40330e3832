"""The learned CPU back-view refiner: the network, its files, its training loop and the `back_view`
stage built on it.

Whether the trained refiner improves held-out back views is measured by `bench/back_view.py`; here
the training loop must learn a simple correction (a darkened person) that it can only learn if the
crops, flips, loss and resume work.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from hgm_core.model.back_cnn import BackCNN, BackCNNConfig, BackCNNError, CNNRefiner, load_back_cnn, num_parameters, save_back_cnn
from hgm_core.train.back_train import BackTrainConfig, augment, back_views, fit, load_pairs, to_tensors, write_pairs
from tests.test_fit import anny_body, synthetic_case  # noqa: F401  (anny_body: module fixture)
from tests.test_refine_body import surface_avatar

SMALL = BackCNNConfig(channels=(8, 16, 32), size=32)


def _random_net(config: BackCNNConfig = SMALL, seed: int = 0) -> BackCNN:
    torch.manual_seed(seed)
    net = BackCNN(config)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


def test_default_network_is_small_and_starts_as_the_identity() -> None:
    net = BackCNN()
    assert num_parameters(net) <= 2_000_000
    rgb, alpha = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    assert torch.equal(net(rgb, alpha), rgb)  # zero last layer: the residual is 0
    with pytest.raises(ValueError, match="multiples of 8"):
        net(rgb[..., :60, :60], alpha[..., :60, :60])
    with pytest.raises(ValueError, match="alpha"):
        net(rgb, alpha[:, :, :32])
    with pytest.raises(ValueError, match="multiple of 4"):
        BackCNNConfig(channels=(8, 16, 32), size=30)


def test_refiner_folder_round_trip_in_float16(tmp_path) -> None:
    net = _random_net()
    folder = save_back_cnn(net, tmp_path / "r", {"step": 3})
    loaded, card = load_back_cnn(folder)
    assert card == {"step": 3} and loaded.config == SMALL
    assert (folder / "model.safetensors").stat().st_size < 2 * num_parameters(net) + 10_000  # fp16 on disk
    rgb, alpha = torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(rgb, alpha), net(rgb, alpha), atol=5e-3)
        assert not torch.equal(net(rgb, alpha), rgb)
    with pytest.raises(BackCNNError, match="not a back-view refiner folder"):
        load_back_cnn(tmp_path / "nothing")
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(meta | {"config": {"channels": [8, 16, 64], "size": 32}}))
    with pytest.raises(BackCNNError, match="do not fit"):
        load_back_cnn(folder)
    (folder / "config.json").write_text(json.dumps(meta | {"format": "hgm"}))
    with pytest.raises(BackCNNError, match="format"):
        load_back_cnn(folder)


def test_refiner_at_another_size_adds_the_upsampled_correction() -> None:
    net = BackCNN(SMALL).eval()
    image = np.random.default_rng(0).integers(40, 200, (96, 96, 3)).astype(np.uint8)
    alpha = np.ones((96, 96), np.float32)
    refiner = CNNRefiner(net, "test")
    assert np.array_equal(refiner(image, alpha), image)  # zero correction: the render itself, not a resampled copy
    torch.nn.init.constant_(net.out.bias, 0.1)  # a constant correction of +0.1
    out = refiner(image, alpha).astype(int)
    assert np.abs(out - image - 25.5).max() <= 1.0
    with pytest.raises(ValueError, match="square"):
        refiner(image[:90], alpha[:90])


def test_back_views_are_the_ring_views_150_to_210_degrees_around() -> None:
    from hgm_core.data.render import RenderConfig, ring_cameras

    _, E = ring_cameras(0.9, RenderConfig(n_views=12, elevation_deg=10.0))
    assert back_views(E, 0) == [5, 6, 7] and back_views(E, 10) == [3, 4, 5]


def test_augment_crops_and_flips_every_tensor_of_a_pair_alike() -> None:
    rng = np.random.default_rng(1)
    rgb = torch.rand(3, 3, 32, 32)
    alpha = torch.rand(3, 1, 32, 32)
    flips = 0
    for _ in range(20):
        a, b, c, d = augment((rgb, alpha, rgb.clone(), alpha.clone()), 24, rng)
        assert a.shape == c.shape == (3, 3, 24, 24) and b.shape == d.shape == (3, 1, 24, 24)
        assert torch.equal(a, c) and torch.equal(b, d)
        plain = torch.nn.functional.interpolate(rgb, size=(24, 24), mode="area")
        flips += int(not torch.allclose(a, plain, atol=0.2))
    assert flips > 0  # crops and flips happen


def _pairs(folder, n: int, seed: int) -> None:
    """Synthetic pairs: a person-like blob whose render is a darkened, slightly shifted copy of the truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    for s in range(n):
        cx, cy = rng.uniform(12, 20, 2)
        mask = ((xx - cx) / 6) ** 2 + ((yy - cy) / 12) ** 2 < 1
        colour = rng.uniform(0.3, 0.9, 3)
        target = np.where(mask[..., None], colour, 1.0)
        rendered = np.where(mask[..., None], colour * 0.6, 1.0)
        u8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
        write_pairs(folder, f"{s:04d}", {"rendered": u8(rendered)[None], "alpha": u8(mask.astype(float))[None],
                                         "target": u8(target)[None], "mask": u8(mask.astype(float))[None],
                                         "views": np.array([6]), "input_view": np.int64(0)})


def test_training_learns_a_correction_exports_the_best_and_resumes(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    for name, n, seed in (("train", 24, 0), ("val", 6, 1)):
        (tmp_path / name).mkdir()
        _pairs(tmp_path / name, n, seed)
    assert load_pairs(tmp_path / "train")["rendered"].shape == (24, 32, 32, 3)
    config = BackTrainConfig(pairs=(str(tmp_path / "train"),), val=str(tmp_path / "val"), model=SMALL, batch=4, crop=32,
                             lr=3e-3, total_steps=150, checkpoint_minutes=100)
    first = fit(config, tmp_path / "run", minutes=10)
    assert first["step"] == 150
    assert first["l1"] < 0.5 * first["l1_unrefined"] and first["fg_psnr"] > first["fg_psnr_unrefined"] + 3
    best, card = load_back_cnn(tmp_path / "run" / "best")
    assert card["step"] == 150 and card["validation"]["l1"] == pytest.approx(first["l1"])
    rgb, alpha, target, _ = to_tensors(load_pairs(tmp_path / "val"), np.arange(6))
    with torch.no_grad():
        assert (best(rgb, alpha) - target).abs().mean() < 0.5 * (rgb - target).abs().mean()
    from hgm_core.cli import main  # `hgm back-train fit --run` continues a run with its saved config: already done

    assert main(["back-train", "fit", "--run", str(tmp_path / "run"), "--minutes", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 150
    assert main(["back-train", "fit", "--run", str(tmp_path / "new")]) == 1  # a new run needs its pairs
    assert "needs --pairs and --val" in capsys.readouterr().err
    longer = dataclasses.replace(config, total_steps=160)
    again = fit(longer, tmp_path / "run", minutes=10)  # resumes at step 150
    assert again["step"] == 160
    assert [r["step"] for r in json.loads((tmp_path / "run" / "history.json").read_text())] == [150, 150, 160]  # one per call


# ------------------------------------------------------------------------------------- the stage


def test_back_view_stage_refines_with_a_cnn_folder_and_full_still_lacks_fuse(tmp_path, anny_body) -> None:  # noqa: F811
    from hgm_core.body import FitConfig, fit_body
    from hgm_core.perception import default_intrinsics
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.back_view import BackViewStage
    from hgm_core.pipeline.stage import Frame
    from hgm_core.types import ReconstructionRequest, StageUnavailableError

    folder = save_back_cnn(_random_net(), tmp_path / "cnn")
    rec = Reconstructor.from_config(ReconstructorConfig().override({"body.fit.iterations": 5, "back_view.cnn_path": str(folder),
                                                                    "back_view.size": 64, "fuse.checkpoint": None}))
    stage = rec.stages["back_view"]
    assert isinstance(stage, BackViewStage) and isinstance(stage.refiner, CNNRefiner)
    with pytest.raises(StageUnavailableError, match="fuse"):
        rec.plan(ReconstructionRequest(np.zeros((64, 64, 3), np.uint8), stages="full"))

    K = np.asarray(default_intrinsics(512, 512), np.float64)
    _, gt, perception = synthetic_case(anny_body, 2, torch.zeros(1, anny_body.shape_dim), K)
    fit = fit_body(perception, None, anny_body, config=FitConfig(camera_iterations=10, iterations=10))
    frame = stage(Frame(request=ReconstructionRequest(np.zeros((512, 512, 3), np.uint8)), perception=perception, body=fit,
                        gaussians=surface_avatar(gt.vertices[0].numpy())))
    back = frame.back_view
    assert back.rendered.shape == back.image.shape == (64, 64, 3) and back.alpha.shape == (64, 64)
    person = (back.rendered < 250).any(-1)
    assert 0.1 < person.mean() < 0.7 and (back.alpha[person] > 0.3).mean() > 0.9 and (back.alpha[~person] < 0.1).mean() > 0.9
    assert not np.array_equal(back.image, back.rendered) and back.refined_by == "back_cnn"
    report = frame.reports["back_view"]
    assert report["refined_by"] == "back_cnn" and report["weights"] == str(folder) and report["working_size"] == 32
    assert report["refine_seconds"] > 0 and report["mean_abs_change"] > 0
    json.dumps(report)


def test_back_view_without_any_refiner_is_off_and_a_bad_cnn_folder_is_an_error(tmp_path) -> None:
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.back_view import BackViewConfig, BackViewStage
    from hgm_core.types import StageUnavailableError

    with pytest.raises(StageUnavailableError, match="cnn_path"):
        BackViewStage.from_config(BackViewConfig(cnn_path=None))
    with pytest.raises(StageUnavailableError, match="not a back-view refiner folder"):
        Reconstructor.from_config(ReconstructorConfig().override({"back_view.cnn_path": str(tmp_path)}))


def test_the_embedded_refiner_is_small_and_back_view_uses_it_by_default() -> None:
    from hgm_core.model.back_cnn import embedded_back_cnn_dir
    from hgm_core.pipeline.back_view import BackViewConfig, BackViewStage

    folder = embedded_back_cnn_dir()
    assert (folder / "model.safetensors").stat().st_size <= 5 * 2**20
    model, card = load_back_cnn(folder)
    assert num_parameters(model) <= 2_000_000 and card["step"] > 0
    assert card["validation"]["l1"] < card["validation"]["l1_unrefined"]  # it was kept for beating the render on validation
    stage = BackViewStage.from_config(BackViewConfig())
    assert isinstance(stage.refiner, CNNRefiner) and stage.refiner.source == str(folder)
