"""The `coarse` stage with a real (randomly initialised) `tiny` checkpoint on the sample frame.

The weights are random, so these tests check the pipeline's honesty, not the avatar's quality: a
configured checkpoint runs the network and says so; without one the level is refused; a network
whose output is unusable falls back to the prior and the result says that too.
"""

from __future__ import annotations

import json

import pytest
import torch

from hgm_core.model import HGM, config_for
from hgm_core.paths import ASSETS_DIR
from hgm_core.pipeline import Reconstructor, ReconstructorConfig
from hgm_core.io.inputs import load_camera_info, load_image
from hgm_core.pipeline.coarse import CoarseStage
from hgm_core.pipeline.components import PriorStage
from hgm_core.render.output import ALPHA_MIN
from hgm_core.types import ReconstructionRequest, StageUnavailableError

SAMPLE = ASSETS_DIR / "sample" / "person.jpg"
SAMPLE_CAMERA = ASSETS_DIR / "sample" / "camera_info.yaml"


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return HGM(config_for("tiny")).save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny_random_weights")


@pytest.fixture(scope="module")
def request_():
    return ReconstructionRequest(load_image(str(SAMPLE)), camera=load_camera_info(str(SAMPLE_CAMERA)), stages="coarse")


@pytest.fixture(scope="module")
def with_network(random_checkpoint):
    config = ReconstructorConfig().override({"body.fit.iterations": 40, "coarse.checkpoint": str(random_checkpoint),
                                             "fuse.checkpoint": None})
    return Reconstructor.from_config(config)


def test_a_configured_checkpoint_runs_the_network_and_labels_it(with_network, request_, random_checkpoint):
    assert with_network.available_stages == ("prior", "coarse")
    out = with_network.run(request_)
    assert out.stages == "coarse" and out.info["stages_run"] == ["perceive", "fit_body", "coarse"]
    report = out.info["coarse"]
    assert report["checkpoint"] == str(random_checkpoint) and report["used"] in ("network", "prior")
    cfg = config_for("tiny")
    if report["used"] == "network":  # the network's own set: one per body vertex plus one per splat pixel,
        # less those no renderer draws (background pixels start off)
        assert len(out.gaussians) == cfg.num_vertices + cfg.num_gaussians - report["dropped_invisible"]
        assert report["dropped_invisible"] > 0 and (out.gaussians.opacities >= ALPHA_MIN).all()
        z = out.gaussians.means[:, 2].median().item()
        assert 1.5 < z < 2.5  # in the camera's optical frame, where the sample's person stands (2.0 m)
    else:
        assert any("coarse" in w for w in out.info["warnings"])
    assert out.info["config"]["coarse"]["checkpoint"] == str(random_checkpoint)
    json.dumps(out.info)


def test_prior_requests_do_not_run_the_network(with_network, request_):
    out = with_network.run(ReconstructionRequest(request_.image, camera=request_.camera, stages="prior"))
    assert out.info["stages_run"] == ["perceive", "fit_body", "prior"] and "coarse" not in out.info


def test_without_a_checkpoint_coarse_is_refused(request_):
    rec = Reconstructor.from_config(ReconstructorConfig().override({"body.fit.iterations": 40, "coarse.checkpoint": None}))
    assert rec.available_stages == ("prior",)
    with pytest.raises(StageUnavailableError, match="coarse"):
        rec.run(request_)


def test_an_unusable_network_output_falls_back_to_the_prior_and_says_so(with_network, request_):
    broken = HGM(config_for("tiny"))
    with torch.no_grad():  # every head pushes opacity (channel 3) to ~0: an invisible avatar
        for head in (broken.conv, broken.body_head.mlp[-1], broken.fusion.head):
            head.bias[3] = -30.0
    prior = with_network.stages["prior"]
    stages = [s for name, s in with_network.stages.items() if name != "coarse"]
    rec = Reconstructor([*stages, CoarseStage(broken, prior, "invisible weights")], with_network.config)
    out = rec.run(request_)
    assert out.info["stages_run"] == ["perceive", "fit_body", "coarse"]
    assert out.info["coarse"]["used"] == "prior" and "above opacity" in out.info["coarse"]["check"]
    assert any("unusable" in w for w in out.info["warnings"])
    assert torch.isfinite(out.gaussians.means).all()


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path, random_checkpoint):
    prior = PriorStage()
    with pytest.raises(StageUnavailableError, match="cannot load"):
        CoarseStage.from_checkpoint(tmp_path / "missing", prior, "anny")
    with pytest.raises(StageUnavailableError, match="body model"):
        CoarseStage.from_checkpoint(random_checkpoint, prior, "smplx")
    two_view = HGM(config_for("tiny", num_views=2)).save_pretrained(tmp_path / "two")
    with pytest.raises(StageUnavailableError, match="2-view"):
        CoarseStage.from_checkpoint(two_view, prior, "anny")


