"""`Reconstructor`: chains the stages of DESIGN §4 and reports per-stage timings.

Stages run so far: perceive -> fit_body -> prior, then mesh if `ReconstructorConfig.mesh`. The
network stages (`coarse`, `refined`, `full`) need a trained HGM checkpoint; without one configured
they fail with `StageUnavailableError` instead of producing an untrained avatar.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

from hgm_core.pipeline.mesh import MeshConfig, gaussians_to_mesh
from hgm_core.pipeline.prior import PriorConfig, prior_gaussians
from hgm_core.pipeline.types import (
    STAGES, BadInputError, Mesh, PipelineError, Reconstruction, ReconstructionRequest,
)


MAX_TRACKED_STREAMS = 16
"""Streams whose last fit is remembered for warm starts (least recently used ones are dropped)."""


class StageUnavailableError(PipelineError):
    """The requested stage needs something this reconstructor was not configured with."""

    kind = "stage_unavailable"


@dataclass(frozen=True)
class ReconstructorConfig:
    """What a `Reconstructor` loads and how it runs.

    Attributes:
        body_model: "anny" (default, ships offline) or "smplx" (needs `smplx_model_path`).
        smplx_model_path: folder or file of licensed SMPL-X model files.
        checkpoint: folder of an HGM checkpoint (`hgm_core.model`), needed by the network stages.
        fit_iterations: stage-2 iterations of the body fit (see `hgm_core.body.FitConfig`).
        prior: settings of the prior avatar.
        num_threads: torch intra-op threads for this process (set on construction). The body fit
            runs many small ops on ~14k vertices where extra threads only add synchronisation:
            on the 2-core reference machine under load the sample frame fits in 8.5 s with 1
            thread and 77 s with 2. 0 leaves torch's setting alone.
        mesh: also extract the avatar's surface mesh (`Reconstruction.mesh`, DESIGN §4 stage 7).
            Costs 26 renders plus TSDF fusion, ~1.4 s for a 15k-Gaussian avatar on one core, so
            it is off by default for the live path.
        mesh_config: settings of the mesh extraction (`hgm_core.pipeline.mesh.MeshConfig`).
        track: warm-start the body fit from the same stream's previous fit when the person has barely
            moved (`hgm_core.body.fit.warm_start_params`): 40 instead of 200 iterations, ~5x faster
            on a stream at the same accuracy; a warm fit that goes wrong falls back to a cold one.
        track_refresh: after a cold fit, at most `track_refresh - 1` warm ones follow, so
            warm-start errors cannot accumulate along a stream.
    """

    body_model: str = "anny"
    smplx_model_path: str | None = None
    checkpoint: str | None = None
    fit_iterations: int = 160
    prior: PriorConfig = field(default_factory=PriorConfig)
    num_threads: int = 1
    mesh: bool = False
    mesh_config: MeshConfig = field(default_factory=MeshConfig)
    track: bool = True
    track_refresh: int = 30


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - t0


class Reconstructor:
    """Keeps the perception and body models warm and turns requests into `Reconstruction`s.

    Not thread-safe (mediapipe's graph is not): one instance per worker thread.
    """

    def __init__(self, config: ReconstructorConfig | None = None) -> None:
        from hgm_core.paths import configure_third_party_caches

        configure_third_party_caches()
        from hgm_core.body import FitConfig
        from hgm_core.perception import PoseEstimator

        self.config = config or ReconstructorConfig()
        if self.config.num_threads > 0:
            import torch

            torch.set_num_threads(self.config.num_threads)
        self._estimator = PoseEstimator()
        self._body = self._load_body_model()
        self._fit_config = FitConfig(iterations=self.config.fit_iterations)
        self._tracks: OrderedDict[str, tuple[object, int]] = OrderedDict()  # stream -> (last fit, warm streak)

    def _load_body_model(self):
        from hgm_core.body import AnnyBody, SmplxBody

        if self.config.body_model == "anny":
            return AnnyBody()
        if self.config.body_model == "smplx":
            if not self.config.smplx_model_path:
                raise StageUnavailableError("body_model 'smplx' needs smplx_model_path (licensed SMPL-X files)")
            return SmplxBody(self.config.smplx_model_path)
        raise BadInputError(f"unknown body_model {self.config.body_model!r}; use 'anny' or 'smplx'")

    @property
    def available_stages(self) -> tuple[str, ...]:
        """Stages this instance can run (the network stages need a checkpoint)."""
        return STAGES if self.config.checkpoint else ("prior",)

    def _warm_start(self, stream: str, perception):
        """The stream's previous fit parameters when tracking applies to this frame, else None (cold fit)."""
        from hgm_core.body import warm_start_params

        last, streak = self._tracks.get(stream, (None, 0))
        if not self.config.track or streak + 1 >= self.config.track_refresh:
            return None
        return warm_start_params(last, perception, self._body, config=self._fit_config)

    def _remember(self, stream: str, fit) -> None:
        _, streak = self._tracks.pop(stream, (None, 0))
        self._tracks[stream] = (fit, streak + 1 if fit.warm_started else 0)
        while len(self._tracks) > MAX_TRACKED_STREAMS:
            self._tracks.popitem(last=False)

    def run(self, request: ReconstructionRequest) -> Reconstruction:
        """Run the configured prefix of stages on one image.

        Raises:
            BadInputError, NoPersonError, CropTooSmallError: unusable input (see `perceive`).
            StageUnavailableError: `request.stages` needs a checkpoint that is not configured.
        """
        from hgm_core.body import fit_body, skeleton
        from hgm_core.perception import perceive

        if request.stages not in STAGES:
            raise BadInputError(f"unknown stages {request.stages!r}; choose one of {', '.join(STAGES)}")
        if request.stages not in self.available_stages:
            raise StageUnavailableError(
                f"stage '{request.stages}' needs a trained HGM checkpoint and none is configured; "
                "use stages 'prior' or set a checkpoint"
            )
        timer = _Timer()
        t_all = time.perf_counter()
        with timer("perceive"):
            per = perceive(request.image, mask=request.mask, camera=request.camera, estimator=self._estimator)
        with timer("fit_body"):
            fit = fit_body(per, None, self._body, config=self._fit_config, init=self._warm_start(request.stream, per))
        self._remember(request.stream, fit)
        with timer("prior"):
            gaussians = prior_gaussians(request.image, per.mask, per.K, fit.vertices, fit.faces, self.config.prior)
        mesh = None
        if self.config.mesh if request.mesh is None else request.mesh:
            with timer("mesh"):
                mesh = gaussians_to_mesh(gaussians, config=self.config.mesh_config)
        timer.timings["total"] = time.perf_counter() - t_all
        info = {
            "stages": request.stages,
            "num_gaussians": len(gaussians),
            "num_people": per.num_people,
            "mask_source": per.mask_source,
            "intrinsics_source": per.intrinsics_source,
            "person_bbox": list(per.bbox),
            "body_model": fit.body_model,
            "fit": fit.residuals(),
            "prior": asdict(self.config.prior),
        }
        if per.num_people > 1:
            info["warnings"] = [f"{per.num_people} people in view; reconstructed the largest"]
        return Reconstruction(
            gaussians=gaussians,
            skeleton=skeleton(fit),
            body_mesh=Mesh(fit.vertices.astype(np.float32), fit.faces.astype(np.int64)),
            mesh=mesh,
            timings=timer.timings,
            info=info,
            body_fit=fit,
            perception=per,
        )
