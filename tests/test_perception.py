"""perceive / crop_person on real images (mediapipe BlazePose, bundled model) and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hgm_core.perception import (
    DEFAULT_FOV_DEG, LANDMARK_NAMES, PerceptionConfig, PoseEstimator, crop_person, default_intrinsics, perceive,
)
from hgm_core.types import BadInputError, CameraInfo, CropTooSmallError, NoPersonError

MESSI = Path("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")


@pytest.fixture(scope="module")
def estimator():
    with PoseEstimator() as e:
        yield e


@pytest.fixture(scope="module")
def messi() -> np.ndarray:
    if not MESSI.exists():
        pytest.skip(f"{MESSI} missing (Debian package opencv-doc not installed)")
    from PIL import Image

    return np.asarray(Image.open(MESSI).convert("RGB"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return pytest.importorskip("skimage.data").astronaut()


def test_messi_full_body(messi: np.ndarray, estimator: PoseEstimator) -> None:
    p = perceive(messi, estimator)
    h, w = messi.shape[:2]
    assert p.image_size == (w, h) and p.mask.shape == (h, w) and p.mask.dtype == bool
    assert p.mask_source == "segmenter" and p.num_people == 1 and p.intrinsics_source == "default_fov"
    assert p.landmarks_2d.shape == (33, 3) and p.landmarks_3d.shape == (33, 3)
    x0, y0, x1, y1 = p.bbox
    assert 0.5 * h < y1 - y0 <= h  # a full-body player filling most of the frame height
    # Visible landmarks of the one person lie inside their box, and on their mask.
    seen = p.landmarks_2d[:, 2] > 0.8
    u, v = p.landmarks_2d[seen, 0], p.landmarks_2d[seen, 1]
    assert seen.sum() >= 20
    assert ((u >= x0 - 5) & (u <= x1 + 5) & (v >= y0 - 5) & (v <= y1 + 5)).all()
    assert p.mask[v.astype(int), u.astype(int)].mean() > 0.7
    # Anatomy: head above the hips above the ankles (image y down); 3D landmarks are metric.
    nose, hip, ankle = (p.landmark(n)[1] for n in ("nose", "left_hip", "left_ankle"))
    assert nose < hip < ankle
    shoulder_width = np.linalg.norm(p.landmarks_3d[11] - p.landmarks_3d[12])
    assert 0.2 < shoulder_width < 0.6
    np.testing.assert_allclose(p.K, default_intrinsics(w, h))
    assert np.isclose(2 * np.degrees(np.arctan(0.5 * max(w, h) / p.K[0, 0])), DEFAULT_FOV_DEG)


def test_crop_follows_the_intrinsics(messi: np.ndarray, estimator: PoseEstimator) -> None:
    p = perceive(messi, estimator)
    crop = crop_person(messi, p, size=256, margin=0.1)
    assert crop.image.shape == (256, 256, 3) and crop.image.dtype == np.uint8 and crop.mask.shape == (256, 256)
    x0, y0, x1, y1 = crop.box
    assert x1 - x0 == y1 - y0 >= max(p.bbox[2] - p.bbox[0], p.bbox[3] - p.bbox[1])
    # A 3D point projects to the same place in the crop through crop.K as through the crop box.
    X = np.array([0.3, -0.2, 4.0])
    uv_full = (p.K @ X)[:2] / X[2]
    uv_crop = (crop.K @ X)[:2] / X[2]
    np.testing.assert_allclose(uv_crop, (uv_full - (x0, y0)) * 256 / (x1 - x0), atol=1e-9)
    # The cropped mask covers about the same share of the box as the full-resolution mask.
    full = p.mask[max(y0, 0) : y1, max(x0, 0) : x1].sum() / (x1 - x0) ** 2
    assert abs(crop.mask.mean() - full) < 0.02
    # Content moved with the box: the crop's mask centroid sits where the person's is.
    ys, xs = np.nonzero(p.mask)
    cys, cxs = np.nonzero(crop.mask)
    np.testing.assert_allclose([cxs.mean() + 0.5, cys.mean() + 0.5], (np.array([xs.mean(), ys.mean()]) + 0.5 - (x0, y0)) * 256 / (x1 - x0), atol=2.0)


def test_camera_info_and_given_mask_win(astronaut: np.ndarray, estimator: PoseEstimator) -> None:
    h, w = astronaut.shape[:2]
    K = np.array([[700.0, 0, 250], [0, 700.0, 260], [0, 0, 1]])
    mask = np.zeros((h, w), np.uint8)
    mask[60:500, 40:340] = 255  # the largest person
    mask[10:210, 360:510] = 1  # a second, smaller person (23 % of the first)
    p = perceive(astronaut, estimator, mask=mask, camera=CameraInfo(K=K, width=w, height=h))
    assert p.mask_source == "given" and p.intrinsics_source == "camera_info"
    np.testing.assert_array_equal(p.K, K)
    assert p.num_people == 2 and p.bbox == (40, 60, 340, 500)
    assert p.mask.sum() == 440 * 300


def test_crop_too_small(astronaut: np.ndarray, estimator: PoseEstimator) -> None:
    mask = np.zeros(astronaut.shape[:2], bool)
    mask[100:140, 150:180] = True  # a 30x40 px "person"
    with pytest.raises(CropTooSmallError):
        perceive(astronaut, estimator, mask=mask)
    with pytest.raises(CropTooSmallError):
        perceive(astronaut, estimator, config=PerceptionConfig(min_person_px=2000))


def test_no_person(estimator: PoseEstimator) -> None:
    with pytest.raises(NoPersonError):
        perceive(np.zeros((256, 256, 3), np.uint8), estimator)
    noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    with pytest.raises(NoPersonError):
        perceive(noise, estimator)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((8, 64, 3), np.uint8),
        [[0, 0, 0]],
    ],
    ids=["float", "gray", "rgba", "tiny", "list"],
)
def test_bad_image(image, estimator: PoseEstimator) -> None:
    with pytest.raises(BadInputError):
        perceive(image, estimator)


def test_bad_mask_and_camera(estimator: PoseEstimator) -> None:
    image = np.zeros((64, 80, 3), np.uint8)
    with pytest.raises(BadInputError):
        perceive(image, estimator, mask=np.ones((80, 64), bool))
    with pytest.raises(BadInputError):
        perceive(image, estimator, camera=CameraInfo(K=np.eye(3) * 100, width=64, height=64))
    with pytest.raises(BadInputError):
        perceive(image, estimator, camera=CameraInfo(K=np.zeros((3, 3)), width=80, height=64))


def test_landmark_names_match_mediapipe() -> None:
    mp = pytest.importorskip("mediapipe")
    assert LANDMARK_NAMES == tuple(n.lower() for n in mp.solutions.pose.PoseLandmark._member_names_)
