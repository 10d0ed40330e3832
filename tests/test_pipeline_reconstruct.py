"""`Reconstructor` and `hgm reconstruct` on the bundled sample frame (real mediapipe, anny, fit)."""

import json
import subprocess
import sys

import numpy as np
import plyfile
import pytest

from hgm_core.cli import main as hgm_main
from hgm_core.io.inputs import load_camera_info, load_image
from hgm_core.paths import ASSETS_DIR
from hgm_core.pipeline import Reconstructor, ReconstructorConfig
from hgm_core.types import CameraInfo, CropTooSmallError, NoPersonError, ReconstructionRequest, StageUnavailableError

SAMPLE = ASSETS_DIR / "sample" / "person.jpg"
SAMPLE_CAMERA = ASSETS_DIR / "sample" / "camera_info.yaml"


@pytest.fixture(scope="module")
def reconstructor():
    # No network stage: these tests are about perception, the fit and the prior.
    return Reconstructor.from_config(ReconstructorConfig().override({"body.fit.iterations": 60, "coarse.checkpoint": None}))


def test_sample_frame_gives_a_metric_avatar_in_the_camera_frame(reconstructor):
    image = load_image(str(SAMPLE))
    cam = load_camera_info(str(SAMPLE_CAMERA))
    frame, timings = reconstructor.run_frame(ReconstructionRequest(image, camera=cam))
    out = reconstructor.result(frame, timings)
    g = out.gaussians.validate()
    assert 5_000 < len(g) < 100_000
    # The sample camera stands 2.0 m from the subject (see assets/sample/README.md).
    z = g.means[:, 2].numpy()
    assert 1.6 < np.median(z) < 2.4
    height = np.percentile(g.means[:, 1].numpy(), 99) - np.percentile(g.means[:, 1].numpy(), 1)
    assert 1.3 < height < 2.1  # an adult, in metres
    assert set(out.timings) >= {"perceive", "fit_body", "prior", "total"}
    assert out.info["perceive"]["intrinsics_source"] == "camera_info" and out.info["perceive"]["num_people"] == 1
    assert out.info["stages_run"] == ["perceive", "fit_body", "prior"] and out.stages == "prior"
    assert out.skeleton is not None and len(out.skeleton.names) == out.skeleton.joints.shape[0]
    assert frame.body.keypoint_error_px < 8.0
    json.dumps(out.info)  # wire-safe


def test_a_stream_warm_starts_the_body_fit():
    image = load_image(str(SAMPLE))
    cam = load_camera_info(str(SAMPLE_CAMERA))
    shifted = np.roll(image, (3, -4), axis=(0, 1))  # the next frame: the person moved a few pixels
    tracking = Reconstructor.from_config(ReconstructorConfig().override({"body.fit.iterations": 60, "body.track.refresh": 3}))
    first = tracking.run_frame(ReconstructionRequest(image, camera=cam))[0].body
    second = tracking.run_frame(ReconstructionRequest(shifted, camera=cam))[0].body
    third = tracking.run_frame(ReconstructionRequest(image, camera=cam))[0].body
    fourth = tracking.run_frame(ReconstructionRequest(shifted, camera=cam))[0].body
    assert not first.warm_started and second.warm_started and second.iterations < first.iterations
    assert second.keypoint_error_px < 8.0
    assert third.warm_started and not fourth.warm_started  # track_refresh=3: cold again 3 fits after a cold one
    other_stream = tracking.run_frame(ReconstructionRequest(shifted, camera=cam, stream="camera 2"))[0].body
    assert not other_stream.warm_started  # another camera's stream never starts from this one's fit
    cold = Reconstructor.from_config(ReconstructorConfig().override({"body.fit.iterations": 60, "body.track.enabled": False}))
    cold.run(ReconstructionRequest(image, camera=cam))
    assert not cold.run_frame(ReconstructionRequest(shifted, camera=cam))[0].body.warm_started


def test_given_mask_wins_and_bad_inputs_have_clear_errors(reconstructor):
    image = load_image(str(SAMPLE))
    with pytest.raises(NoPersonError):
        reconstructor.run(ReconstructionRequest(np.full((256, 256, 3), 255, np.uint8)))
    small = np.full((512, 512, 3), 255, np.uint8)
    small[200:240, 240:256] = image[::12, ::32][: 40, :16]
    with pytest.raises((CropTooSmallError, NoPersonError)):
        reconstructor.run(ReconstructionRequest(small))
    with pytest.raises(StageUnavailableError, match="checkpoint"):
        reconstructor.run(ReconstructionRequest(image, stages="coarse"))


def test_cli_writes_all_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    code = hgm_main(["reconstruct", str(SAMPLE), "--camera-info", str(SAMPLE_CAMERA), "-o", str(out),
                     "--fit-iterations", "40", "--views", "4"])
    assert code == 0
    for name in ("avatar.ply", "body.json", "body.ply", "turntable.png", "report.json"):
        assert (out / name).stat().st_size > 0, name
    ply = plyfile.PlyData.read(str(out / "avatar.ply"))
    assert ply["vertex"].count > 5000 and "f_dc_0" in ply["vertex"].data.dtype.names
    report = json.loads((out / "report.json").read_text())
    assert report["front_iou"] > 0.8 and report["front_psnr_masked"] > 18
    assert set(report["timings_s"]) >= {"perceive", "fit_body", "prior", "wall"}
    body = json.loads((out / "body.json").read_text())
    assert len(body["joints"]) == len(body["joint_names"]) and "params" in body
    assert "turntable.png" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["/nonexistent.jpg"], "no such image"),
    ([str(SAMPLE_CAMERA)], "cannot read image"),
    ([str(SAMPLE), "--camera-info", str(SAMPLE)], "camera info"),
    ([str(SAMPLE), "--stages", "full", "--fuse-checkpoint", "none"], "fuse needs a two-view HGM checkpoint"),
])
def test_cli_user_errors_are_one_line_and_nonzero(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "hgm_core", "reconstruct", *args, "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr


def test_camera_info_yaml_formats(tmp_path):
    p = tmp_path / "ci.yaml"
    p.write_text("width: 640\nheight: 480\nk: [500, 0, 320, 0, 500, 240, 0, 0, 1]\n")
    cam = load_camera_info(str(p))
    assert isinstance(cam, CameraInfo) and cam.width == 640 and cam.K[1, 2] == 240
    assert load_camera_info(str(SAMPLE_CAMERA)).K[0, 0] == pytest.approx(409.6)


def test_serve_and_reconstruct_share_the_checkpoint_flags():
    """`hgm serve` builds its worker's config with `hgm reconstruct`'s function: every flag that
    function reads exists in both parsers (a worker that cannot start is a silent demo failure)."""
    import argparse

    from hgm_core.pipeline import cli as reconstruct_cli
    from hgm_core.serve import cli as serve_cli

    for module, extra in ((reconstruct_cli, [str(SAMPLE)]), (serve_cli, [])):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        args = parser.parse_args([*extra, "--checkpoint", "none", "--fuse-checkpoint", "none", "--fit-iterations", "7"])
        config = reconstruct_cli.reconstructor_config(args)
        assert (config.coarse.checkpoint, config.fuse.checkpoint, config.body.fit.iterations) == (None, None, 7)
