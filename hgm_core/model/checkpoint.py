"""Checkpoints: `save_pretrained` / `from_pretrained`, the model card, and the official key mapping.

A checkpoint directory holds
    model.safetensors   every state_dict tensor (parameters and BN statistics), bit-exact,
    config.json         {"format": "hgm", "format_version": 1, "config": HGMConfig, "card": ModelCard},
    README.md           the model card for humans (training data, steps, metrics).

Loading refuses a checkpoint whose config differs from the one the caller expects, or whose
tensors do not fit its own config, with a message naming the differences.

`convert_official_state_dict` maps the official HGM state_dict (reference/hgm_official_state_dict.tsv)
onto ours where the modules line up (`OFFICIAL_KEY_MAP`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import torch
from safetensors.torch import load_file, save_file

from hgm_core.model.config import ConfigError, HGMConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
FORMAT = "hgm"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """Raised for missing, malformed or mismatched checkpoints."""


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint was trained on and how well it does.

    Attributes:
        training_data: description of the data (generator, number of subjects/views, licences).
        steps: optimiser steps; 0 means untrained (random initialisation).
        metrics: evaluation figures, e.g. {"psnr": 24.1, "ssim": 0.91, "lpips": 0.08}.
        notes: free text (hardware, time, known limits).
    """

    training_data: str = "none (random initialisation)"
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    notes: str = ""

    def markdown(self, config: HGMConfig, num_params: int) -> str:
        rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(self.metrics.items())) or "| (none) | |"
        return (
            f"# HGM checkpoint `{config.name}` ({config.num_views} view{'s' if config.num_views > 1 else ''})\n\n"
            f"Human Gaussian model after HGM (ICLR 2025), trained for `hgm_core.model`.\n\n"
            f"- body model: `{config.body_model}` ({config.num_vertices} vertices)\n"
            f"- input: {config.input_size}x{config.input_size}, {config.num_gaussians} Gaussians\n"
            f"- parameters: {num_params:,}\n"
            f"- training data: {self.training_data}\n"
            f"- steps: {self.steps}\n\n"
            f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            + (f"## Notes\n\n{self.notes}\n" if self.notes else "")
        )


