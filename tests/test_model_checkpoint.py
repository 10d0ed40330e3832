"""Checkpoints: bitwise round trip, model card, refusal of mismatched configs, official key mapping."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hgm_core.model import HGM, CheckpointError, ModelCard, config_for, convert_official_state_dict, default_views
from hgm_core.model.official import official_shapes
from tests.test_model import OFFICIAL_TSV, inputs


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """A tiny model whose BN statistics moved (one train-mode forward), saved once."""
    cfg = config_for("tiny")
    torch.manual_seed(0)
    model = HGM(cfg).train()
    with torch.no_grad():
        model(*inputs(cfg))
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    card = ModelCard(training_data="synthetic Anny renders (test)", steps=123, metrics={"psnr": 21.5, "lpips": 0.12})
    model.save_pretrained(path, card)
    return model, path


def test_round_trip_is_bitwise(trained_like) -> None:
    model, path = trained_like
    loaded = HGM.from_pretrained(path, config=model.config)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert int(b["xyzc_net.net.0.1.num_batches_tracked"]) == 1
    with torch.no_grad():
        x = inputs(model.config, seed=5)
        assert torch.equal(model(*x).merged, loaded(*x).merged)


def test_files_are_readable_independently(trained_like) -> None:
    model, path = trained_like
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())
    meta = json.loads((path / "config.json").read_text())
    assert meta["config"]["body_model"] == "anny" and meta["card"]["steps"] == 123
    card = (path / "README.md").read_text()
    assert "synthetic Anny renders (test)" in card and "| psnr | 21.5 |" in card and "steps: 123" in card


def test_mismatched_config_is_refused(trained_like) -> None:
    model, path = trained_like
    with pytest.raises(CheckpointError, match=r"num_views: checkpoint 1 vs requested 2"):
        HGM.from_pretrained(path, config=config_for("tiny", num_views=2))
    with pytest.raises(CheckpointError, match="body_model: checkpoint 'anny' vs requested 'smplx'"):
        HGM.from_pretrained(path, config=config_for("tiny", body_model="smplx"))


def test_weights_that_do_not_fit_their_config_are_refused(trained_like, tmp_path) -> None:
    model, path = trained_like
    bad = tmp_path / "bad"
    model.save_pretrained(bad)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["c.weight"] = torch.zeros(10475, 32)
    del state["fusion.head.bias"]
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. fusion.head.bias\); 1 wrong shape \(e.g. c.weight"):
        HGM.from_pretrained(bad)
    (bad / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="format"):
        HGM.from_pretrained(bad)
    with pytest.raises(CheckpointError, match="not an hgm checkpoint"):
        HGM.from_pretrained(tmp_path / "nothing")


def _synthetic_official() -> dict[str, torch.Tensor]:
    """Every tensor of the official `big` state_dict with its listed shape, as stride-0 views (no memory)."""
    out = {}
    for key, (shape, dtype) in official_shapes(OFFICIAL_TSV).items():
        dt = getattr(torch, dtype.removeprefix("torch."))
        out["module." + key] = torch.zeros((), dtype=dt).expand(shape)
    return out


def test_converter_maps_every_lined_up_official_tensor() -> None:
    conv = convert_official_state_dict(_synthetic_official(), config_for("big", body_model="smplx"))
    assert conv.unmatched == []
    mapped_prefixes = {k.split(".")[0] for k in conv.state_dict}
    assert mapped_prefixes == {"unet", "conv", "unet2", "c", "xyzc_attn", "xyzc_net"}
    assert {k.split(".")[0] for k in conv.uncovered} == {"body_head", "fusion"}
    assert "unet.conv_out_2.weight" in conv.skipped and "res.conv_in.weight" in conv.skipped
    assert "xyzc_attn.layer_norm.weight" in conv.skipped
    assert len(conv.state_dict) + len(conv.skipped) == 910


def test_converter_refuses_wrong_body_model_and_permutes_spconv_layouts() -> None:
    with pytest.raises(CheckpointError, match=r"c.weight \[10475, 32\] -> c.weight \(\[13718, 32\]\)"):
        convert_official_state_dict(_synthetic_official(), config_for("big", body_model="anny"))
    w = torch.randn(3, 3, 3, 32, 32)  # spconv 1.x [kD, kH, kW, in, out]
    tiny = config_for("tiny")
    conv = convert_official_state_dict({"xyzc_net.net.0.0.weight": w}, tiny, spconv_layout="rsck")
    got = conv.state_dict["xyzc_net.net.0.0.weight"]
    assert torch.equal(got[5, 0, 1, 2, 7], w[0, 1, 2, 7, 5])  # [out, kD, kH, kW, in]
    model = HGM(tiny)
    model.load_state_dict(conv.state_dict, strict=False)
    assert torch.equal(model.xyzc_net.net[0][0].weight, got)


def test_default_views_front_and_back() -> None:
    K, c2w = default_views(config_for("tiny", num_views=2))
    assert torch.allclose(c2w[0], torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]]))
    assert torch.allclose(c2w[1, :3, 3], torch.tensor([0.0, 0.0, -1.5]), atol=1e-6)
    assert K.shape == (2, 3, 3) and float(K[0, 0, 2]) == 64.0
    assert replace(config_for("tiny"), num_views=2) == config_for("tiny", num_views=2)
