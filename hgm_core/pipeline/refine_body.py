"""The `refine_body` stage: refine the fitted body against the network's avatar seen from the sides.

HGM's appendix (docs/reference/hgm_official_code.md §6.3 has what the released code does instead):
one image leaves the body's depth profile (how thick, how far a limb reaches towards the camera)
to the body prior; the network's Gaussians carry a guess of it. So the body parameters are
optimised to match
- the person mask in the input view (weight `front_mask_weight`, 10),
- the avatar's silhouette seen from the body's left and right (`side_mask_weight`, 1), and
- the avatar's surface normals in those side views (`normal_weight`, 0.5),
for `iterations` (45) Adam steps. The first `rerun_every` (15) steps match the coarse avatar (made
with the initial body); then, and after each further 15, the network is re-run on the refined body
and its new avatar becomes the target (3 re-runs; the last one is the stage's avatar).

How the terms are computed (the same rendering-free scheme as `hgm_core.body.fit`):
- masks: the body's surface samples projected into each view against the target mask with the
  fit's two-sided chamfer (`silhouette_distances`): samples outside are pulled in, and every
  contour pixel pulls its nearest sample;
- normals: the avatar's normal map comes from its rendered depth (finite differences); each
  visible body sample (facing the side camera, unoccluded by other samples) is compared with it by
  `1 - cos`. The body's vertex normals come from the full mesh.
Ours, beside the paper's weights: the fit's 2D keypoint term (`keypoint_weight`) and its pose and
shape priors keep the refinement from trading the pose for the silhouettes; the side cameras orbit
the body's centre about its up axis at the input camera's distance and are fixed within a round.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import roma
import torch

from hgm_core.body.base import BodyModel, BodyParams
from hgm_core.body.depth import visible

# The fit's energy pieces (targets, robust loss, chamfer target, result record) are reused so the
# refinement scores keypoints and silhouettes exactly as the fit does.
from hgm_core.body.fit import BodyFit, FitConfig, gmof, make_fit, silhouette_target, fit_targets, silhouette_distances, skeleton
from hgm_core.camera import Cameras, cameras_from_c2w_gl, intrinsics, project_points, turntable_poses
from hgm_core.gaussians import Gaussians
from hgm_core.model.predict import body_centre, check_avatar, predict_avatar
from hgm_core.perception.perceive import Perception
from hgm_core.pipeline.coarse import CoarseStage
from hgm_core.pipeline.stage import Frame, Stage, update
from hgm_core.render.api import rasterize
from hgm_core.render.views import body_up


@dataclass(frozen=True)
class RefineBodyConfig:
    """Weights and schedule of `refine_body` (paper appendix where marked).

    Attributes:
        enabled: build the stage (and so the `refined` level). Off by default: with the embedded
            checkpoint it made the body fit worse on held-out synthetic subjects (bench/refine_body.py,
            see `OFF_REASON`); with an ideal avatar it recovers hidden depth (tests/test_refine_body.py).
        iterations: Adam steps in all (paper: 45).
        rerun_every: the network is re-run on the refined body after every this many steps (paper: 15).
        front_mask_weight / side_mask_weight / normal_weight: paper: 10 / 1 / 0.5.
        keypoint_weight: the body fit's 2D keypoint energy (ours; 0 turns it off).
        pose_prior_weight / shape_prior_weight: the fit's priors (ours, the fit's defaults).
        lr: Adam rate for orientation, pose and shape (translation: lr / 3 metres), like a warm fit.
        hold_distance: keep the pelvis at the fit's distance from the camera (ours). The front mask
            (weight 10) of a clothed person is wider than the body; free to move, the body then comes
            nearer to the camera to fill it (on 2 bench subjects 8 and 13 cm), undoing the fit's metric
            placement, which the side views (weight 1) barely resist.
        side_size: side views are rendered `side_size` pixels square.
        alpha_threshold: an avatar pixel belongs to its silhouette above this rendered alpha.
        surface_points / contour_points: body samples and target contour pixels per mask term.
        visibility_cell / visibility_thickness_m: a body sample is visible in a side view when it
            is within this depth of the nearest sample in its cell (`visibility_cell` x side_size px).
        robust_sigma: Geman-McClure scale of the mask and keypoint residuals (box heights), as the fit.
    """

    enabled: bool = False
    iterations: int = 45
    rerun_every: int = 15
    front_mask_weight: float = 10.0
    side_mask_weight: float = 1.0
    normal_weight: float = 0.5
    keypoint_weight: float = 1.0
    pose_prior_weight: float = 0.02
    shape_prior_weight: float = 0.002
    lr: float = 0.01
    hold_distance: bool = True
    side_size: int = 192
    alpha_threshold: float = 0.5
    surface_points: int = 1000
    contour_points: int = 500
    visibility_cell: float = 0.02
    visibility_thickness_m: float = 0.03
    robust_sigma: float = 0.1

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.rerun_every < 1:
            raise ValueError(f"iterations must be >= 0 and rerun_every >= 1, got {self.iterations}, {self.rerun_every}")


OFF_REASON = ("refine_body is off (refine_body.enabled): with the embedded checkpoint it made the body fit worse "
              "on held-out synthetic subjects (bench/refine_body.py)")
"""Why `refined` is refused by default (`Reconstructor.plan` says it)."""


@dataclass(frozen=True)
class Refinement:
    """What `refine_body` returns.

    Attributes:
        body: the refined fit (camera frame), or the input fit when nothing was refined.
        gaussians: the avatar of the last network run on the refined body (or the input avatar).
        report: JSON-ready facts: steps, network re-runs, losses per round, seconds.
    """

    body: BodyFit
    gaussians: Gaussians
    report: dict


@dataclass(frozen=True)
class SideTargets:
    """The avatar seen from the body's sides (one round's targets).

    Attributes:
        cameras: 2 `Cameras` (left, right) with `viewmats [2, 4, 4]` from the input camera's optical frame.
        masks: `[2, H, W]` bool silhouettes; normals: `[2, 3, H, W]` unit normals in each camera's
            frame (0 outside the silhouette); scales: per view, the silhouette's height in pixels.
    """

    cameras: Cameras
    masks: np.ndarray
    normals: torch.Tensor
    scales: tuple[float, float]


def body_cameras(vertices: np.ndarray, up: np.ndarray, size: int, quarter_turns: tuple[int, ...]) -> Cameras:
    """Cameras at the input camera's distance from the body's centre, `quarter_turns` x 90° about
    `up [3]` from the input camera (1 and 3: the body's sides, 2: behind), looking at the centre, with
    a focal length that fits the body (`vertices [V, 3]`, optical frame) into `size` pixels square."""
    centre = body_centre(vertices)
    extent = float(np.linalg.norm(vertices - centre, axis=-1).max())
    dist = float(np.linalg.norm(centre))
    f = size * 0.5 * dist / (extent * 1.1)
    poses = turntable_poses(torch.from_numpy(centre), torch.from_numpy(np.asarray(up, np.float64)), torch.zeros(3, dtype=torch.float64), 4)
    return cameras_from_c2w_gl(poses[list(quarter_turns)], intrinsics(f, f, size / 2, size / 2), size, size)


def depth_normals(depth: torch.Tensor, valid: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Unit normals `[3, H, W]` (camera frame, facing the camera) of a depth map `depth [H, W]`
    (camera z, metres) by central differences of its back-projected points; 0 where `valid [H, W]`
    or a neighbour is not."""
    h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype) + 0.5, torch.arange(w, dtype=depth.dtype) + 0.5, indexing="ij")
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    p = torch.stack([x, y, depth])  # [3, H, W]
    du = torch.zeros_like(p)
    dv = torch.zeros_like(p)
    du[:, :, 1:-1] = p[:, :, 2:] - p[:, :, :-2]
    dv[:, 1:-1] = p[:, 2:] - p[:, :-2]
    n = torch.nn.functional.normalize(torch.linalg.cross(du, dv, dim=0), dim=0)
    n = torch.where((n * p).sum(0, keepdim=True) > 0, -n, n)  # face the camera
    ok = valid.clone()
    ok[:, 1:-1] &= valid[:, 2:] & valid[:, :-2]
    ok[1:-1] &= valid[2:] & valid[:-2]
    ok[[0, -1]] = False
    ok[:, [0, -1]] = False
    return torch.where(ok[None], n, torch.zeros_like(n))


