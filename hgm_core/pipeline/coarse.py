"""The network stages: `coarse` (the one-view HGM network on the image and the fitted body) and
`fuse` (the two-view network on the image and the refined back view, HGM §3.5's second pass).

`hgm_core.model.predict.predict_avatar` does the crop/normalisation the network was trained with and
maps its Gaussians back into the camera's optical frame. When the output is unusable
(`check_avatar`: non-finite, too few visible Gaussians, far from the body) the stage falls back —
`coarse` to its fallback component (the `prior`), `fuse` to the coarse avatar it was given — and says
so in its report: it never returns a garbage avatar, and it never hides that the network's result
was replaced. Gaussians too faint for any renderer to draw (opacity below `ALPHA_MIN`: the network's
background pixels, which start off) are dropped: they would only widen the avatar's bounds
(turntable framing) and the published cloud.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from hgm_core.gaussians import Gaussians
from hgm_core.model.hgm import HGM
from hgm_core.model.predict import ExtraView, check_avatar, predict_avatar
from hgm_core.pipeline.stage import Frame, Stage, update
from hgm_core.render.output import ALPHA_MIN
from hgm_core.types import StageUnavailableError


class NetworkStage(Stage):
    """An HGM network of `views` input views run on a frame (the shared part of `coarse` and `fuse`).

    Args:
        model: an `HGM` with `views` input views whose `config.body_model` is the fit's body model.
        checkpoint: where the weights came from (recorded in the report).
        device: where the network runs (its weights move there once, in float32).
        half: run the network under a float16 autocast on CUDA (ignored on the CPU, which has no
            fast float16); the Gaussians it returns are float32 either way.
    """

    views: ClassVar[int]

    def __init__(self, model: HGM, checkpoint: str, device: torch.device | str = "cpu", half: bool = True) -> None:
        if model.config.num_views != self.views:
            raise ValueError(f"{self.name} runs a {self.views}-view network; this one has {model.config.num_views} views")
        self.device = torch.device(device)
        self.half = half and self.device.type == "cuda"
        self.model, self.checkpoint = model.to(self.device).eval(), checkpoint

    @classmethod
    def load(cls, directory: str | Path, body_model: str) -> HGM:
        """The network of a checkpoint folder, as float32 (the embedded weights are stored as fp16).

        Raises:
            StageUnavailableError: the folder is missing, holds a network of another view count, or
                was trained with another body model than the one the pipeline fits.
        """
        from hgm_core.model.checkpoint import CheckpointError

        try:
            model = HGM.from_pretrained(directory).float()
        except CheckpointError as e:
            raise StageUnavailableError(f"{cls.name}: cannot load checkpoint {directory}: {e}") from None
        if model.config.num_views != cls.views:
            raise StageUnavailableError(f"{cls.name}: checkpoint {directory} is a {model.config.num_views}-view network; "
                                        f"need {cls.views} view(s)")
        if model.config.body_model != body_model:
            raise StageUnavailableError(
                f"{cls.name}: checkpoint {directory} was trained on the {model.config.body_model!r} body model, "
                f"but the pipeline fits {body_model!r}"
            )
        return model

    def predict(self, frame: Frame, extra: ExtraView | None = None) -> tuple[Gaussians, dict]:
        """The network's avatar of `frame` (and its second view) and the report; `report["ok"]` says
        whether it passed `check_avatar` (then the faint Gaussians are already dropped)."""
        per, fit = frame.perception, frame.body
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            avatar = predict_avatar(self.model, frame.request.image, per.mask, per.K, fit.vertices, extra)
        check = check_avatar(avatar, fit.vertices)
        report = {"checkpoint": self.checkpoint, "network": self.model.config.name, "views": self.views, "check": check.reason,
                  "device": str(self.device), "precision": "float16" if self.half else "float32", "ok": check.ok}
        if check.ok:
            visible = avatar.opacities >= ALPHA_MIN
            report["dropped_invisible"] = int((~visible).sum())
            avatar = avatar.subset(visible)
        return avatar, report


class CoarseStage(NetworkStage):
    """The HGM one-view network, with a fallback component for unusable outputs.

    Args:
        model, checkpoint, device, half: as `NetworkStage` (a one-view network).
        fallback: the component that runs instead when the network's avatar fails `check_avatar`.
    """

    name = "coarse"
    needs = ("perception", "body")
    provides = ("gaussians",)
    views = 1

    def __init__(self, model: HGM, fallback: Stage, checkpoint: str, device: torch.device | str = "cpu", half: bool = True) -> None:
        super().__init__(model, checkpoint, device, half)
        self.fallback = fallback

    @classmethod
    def from_checkpoint(cls, directory: str | Path, fallback: Stage, body_model: str, device: torch.device | str = "cpu",
                        half: bool = True) -> CoarseStage:
        """Load the one-view network from a checkpoint folder (raises `StageUnavailableError`, see `load`)."""
        return cls(cls.load(directory, body_model), fallback, str(directory), device, half)

    def run(self, frame: Frame) -> Frame:
        avatar, report = self.predict(frame)
        frame.reports[self.name] = report
        if report.pop("ok"):
            report["used"] = "network"
            return update(frame, gaussians=avatar)
        report["used"] = self.fallback.name
        frame.warnings.append(f"coarse: the network's avatar was unusable ({report['check']}); used '{self.fallback.name}' instead")
        return self.fallback(frame)


class FuseStage(NetworkStage):
    """The HGM two-view network on the input image (front) and the refined back view (`back_view`).

    Its avatar replaces the coarse one; when it is unusable the coarse avatar stays and the report
    says so. Args as `NetworkStage` (a two-view network).
    """

    name = "fuse"
    needs = ("perception", "body", "gaussians", "back_view")
    provides = ("gaussians",)
    views = 2

    @classmethod
    def from_checkpoint(cls, directory: str | Path, body_model: str, device: torch.device | str = "cpu", half: bool = True) -> FuseStage:
        """Load the two-view network from a checkpoint folder (raises `StageUnavailableError`, see `load`)."""
        return cls(cls.load(directory, body_model), str(directory), device, half)

    def run(self, frame: Frame) -> Frame:
        back = frame.back_view
        extra = ExtraView(back.image, back.K, np.linalg.inv(back.viewmat))  # back camera -> input optical frame
        avatar, report = self.predict(frame, extra)
        report["back_refined_by"] = back.refined_by
        frame.reports[self.name] = report
        if report.pop("ok"):
            report["used"] = "network"
            return update(frame, gaussians=avatar)
        report["used"] = "coarse"
        frame.warnings.append(f"fuse: the two-view network's avatar was unusable ({report['check']}); kept the coarse avatar")
        return frame
