"""The stages of DESIGN §4 and the `Reconstructor` that chains them.

    from hgm_core.pipeline import Reconstructor, ReconstructionRequest
    rec = Reconstructor()                                   # warm: pose estimator + body model
    out = rec.run(ReconstructionRequest(image, stages="prior"))
    out.gaussians                                           # camera optical frame, metres
"""

from hgm_core.pipeline.prior import PriorConfig, prior_gaussians
from hgm_core.pipeline.reconstructor import Reconstructor, ReconstructorConfig, StageUnavailableError
from hgm_core.pipeline.types import (
    STAGES, BadInputError, CameraInfo, CropTooSmallError, Mesh, NoPersonError, PipelineError, Reconstruction,
    ReconstructionRequest, Skeleton,
)

__all__ = [
    "STAGES", "BadInputError", "CameraInfo", "CropTooSmallError", "Mesh", "NoPersonError", "PipelineError",
    "PriorConfig", "Reconstruction", "ReconstructionRequest", "Reconstructor", "ReconstructorConfig", "Skeleton",
    "StageUnavailableError", "prior_gaussians",
]