def side_targets(avatar: Gaussians, vertices: np.ndarray, up: np.ndarray, config: RefineBodyConfig) -> SideTargets:
    """Render `avatar` (optical frame) from the side `body_cameras` of the body `vertices [V, 3]`: its
    silhouettes and normal maps."""
    cams = body_cameras(vertices, up, config.side_size, (1, 3))
    with torch.no_grad():
        out = rasterize(avatar.to(dtype=torch.float32), cams)
    masks = out.alpha[..., 0] > config.alpha_threshold  # [2, H, W]
    normals = torch.stack([depth_normals(out.depth[i, ..., 0], masks[i], cams.K[i]) for i in range(2)])
    scales = tuple(float(max(np.ptp(np.nonzero(m.any(1))[0]) + 1, 1)) if m.any() else 1.0 for m in masks.numpy())
    return SideTargets(cams, masks.numpy(), normals, scales)  # type: ignore[arg-type]


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """`[V, 3]` area-weighted unit vertex normals of a mesh (`vertices [V, 3]`, counter-clockwise `faces [F, 3]`)."""
    tri = vertices[faces]
    fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    n = torch.zeros_like(vertices).index_add(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return torch.nn.functional.normalize(n, dim=-1)


def _mask_energy(uv: torch.Tensor, target, scale: float, sigma: float) -> torch.Tensor:
    """The fit's two-sided silhouette energy of projected samples `uv [N, 2]` (px) against `target`."""
    d_out, d_cover = silhouette_distances(uv, target)
    e = gmof((d_out / scale).square(), sigma).mean()
    if len(d_cover):
        e = e + gmof((d_cover / scale).square(), sigma).mean()
    return e / sigma**2


def _normal_energy(points: torch.Tensor, normals: torch.Tensor, uv: torch.Tensor, target: torch.Tensor,
                   cell_px: float, thickness_m: float) -> torch.Tensor:
    """`1 - cos` between the visible body samples' normals (`points`, `normals [N, 3]` in the side
    camera's frame, pixels `uv [N, 2]`) and the avatar's normal map `target [3, H, W]` under them."""
    h, w = target.shape[-2:]
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1)[None, None]
    t = torch.nn.functional.grid_sample(target[None], grid, align_corners=False)[0, :, 0].T  # [N, 3]
    keep = visible(points, uv, cell_px, thickness_m) & (normals[:, 2].detach() < 0) & (t.norm(dim=-1) > 0.5)
    if not bool(keep.any()):
        return points.new_zeros(())
    t = torch.nn.functional.normalize(t[keep].detach(), dim=-1)
    return (1 - (normals[keep] * t).sum(-1)).mean()


