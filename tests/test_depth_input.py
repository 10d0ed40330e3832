"""An aligned depth image travels from the request (file, wire) to the body fit and places the body."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hgm_core.io.inputs import load_camera_info, load_depth, load_image
from hgm_core.paths import ASSETS_DIR
from hgm_core.pipeline import Reconstructor, ReconstructorConfig
from hgm_core.pipeline.prior import body_depth_maps
from hgm_core.serve.protocol import ProtocolError, decode
from hgm_core.serve.schema import decode_request, encode_request
from hgm_core.types import BadInputError, ReconstructionRequest

SAMPLE = ASSETS_DIR / "sample" / "person.jpg"
SAMPLE_CAMERA = ASSETS_DIR / "sample" / "camera_info.yaml"


def _wire(frames: list) -> ReconstructionRequest:
    return decode_request(decode([bytes(memoryview(f)) for f in frames], max_message_bytes=1 << 26), max_pixels=1 << 24)


@pytest.mark.parametrize("depth", [np.full((4, 6), 1500, np.uint16), np.full((4, 6), 1.5, np.float32)])
def test_depth_crosses_the_wire_unchanged(depth):
    image = np.zeros((4, 6, 3), np.uint8)
    request = _wire(encode_request("r", image, depth=depth))
    assert request.depth.dtype == depth.dtype and np.array_equal(request.depth, depth)
    assert _wire(encode_request("r", image)).depth is None


@pytest.mark.parametrize("depth,message", [
    (np.ones((4, 5), np.uint16), "depth must be"),
    (np.ones((4, 6), np.float64), "depth must be"),
    (np.full((4, 6), -1.0, np.float32), ">= 0"),
    (np.full((4, 6), np.inf, np.float32), "finite"),
])
def test_unusable_depth_is_bad_input(depth, message):
    with pytest.raises(ProtocolError, match=message) as e:
        encode_request("r", np.zeros((4, 6, 3), np.uint8), depth=depth)
    assert e.value.kind == "bad_input"


def test_depth_files(tmp_path):
    mm = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    Image.fromarray(mm).save(tmp_path / "d.png")
    assert np.array_equal(load_depth(tmp_path / "d.png"), mm) and load_depth(tmp_path / "d.png").dtype == np.uint16
    np.save(tmp_path / "m.npy", mm.astype(np.float64) / 1000)
    assert load_depth(tmp_path / "m.npy").dtype == np.float32
    np.save(tmp_path / "rgb.npy", np.zeros((3, 4, 3), np.float32))
    with pytest.raises(BadInputError, match="one channel"):
        load_depth(tmp_path / "rgb.npy")
    with pytest.raises(BadInputError, match="no such depth"):
        load_depth(tmp_path / "missing.png")


def test_depth_places_the_body_where_the_sensor_sees_it():
    """Fit once from the image; then hand the pipeline the depth of that body moved 0.3 m further
    away along the viewing rays (the same silhouette): the depth-aware fit follows it."""
    rec = Reconstructor.from_config(ReconstructorConfig().override({"coarse.checkpoint": None, "body.track.enabled": False}))
    image, camera = load_image(SAMPLE), load_camera_info(SAMPLE_CAMERA)
    plain, _ = rec.run_frame(ReconstructionRequest(image, camera=camera))
    v, f = plain.body.vertices.astype(np.float64), plain.body.faces
    distance = float(np.median(v[:, 2]))
    farther = v * (distance + 0.3) / distance  # scaled about the camera centre: same image
    front, _ = body_depth_maps(farther, f, camera.K, camera.width, camera.height)
    depth = np.where(np.isfinite(front), front, 0.0).astype(np.float32)
    with_depth, _ = rec.run_frame(ReconstructionRequest(image, camera=camera, depth=depth))
    moved = float(np.median(with_depth.body.vertices[:, 2])) - distance
    assert 0.2 < moved < 0.4, moved
    assert with_depth.reports["fit_body"]["depth_given"] and not plain.reports["fit_body"]["depth_given"]
    with pytest.raises(BadInputError, match="depth must be"):
        rec.run(ReconstructionRequest(image, camera=camera, depth=depth[:-1]))
