"""`perceive`: one RGB image -> person mask, 33 BlazePose landmarks (2D + metric 3D), box, intrinsics.

Backed by mediapipe 0.10.14's legacy `solutions.pose` with `model_complexity=1`, the only pose
model bundled in the wheel (complexity 0 and 2 download theirs at run time, which is not allowed).

Conventions:
- 2D landmarks are continuous pixel coordinates of the input image (pixel centres at +0.5, the
  convention of `hgm_core.camera`), so `K @ X` of a camera-frame point lands on them directly.
- 3D landmarks are BlazePose's metric "world" landmarks: origin at the hip midpoint, axes aligned
  with the camera's (x right, y down, z away from the camera), metres.
- Without a `CameraInfo`, intrinsics are a pinhole with square pixels, a centred principal point and
  `DEFAULT_FOV_DEG` across the longer image side (a typical phone / webcam main camera).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from hgm_core.camera import intrinsics_from_fov
from hgm_core.types import BadInputError, CameraInfo, CropTooSmallError, NoPersonError

DEFAULT_FOV_DEG = 55.0
"""Field of view (degrees) across the longer image side used when no camera intrinsics are given."""

LANDMARK_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)  # fmt: skip
"""The 33 BlazePose landmarks in mediapipe's order (`mp.solutions.pose.PoseLandmark`), lower case."""


@dataclass(frozen=True)
class PerceptionConfig:
    """Thresholds of `perceive`.

    Attributes:
        min_person_px: the kept person's box must be at least this tall or wide (pixels), else
            `CropTooSmallError` (too few pixels to reconstruct from).
        mask_threshold: segmenter probability above which a pixel is person.
        min_person_fraction: a mask component counts as a person when its area is at least this
            fraction of the largest component's (smaller blobs are segmentation noise).
        min_image_px: images smaller than this on either side are rejected as bad input.
    """

    min_person_px: int = 64
    mask_threshold: float = 0.5
    min_person_fraction: float = 0.15
    min_image_px: int = 16


@dataclass(frozen=True)
class Perception:
    """What `perceive` found in one image (single person, the largest one).

    Attributes:
        image_size: `(width, height)` of the input image.
        mask: `[H, W]` bool person mask of the kept person.
        mask_source: "given" (the caller's mask) or "segmenter".
        landmarks_2d: `[33, 3]` float32 `(u, v, visibility)`: continuous pixel coordinates and
            BlazePose's visibility in [0, 1], in `LANDMARK_NAMES` order.
        landmarks_3d: `[33, 3]` float32 metric BlazePose world landmarks (see module docstring).
        bbox: `(x0, y0, x1, y1)` integer pixel bounds (exclusive end) of the kept person's mask.
        num_people: number of people (mask components) found; only the largest is kept.
        K: `[3, 3]` float64 intrinsics of the input image.
        intrinsics_source: "camera_info" or "default_fov".
    """

    image_size: tuple[int, int]
    mask: np.ndarray
    mask_source: str
    landmarks_2d: np.ndarray
    landmarks_3d: np.ndarray
    bbox: tuple[int, int, int, int]
    num_people: int
    K: np.ndarray
    intrinsics_source: str

    def landmark(self, name: str) -> np.ndarray:
        """`[3]` `(u, v, visibility)` of one landmark by name."""
        return self.landmarks_2d[LANDMARK_NAMES.index(name)]


def default_intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """`[3, 3]` float64 K: square pixels, centred principal point, `fov_deg` across the longer side."""
    return intrinsics_from_fov(width, height, fov_deg, across="longer", dtype=torch.float64).numpy()


