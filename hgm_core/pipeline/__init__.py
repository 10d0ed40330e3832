"""The stages of the pipeline and the `Reconstructor` that chains them (docs/architecture.md).

    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.types import ReconstructionRequest
    rec = Reconstructor.from_config(ReconstructorConfig())   # warm: pose estimator + body model
    out = rec.run(ReconstructionRequest(image, stages="prior"))
    out.gaussians                                             # camera optical frame, metres
"""

from hgm_core.pipeline.prior import PriorConfig, prior_gaussians
from hgm_core.pipeline.reconstructor import BodyConfig, CoarseConfig, Reconstructor, ReconstructorConfig
from hgm_core.pipeline.stage import LEVELS, Frame, Stage

__all__ = [
    "LEVELS", "BodyConfig", "CoarseConfig", "Frame", "PriorConfig", "Reconstructor", "ReconstructorConfig", "Stage",
    "prior_gaussians",
]
