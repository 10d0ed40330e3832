"""A learned back-view refiner that runs on a CPU: a small residual UNet (HGM §3.5 without diffusion).

The paper refines the coarse avatar's back view with ControlNet-tile on SD 1.5 (`back_refiner.py`),
seconds to minutes per image on a CPU. This network is the CPU alternative: it takes the avatar's
back render (RGB on white plus the render's alpha) and predicts a correction, trained on pairs of
the `coarse` avatar's back renders and the ground-truth back views of synthetic subjects
(`hgm_core/train/back_train.py`). It works at `BackCNNConfig.size`; a larger image is refined by
adding the upsampled correction to the full-resolution render, so the render's own detail stays.

A refiner folder holds `model.safetensors` (float16 is enough: the output is 8-bit) and
`config.json` (`{"format": "hgm-back-cnn", "config": BackCNNConfig, "card": {...}}`). The package
embeds one (`hgm_core/assets/checkpoints/back_cnn`) when training has produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hgm_core.configs import config_from_dict, config_to_dict
from hgm_core.paths import ASSETS_DIR

FORMAT = "hgm-back-cnn"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def embedded_back_cnn_dir() -> Path:
    """Folder of the refiner shipped in the package (absent until one is trained; replaced in place)."""
    return ASSETS_DIR / "checkpoints" / "back_cnn"


class BackCNNError(RuntimeError):
    """A refiner folder that is missing, malformed or does not fit its config."""


@dataclass(frozen=True)
class BackCNNConfig:
    """Shape of the residual UNet.

    Attributes:
        channels: feature channels per level (full, 1/2, 1/4, ...): `len(channels) - 1` downsamplings.
        size: the working side in pixels; trained on person windows of this size (the person spans
            about 80 % of it, as `back_view`'s camera frames the body).
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    size: int = 128

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"channels needs at least two positive levels, got {self.channels}")
        if self.size % self.multiple:
            raise ValueError(f"size {self.size} must be a multiple of {self.multiple}")

    @property
    def multiple(self) -> int:
        """Image sides must be a multiple of this (one halving per level below the first)."""
        return 2 ** (len(self.channels) - 1)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU())


class BackCNN(nn.Module):
    """Residual UNet: `forward(rgb [B, 3, H, W] in [0, 1], alpha [B, 1, H, W])` -> refined `[B, 3, H, W]`
    in [0, 1] (the input plus a predicted correction; H, W multiples of `config.multiple`).

    The last layer starts at zero, so an untrained network returns its input.
    """

    def __init__(self, config: BackCNNConfig = BackCNNConfig()) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.down = nn.ModuleList([_block(4, ch[0])] + [_block(ch[i - 1], ch[i]) for i in range(1, len(ch))])
        self.up = nn.ModuleList([_block(ch[i + 1] + ch[i], ch[i]) for i in reversed(range(len(ch) - 1))])
        self.out = nn.Conv2d(ch[0], 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple
        if rgb.ndim != 4 or rgb.shape[1] != 3 or alpha.shape != (rgb.shape[0], 1, *rgb.shape[2:]) or rgb.shape[2] % m or rgb.shape[3] % m:
            raise ValueError(f"need rgb [B, 3, H, W] and alpha [B, 1, H, W] with H, W multiples of {m}, "
                             f"got {list(rgb.shape)} and {list(alpha.shape)}")
        x = torch.cat([rgb * 2 - 1, alpha * 2 - 1], 1)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), skip], 1))
        return (rgb + self.out(x)).clamp(0, 1)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_back_cnn(model: BackCNN, directory: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write `model` as a refiner folder (float16 weights, config and `card`: what it was trained on)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_NAME))
    meta = {"format": FORMAT, "config": config_to_dict(model.config), "parameters": num_parameters(model), "card": card or {}}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=1))
    return directory


def load_back_cnn(directory: str | Path) -> tuple[BackCNN, dict[str, Any]]:
    """A refiner folder -> (the float32 `BackCNN` in eval mode, its card).

    Raises:
        BackCNNError: missing files, another format, or weights that do not fit the config.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / WEIGHTS_NAME).is_file() or not (directory / CONFIG_NAME).is_file():
        raise BackCNNError(f"{directory} is not a back-view refiner folder (needs {WEIGHTS_NAME} and {CONFIG_NAME})")
    meta = json.loads((directory / CONFIG_NAME).read_text())
    if meta.get("format") != FORMAT:
        raise BackCNNError(f"{directory / CONFIG_NAME} has format {meta.get('format')!r}, expected {FORMAT!r}")
    model = BackCNN(config_from_dict(BackCNNConfig, meta["config"]))
    state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS_NAME)).items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise BackCNNError(f"{directory}: weights do not fit the config ({e})") from None
    return model.eval(), meta.get("card", {})


class CNNRefiner:
    """A loaded `BackCNN` applied to one back render.

    Args:
        model: the network (eval mode); source: where its weights came from, for reports.
    """

    def __init__(self, model: BackCNN, source: str) -> None:
        self.model, self.source = model, source

    @classmethod
    def from_folder(cls, directory: str | Path) -> CNNRefiner:
        return cls(load_back_cnn(directory)[0], str(directory))

    @property
    def multiple(self) -> int:
        """Any side works (the image is resampled to the working size); kept for the stage's size check."""
        return 1

    @torch.no_grad()
    def __call__(self, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Refine `image [S, S, 3]` uint8 (the render on white) with its `alpha [S, S]` in [0, 1];
        returns `[S, S, 3]` uint8. At another side than the working size the correction is computed
        on the resampled render and added, upsampled, to the full-resolution one."""
        image, alpha = np.asarray(image), np.asarray(alpha, np.float32)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] != image.shape[1] or alpha.shape != image.shape[:2]:
            raise ValueError(f"need a square [S, S, 3] uint8 image and [S, S] alpha, got {image.dtype} {list(image.shape)} and {list(alpha.shape)}")
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        a = torch.from_numpy(alpha)[None, None]
        size = self.model.config.size
        if image.shape[0] == size:
            out = self.model(rgb, a)
        else:
            small = F.interpolate(rgb, size=(size, size), mode="area" if image.shape[0] > size else "bilinear")
            small_a = F.interpolate(a, size=(size, size), mode="area" if image.shape[0] > size else "bilinear")
            delta = self.model(small, small_a) - small
            out = (rgb + F.interpolate(delta, size=image.shape[:2], mode="bilinear", align_corners=False)).clamp(0, 1)
        return (out[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
