"""`refine_body`: its geometry helpers, its schedule, and that it recovers depth the front view hides.

The recovery test gives the refinement an ideal avatar (Gaussians on the true body's surface) in
place of the network, so it checks the method and its code: with the truth seen from the sides, a
body whose arm and spine are wrong in depth moves to the truth. Whether the trained network's
avatars are good enough for that is measured by `bench/refine_body.py`, not here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hgm_core.body import BodyParams, FitConfig, fit_body, mpjpe, pa_mpjpe, skeleton
from hgm_core.gaussians import Gaussians
from hgm_core.perception import default_intrinsics
from hgm_core.pipeline.refine_body import RefineBodyConfig, body_cameras, depth_normals, refine_body, vertex_normals
from hgm_core.render.views import body_up
from tests.test_fit import POSES, anny_body, pose_vector, synthetic_case  # noqa: F401  (anny_body: module fixture)


def surface_avatar(vertices) -> Gaussians:
    """Small opaque grey Gaussians on `vertices [V, 3]`: an ideal network's avatar of that body."""
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)
    n = len(v)
    return Gaussians(means=v, quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), scales=torch.full((n, 3), 0.012),
                     opacities=torch.full((n,), 0.95), colors=torch.full((n, 3), 0.5))


def test_depth_normals_of_a_tilted_plane_face_the_camera() -> None:
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    v, u = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    # The plane z = 2 + 0.5 x: rays x = (u - cx) / f * z  =>  z = 2 / (1 - 0.5 (u - cx) / f).
    depth = 2.0 / (1 - 0.5 * (u - 32) / 100)
    n = depth_normals(depth, torch.ones(64, 64, dtype=torch.bool), K)
    expected = torch.nn.functional.normalize(torch.tensor([0.5, 0.0, -1.0]), dim=0)
    inner = n[:, 1:-1, 1:-1].reshape(3, -1).T
    assert torch.allclose(inner, expected.expand_as(inner), atol=1e-4)
    assert (n[:, 0] == 0).all() and (n[:, :, -1] == 0).all()  # borders have no central difference


def test_vertex_normals_point_outwards() -> None:
    # A tetrahedron with counter-clockwise faces seen from outside.
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    n = vertex_normals(v, f)
    centre = v.mean(0)
    assert ((n * (v - centre)).sum(-1) > 0).all() and torch.allclose(n.norm(dim=-1), torch.ones(4))


def test_body_cameras_orbit_the_body_centre(anny_body) -> None:  # noqa: F811
    K = np.asarray(default_intrinsics(512, 512), np.float64)
    _, gt, _ = synthetic_case(anny_body, 2, torch.zeros(1, anny_body.shape_dim), K)
    verts = gt.vertices[0].numpy()
    centre = 0.5 * (verts.min(0) + verts.max(0))
    up = np.array([0.0, -1.0, 0.0])
    cams = body_cameras(verts, up, 96, (1, 2, 3))
    eyes = cams.centers.double().numpy()
    r = -centre - np.dot(-centre, up) * up  # the input camera (origin) seen from the centre, across the up axis
    assert np.allclose(np.linalg.norm(eyes - centre - np.dot(-centre, up) * up, axis=-1), np.linalg.norm(r), rtol=1e-4)
    assert np.allclose(eyes[1], centre - r + np.dot(-centre, up) * up, atol=1e-4)  # half a turn: opposite the input camera
    assert abs(np.dot(eyes[0] - centre, r)) < 1e-3 * np.dot(r, r)  # a quarter turn: beside it
    uv, z = cams.project(torch.as_tensor(verts, dtype=torch.float32))
    assert (z > 0).all() and (uv >= 0).all() and (uv <= 96).all()  # the whole body in every view