class PoseEstimator:
    """A warm mediapipe BlazePose instance (graph built once, ~0.2 s).

    mediapipe graphs are not thread-safe, so calls are serialised with a lock; create one
    estimator per thread for parallelism.

    `video=True` is mediapipe's video mode for consecutive frames of one camera: the person
    detector runs only when the landmarks lose the person (otherwise the previous frame's landmarks
    place the crop) and landmarks are smoothed over time. One estimator per stream then; a call
    on an unrelated image is a new frame of that stream.

    `segmentation=False` skips the person mask (its upsampling to the image and, in video mode, its
    smoothing): landmarks only, for `perceive_landmarks` (~4 ms less per 640x480 frame).
    """

    def __init__(self, video: bool = False, segmentation: bool = True) -> None:
        import mediapipe as mp  # heavy import, only when perception is used

        self.segmentation = segmentation
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=not video, model_complexity=1, enable_segmentation=segmentation, min_detection_confidence=0.5
        )
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """Run BlazePose on `[H, W, 3]` uint8 RGB.

        Returns:
            `(landmarks_2d [33, 3], landmarks_3d [33, 3], person probability [H, W] float32)` (the
            probability None without `segmentation`), or None when no person is detected.
        """
        with self._lock:
            result = self._pose.process(np.ascontiguousarray(image))
        if result.pose_landmarks is None or (self.segmentation and result.segmentation_mask is None):
            return None
        h, w = image.shape[:2]
        lm2 = np.array([(p.x * w, p.y * h, p.visibility) for p in result.pose_landmarks.landmark], np.float32)
        lm3 = np.array([(p.x, p.y, p.z) for p in result.pose_world_landmarks.landmark], np.float32)
        return lm2, lm3, np.asarray(result.segmentation_mask, np.float32) if self.segmentation else None

    def close(self) -> None:
        self._pose.close()

    def __enter__(self) -> "PoseEstimator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_image(image: object, min_px: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise BadInputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise BadInputError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise BadInputError(f"image must be [H, W, 3] RGB, got shape {list(image.shape)}")
    if min(image.shape[:2]) < min_px:
        raise BadInputError(f"image {image.shape[1]}x{image.shape[0]} is smaller than {min_px} px")
    return image


def _check_mask(mask: object, height: int, width: int) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.shape != (height, width):
        shape = list(mask.shape) if isinstance(mask, np.ndarray) else type(mask).__name__
        raise BadInputError(f"mask must be a [{height}, {width}] array like the image, got {shape}")
    return mask.astype(bool) if mask.dtype != bool else mask


def _intrinsics(camera: CameraInfo | None, width: int, height: int) -> tuple[np.ndarray, str]:
    if camera is None:
        return default_intrinsics(width, height), "default_fov"
    K = np.asarray(camera.K, np.float64)
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise BadInputError(f"camera K must be [3, 3] with positive focal lengths, got {K.tolist()}")
    if (camera.width, camera.height) != (width, height):
        raise BadInputError(f"camera info is for {camera.width}x{camera.height}, the image is {width}x{height}")
    return K, "camera_info"


def _people(mask: np.ndarray, min_fraction: float) -> tuple[np.ndarray, int]:
    """Largest connected component of `mask [H, W]` and the number of person-sized components."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool), 0
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(np.argmax(areas))
    count = int((areas >= min_fraction * areas[largest]).sum())
    return labels == largest + 1, count


def _landmarks_on_mask(lm2: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of visible landmarks that fall on `mask` (dilated), to check they describe that person."""
    h, w = mask.shape
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    u, v = np.floor(lm2[:, 0]).astype(int), np.floor(lm2[:, 1]).astype(int)
    seen = (lm2[:, 2] > 0.5) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    if not seen.any():
        return 0.0
    return float(grown[v[seen], u[seen]].mean())


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _estimate_in_box(estimator: PoseEstimator, image: np.ndarray, box: tuple[int, int, int, int]):
    """BlazePose on a sub-image (the kept person when the detector picked someone else)."""
    x0, y0, x1, y1 = box
    pad = int(0.25 * max(x1 - x0, y1 - y0))
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    found = estimator(image[y0:y1, x0:x1])
    if found is None:
        return None
    lm2, lm3, _ = found
    lm2 = lm2.copy()
    lm2[:, 0] += x0
    lm2[:, 1] += y0
    return lm2, lm3


