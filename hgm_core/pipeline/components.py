"""The stage components (`hgm_core.pipeline.stage.Stage`) that exist so far.

Each wraps one function of its room (perception, body, the prior, the mesh stage) with the parts it
keeps warm; none of them knows about the others. `Frame` fields live on the CPU: a component that
computes on a device (`hgm_core.device`) moves its inputs there once and its result back once.
The `Reconstructor` is assembled from these by `Reconstructor.from_config`, or from any other list
of components by its constructor.
"""

from __future__ import annotations

import numpy as np
import torch

from hgm_core.body.base import BodyModel
from hgm_core.body.fit import FitConfig, fit_body
from hgm_core.body.tracker import BodyTracker
from hgm_core.perception.perceive import PerceptionConfig, PoseEstimator, perceive
from hgm_core.pipeline.mesh import MeshConfig, gaussians_to_mesh
from hgm_core.pipeline.prior import PriorConfig, prior_gaussians
from hgm_core.pipeline.stage import Frame, Stage, update
from hgm_core.types import BadInputError


class PerceiveStage(Stage):
    """Person mask, 2D/3D landmarks, box and intrinsics of the request's image (`perceive`)."""

    name = "perceive"
    provides = ("perception",)

    def __init__(self, estimator: PoseEstimator, config: PerceptionConfig = PerceptionConfig()) -> None:
        self.estimator, self.config = estimator, config

    def run(self, frame: Frame) -> Frame:
        r = frame.request
        per = perceive(r.image, mask=r.mask, camera=r.camera, config=self.config, estimator=self.estimator)
        frame.reports[self.name] = {
            "num_people": per.num_people, "mask_source": per.mask_source,
            "intrinsics_source": per.intrinsics_source, "person_bbox": list(per.bbox),
        }
        if per.num_people > 1:
            frame.warnings.append(f"{per.num_people} people in view; reconstructed the largest")
        return update(frame, perception=per)


class FitBodyStage(Stage):
    """The metric body fit, warm-started per stream by a `BodyTracker` (`fit_body`)."""

    name = "fit_body"
    needs = ("perception",)
    provides = ("body",)

    def __init__(self, body_model: BodyModel, config: FitConfig = FitConfig(), tracker: BodyTracker | None = None) -> None:
        self.body_model, self.config = body_model, config
        self.tracker = tracker or BodyTracker()

    def run(self, frame: Frame) -> Frame:
        stream = frame.request.stream
        init = self.tracker.warm_start(stream, frame.perception, self.body_model, self.config)
        depth = frame.request.depth
        if depth is not None and (depth.shape != frame.perception.mask.shape or depth.dtype not in (np.uint16, np.float32)):
            raise BadInputError(f"depth must be a uint16 (mm) or float32 (m) image of the photo's size "
                                f"{list(frame.perception.mask.shape)}, got {list(depth.shape)} {depth.dtype}")
        fit = fit_body(frame.perception, None, self.body_model, config=self.config, init=init, depth=depth)
        self.tracker.remember(stream, fit)
        # The fit computes on the CPU whatever the pipeline's device: its tensors are small and its
        # Adam loop reads values back every step (docs/architecture.md §4, "Devices").
        frame.reports[self.name] = {"body_model": fit.body_model, "depth_given": depth is not None, "device": "cpu", **fit.residuals()}
        return update(frame, body=fit)


class PriorStage(Stage):
    """The hand-made body-guided avatar (no weights): `prior_gaussians`."""

    name = "prior"
    needs = ("perception", "body")
    provides = ("gaussians",)

    def __init__(self, config: PriorConfig = PriorConfig()) -> None:
        self.config = config

    def run(self, frame: Frame) -> Frame:
        per, fit = frame.perception, frame.body
        g = prior_gaussians(frame.request.image, per.mask, per.K, fit.vertices, fit.faces, self.config)
        return update(frame, gaussians=g)


class MeshStage(Stage):
    """The avatar's surface by TSDF fusion of its renders (`gaussians_to_mesh`), rendered on `device`."""

    name = "mesh"
    needs = ("gaussians",)
    provides = ("mesh",)

    def __init__(self, config: MeshConfig = MeshConfig(), device: torch.device | str = "cpu") -> None:
        self.config, self.device = config, torch.device(device)

    def run(self, frame: Frame) -> Frame:
        mesh = gaussians_to_mesh(frame.gaussians, config=self.config, device=self.device)
        frame.reports[self.name] = {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)), "device": str(self.device)}
        return update(frame, mesh=mesh)


def body_mesh_arrays(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """The fitted body surface of `frame` as `([V, 3] float32, [F, 3] int64)`."""
    return frame.body.vertices.astype(np.float32), frame.body.faces.astype(np.int64)
