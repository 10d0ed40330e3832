"""The `back_view` stage: render the avatar from behind and refine that image (HGM §3.5).

The camera sits opposite the input camera across the body's centre (half a turn about the body's
up axis, at the same distance), looking at the centre; the avatar is rendered on white, as the
network's inputs are. The render is then refined
- by ControlNet-tile on Stable Diffusion 1.5 img2img (`hgm_core.model.back_refiner`) when the user
  configures both local weight folders (the paper's refiner);
- otherwise by the learned CPU refiner (`hgm_core.model.back_cnn`, a small residual UNet trained on
  the `coarse` avatar's back renders against ground-truth back views), from `cnn_path` or the
  folder embedded in the package.
With neither, this component is not built, and a level that needs it is refused with the reason
(`Reconstructor.plan`). The refined image and its camera go on the frame for the two-view `fuse`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hgm_core.body.fit import skeleton
from hgm_core.camera import Cameras
from hgm_core.gaussians import Gaussians
from hgm_core.model.back_cnn import BackCNNError, CNNRefiner, embedded_back_cnn_dir
from hgm_core.model.back_refiner import BackRefinerError, TileRefiner, TileSettings
from hgm_core.pipeline.refine_body import body_cameras
from hgm_core.pipeline.stage import Frame, Stage, update
from hgm_core.render.api import rasterize
from hgm_core.render.views import WHITE, body_up
from hgm_core.types import StageUnavailableError


EMBEDDED = "embedded"
"""`BackViewConfig.cnn_path` value meaning the learned refiner shipped inside the package."""


@dataclass(frozen=True)
class BackViewConfig:
    """The back-view stage.

    Attributes:
        sd15_path: local folder of Stable Diffusion 1.5 in diffusers layout (`model_index.json`, ...);
            None (default) = no diffusion refiner.
        controlnet_path: local folder of the tile ControlNet (`control_v11f1e_sd15_tile`); None = off.
        size: the back view's side in pixels (SD 1.5 works at 512; a multiple of the model's 8).
        diffusion: prompts, strength, steps, guidance and seed (the official inference's by default).
        cnn_path: the learned refiner's folder (`model.back_cnn`), used when the diffusion folders
            are not both set: "embedded" (default) = the one shipped in the package; None = none.
    """

    sd15_path: str | None = None
    controlnet_path: str | None = None
    size: int = 512
    diffusion: TileSettings = field(default_factory=TileSettings)
    cnn_path: str | None = EMBEDDED

    @property
    def configured(self) -> bool:
        return bool(self.sd15_path) and bool(self.controlnet_path)


    @property
    def named_weights(self) -> bool:
        """The user named weights (both diffusion folders, or a refiner folder of their own): when
        they do not load that is an error, not a feature left off."""
        return self.configured or self.cnn_path not in (None, EMBEDDED)

    def cnn_folder(self) -> Path | None:
        """The learned refiner's folder to load, or None when it is off."""
        if self.cnn_path is None:
            return None
        return embedded_back_cnn_dir() if self.cnn_path == EMBEDDED else Path(self.cnn_path)


OFF_REASON = ("back_view needs local Stable Diffusion 1.5 and ControlNet-tile weight folders "
              "(back_view.sd15_path, back_view.controlnet_path) or the learned refiner (back_view.cnn_path); "
              "none are configured, and nothing is downloaded")
"""Why the component is absent when no refiner is configured (`Reconstructor.plan` says it)."""


@dataclass(frozen=True)
class BackView:
    """The avatar seen from behind.

    Attributes:
        rendered: `[S, S, 3]` uint8 the avatar's render (on white); alpha: `[S, S]` float32 its opacity.
        image: `[S, S, 3]` uint8 the refined image (what `fuse` reads).
        K: `[3, 3]` intrinsics; viewmat: `[4, 4]` input camera's optical frame -> back camera (OpenCV axes).
        refined_by: what made `image` from `rendered`.
    """

    rendered: np.ndarray
    alpha: np.ndarray
    image: np.ndarray
    K: np.ndarray
    viewmat: np.ndarray
    refined_by: str


def back_camera(vertices: np.ndarray, up: np.ndarray, size: int) -> Cameras:
    """The camera half a turn about `up [3]` around the body's centre (`vertices [V, 3]`, optical frame)."""
    return body_cameras(vertices, up, size, (2,))


def render_views(avatar: Gaussians, cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """`avatar` seen from `cameras` (C of them), on white: `[C, S, S, 3]` uint8 RGB and `[C, S, S]`
    float32 alpha (the stage's back view, and the back refiner's training pairs)."""
    with torch.no_grad():
        out = rasterize(avatar.to(dtype=torch.float32), cameras, background=WHITE)
    rgb = (out.rgb.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return rgb, out.alpha[..., 0].clamp(0, 1).numpy().astype(np.float32)


class BackViewStage(Stage):
    """Render the back view and refine it (diffusion when configured, else the learned CPU refiner).

    Args:
        refiner: a loaded `TileRefiner` or `CNNRefiner`; config: the stage's settings.
    """

    name = "back_view"
    needs = ("body", "gaussians")
    provides = ("back_view",)

    def __init__(self, refiner: TileRefiner | CNNRefiner, config: BackViewConfig) -> None:
        if config.size % refiner.multiple:
            raise ValueError(f"back_view.size {config.size} must be a multiple of {refiner.multiple} for these weights")
        self.refiner, self.config = refiner, config

    @classmethod
    def from_config(cls, config: BackViewConfig) -> BackViewStage:
        """Load the diffusion refiner from the configured folders, or else the learned refiner.

        Raises:
            StageUnavailableError: no refiner configured (or the embedded one absent), `diffusers`
                not installed, or the weights do not load.
        """
        if config.configured:
            try:
                return cls(TileRefiner.from_folders(config.sd15_path, config.controlnet_path, config.diffusion), config)
            except BackRefinerError as e:
                raise StageUnavailableError(f"back_view unavailable: {e}") from None
        folder = config.cnn_folder()
        if folder is None or (config.cnn_path == EMBEDDED and not folder.is_dir()):
            raise StageUnavailableError(OFF_REASON)
        try:
            return cls(CNNRefiner.from_folder(folder), config)
        except BackCNNError as e:
            raise StageUnavailableError(f"back_view unavailable: {e}") from None

    def run(self, frame: Frame) -> Frame:
        t0 = time.perf_counter()
        camera = back_camera(frame.body.vertices, body_up(skeleton(frame.body)), self.config.size)
        rgb, alphas = render_views(frame.gaussians, camera)
        rendered, alpha = rgb[0], alphas[0]
        t1 = time.perf_counter()
        if isinstance(self.refiner, TileRefiner):
            image = self.refiner(rendered)
            s = self.refiner.settings
            facts = {"refined_by": "controlnet_tile_sd15_img2img", "weights": self.refiner.source, "strength": s.strength,
                     "steps": s.steps, "denoising_steps": int(s.steps * s.strength), "guidance_scale": s.guidance_scale, "seed": s.seed}
        else:
            image = self.refiner(rendered, alpha)
            facts = {"refined_by": "back_cnn", "weights": self.refiner.source, "working_size": self.refiner.model.config.size}
        t2 = time.perf_counter()
        frame.reports[self.name] = facts | {
            "size": self.config.size, "render_seconds": t1 - t0, "refine_seconds": t2 - t1,
            "mean_abs_change": float(np.abs(image.astype(np.int16) - rendered).mean() / 255),
        }
        view = BackView(rendered, alpha, image, camera.K[0].double().numpy(), camera.viewmats[0].double().numpy(), facts["refined_by"])
        return update(frame, back_view=view)
