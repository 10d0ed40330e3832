"""Parametric bodies behind one `BodyModel` interface, and fitting them to a `Perception`.

    from hgm_core.body import AnnyBody, fit_body, skeleton
    body = AnnyBody()                          # default, offline (anny 0.6.2)
    fit = fit_body(perception, None, body)     # BodyFit in the camera's optical frame, metres

Frames and parameter layout: see `hgm_core.body.base`.
"""

from hgm_core.body.anny_body import AnnyBody
from hgm_core.body.base import COCO_KEYPOINT_NAMES, BodyModel, BodyOutput, BodyParams, JointLimits
from hgm_core.body.fit import BodyFit, FitConfig, fit_body, mesh_mask, skeleton, warm_start_params
from hgm_core.body.metrics import mpjpe, pa_mpjpe
from hgm_core.body.smplx_body import SmplxBody

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "AnnyBody",
    "BodyFit",
    "BodyModel",
    "BodyOutput",
    "BodyParams",
    "FitConfig",
    "JointLimits",
    "SmplxBody",
    "fit_body",
    "mesh_mask",
    "mpjpe",
    "pa_mpjpe",
    "skeleton",
    "warm_start_params",
]