def perceive(
    image: np.ndarray,
    estimator: PoseEstimator,
    *,
    mask: np.ndarray | None = None,
    camera: CameraInfo | None = None,
    config: PerceptionConfig | None = None,
) -> Perception:
    """Find the (largest) person in one image.

    Args:
        image: `[H, W, 3]` uint8 RGB.
        estimator: the caller's warm `PoseEstimator` (built once, reused across images).
        mask: optional `[H, W]` person mask (nonzero = person); it wins over the segmenter.
        camera: intrinsics of `image`; None uses `default_intrinsics`.
        config: thresholds (`PerceptionConfig()` by default).
    Returns:
        `Perception` of the largest person; `num_people` says how many were seen.
    Raises:
        BadInputError: malformed image, mask or camera.
        NoPersonError: no body landmarks or an empty person mask.
        CropTooSmallError: the kept person's box is below `config.min_person_px`.
    """
    cfg = config or PerceptionConfig()
    image = _check_image(image, cfg.min_image_px)
    h, w = image.shape[:2]
    given = None if mask is None else _check_mask(mask, h, w)
    K, k_source = _intrinsics(camera, w, h)

    if not estimator.segmentation:
        raise ValueError("perceive needs a PoseEstimator with segmentation (landmarks only: perceive_landmarks)")
    found = estimator(image)
    if found is None:
        raise NoPersonError("no person detected in the image")
    lm2, lm3, prob = found
    person, count = _people(given if given is not None else prob > cfg.mask_threshold, cfg.min_person_fraction)
    if count == 0:
        raise NoPersonError("the person mask is empty")
    bbox = _bbox(person)
    if count > 1 and _landmarks_on_mask(lm2, person) < 0.5:
        # The detector chose another person than the largest one: look again inside its box.
        again = _estimate_in_box(estimator, image, bbox)
        if again is None:
            raise NoPersonError("no body landmarks on the largest person")
        lm2, lm3 = again
    if max(bbox[2] - bbox[0], bbox[3] - bbox[1]) < cfg.min_person_px:
        raise CropTooSmallError(
            f"person box {bbox[2] - bbox[0]}x{bbox[3] - bbox[1]} px is below the {cfg.min_person_px} px minimum"
        )
    return Perception(
        image_size=(w, h),
        mask=person,
        mask_source="given" if given is not None else "segmenter",
        landmarks_2d=lm2,
        landmarks_3d=lm3,
        bbox=bbox,
        num_people=count,
        K=K,
        intrinsics_source=k_source,
    )


@dataclass(frozen=True)
class Landmarks:
    """What `perceive_landmarks` found: the `Perception` fields a landmark-only consumer (the
    camera-rate `hgm_core.body.pose_tracker.PoseTracker`) reads, no mask.

    Attributes:
        image_size: `(width, height)` of the input image.
        landmarks_2d / landmarks_3d: as `Perception`'s (`[33, 3]` float32).
        bbox: `(x0, y0, x1, y1)` pixel bounds (exclusive end) of the visible landmarks, clipped to the image.
        K: `[3, 3]` float64 intrinsics; intrinsics_source: "camera_info" or "default_fov".
    """

    image_size: tuple[int, int]
    landmarks_2d: np.ndarray
    landmarks_3d: np.ndarray
    bbox: tuple[int, int, int, int]
    K: np.ndarray
    intrinsics_source: str


def perceive_landmarks(
    image: np.ndarray,
    estimator: PoseEstimator,
    *,
    camera: CameraInfo | None = None,
    config: PerceptionConfig | None = None,
    min_visibility: float = 0.5,
) -> Landmarks:
    """BlazePose landmarks of the person in one image, without the person mask (`perceive` minus
    the segmentation, its connected components and the largest-person check): the tracker's
    per-frame perception. Use an estimator built with `segmentation=False` to save its cost.

    Args:
        image: `[H, W, 3]` uint8 RGB.
        estimator: the caller's warm `PoseEstimator` (usually `video=True, segmentation=False`).
        camera: intrinsics of `image`; None uses `default_intrinsics`.
        config: `min_person_px` and `min_image_px` apply to the box of the visible landmarks.
        min_visibility: a landmark counts as visible for the box from this BlazePose visibility.
    Raises:
        BadInputError: malformed image or camera.
        NoPersonError: no body landmarks, or none visible in the image.
        CropTooSmallError: the visible landmarks' box is below `config.min_person_px`.
    """
    cfg = config or PerceptionConfig()
    image = _check_image(image, cfg.min_image_px)
    h, w = image.shape[:2]
    K, k_source = _intrinsics(camera, w, h)
    found = estimator(image)
    if found is None:
        raise NoPersonError("no person detected in the image")
    lm2, lm3, _ = found
    u, v = lm2[:, 0], lm2[:, 1]
    seen = (lm2[:, 2] >= min_visibility) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    if not seen.any():
        raise NoPersonError("no body landmark visible in the image")
    bbox = (int(u[seen].min()), int(v[seen].min()), int(np.ceil(u[seen].max())), int(np.ceil(v[seen].max())))
    if max(bbox[2] - bbox[0], bbox[3] - bbox[1]) < cfg.min_person_px:
        raise CropTooSmallError(
            f"landmark box {bbox[2] - bbox[0]}x{bbox[3] - bbox[1]} px is below the {cfg.min_person_px} px minimum"
        )
    return Landmarks((w, h), lm2, lm3, bbox, K, k_source)
