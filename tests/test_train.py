"""hgm train: config and seed rules, the training-resolution cache, samples in the canonical frame,
body noise, a few real steps, resume, and the validation record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("anny")
pytest.importorskip("open3d")

from hgm_core.data.cache import complete_subjects, load_cached_subject  # noqa: E402
from hgm_core.data.render import RenderConfig, write_subject  # noqa: E402
from hgm_core.data.synth import SynthBody, build_subject, sample_subject, subject_seed  # noqa: E402
from hgm_core.train.config import BodyNoise, TrainConfig, TrainConfigError  # noqa: E402
from hgm_core.train.sample import draw_views, make_sample, perturb_body  # noqa: E402
from hgm_core.train.trainer import STATE_NAME, TrainError, train  # noqa: E402
from hgm_core.train.validate import view_group  # noqa: E402


def _layout(root: Path, seed: int, n: int) -> Path:
    body = SynthBody()
    for i in range(n):
        write_subject(root, f"{i:04d}", build_subject(sample_subject(subject_seed(seed, i), body), body), RenderConfig(size=128, ssaa=1))
    (root / "dataset.json").write_text(json.dumps({"seed": seed}))
    return root


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("train_data")
    return _layout(base / "train", 1000, 2), _layout(base / "val", 5555, 1)


def _config(layouts, cache: Path, **kw) -> TrainConfig:
    train_root, val_root = layouts
    return TrainConfig(train_data=(str(train_root),), val_data=str(val_root), cache_dir=str(cache), val_subjects=1,
                       train_seeds=(1000,), val_seed=5555, **kw)


def test_config_round_trip_and_reserved_seeds(tmp_path):
    c = TrainConfig(train_data=("a",), val_data="b", train_seeds=(1000, 1001), val_seed=5555, body_noise=BodyNoise(depth=0.1))
    c.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == c
    for bad in ({"train_seeds": (4242,)}, {"val_seed": 9090}, {"train_seeds": (5555,), "val_seed": 5555}):
        with pytest.raises(TrainConfigError):
            dataclasses.replace(c, **bad)
    with pytest.raises(TrainConfigError, match="unknown"):
        TrainConfig.from_dict({"nope": 1})


def test_cache_and_sample_geometry(layouts, tmp_path):
    root = layouts[0]
    assert complete_subjects(root) == ["0000", "0001"]
    s = load_cached_subject(root, "0000", 64, tmp_path)
    again = load_cached_subject(root, "0000", 64, tmp_path)  # from the file this time
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert s["images"].shape == (12, 64, 64, 3) and s["images"].dtype == np.uint8 and s["masks"].shape == (12, 64, 64)
    views = [1, 4, 6]
    sample = make_sample(s, 0, views, 1, None, np.random.default_rng(0))
    torch.testing.assert_close(sample.c2w[0, 0], torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]]))
    # The exact body, projected by the supervision cameras, falls inside the person's mask.
    uv, z = sample.cameras.project(sample.vertices[0])
    for c in range(len(views)):
        px = uv[c].floor().long().clamp(0, 63)
        assert (sample.target_mask[c, px[:, 1], px[:, 0], 0] > 0).float().mean() > 0.9
    # Input from view 1: the canonical camera is view 1's, and the same body lands on view 1's mask.
    s1 = make_sample(s, 1, [1], 1, None, np.random.default_rng(0))
    torch.testing.assert_close(s1.images[0, 0], s1.target_rgb[0].permute(2, 0, 1))


def test_body_noise_is_seeded_and_bounded():
    v = np.random.default_rng(0).normal(size=(5000, 3)) * [0.2, 0.6, 0.1]
    noise = BodyNoise(clean_prob=0.0)
    a = perturb_body(v, noise, np.random.default_rng(1))
    np.testing.assert_array_equal(a, perturb_body(v, noise, np.random.default_rng(1)))
    shift = np.linalg.norm(a - v, axis=1)
    assert 0.005 < np.median(shift) < 0.15
    np.testing.assert_array_equal(perturb_body(v, BodyNoise(clean_prob=1.0), np.random.default_rng(1)), v)


def test_views_and_groups():
    views = draw_views(12, 11, 4, np.random.default_rng(0))
    assert views[0] == 11 and len(set(views)) == 4
    assert [view_group(v, 12) for v in (1, 3, 5, 6, 7, 9, 11)] == ["front", "side", "back", "back", "back", "side", "front"]


def test_refuses_reserved_layout_seed(layouts, tmp_path):
    reserved = _layout(tmp_path / "reserved", 4242, 1)
    c = dataclasses.replace(_config(layouts, tmp_path / "cache"), train_data=(str(reserved),))
    with pytest.raises(TrainConfigError, match="reserved"):
        train(c, tmp_path / "run", resume=False)


@pytest.mark.slow
def test_train_steps_resume_and_validation_record(layouts, tmp_path):
    run = tmp_path / "run"
    c = _config(layouts, tmp_path / "cache", max_steps=2, warmup_steps=1)
    state = train(c, run, resume=False)
    assert state.step == 2 and (run / STATE_NAME).exists() and (run / "best" / "model.safetensors").exists()
    lines = [json.loads(x) for x in (run / "val.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 2]
    assert set(lines[0]["model"]["all"]) == {"psnr", "fg_psnr", "ssim", "lpips"} and lines[1]["baseline"] == lines[0]["baseline"]
    with pytest.raises(TrainError, match="resume"):
        train(c, run, resume=False)
    more = dataclasses.replace(c, max_steps=3)
    with pytest.raises(TrainError, match="differs"):
        train(more, run, resume=True)
    more.save(run / "config.json")
    state = train(more, run, resume=True)
    assert state.step == 3 and state.cpu_seconds > 0
    # The package export: fp16 weights that load back into a float32 network, the curve in the card.
    from safetensors import safe_open

    from hgm_core.model import HGM
    from hgm_core.train.export import export_checkpoint

    out = export_checkpoint(run, tmp_path / "export")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    assert next(HGM.from_pretrained(out).parameters()).dtype == torch.float32
    assert "| baseline (body colours) |" in (out / "README.md").read_text()


def test_batches_workers_packs_and_no_validation(layouts, tmp_path):
    # The GPU recipe on the CPU: a person-window pack, two samples per step made by a worker process,
    # no validation layout; then a second run warm-starts from the first one's state.
    from hgm_core.data.pack import open_pack, pack_subjects, update_index

    pack = tmp_path / "pack"
    index = open_pack(layouts[0], pack, size=128, margin=0.12, jpeg_quality=92)
    list(pack_subjects(layouts[0], pack, ["0000", "0001"], index))
    update_index(pack)
    c = TrainConfig(train_data=(str(pack),), train_seeds=(1000,), aim_input=True, supervision_views=2, supervision_crop=32,
                    lpips_views=0, batch_size=2, max_steps=2, warmup_steps=1, lambda_depth=1.0)
    state = train(c, tmp_path / "run", resume=False, workers=1)
    assert state.step == 2 and state.gpu_seconds == 0.0
    assert not (tmp_path / "run" / "best").exists() and not (tmp_path / "run" / "val.jsonl").exists()
    more = dataclasses.replace(c, init_from=str(tmp_path / "run"), batch_size=1, max_steps=1)
    train(more, tmp_path / "run2", resume=False)
    init = json.loads((tmp_path / "run2" / "init.json").read_text())
    assert init["step"] == 2 and init["gpu_hours"] == 0.0
    with pytest.raises(TrainConfigError, match="batch_size"):
        dataclasses.replace(c, batch_size=0)
    with pytest.raises(TrainConfigError, match="aim_input"):
        train(dataclasses.replace(c, aim_input=False), tmp_path / "run3", resume=False)


def test_model_card_tells_the_whole_warm_start_lineage():
    from hgm_core.train.trainer import RunState, model_card

    summary = {"psnr": 20.0, "fg_psnr": 12.0, "ssim": 0.9, "lpips": 0.1}
    val = {"model": {"all": summary}, "baseline": {"all": summary}, "subjects": 4}
    init = {"source": "runs/cpu", "step": 679, "cpu_hours": 0.16, "gpu_hours": 0.0,
            "init": {"source": "runs/gpu", "step": 646, "cpu_hours": 0.13, "gpu_hours": 0.14}}
    card = model_card(TrainConfig(train_data=("nowhere",), train_seeds=(1000,)), RunState(10, 36.0), 3, val, init)
    assert "runs/cpu at step 679, 0.16 CPU-hours, itself warm-started from runs/gpu at step 646, 0.13 CPU-hours, 0.14 GPU-hours" in card.notes
    assert "cached at 128^2" in card.training_data and "back view" not in card.notes
    two = model_card(TrainConfig(train_data=("nowhere",), train_seeds=(1000,), num_views=2), RunState(10, 36.0), 3, val)
    assert "Second input view: the ground-truth back view" in two.notes and "upper bound for `fuse`" in two.notes
