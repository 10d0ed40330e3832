"""The `back_view` stage: render the avatar from behind and refine that image (HGM §3.5).

The camera sits opposite the input camera across the body's centre (half a turn about the body's
up axis, at the same distance), looking at the centre; the avatar is rendered on white, as the
network's inputs are. The render is then refined by ControlNet-tile on Stable Diffusion 1.5 img2img
(`hgm_core.model.back_refiner`) when the user configures both local weight folders; without them
this component is not built, and a level that needs it is refused with the reason
(`Reconstructor.plan`). The refined image and its camera go on the frame for the two-view `fuse`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from hgm_core.body.fit import skeleton
from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians
from hgm_core.model.back_refiner import BackRefinerError, TileRefiner, TileSettings
from hgm_core.pipeline.refine_body import body_cameras
from hgm_core.pipeline.stage import Frame, Stage, update
from hgm_core.render.api import rasterize
from hgm_core.render.views import WHITE, body_up
from hgm_core.types import StageUnavailableError


@dataclass(frozen=True)
class BackViewConfig:
    """The back-view stage.

    Attributes:
        sd15_path: local folder of Stable Diffusion 1.5 in diffusers layout (`model_index.json`, ...);
            None (default) = no diffusion refiner, the stage is off.
        controlnet_path: local folder of the tile ControlNet (`control_v11f1e_sd15_tile`); None = off.
        size: the back view's side in pixels (SD 1.5 works at 512; a multiple of the model's 8).
        diffusion: prompts, strength, steps, guidance and seed (the official inference's by default).
    """

    sd15_path: str | None = None
    controlnet_path: str | None = None
    size: int = 512
    diffusion: TileSettings = field(default_factory=TileSettings)

    @property
    def configured(self) -> bool:
        return bool(self.sd15_path) and bool(self.controlnet_path)


OFF_REASON = ("back_view needs local Stable Diffusion 1.5 and ControlNet-tile weight folders "
              "(back_view.sd15_path, back_view.controlnet_path); none are configured, and nothing is downloaded")
"""Why the component is absent when the folders are not configured (`Reconstructor.plan` says it)."""


@dataclass(frozen=True)
class BackView:
    """The avatar seen from behind.

    Attributes:
        rendered: `[S, S, 3]` uint8 the avatar's render (on white).
        image: `[S, S, 3]` uint8 the refined image (what `fuse` reads).
        K: `[3, 3]` intrinsics; viewmat: `[4, 4]` input camera's optical frame -> back camera (OpenCV axes).
        refined_by: what made `image` from `rendered`.
    """

    rendered: np.ndarray
    image: np.ndarray
    K: np.ndarray
    viewmat: np.ndarray
    refined_by: str


def back_camera(vertices: np.ndarray, up: np.ndarray, size: int) -> Cameras:
    """The camera half a turn about `up [3]` around the body's centre (`vertices [V, 3]`, optical frame)."""
    return body_cameras(vertices, up, size, (2,))


def render_back(avatar: Gaussians, camera: Cameras) -> np.ndarray:
    """`[S, S, 3]` uint8 render of `avatar` from the one camera `camera`, on white."""
    with torch.no_grad():
        out = rasterize(avatar.to(dtype=torch.float32), camera, background=WHITE)
    return (out.rgb[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


class BackViewStage(Stage):
    """Render the back view and refine it with the diffusion refiner.

    Args:
        refiner: a loaded `TileRefiner`; config: the stage's settings.
    """

    name = "back_view"
    needs = ("body", "gaussians")
    provides = ("back_view",)

    def __init__(self, refiner: TileRefiner, config: BackViewConfig) -> None:
        if config.size % refiner.multiple:
            raise ValueError(f"back_view.size {config.size} must be a multiple of {refiner.multiple} for these weights")
        self.refiner, self.config = refiner, config

    @classmethod
    def from_config(cls, config: BackViewConfig) -> BackViewStage:
        """Load the refiner from the configured folders.

        Raises:
            StageUnavailableError: not configured, `diffusers` not installed, or the weights do not load.
        """
        if not config.configured:
            raise StageUnavailableError(OFF_REASON)
        try:
            refiner = TileRefiner.from_folders(config.sd15_path, config.controlnet_path, config.diffusion)
        except BackRefinerError as e:
            raise StageUnavailableError(f"back_view unavailable: {e}") from None
        return cls(refiner, config)

    def run(self, frame: Frame) -> Frame:
        t0 = time.perf_counter()
        camera = back_camera(frame.body.vertices, body_up(skeleton(frame.body)), self.config.size)
        rendered = render_back(frame.gaussians, camera)
        t1 = time.perf_counter()
        image = self.refiner(rendered)
        t2 = time.perf_counter()
        s = self.refiner.settings
        frame.reports[self.name] = {
            "refined_by": "controlnet_tile_sd15_img2img", "weights": self.refiner.source, "size": self.config.size,
            "strength": s.strength, "steps": s.steps, "denoising_steps": int(s.steps * s.strength), "guidance_scale": s.guidance_scale,
            "seed": s.seed, "render_seconds": t1 - t0, "diffusion_seconds": t2 - t1,
            "mean_abs_change": float(np.abs(image.astype(np.int16) - rendered).mean() / 255),
        }
        view = BackView(rendered, image, camera.K[0].double().numpy(), camera.viewmats[0].double().numpy(), "controlnet_tile_sd15_img2img")
        return update(frame, back_view=view)
