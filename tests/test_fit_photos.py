"""fit_body on real photos (Debian opencv-doc's messi5.jpg, scikit-image's astronaut and camera)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MESSI = Path("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")


def _photo(name: str) -> np.ndarray:
    if name == "messi":
        if not MESSI.exists():
            pytest.skip(f"{MESSI} missing (Debian package opencv-doc not installed)")
        from PIL import Image

        return np.asarray(Image.open(MESSI).convert("RGB"))
    data = pytest.importorskip("skimage.data")
    image = getattr(data, name)()
    return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image


@pytest.fixture(scope="module")
def anny_body():
    from hgm_core.body import AnnyBody

    return AnnyBody()


@pytest.mark.parametrize(
    "name", ["messi", pytest.param("astronaut", marks=pytest.mark.slow), pytest.param("camera", marks=pytest.mark.slow)]
)
def test_photo_fit_finishes_and_reports_residuals(name: str, anny_body, capsys) -> None:
    from hgm_core.body import fit_body
    from hgm_core.perception import PoseEstimator, perceive

    image = _photo(name)
    with PoseEstimator() as estimator:
        perception = perceive(image, estimator)
    fit = fit_body(perception, None, anny_body)
    res = fit.residuals()
    with capsys.disabled():
        print(
            f"\n[fit photo {name}] {image.shape[1]}x{image.shape[0]} people {perception.num_people} "
            f"reprojection {res['keypoint_error_px']:.1f} px ({100 * res['keypoint_error_px'] / (perception.bbox[3] - perception.bbox[1]):.1f} % of box) "
            f"IoU {res['silhouette_iou']:.3f} depth {float(fit.params.transl[0, 2]):.2f} m {res['seconds']:.1f} s"
        )
    assert np.isfinite(fit.vertices).all()
    assert fit.params.transl[0, 2] > 0.3  # in front of the camera
    box_h = perception.bbox[3] - perception.bbox[1]
    assert res["keypoint_error_px"] < 0.05 * box_h
    assert res["silhouette_iou"] > 0.5
