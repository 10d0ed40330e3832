"""Back-view refinement with ControlNet-tile on Stable Diffusion 1.5 img2img (`diffusers`), from local
weight folders only.

What HGM's released inference does (docs/reference/hgm_official_code.md §6.2 step 3): the rendered
back view is both the img2img input and the tile ControlNet's control image; prompt "best quality",
negative prompt "blur, lowres, bad anatomy, bad hands, cropped, worst quality", strength 0.2, 100
steps (so ~20 denoising steps run), guidance 5.0, seed 22, no mask. The official code loads
`lllyasviel/control_v11f1e_sd15_tile` and SD 1.5 from the Hugging Face Hub through a community
pipeline downloaded at run time; here diffusers' own `StableDiffusionControlNetImg2ImgPipeline`
loads the same weights from folders the user already has (`save_pretrained` / Hub snapshot layout:
`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`; the ControlNet
folder with `config.json` and its weights), with `local_files_only=True`: nothing is ever downloaded.
The safety checker and its image processor are not loaded (the official code disables them too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROMPT = "best quality"
NEGATIVE_PROMPT = "blur, lowres, bad anatomy, bad hands, cropped, worst quality"


class BackRefinerError(RuntimeError):
    """The diffusion refiner cannot be built here (missing folder, `diffusers` not installed, bad weights)."""


@dataclass(frozen=True)
class TileSettings:
    """How the tile ControlNet img2img runs (defaults: the official inference's values).

    Attributes:
        prompt / negative_prompt: the text conditioning.
        strength: img2img strength (the fraction of the schedule that runs: 0.2 x 100 = 20 steps).
        steps: scheduler steps for strength 1.
        guidance_scale: classifier-free guidance.
        conditioning_scale: the ControlNet residuals' weight.
        seed: the noise seed (one CPU generator per call, so a call is reproducible).
    """

    prompt: str = PROMPT
    negative_prompt: str = NEGATIVE_PROMPT
    strength: float = 0.2
    steps: int = 100
    guidance_scale: float = 5.0
    conditioning_scale: float = 1.0
    seed: int = 22

    def __post_init__(self) -> None:
        if not 0 < self.strength <= 1 or self.steps < 1:
            raise ValueError(f"strength must be in (0, 1] and steps >= 1, got {self.strength}, {self.steps}")


def _missing(folder: Path, files: tuple[str, ...]) -> list[str]:
    return [f for f in files if not (folder / f).exists()]


class TileRefiner:
    """A loaded `StableDiffusionControlNetImg2ImgPipeline` and the settings it runs with.

    Args:
        pipeline: the diffusers pipeline (float32 on the CPU; fp16 only where a GPU runs it).
        settings: prompts, strength, steps, guidance, seed.
        source: where the weights came from, for reports.
    """

    def __init__(self, pipeline: Any, settings: TileSettings, source: dict[str, str]) -> None:
        self.pipeline, self.settings, self.source = pipeline, settings, source

    @classmethod
    def from_folders(cls, base: str | Path, controlnet: str | Path, settings: TileSettings | None = None,
                     device: str | torch.device = "cpu") -> TileRefiner:
        """Load SD 1.5 (`base`) and the tile ControlNet (`controlnet`) from local folders.

        Raises:
            BackRefinerError: a folder or its index file is missing, `diffusers`/`transformers` are
                not installed (`pip install 'hgm[diffusion]'`), or the weights do not load.
        """
        base, controlnet = Path(base), Path(controlnet)
        for name, folder, files in (("base model", base, ("model_index.json",)), ("ControlNet", controlnet, ("config.json",))):
            if not folder.is_dir() or _missing(folder, files):
                raise BackRefinerError(f"{name} folder {folder} is missing or has no {files[0]} (a diffusers save_pretrained folder)")
        try:
            from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline
        except ImportError as e:
            raise BackRefinerError(f"diffusers not installed ({e}); install the extra: pip install 'hgm[diffusion]'") from None
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
        try:
            net = ControlNetModel.from_pretrained(controlnet, local_files_only=True, dtype=dtype)
            pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
                base, controlnet=net, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                local_files_only=True, dtype=dtype,
            )
        except (OSError, ValueError) as e:
            raise BackRefinerError(f"cannot load the diffusion weights from {base} and {controlnet}: {e}") from None
        return cls(pipe.to(device), settings or TileSettings(), {"base": str(base), "controlnet": str(controlnet)})

    @property
    def multiple(self) -> int:
        """Image sides must be a multiple of this (the VAE's downsampling times the UNet's)."""
        unet_down = 2 ** (len(self.pipeline.unet.config.block_out_channels) - 1)
        return int(self.pipeline.vae_scale_factor) * unet_down

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Refine `image [S, S, 3]` uint8 RGB (S a multiple of `multiple`); returns the same shape, uint8."""
        from PIL import Image

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] % self.multiple or image.shape[1] % self.multiple:
            raise ValueError(f"image must be [H, W, 3] uint8 with sides a multiple of {self.multiple}, got {image.dtype} {list(image.shape)}")
        s = self.settings
        pil = Image.fromarray(image)
        out = self.pipeline(
            prompt=s.prompt, negative_prompt=s.negative_prompt, image=pil, control_image=pil, strength=s.strength,
            num_inference_steps=s.steps, guidance_scale=s.guidance_scale, controlnet_conditioning_scale=s.conditioning_scale,
            height=image.shape[0], width=image.shape[1], generator=torch.Generator("cpu").manual_seed(s.seed), output_type="np",
        ).images[0]
        return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
