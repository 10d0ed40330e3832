"""The stage interface and the Reconstructor's bookkeeping, with small real components.

The components here are genuine `Stage`s (they compute what they provide from what they need);
they stand in for the heavy ones only so these rules run in milliseconds. The real components are
exercised end to end in test_pipeline_reconstruct.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hgm_core.configs import ConfigFieldError
from hgm_core.gaussians import Gaussians
from hgm_core.pipeline import LEVELS, Frame, Reconstructor, ReconstructorConfig, Stage
from hgm_core.pipeline.stage import update
from hgm_core.types import BadInputError, Mesh, ReconstructionRequest, StageUnavailableError


class _Mask(Stage):
    """"Perception": the non-white pixels."""

    name, provides = "perceive", ("perception",)

    def run(self, frame: Frame) -> Frame:
        mask = (frame.request.image < 250).any(-1)
        frame.reports[self.name] = {"pixels": int(mask.sum())}
        return update(frame, perception=mask)


class _Body(Stage):
    """"Body fit": a stand-in object with the fields `Reconstructor.result` reads."""

    name, needs, provides = "fit_body", ("perception",), ("body",)

    class Fit:
        def __init__(self, mask: np.ndarray) -> None:
            ys, xs = np.nonzero(mask)
            self.vertices = np.stack([xs, ys, np.full_like(xs, 2)], -1).astype(np.float32)[:3]
            self.faces = np.array([[0, 1, 2]])
            self.joints = self.vertices.copy()
            self.joint_names, self.joint_parents = ("a", "b", "c"), (-1, 0, 1)

    def run(self, frame: Frame) -> Frame:
        return update(frame, body=self.Fit(frame.perception))


class _Splats(Stage):
    """One Gaussian per masked pixel, coloured by the image (`label` says which component made it)."""

    needs, provides = ("perception", "body"), ("gaussians",)

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, frame: Frame) -> Frame:
        ys, xs = np.nonzero(frame.perception)
        n = len(xs)
        g = Gaussians(
            means=torch.tensor(np.stack([xs, ys, np.full(n, 2.0)], -1), dtype=torch.float32),
            quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), scales=torch.full((n, 3), 0.01),
            opacities=torch.full((n,), 0.9), colors=torch.tensor(frame.request.image[ys, xs] / 255.0, dtype=torch.float32),
        )
        return update(frame, gaussians=g)


class _Hull(Stage):
    name, needs, provides = "mesh", ("gaussians",), ("mesh",)

    def run(self, frame: Frame) -> Frame:
        v = frame.gaussians.means[:3].numpy()
        return update(frame, mesh=Mesh(v, np.array([[0, 1, 2]])))


def _image() -> np.ndarray:
    image = np.full((32, 32, 3), 255, np.uint8)
    image[8:24, 12:20] = (200, 40, 40)
    return image


def _reconstructor(*extra: Stage, config: ReconstructorConfig = ReconstructorConfig()) -> Reconstructor:
    return Reconstructor([_Mask(), _Body(), _Splats("prior"), _Hull(), *extra], config)


def test_a_level_runs_exactly_its_components_and_says_so():
    out = _reconstructor().run(ReconstructionRequest(_image(), stages="prior"))
    assert out.stages == "prior" and out.info["stages_run"] == ["perceive", "fit_body", "prior"]
    assert list(out.timings) == ["perceive", "fit_body", "prior", "total"]
    assert len(out.gaussians) == 16 * 8 and out.mesh is None
    assert out.info["perceive"] == {"pixels": 128}
    assert ReconstructorConfig.from_dict(out.info["config"]) == ReconstructorConfig()
    json.dumps(out.info)


def test_mesh_follows_a_level_on_request_or_by_default():
    rec = _reconstructor()
    out = rec.run(ReconstructionRequest(_image(), mesh=True))
    assert out.info["stages_run"] == ["perceive", "fit_body", "prior", "mesh"] and out.mesh is not None
    by_default = _reconstructor(config=ReconstructorConfig(mesh_by_default=True))
    assert by_default.plan(ReconstructionRequest(_image()))[-1] == "mesh"
    assert by_default.plan(ReconstructionRequest(_image(), mesh=False))[-1] == "prior"


def test_a_level_without_its_components_is_refused_not_relabelled():
    rec = _reconstructor()
    assert rec.available_stages == ("prior",)
    for level in ("coarse", "refined", "full"):
        with pytest.raises(StageUnavailableError, match="coarse"):
            rec.run(ReconstructionRequest(_image(), stages=level))
    with pytest.raises(BadInputError, match="unknown stages"):
        rec.run(ReconstructionRequest(_image(), stages="best"))


def test_registering_a_component_makes_its_level_available_and_it_is_the_one_that_runs():
    rec = _reconstructor(_Splats("coarse"))
    assert rec.available_stages == ("prior", "coarse")
    out = rec.run(ReconstructionRequest(_image(), stages="coarse"))
    assert out.info["stages_run"] == ["perceive", "fit_body", "coarse"] and "prior" not in out.timings
    with pytest.raises(StageUnavailableError, match="refine_body"):
        rec.run(ReconstructionRequest(_image(), stages="refined"))


def test_full_skips_refine_body_when_it_is_off_and_says_so():
    rec = Reconstructor([_Mask(), _Body(), _Hull(), *(_Splats(n) for n in ("prior", "coarse", "back_view", "fuse"))],
                        ReconstructorConfig(), {"refine_body": "refine_body is off"})
    assert rec.available_stages == ("prior", "coarse", "full")
    out = rec.run(ReconstructionRequest(_image(), stages="full"))
    assert out.info["stages_run"] == ["perceive", "fit_body", "coarse", "back_view", "fuse", "mesh"]
    assert out.info["refine_body"] == {"skipped": "refine_body is off"} and "refine_body" not in out.timings
    # `refined` is that stage: it is refused, never relabelled.
    with pytest.raises(StageUnavailableError, match="refine_body is off"):
        rec.run(ReconstructionRequest(_image(), stages="refined"))
    with_refine = Reconstructor([*rec.stages.values(), _Splats("refine_body")], ReconstructorConfig())
    assert with_refine.plan(ReconstructionRequest(_image(), stages="full"))[3] == "refine_body"


def test_components_check_what_they_need_and_names_are_unique():
    with pytest.raises(RuntimeError, match="needs perception"):
        _Splats("prior")(Frame(request=ReconstructionRequest(_image())))
    with pytest.raises(ValueError, match="two components named 'prior'"):
        Reconstructor([_Splats("prior"), _Splats("prior")], ReconstructorConfig())


def test_every_level_starts_with_perception_and_the_body_fit():
    for level, chain in LEVELS.items():
        assert chain[:2] == ("perceive", "fit_body"), level


def test_the_config_round_trips_through_json(tmp_path):
    config = ReconstructorConfig().override({
        "body.fit.iterations": 60, "body.track.refresh": 3, "coarse.checkpoint": "/ckpt",
        "mesh.elevations_deg": (-20.0, 20.0), "mesh_by_default": True,
    })
    assert config.body.fit.iterations == 60 and config.mesh.elevations_deg == (-20.0, 20.0)
    again = ReconstructorConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    config.save(tmp_path / "c.json")
    assert ReconstructorConfig.load(tmp_path / "c.json") == config
    assert ReconstructorConfig.from_dict({"body": {"model": "smplx"}}).body.fit == config.body.fit.__class__()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigFieldError, match="unknown field.*fit_iterations"):
        ReconstructorConfig.from_dict({"fit_iterations": 60})
    with pytest.raises(ConfigFieldError, match="BodyConfig has no field 'iters'"):
        ReconstructorConfig().override({"body.iters": 3})
    with pytest.raises(ConfigFieldError, match="ReconstructorConfig.body: expected a mapping"):
        ReconstructorConfig.from_dict({"body": 3})
