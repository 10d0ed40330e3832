"""The `coarse` stage: the one-view HGM network on the image and the fitted body.

`hgm_core.model.predict.predict_avatar` does the crop/normalisation the network was trained with and
maps its Gaussians back into the camera's optical frame. When the output is unusable
(`check_avatar`: non-finite, too few visible Gaussians, far from the body) the stage hands the frame
to its fallback component (the `prior`) and says so in its report — it never returns a garbage
avatar, and it never hides that the network's result was replaced. Gaussians too faint for any
renderer to draw (opacity below `ALPHA_MIN`: the network's background pixels, which start off) are
dropped: they would only widen the avatar's bounds (turntable framing) and the published cloud.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hgm_core.model.hgm import HGM
from hgm_core.model.predict import check_avatar, predict_avatar
from hgm_core.pipeline.stage import Frame, Stage, update
from hgm_core.render.output import ALPHA_MIN
from hgm_core.types import StageUnavailableError


class CoarseStage(Stage):
    """The HGM one-view network, with a fallback component for unusable outputs.

    Args:
        model: a one-view `HGM` whose `config.body_model` is the fit's body model.
        fallback: the component that runs instead when the network's avatar fails `check_avatar`.
        checkpoint: where the weights came from (recorded in the report).
        device: where the network runs (its weights move there once, in float32).
        half: run the network under a float16 autocast on CUDA (ignored on the CPU, which has no
            fast float16); the Gaussians it returns are float32 either way.
    """

    name = "coarse"
    needs = ("perception", "body")
    provides = ("gaussians",)

    def __init__(self, model: HGM, fallback: Stage, checkpoint: str, device: torch.device | str = "cpu", half: bool = True) -> None:
        self.device = torch.device(device)
        self.half = half and self.device.type == "cuda"
        self.model, self.fallback, self.checkpoint = model.to(self.device).eval(), fallback, checkpoint

    @classmethod
    def from_checkpoint(cls, directory: str | Path, fallback: Stage, body_model: str, device: torch.device | str = "cpu",
                        half: bool = True) -> CoarseStage:
        """Load the network from a checkpoint folder.

        Raises:
            StageUnavailableError: the folder is missing, is not a one-view checkpoint, or was
                trained with another body model than the one the pipeline fits.
        """
        from hgm_core.model.checkpoint import CheckpointError

        try:
            model = HGM.from_pretrained(directory).float()  # the embedded weights are stored as fp16
        except CheckpointError as e:
            raise StageUnavailableError(f"coarse: cannot load checkpoint {directory}: {e}") from None
        if model.config.num_views != 1:
            raise StageUnavailableError(f"coarse: checkpoint {directory} is a {model.config.num_views}-view network; need one view")
        if model.config.body_model != body_model:
            raise StageUnavailableError(
                f"coarse: checkpoint {directory} was trained on the {model.config.body_model!r} body model, "
                f"but the pipeline fits {body_model!r}"
            )
        return cls(model, fallback, str(directory), device, half)

    def run(self, frame: Frame) -> Frame:
        per, fit = frame.perception, frame.body
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            avatar = predict_avatar(self.model, frame.request.image, per.mask, per.K, fit.vertices)
        check = check_avatar(avatar, fit.vertices)
        report = {"checkpoint": self.checkpoint, "network": self.model.config.name, "check": check.reason,
                  "device": str(self.device), "precision": "float16" if self.half else "float32"}
        frame.reports[self.name] = report
        if check.ok:
            visible = avatar.opacities >= ALPHA_MIN
            report["used"], report["dropped_invisible"] = "network", int((~visible).sum())
            return update(frame, gaussians=avatar.subset(visible))
        report["used"] = self.fallback.name
        frame.warnings.append(f"coarse: the network's avatar was unusable ({check.reason}); used '{self.fallback.name}' instead")
        return self.fallback(frame)