def test_refinement_recovers_depth_the_front_view_hides(anny_body) -> None:  # noqa: F811
    K = np.asarray(default_intrinsics(512, 512), np.float64)
    shape = torch.zeros(1, anny_body.shape_dim)
    params, gt, perception = synthetic_case(anny_body, 0, shape, K)
    truth = surface_avatar(gt.vertices[0].numpy())
    # The left arm swung forward and the spine leant: wrong mostly in depth, which one view hides.
    spec = dict(POSES[0], left_shoulder=(-75, 0, 35), spine1=(30, 0, 0))
    wrong = BodyParams(params.global_orient.clone(), params.transl.clone(), pose_vector(anny_body, spec), shape.clone())
    fit = fit_body(perception, None, anny_body, init=wrong,
                   config=FitConfig(warm_iterations=5, warm_max_keypoint_error=1.0, warm_min_iou=0.0))
    assert fit.warm_started
    calls = []

    def predict(vertices: np.ndarray) -> Gaussians:
        calls.append(vertices.copy())
        return truth

    out = refine_body(perception, fit, truth, anny_body, predict, RefineBodyConfig())
    gt_kp = gt.keypoints[0].numpy()
    before, after = mpjpe(fit.keypoints, gt_kp), mpjpe(out.body.keypoints, gt_kp)
    assert after < 0.5 * before, (before, after)  # measured: 64 -> 17 mm
    assert pa_mpjpe(out.body.keypoints, gt_kp) < pa_mpjpe(fit.keypoints, gt_kp)
    # The paper's schedule: 45 steps, the network re-run after every 15 on the refined body (never
    # on the initial one, whose avatar the first 15 steps match), the last run's avatar kept.
    assert out.report["steps"] == 45 and out.report["network_runs"] == 3 and len(calls) == 3
    assert not np.allclose(calls[0], fit.vertices, atol=1e-4)
    assert np.allclose(calls[-1], out.body.vertices, atol=1e-5) and out.gaussians is truth
    assert math.isclose(np.linalg.norm(out.body.params.transl), np.linalg.norm(fit.params.transl), rel_tol=1e-3)  # distance held


def test_an_unusable_rerun_stops_and_keeps_the_last_good_body(anny_body) -> None:  # noqa: F811
    K = np.asarray(default_intrinsics(512, 512), np.float64)
    _, gt, perception = synthetic_case(anny_body, 1, torch.zeros(1, anny_body.shape_dim), K)
    fit = fit_body(perception, None, anny_body, init=None, config=FitConfig(camera_iterations=5, iterations=10))
    truth = surface_avatar(gt.vertices[0].numpy())
    far = surface_avatar(gt.vertices[0].numpy() + np.array([0.0, 0.0, 5.0]))  # 5 m behind the body
    out = refine_body(perception, fit, truth, anny_body, lambda v: far, RefineBodyConfig(iterations=30))
    assert out.body is fit and out.gaussians is truth
    assert out.report["network_runs"] == 1 and "unusable" in out.report["stopped"]


def test_config_refuses_a_schedule_without_steps() -> None:
    with pytest.raises(ValueError, match="rerun_every"):
        RefineBodyConfig(rerun_every=0)


def test_body_up_of_a_fit_points_to_the_head(anny_body) -> None:  # noqa: F811
    K = np.asarray(default_intrinsics(512, 512), np.float64)
    _, _, perception = synthetic_case(anny_body, 2, torch.zeros(1, anny_body.shape_dim), K)
    fit = fit_body(perception, None, anny_body, config=FitConfig(camera_iterations=5, iterations=5))
    assert body_up(skeleton(fit))[1] < -0.9  # optical y points down, so up is -y for an upright person


def test_refined_level_is_off_by_default_and_says_why() -> None:
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.types import ReconstructionRequest, StageUnavailableError

    rec = Reconstructor.from_config(ReconstructorConfig().override({"body.fit.iterations": 5}))
    assert "refine_body" not in rec.stages and "refined" not in rec.available_stages
    with pytest.raises(StageUnavailableError, match="refine_body is off.*bench/refine_body.py"):
        rec.plan(ReconstructionRequest(np.zeros((64, 64, 3), np.uint8), stages="refined"))


def test_enabled_refined_level_runs_on_the_sample_and_reports_its_time() -> None:
    from hgm_core.io.inputs import load_camera_info, load_image
    from hgm_core.paths import ASSETS_DIR
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.types import ReconstructionRequest

    config = ReconstructorConfig().override({"body.fit.iterations": 40, "refine_body.enabled": True,
                                             "refine_body.iterations": 4, "refine_body.rerun_every": 2})
    rec = Reconstructor.from_config(config)
    assert "refined" in rec.available_stages
    sample = ASSETS_DIR / "sample"
    out = rec.run(ReconstructionRequest(load_image(str(sample / "person.jpg")), camera=load_camera_info(str(sample / "camera_info.yaml")),
                                        stages="refined"))
    assert out.stages == "refined" and out.info["stages_run"] == ["perceive", "fit_body", "coarse", "refine_body"]
    assert out.timings["refine_body"] > 0 and set(out.timings) == {*out.info["stages_run"], "total"}
    report = out.info["refine_body"]
    if out.info["coarse"]["used"] == "network":
        assert report["steps"] == 4 and report["network_runs"] == 2 and len(report["rounds"]) == 2
        assert 1.5 < out.gaussians.means[:, 2].median().item() < 2.5  # still where the sample's person stands
    else:
        assert "skipped" in report
    assert out.info["config"]["refine_body"]["enabled"] is True
