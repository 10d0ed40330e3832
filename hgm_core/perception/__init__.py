"""Person perception: mask, BlazePose landmarks (2D + metric 3D), person box, intrinsics, crop.

    from hgm_core.perception import PoseEstimator, crop_person, perceive
    with PoseEstimator() as estimator:  # the mediapipe graph: build once, reuse for every image
        p = perceive(image, estimator)  # Perception (mask, landmarks_2d, landmarks_3d, bbox, K, ...)
    crop = crop_person(image, p)        # PersonCrop (square image, mask, K of the crop, box)
"""

from hgm_core.perception.crop import PersonCrop, crop_person
from hgm_core.perception.perceive import (
    DEFAULT_FOV_DEG,
    LANDMARK_NAMES,
    Landmarks,
    Perception,
    PerceptionConfig,
    PoseEstimator,
    default_intrinsics,
    perceive,
    perceive_landmarks,
)

__all__ = [
    "DEFAULT_FOV_DEG",
    "LANDMARK_NAMES",
    "Landmarks",
    "Perception",
    "PerceptionConfig",
    "PersonCrop",
    "PoseEstimator",
    "crop_person",
    "default_intrinsics",
    "perceive",
    "perceive_landmarks",
]