def refine_body(
    perception: Perception,
    fit: BodyFit,
    avatar: Gaussians,
    body_model: BodyModel,
    predict: Callable[[np.ndarray], Gaussians],
    config: RefineBodyConfig | None = None,
    fit_config: FitConfig | None = None,
) -> Refinement:
    """Refine `fit` against `avatar`'s side views, re-running the network `predict` on the way.

    Args:
        perception: the image's perception (mask, landmarks, K) the fit was made from.
        fit: the body fit (camera frame); avatar: the network's Gaussians made with `fit` (same frame).
        body_model: the model `fit` was made with.
        predict: body vertices `[V, 3]` (camera frame) -> the network's avatar for them.
        config: weights and schedule; fit_config: the fit's keypoint/silhouette settings (robust scale,
            landmark visibility, contour points).
    Returns:
        The refined fit and the last usable avatar; when a re-run's avatar fails `check_avatar`
        the refinement stops there and keeps the previous body and avatar (the report says so).
    """
    cfg, fcfg = config or RefineBodyConfig(), fit_config or FitConfig()
    start = time.perf_counter()
    K = torch.as_tensor(perception.K, dtype=torch.float32)
    tg = fit_targets(perception, body_model.keypoint_names, fcfg)
    front = silhouette_target(perception.mask, cfg.contour_points)
    samples = body_model.surface_samples(cfg.surface_points)
    faces = body_model.faces
    up = body_up(skeleton(fit))

    p0 = fit.params.detach()
    R0 = roma.rotvec_to_rotmat(p0.global_orient[0])
    delta = torch.zeros(3, requires_grad=True)
    transl, pose, shape = (t.clone().requires_grad_(True) for t in (p0.transl, p0.pose, p0.shape))
    opt = torch.optim.Adam([{"params": [delta, pose, shape], "lr": cfg.lr}, {"params": [transl], "lr": cfg.lr / 3}])

    ray = torch.nn.functional.normalize(p0.transl[0], dim=0)

    def params() -> BodyParams:
        t = transl
        if cfg.hold_distance:  # only moves across the pelvis's viewing ray
            t = transl - ((transl - p0.transl) @ ray)[..., None] * ray
        return BodyParams(roma.rotmat_to_rotvec(roma.rotvec_to_rotmat(delta) @ R0)[None], t, pose, shape)

    rounds, best_body, best_avatar, steps, stopped = [], fit, avatar, 0, None
    targets_avatar = avatar
    n_rounds = math.ceil(cfg.iterations / cfg.rerun_every) if cfg.iterations else 0
    for r in range(n_rounds):
        sides = side_targets(targets_avatar, best_body.vertices, up, cfg)
        side_sil = [silhouette_target(m, cfg.contour_points) for m in sides.masks]
        R_side, t_side = sides.cameras.viewmats[:, :3, :3], sides.cameras.viewmats[:, :3, 3]
        losses = {}
        for _ in range(min(cfg.rerun_every, cfg.iterations - steps)):
            out = body_model(params())
            verts = out.vertices[0]
            pts, nrm = verts[samples], vertex_normals(verts, faces)[samples]
            kp_r2 = (project_points(out.keypoints[0], K, min_depth=1e-4) - tg.uv).square().sum(-1) / tg.scale**2
            terms = {
                "keypoints": (tg.weight * gmof(kp_r2, fcfg.robust_sigma)).sum() / tg.weight.sum().clamp(min=1e-6) / fcfg.robust_sigma**2,
                "front_mask": _mask_energy(project_points(pts, K, min_depth=1e-4), front, tg.scale, cfg.robust_sigma),
                "side_mask": pts.new_zeros(()),
                "normal": pts.new_zeros(()),
            }
            for v in range(2):
                pc = pts @ R_side[v].T + t_side[v]
                uv = project_points(pc, sides.cameras.K[v], min_depth=1e-4)
                terms["side_mask"] = terms["side_mask"] + _mask_energy(uv, side_sil[v], sides.scales[v], cfg.robust_sigma) / 2
                terms["normal"] = terms["normal"] + _normal_energy(
                    pc, nrm @ R_side[v].T, uv, sides.normals[v], cfg.visibility_cell * cfg.side_size, cfg.visibility_thickness_m) / 2
            loss = (cfg.keypoint_weight * terms["keypoints"] + cfg.front_mask_weight * terms["front_mask"]
                    + cfg.side_mask_weight * terms["side_mask"] + cfg.normal_weight * terms["normal"]
                    + cfg.pose_prior_weight * body_model.pose_prior(pose).sum()
                    + cfg.shape_prior_weight * body_model.shape_prior(shape).sum())
            if not losses:
                losses = {f"{k}_start": round(float(t.detach()), 5) for k, t in terms.items()}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        losses |= {f"{k}_end": round(float(t.detach()), 5) for k, t in terms.items()}
        with torch.no_grad():
            p = params().detach()
            body = make_fit(body_model, p, body_model(p), tg, perception.K, perception.mask, fit.iterations + steps,
                             fit.seconds + time.perf_counter() - start, fit.distance_sigma_m)
            new_avatar = predict(body.vertices)
        check = check_avatar(new_avatar, body.vertices)
        rounds.append({"steps": steps, **losses, "network": check.reason})
        if not check.ok:
            stopped = f"the network's avatar after {steps} steps was unusable ({check.reason}); kept the body and avatar before it"
            break
        best_body, best_avatar, targets_avatar = replace(body, warm_started=fit.warm_started), new_avatar, new_avatar

    report = {
        "steps": steps, "network_runs": len(rounds), "rounds": rounds,
        "silhouette_iou_before": fit.silhouette_iou, "silhouette_iou_after": best_body.silhouette_iou,
        "keypoint_error_px_before": fit.keypoint_error_px, "keypoint_error_px_after": best_body.keypoint_error_px,
        "seconds": time.perf_counter() - start,
    }
    if stopped:
        report["stopped"] = stopped
    return Refinement(best_body, best_avatar, report)