def save_pretrained(model: torch.nn.Module, directory: str | Path, card: ModelCard | None = None) -> Path:
    """Write `model` (an `HGM`) to `directory` (created if needed); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    card = card or ModelCard()
    config: HGMConfig = model.config
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": FORMAT, "config": config.name})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(), "card": asdict(card)}
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    num_params = sum(p.numel() for p in model.parameters())
    (out / CARD_NAME).write_text(card.markdown(config, num_params))
    return out


def read_checkpoint_config(directory: str | Path) -> tuple[HGMConfig, ModelCard]:
    """The config and model card stored in a checkpoint directory."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not an hgm checkpoint directory")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format {meta.get('format')!r} v{meta.get('format_version')} is not {FORMAT!r} v{FORMAT_VERSION}"
        )
    try:
        config = HGMConfig.from_dict(meta["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: bad config: {e}") from e
    return config, ModelCard(**meta.get("card", {}))


def check_state_dict(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise `CheckpointError` unless `got` has exactly `expected`'s keys and shapes."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = [f"{k}: {list(got[k].shape)} != {list(expected[k].shape)}" for k in expected if k in got and got[k].shape != expected[k].shape]
    if missing or extra or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
            if items:
                parts.append(f"{len(items)} {name} (e.g. {', '.join(items[:3])})")
        raise CheckpointError(f"{what} does not fit its config: " + "; ".join(parts))


def load_pretrained(directory: str | Path, config: HGMConfig | None = None, map_location: str | torch.device = "cpu"):
    """Build an `HGM` from `directory`. If `config` is given, the stored config must equal it."""
    from hgm_core.model.hgm import HGM

    stored, _ = read_checkpoint_config(directory)
    if config is not None and config != stored:
        diff = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in stored.diff(config).items())
        raise CheckpointError(f"checkpoint {directory} was saved with a different config ({diff})")
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    state = load_file(str(weights), device=str(map_location))
    model = HGM(stored)
    check_state_dict(model.state_dict(), state, f"checkpoint {directory}")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Official HGM weights

OFFICIAL_KEY_MAP: tuple[tuple[str, str, str], ...] = (
    ("unet.", "unet.", "LGM UNet: identical names and shapes for `big` (also loads LGM-big `unet.*`)"),
    ("conv.", "conv.", "1x1 conv 14->14 after the UNet"),
    ("unet2.", "unet2.", "image encoder (ResUNet): identical names and shapes for `big`"),
    ("c.", "c.", "vertex tokens: only when the body model matches (SMPL-X 10,475; released training used SMPL 6,890)"),
    ("xyzc_attn.", "xyzc_attn.", "vertex cross-attention (w_qs, w_ks, w_vs, fc)"),
    ("xyzc_net.", "xyzc_net.", "SparseConvNet: same indices; spconv KRSC weights [out, 3, 3, 3, in] by identity"),
)
"""(official prefix, our prefix, note) for every module that lines up with ours."""

OFFICIAL_IGNORED: tuple[tuple[str, str], ...] = (
    ("unet.norm_out_2.", "never called in the official forward"),
    ("unet.conv_out_2.", "never called in the official forward"),
    ("xyzc_attn.layer_norm.", "never called (sum=False)"),
    ("res.", "MixNet fusion (raw-reshape attention): replaced by our fusion transformer"),
    ("net.", "SMPL head, missing from the release: replaced by our per-vertex body_head"),
    ("m_smplx.", "licence-gated SMPL-X data embedded in the weights: never copied"),
    ("smpler.", "SMPLer estimator: not part of this network"),
    ("lpips_loss.", "loss network"),
)
"""Official prefixes that are deliberately not converted, and why."""

SpconvLayout = Literal["krsc", "rsck", "rskc"]


@dataclass(frozen=True)
class Conversion:
    """Result of `convert_official_state_dict`.

    Attributes:
        state_dict: our keys -> tensors (load with `model.load_state_dict(..., strict=False)`).
        skipped: official keys deliberately not converted (`OFFICIAL_IGNORED`).
        unmatched: official keys no rule covers (unexpected content of the checkpoint).
        uncovered: our keys the checkpoint did not provide (they keep their initialisation).
    """

    state_dict: dict[str, torch.Tensor]
    skipped: list[str]
    unmatched: list[str]
    uncovered: list[str]


def _spconv_to_krsc(w: torch.Tensor, layout: SpconvLayout) -> torch.Tensor:
    # Shapes cannot tell the layouts apart when in == out (reference doc §7), hence the explicit switch.
    if layout == "krsc":
        return w
    if layout == "rsck":  # spconv 1.x: [3, 3, 3, in, out]
        return w.permute(4, 0, 1, 2, 3)
    if layout == "rskc":  # spconv 2.0/2.1 native: [3, 3, 3, out, in]
        return w.permute(3, 0, 1, 2, 4)
    raise CheckpointError(f"unknown spconv layout {layout!r}; choose krsc, rsck or rskc")


def convert_official_state_dict(
    official: Mapping[str, torch.Tensor], config: HGMConfig, spconv_layout: SpconvLayout = "krsc"
) -> Conversion:
    """Map an official HGM state_dict onto an `HGM(config)` state_dict.

    Shapes are checked against `config` (built on the meta device, so no memory is used);
    a mapped key with the wrong shape raises `CheckpointError` naming it.
    """
    from hgm_core.model.hgm import HGM

    with torch.device("meta"):
        expected = HGM(config).state_dict()
    out: dict[str, torch.Tensor] = {}
    skipped, unmatched, bad = [], [], []
    for key, value in official.items():
        key = key.removeprefix("module.")
        if any(key.startswith(p) for p, _ in OFFICIAL_IGNORED):
            skipped.append(key)
            continue
        rule = next(((src, dst) for src, dst, _ in OFFICIAL_KEY_MAP if key.startswith(src)), None)
        if rule is None:
            unmatched.append(key)
            continue
        ours = rule[1] + key[len(rule[0]):]
        if key.startswith("xyzc_net.") and value.ndim == 5:
            value = _spconv_to_krsc(value, spconv_layout)
        if ours not in expected or expected[ours].shape != value.shape:
            want = list(expected[ours].shape) if ours in expected else "no such key"
            bad.append(f"{key} {list(value.shape)} -> {ours} ({want})")
            continue
        out[ours] = value
    if bad:
        raise CheckpointError(f"{len(bad)} official tensors do not fit config {config.name!r}: " + "; ".join(bad[:5]))
    uncovered = sorted(set(expected) - set(out))
    return Conversion(out, sorted(skipped), sorted(unmatched), uncovered)


def official_shapes(tsv: str | Path) -> dict[str, tuple[list[int], str]]:
    """Parse `hgm_official_state_dict.tsv` (key, shape, dtype per line) -> {key: (shape, dtype)}."""
    table: dict[str, tuple[list[int], str]] = {}
    for line in Path(tsv).read_text().splitlines():
        if not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        table[key] = (json.loads(shape), dtype)
    return table
