"""`Reconstructor`: chains stage components (`hgm_core.pipeline.stage`) and reports what ran.

    rec = Reconstructor.from_config(ReconstructorConfig())   # warm: pose estimator + body model
    out = rec.run(ReconstructionRequest(image, stages="prior"))
    out.gaussians, out.timings, out.info["stages_run"], out.info["config"]

It runs exactly the components of the requested level (`LEVELS`), times each, and refuses a level
whose components it was not built with (`StageUnavailableError`): it never labels a result with a
stage that did not run. It sets no process-wide state: thread counts and caches belong to the entry
points (`hgm reconstruct`, `hgm serve`, the node's worker).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from hgm_core.body.base import BodyModel
from hgm_core.body.fit import FitConfig, skeleton
from hgm_core.body.tracker import TrackConfig
from hgm_core.configs import config_from_dict, config_override, config_to_dict
from hgm_core.device import device_report, resolve_device
from hgm_core.perception.perceive import PerceptionConfig
from hgm_core.pipeline.back_view import BackViewConfig, BackViewStage
from hgm_core.pipeline.components import body_mesh_arrays
from hgm_core.pipeline.depth_align import DepthAlignConfig, DepthAlignStage
from hgm_core.pipeline.mesh import MeshConfig
from hgm_core.pipeline.prior import PriorConfig
from hgm_core.pipeline.refine_body import OFF_REASON as REFINE_OFF_REASON
from hgm_core.pipeline.refine_body import RefineBodyConfig
from hgm_core.pipeline.stage import LEVELS, OPTIONAL, Frame, Stage
from hgm_core.types import STAGES, BadInputError, Mesh, Reconstruction, ReconstructionRequest, StageUnavailableError


@dataclass(frozen=True)
class BodyConfig:
    """The body model and how it is fitted.

    Attributes:
        model: "anny" (default, ships offline) or "smplx" (needs `smplx_model_path`).
        smplx_model_path: folder or file of licensed SMPL-X model files.
        fit: the fit's weights and schedule.
        track: the per-stream warm-start policy.
    """

    model: str = "anny"
    smplx_model_path: str | None = None
    fit: FitConfig = field(default_factory=FitConfig)
    track: TrackConfig = field(default_factory=TrackConfig)


EMBEDDED = "embedded"
"""`CoarseConfig.checkpoint` value meaning the checkpoint shipped inside the package, when there is one."""


@dataclass(frozen=True)
class CoarseConfig:
    """The one-view HGM network stage (`coarse`); `FuseConfig` is the two-view one (`fuse`).

    Attributes:
        checkpoint: folder of an HGM checkpoint (`hgm_core.model`); "embedded" (default) uses the
            one shipped in the package if it exists; None builds no network stage.
        half: run the network in float16 (autocast) on CUDA; float32 on the CPU either way.
    """

    checkpoint: str | None = EMBEDDED
    half: bool = True

    views: ClassVar[int] = 1

    def resolve(self) -> Path | None:
        """The checkpoint folder to load, or None when the network stage is off (or nothing is embedded)."""
        if self.checkpoint != EMBEDDED:
            return None if self.checkpoint is None else Path(self.checkpoint)
        from hgm_core.model.predict import default_checkpoint_dir

        embedded = default_checkpoint_dir(self.views)
        return embedded if embedded.is_dir() else None


@dataclass(frozen=True)
class FuseConfig(CoarseConfig):
    """The two-view HGM network stage (`fuse`: front image + refined back view); fields as
    `CoarseConfig`, with a two-view checkpoint ("embedded": `hgm_core/assets/checkpoints/tiny_2view`
    when the package ships one)."""

    views: ClassVar[int] = 2


@dataclass(frozen=True)
class ReconstructorConfig:
    """Everything `Reconstructor.from_config` builds from; saved whole into every result's info.

    Attributes:
        perception, body, prior, coarse: each component's settings.
        refine_body: the side-view body refinement after `coarse` (built with `coarse` when enabled).
        back_view: the back view's refiner: diffusion with both local weight folders, else the
            learned CPU refiner (`cnn_path`, embedded by default); built when either is there.
        fuse: the two-view network on the image and the refined back view (built with its checkpoint).
        align_depth: moving the avatar's visible surface onto a request's depth image (built when enabled).
        mesh: the mesh stage's settings; mesh_by_default: run it when a request leaves `mesh`
            unset (off: 26 renders plus TSDF fusion cost ~1.4 s per avatar on one core).
        device: where the torch stages compute (`hgm_core.device`: auto, cpu, cuda, cuda:N); a
            device that does not exist here makes `from_config` raise `DeviceUnavailableError`.
    """

    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    body: BodyConfig = field(default_factory=BodyConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    refine_body: RefineBodyConfig = field(default_factory=RefineBodyConfig)
    back_view: BackViewConfig = field(default_factory=BackViewConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    align_depth: DepthAlignConfig = field(default_factory=DepthAlignConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    mesh_by_default: bool = False
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReconstructorConfig:
        return config_from_dict(cls, data)

    def override(self, changes: dict[str, Any]) -> ReconstructorConfig:
        """A copy with fields replaced by dotted path: `{"body.fit.iterations": 60, "mesh_by_default": True}`."""
        return config_override(self, changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ReconstructorConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


class Reconstructor:
    """Runs request levels over registered stage components.

    Not thread-safe (mediapipe's graph and the body tracker are not): one instance per worker thread.

    Args:
        stages: the components, at most one per name.
        config: the configuration they were built from (recorded in every result).
        unavailable: component name -> why it was not built (said when a level needs it).
    """

    def __init__(self, stages: Sequence[Stage], config: ReconstructorConfig, unavailable: dict[str, str] | None = None) -> None:
        self.stages: dict[str, Stage] = {}
        for stage in stages:
            if stage.name in self.stages:
                raise ValueError(f"two components named {stage.name!r}")
            self.stages[stage.name] = stage
        self.config = config
        self.unavailable = dict(unavailable or {})

    @classmethod
    def from_config(cls, config: ReconstructorConfig | None = None) -> Reconstructor:
        """Build every component `config` allows (the network stages only with their weights)."""
        from hgm_core.body.tracker import BodyTracker
        from hgm_core.perception.perceive import PoseEstimator
        from hgm_core.pipeline.components import FitBodyStage, MeshStage, PerceiveStage, PriorStage

        config = config or ReconstructorConfig()
        device = resolve_device(config.device)
        stages: list[Stage] = [
            PerceiveStage(PoseEstimator(), config.perception),
            FitBodyStage(load_body_model(config.body), config.body.fit, BodyTracker(config.body.track)),
            PriorStage(config.prior),
            MeshStage(config.mesh, device),
        ]
        unavailable: dict[str, str] = {}
        if config.align_depth.enabled:
            stages.append(DepthAlignStage(config.align_depth))
        else:
            unavailable["align_depth"] = "align_depth is off (align_depth.enabled)"
        checkpoint = config.coarse.resolve()
        if checkpoint is not None:
            from hgm_core.pipeline.coarse import CoarseStage
            from hgm_core.pipeline.refine_body import RefineBodyStage

            coarse = CoarseStage.from_checkpoint(checkpoint, fallback=stages[2], body_model=config.body.model,
                                                 device=device, half=config.coarse.half)
            stages.append(coarse)
            if config.refine_body.enabled:
                stages.append(RefineBodyStage(coarse, stages[1].body_model, config.refine_body, config.body.fit))
            else:
                unavailable["refine_body"] = REFINE_OFF_REASON
        else:
            unavailable |= {n: f"{n} needs an HGM checkpoint (coarse.checkpoint is off)" for n in ("coarse", "refine_body")}
        two_view = config.fuse.resolve()
        if two_view is not None:
            from hgm_core.pipeline.coarse import FuseStage

            stages.append(FuseStage.from_checkpoint(two_view, config.body.model, device, config.fuse.half))
        else:
            unavailable["fuse"] = ("fuse needs a two-view HGM checkpoint (fuse.checkpoint); none is configured"
                                   + (" and the package embeds none" if config.fuse.checkpoint == EMBEDDED else ""))
        try:
            stages.append(BackViewStage.from_config(config.back_view))
        except StageUnavailableError as e:
            if config.back_view.named_weights:  # the user's own weights do not load: a startup error
                raise
            unavailable["back_view"] = str(e)
        return cls(stages, config, unavailable)

    def describe(self) -> dict[str, Any]:
        """What this reconstructor runs on, for health replies and reports: the configured device
        (`device_report`: GPU name and memory on CUDA), each component's device, the levels it
        serves, the coarse and fuse checkpoints and the whole effective config."""
        coarse = self.stages.get("coarse")
        return {
            **device_report(resolve_device(self.config.device)),
            "components": {name: str(getattr(stage, "device", "cpu")) for name, stage in self.stages.items()},
            "stages": list(self.available_stages),
            "checkpoint": getattr(coarse, "checkpoint", None),
            "fuse_checkpoint": getattr(self.stages.get("fuse"), "checkpoint", None),
            "config": self.config.to_dict(),
        }

    @property
    def available_stages(self) -> tuple[str, ...]:
        """Request levels whose every component is registered."""
        return tuple(level for level in STAGES if not self._missing(level))

    def _missing(self, level: str) -> list[str]:
        return [name for name in LEVELS[level] if name not in self.stages and name not in OPTIONAL.get(level, ())]

    def skipped(self, level: str) -> dict[str, str]:
        """Optional components of `level` (`OPTIONAL`) this reconstructor was not built with, and why."""
        return {n: self.unavailable.get(n, "not built") for n in OPTIONAL.get(level, ()) if n not in self.stages}

    def plan(self, request: ReconstructionRequest) -> tuple[str, ...]:
        """The component names `run(request)` would run, in order.

        Raises:
            BadInputError: unknown level. StageUnavailableError: a component of it is not registered.
        """
        if request.stages not in STAGES:
            raise BadInputError(f"unknown stages {request.stages!r}; choose one of {', '.join(STAGES)}")
        missing = self._missing(request.stages)
        if missing:
            have = ", ".join(self.available_stages) or "none"
            why = "; ".join(self.unavailable[n] for n in missing if n in self.unavailable) or "a trained checkpoint or files not configured"
            raise StageUnavailableError(
                f"stages '{request.stages}' needs the component(s) {', '.join(missing)}, which this worker "
                f"does not have ({why}); available: {have}"
            )
        chain = tuple(n for n in LEVELS[request.stages] if n in self.stages and n != "mesh")
        if request.depth is not None and "align_depth" in self.stages:
            chain += ("align_depth",)
        wants_mesh = self.config.mesh_by_default if request.mesh is None else request.mesh
        if wants_mesh or "mesh" in LEVELS[request.stages]:
            chain += ("mesh",)
        return chain

    def run_frame(self, request: ReconstructionRequest) -> tuple[Frame, dict[str, float]]:
        """Run the plan over one request: the final `Frame` (with perception and body fit, for
        in-process callers) and seconds per component, plus "total"."""
        chain = self.plan(request)
        frame, timings = Frame(request=request), {}
        frame.reports |= {name: {"skipped": why} for name, why in self.skipped(request.stages).items()}
        t_all = time.perf_counter()
        for name in chain:
            t0 = time.perf_counter()
            frame = self.stages[name](frame)
            timings[name] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        return frame, timings

    def run(self, request: ReconstructionRequest) -> Reconstruction:
        """Run the requested level on one image.

        Raises:
            BadInputError, NoPersonError, CropTooSmallError: unusable input (see `perceive`).
            StageUnavailableError: the level needs a component this reconstructor does not have.
        """
        frame, timings = self.run_frame(request)
        return self.result(frame, timings)

    def result(self, frame: Frame, timings: dict[str, float]) -> Reconstruction:
        """The `Reconstruction` of a finished frame."""
        info: dict[str, Any] = {
            "stages": frame.request.stages,
            "stages_run": [name for name in timings if name != "total"],
            "num_gaussians": len(frame.gaussians),
            **frame.reports,
            "config": self.config.to_dict(),
        }
        if frame.warnings:
            info["warnings"] = list(frame.warnings)
        vertices, faces = body_mesh_arrays(frame)
        return Reconstruction(
            gaussians=frame.gaussians,
            stages=frame.request.stages,
            skeleton=skeleton(frame.body),
            body_mesh=Mesh(vertices, faces),
            mesh=frame.mesh,
            timings=timings,
            info=info,
        )


def load_body_model(config: BodyConfig) -> BodyModel:
    """The body model `config` names (the fit's and the live trackers' own instances are made with it)."""
    from hgm_core.body import AnnyBody, SmplxBody

    if config.model == "anny":
        return AnnyBody()
    if config.model == "smplx":
        if not config.smplx_model_path:
            raise StageUnavailableError("body model 'smplx' needs smplx_model_path (licensed SMPL-X files)")
        return SmplxBody(config.smplx_model_path)
    raise BadInputError(f"unknown body model {config.model!r}; use 'anny' or 'smplx'")