class RefineBodyStage(Stage):
    """`refine_body` after the `coarse` stage, re-running its network.

    Args:
        coarse: the `coarse` component, whose network (on its device, in its precision) is re-run.
        body_model: the model the `fit_body` stage fits with.
        config: the refinement's weights and schedule; fit_config: the fit's (keypoint settings).
    """

    name = "refine_body"
    needs = ("perception", "body", "gaussians")
    provides = ("body", "gaussians")

    def __init__(self, coarse: CoarseStage, body_model: BodyModel, config: RefineBodyConfig = RefineBodyConfig(),
                 fit_config: FitConfig = FitConfig()) -> None:
        self.coarse, self.body_model, self.config, self.fit_config = coarse, body_model, config, fit_config

    def run(self, frame: Frame) -> Frame:
        used = frame.reports.get("coarse", {}).get("used")
        if used != "network":
            # The targets would be the fallback's avatar and every re-run would fail the same check.
            frame.reports[self.name] = {"skipped": f"the coarse stage's avatar is not the network's (used: {used})"}
            frame.warnings.append("refine_body: skipped, the coarse stage fell back from the network")
            return frame
        per, image = frame.perception, frame.request.image

        c = self.coarse

        def predict(vertices: np.ndarray) -> Gaussians:  # as the coarse stage runs it
            with torch.inference_mode(), torch.autocast(c.device.type, dtype=torch.float16, enabled=c.half):
                return predict_avatar(c.model, image, per.mask, per.K, vertices)

        out = refine_body(per, frame.body, frame.gaussians, self.body_model, predict, self.config, self.fit_config)
        frame.reports[self.name] = out.report
        if "stopped" in out.report:
            frame.warnings.append(f"refine_body: {out.report['stopped']}")
        return update(frame, body=out.body, gaussians=out.gaussians)