# ------------------------------------------------------------------------------ fuse (two views)


@pytest.fixture(scope="module")
def random_two_view_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    return HGM(config_for("tiny", num_views=2)).save_pretrained(tmp_path_factory.mktemp("ckpt2") / "tiny_2view_random_weights")


def test_full_runs_back_view_and_the_two_view_network_and_labels_them(random_checkpoint, random_two_view_checkpoint, request_):
    config = ReconstructorConfig().override({"body.fit.iterations": 40, "coarse.checkpoint": str(random_checkpoint),
                                             "fuse.checkpoint": str(random_two_view_checkpoint), "back_view.size": 128})
    rec = Reconstructor.from_config(config)
    assert rec.available_stages == ("prior", "coarse", "full")  # refine_body is off: `refined` refused, `full` skips it
    assert rec.describe()["fuse_checkpoint"] == str(random_two_view_checkpoint)
    out = rec.run(ReconstructionRequest(request_.image, camera=request_.camera, stages="full"))
    assert out.info["stages_run"] == ["perceive", "fit_body", "coarse", "back_view", "fuse", "mesh"]
    assert "off" in out.info["refine_body"]["skipped"] and out.mesh is not None
    report = out.info["fuse"]
    assert report["checkpoint"] == str(random_two_view_checkpoint) and report["views"] == 2
    assert report["back_refined_by"] == "back_cnn"
    cfg = config_for("tiny", num_views=2)
    if report["used"] == "network":  # both views' pixel-aligned sets
        assert len(out.gaussians) == cfg.num_vertices + cfg.num_gaussians - report["dropped_invisible"]
        assert 1.5 < out.gaussians.means[:, 2].median().item() < 2.5
    else:
        assert any("fuse" in w for w in out.info["warnings"])
    json.dumps(out.info)


def test_an_unusable_two_view_output_keeps_the_coarse_avatar_and_says_so(random_checkpoint, request_):
    from hgm_core.pipeline.coarse import FuseStage

    broken = HGM(config_for("tiny", num_views=2))
    with torch.no_grad():
        for head in (broken.conv, broken.body_head.mlp[-1], broken.fusion.head):
            head.bias[3] = -30.0
    config = ReconstructorConfig().override({"body.fit.iterations": 40, "coarse.checkpoint": str(random_checkpoint),
                                             "back_view.size": 128, "body.track.enabled": False,  # no warm start: same fit twice
                                             "fuse.checkpoint": None})
    base = Reconstructor.from_config(config)
    assert "fuse" in base.unavailable and "full" not in base.available_stages
    rec = Reconstructor([*base.stages.values(), FuseStage(broken, "invisible weights")], config)
    frame, _ = rec.run_frame(ReconstructionRequest(request_.image, camera=request_.camera, stages="full", mesh=False))
    coarse, _ = rec.run_frame(ReconstructionRequest(request_.image, camera=request_.camera, stages="coarse"))
    assert frame.reports["fuse"]["used"] == "coarse" and any("kept the coarse avatar" in w for w in frame.warnings)
    torch.testing.assert_close(frame.gaussians.means, coarse.gaussians.means)


def test_fuse_needs_a_two_view_checkpoint(random_checkpoint):
    from hgm_core.pipeline.coarse import FuseStage

    with pytest.raises(StageUnavailableError, match="1-view network; need 2"):
        FuseStage.from_checkpoint(random_checkpoint, "anny")
