"""Checkpoints: the files behind `HGM.save_pretrained` / `HGM.from_pretrained`, and the model card.

A checkpoint directory holds
    model.safetensors   every state_dict tensor (parameters and BN statistics), bit-exact,
    config.json         {"format": "hgm", "format_version": 1, "config": HGMConfig, "card": ModelCard},
    README.md           the model card for humans (training data, steps, metrics).

Loading refuses a checkpoint whose config differs from the one the caller expects, or whose
tensors do not fit its own config, with a message naming the differences.

This module does not know the network class (so `hgm.py` can import it without a cycle); the
official weights' key mapping lives in `hgm_core.model.official`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch

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
    from safetensors.torch import save_file  # only reading and writing weights needs it (a bare GPU bench does not)

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


def load_checkpoint(directory: str | Path, config: HGMConfig | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[HGMConfig, dict[str, torch.Tensor]]:
    """The stored config and tensors of `directory`. If `config` is given, the stored one must equal it.

    `HGM.from_pretrained` builds the network from these and checks the tensors against it.
    """
    stored, _ = read_checkpoint_config(directory)
    if config is not None and config != stored:
        diff = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in stored.diff(config).items())
        raise CheckpointError(f"checkpoint {directory} was saved with a different config ({diff})")
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    from safetensors.torch import load_file

    return stored, load_file(str(weights), device=str(map_location))
