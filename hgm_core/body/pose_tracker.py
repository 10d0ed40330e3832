"""`PoseTracker`: the body's pose at camera rate, between keyframe reconstructions (issue #12).

    tracker = PoseTracker(body)                       # an AnnyBody; one tracker per camera stream
    tracker.start(keyframe_fit)                       # BodyFit (or batch-1 BodyParams): shape and size frozen
    result = tracker.track(landmarks, stamp_s)        # every frame: perceive_landmarks (or perceive); None = nobody found
    if result.state == "tracking":
        posed = skinning.pose(binding, result.bone_transforms)
    else:                                             # "lost": reconstruct a new keyframe, then start() again
        ...

Per frame (`track`), from the frame's BlazePose landmarks only (no mask, no mesh; so
`perception.perceive_landmarks`, which skips the segmentation, is enough):
1. Checks: no landmarks, or fewer than `min_torso_landmarks` of the shoulders and hips visible,
   is "lost" at once (no solve on a person who is not there).
2. Initialisation: while tracking, the previous frame's solution (the keyframe's after `start`).
   After a loss, analytically from the landmarks: the body's orientation by Kabsch of the model's
   torso onto BlazePose's metric torso, its position by linear least squares on the 2D torso
   keypoints with that orientation (the projection equations are linear in the translation), the
   keyframe's pose with each upper and lower limb turned onto BlazePose's 3D limb direction; then
   more solver steps (`reinit_iterations`).
3. Solve: a few Levenberg-Marquardt steps on `AnnyKinematics` (anny with the keyframe's shape held,
   20 joints, exact) over orientation, translation and the 57 joint angles. Residuals: the 2D
   keypoints (Geman-McClure, written as a residual, in person sizes), the hip-centred metric
   3D landmarks (limb depth), the anatomical joint limits, and a pull to the previous frame (it
   damps the landmarks' noise where the image constrains the pose weakly). Jacobians by finite
   differences, all 64 perturbed bodies in one batch.
4. Check: a mean 2D error above `max_keypoint_error` person sizes after the steps from the last
   pose re-initialises from the landmarks (step 2) and solves again; above it still is "lost" (a
   wild pose is never returned).
5. Filter: a One-Euro filter per parameter group (orientation on the rotation group, translation,
   joint angles) against landmark jitter, then joints and the 104 bone transforms of the filtered
   body (the skinning input, `hgm_core.body.skinning.pose`).

The weights, the pull to the previous frame and the filter were chosen on real BlazePose output of
a validation sequence (`hgm datagen --sequence`, seed 5555 subject 2): 50 mm pelvis-aligned MPJPE
and 2.5 m/s^2 mean joint acceleration (truth 2.3) against 58 mm and 4.2 m/s^2 before. With exact
landmarks the pull to the previous frame costs up to ~6 cm along the depth of fast-moving limbs.

Only anny (the default body model) has the reduced chain; other models raise `ValueError`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import roma
import torch

from hgm_core.body.anny_reduced import AnnyKinematics, ReducedAnny, rotvec_to_rotmat
from hgm_core.body.base import BodyModel, BodyParams
from hgm_core.body.fit import BLAZEPOSE_FOR_KEYPOINT, FACE, BodyFit, calibrated_uv
from hgm_core.camera import project_points
from hgm_core.perception.perceive import LANDMARK_NAMES, Landmarks, Perception

TRACKING, LOST = "tracking", "lost"
TORSO_LANDMARKS = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
LIMBS = (("left_hip", "left_knee"), ("right_hip", "right_knee"), ("left_knee", "left_ankle"), ("right_knee", "right_ankle"),
         ("left_shoulder", "left_elbow"), ("right_shoulder", "right_elbow"), ("left_elbow", "left_wrist"),
         ("right_elbow", "right_wrist"))
"""(joint, child) of the limbs the analytic initialisation lays along the 3D landmarks, parents first."""


@dataclass(frozen=True)
class PoseTrackConfig:
    """Settings of `PoseTracker` (units: metres, radians, seconds; image errors in person sizes, the
    longer side of the box of the visible landmarks).

    Attributes:
        iterations / reinit_iterations: solver steps per tracked frame / after an (analytic) re-initialisation.
        min_visibility: a landmark counts below this BlazePose visibility as unseen.
        min_torso_landmarks: fewer seen shoulders and hips than this is "lost".
        max_keypoint_error: a solved body whose visibility-weighted mean 2D error exceeds this many
            person sizes is "lost".
        keypoint_sigma: 2D residual scale (person sizes); robust_sigma: its Geman-McClure scale.
        face_weight: relative weight of the face keypoints (they pin the head, not the body).
        landmark_offset_scale: as `FitConfig.landmark_offset_scale` (BlazePose's calibrated 2D offsets
            from the body model's keypoints are taken off, so tracking agrees with the keyframe's fit).
        landmarks_3d_sigma: metres of the hip-centred 3D landmark residuals (0 drops the term).
        limit_sigma: radians of a joint-limit violation; rest_sigma: radians of the weak pull to rest.
        temporal_sigma: (orientation rad, translation m, joint angles rad) of the pull to the previous frame.
        damping: initial Levenberg-Marquardt damping (relative to the diagonal).
        fd_step: finite-difference step of the Jacobian.
        min_cutoff_hz / beta / d_cutoff_hz: One-Euro filter (`min_cutoff_hz = 0` turns filtering off);
            beta is per unit of parameter speed (rad/s or m/s).
        default_rate_hz: frame spacing assumed when `track` gets no timestamp.
    """

    iterations: int = 2
    reinit_iterations: int = 5
    min_visibility: float = 0.5
    min_torso_landmarks: int = 3
    max_keypoint_error: float = 0.08
    keypoint_sigma: float = 0.02
    robust_sigma: float = 0.1
    face_weight: float = 0.5
    landmark_offset_scale: float = 1.0
    landmarks_3d_sigma: float = 0.3
    limit_sigma: float = 0.05
    rest_sigma: float = 3.0
    temporal_sigma: tuple[float, float, float] = (0.3, 0.3, 0.15)
    damping: float = 1e-3
    fd_step: float = 1e-6
    min_cutoff_hz: float = 1.0
    beta: float = 3.0
    d_cutoff_hz: float = 1.0
    default_rate_hz: float = 15.0


@dataclass(frozen=True)
class TrackResult:
    """One frame of `PoseTracker.track`.

    Attributes:
        state: "tracking" or "lost".
        reason: why "lost" ("no_person", "low_visibility", "residual", "not_started"); "" while tracking.
        params: batch-1 `BodyParams` (camera frame; the keyframe's shape), None when lost.
        joints: `[20, 3]` float32 body joints (`AnnyBody.joint_names`, camera frame, metres), None when lost.
        bone_transforms: `[104, 4, 4]` float32 placed bone poses (`BodyModel.bone_transforms` layout,
            the input of `skinning.pose` and of the compact stream's frames), None when lost.
        keypoint_error: visibility-weighted mean 2D error of the solved (unfiltered) body, person sizes (NaN if not solved).
        reinitialised: this frame was solved from the analytic initialisation (after a loss, or
            because the steps from the previous frame's pose did not explain the landmarks).
        timings: seconds per step ("init", "solve", "filter", "output", "total").
    """

    state: str
    reason: str = ""
    params: BodyParams | None = None
    joints: torch.Tensor | None = None
    bone_transforms: torch.Tensor | None = None
    keypoint_error: float = math.nan
    reinitialised: bool = False
    timings: dict[str, float] = field(default_factory=dict)


class OneEuro:
    """One-Euro filter (Casiez et al. 2012) on `[D]` vectors; `delta(a, b)` is `b - a` in the
    parameter's own geometry and `step(x, d)` moves `x` by `d`, so rotations filter on the group."""

    def __init__(self, min_cutoff_hz: float, beta: float, d_cutoff_hz: float, delta=None, step=None) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff_hz, beta, d_cutoff_hz
        self.delta = delta or (lambda a, b: b - a)
        self.step = step or (lambda x, d: x + d)
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self.x = self.dx = None

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        if self.x is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return x
        d = self.delta(self.x, x)
        self.dx = self.dx + self._alpha(self.d_cutoff, dt) * (d / dt - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        self.x = self.step(self.x, self._alpha(cutoff, dt) * d)
        return self.x


def _rotation_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation vector (world axes) taking rotation vector `a` to `b`: log(R_b R_a^T)."""
    Ra, Rb = (roma.rotvec_to_rotmat(torch.as_tensor(v, dtype=torch.float64)) for v in (a, b))
    return roma.rotmat_to_rotvec(Rb @ Ra.T).numpy()


def _rotation_step(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    R = roma.rotvec_to_rotmat(torch.as_tensor(d, dtype=torch.float64)) @ roma.rotvec_to_rotmat(torch.as_tensor(x, dtype=torch.float64))
    return roma.rotmat_to_rotvec(R).numpy()


@dataclass(frozen=True)
class _Targets:
    """One frame's landmarks on the model's keypoints (float64)."""

    uv: torch.Tensor  # [K, 2] px
    weight: torch.Tensor  # [K] visibility x per-keypoint weight, 0 = unused
    xyz: torch.Tensor  # [K, 3] BlazePose metric landmarks, hip-centred, camera axes
    scale: float  # person size in the image (px): the longer side of the visible landmarks' box
    torso_seen: int
    visibility: np.ndarray  # [33] BlazePose visibility of every landmark
    landmarks_3d: torch.Tensor  # [33, 3] every metric landmark


class PoseTracker:
    """Per-stream camera-rate pose tracker (module docstring). Not thread-safe: one per stream."""

    def __init__(self, body: BodyModel, config: PoseTrackConfig | None = None) -> None:
        reduced = body.sampled(1)
        if not isinstance(reduced, ReducedAnny):
            raise ValueError(f"the pose tracker needs anny's reduced chain; {body.name} has none")
        self.body, self.reduced = body, reduced
        self.config = config or PoseTrackConfig()
        names = body.keypoint_names
        self._kp = [k for k, n in enumerate(names) if n in BLAZEPOSE_FOR_KEYPOINT]
        self._lm = [LANDMARK_NAMES.index(BLAZEPOSE_FOR_KEYPOINT[names[k]]) for k in self._kp]
        self._kp_names = [names[k] for k in self._kp]
        cfg = self.config
        self._kp_weight = torch.tensor([cfg.face_weight if names[k] in FACE else 1.0 for k in self._kp], dtype=torch.float64)
        self._hips = [self._kp.index(names.index(n)) for n in ("left_hip", "right_hip")]
        self._torso = [self._kp.index(names.index(n)) for n in TORSO_LANDMARKS]
        limits = body.joint_limits
        self._limit_frames, self._limit_lo, self._limit_hi = (t.double() for t in (limits.frames, limits.lo, limits.hi))
        self._kin: AnnyKinematics | None = None
        self._shape: torch.Tensor | None = None
        self._keyframe_pose: torch.Tensor | None = None
        self._theta: torch.Tensor | None = None  # [63] = orientation rotvec, transl, pose of the last solve
        self._stamp: float | None = None
        self._filters = self._make_filters()

    # ------------------------------------------------------------------------------------------ API

    @property
    def state(self) -> str:
        """"tracking" after a successfully tracked frame, else "lost" (also before `start`)."""
        return TRACKING if self._theta is not None else LOST

    def start(self, keyframe: BodyFit | BodyParams, perception: Perception | Landmarks | None = None,
              stamp_s: float | None = None) -> TrackResult | None:
        """Freeze the keyframe's shape and size and track from its pose.

        Args:
            keyframe: the keyframe's body fit (or its batch-1 `BodyParams`), camera frame.
            perception: optionally the keyframe's own frame, tracked at once (its result is returned).
        """
        params = keyframe.params if isinstance(keyframe, BodyFit) else keyframe
        if params.pose.shape != (1, self.body.pose_dim) or params.shape.shape != (1, self.body.shape_dim):
            raise ValueError(f"the keyframe must be batch-1 {self.body.name} parameters")
        self._shape = params.shape.detach().float().clone()
        self._kin = AnnyKinematics.build(self.reduced, self._shape)
        self._keyframe_pose = params.pose.detach().double()[0].clone()
        self._theta = torch.cat([params.global_orient[0], params.transl[0], params.pose[0]]).detach().double()
        self._stamp = None
        for f in self._filters:
            f.reset()
        return None if perception is None else self.track(perception, stamp_s)

    def track(self, perception: Perception | Landmarks | None, stamp_s: float | None = None) -> TrackResult:
        """The body in this frame (module docstring). `perception` None means no person was found;
        `stamp_s` is the frame's time in seconds (for the filter; `default_rate_hz` spacing if None)."""
        t0 = time.perf_counter()
        cfg = self.config
        if self._kin is None:
            return TrackResult(LOST, "not_started")
        if perception is None:
            return self._lose("no_person", t0)
        tg = self._targets(perception)
        if tg.torso_seen < cfg.min_torso_landmarks:
            return self._lose("low_visibility", t0)
        K = torch.as_tensor(np.asarray(perception.K), dtype=torch.float64)
        # A stamp that does not advance (a replayed recording looping, a camera clock reset) is not
        # a burst of frames 1 ms apart: it gets the default spacing too.
        fresh = stamp_s is not None and self._stamp is not None and stamp_s > self._stamp
        dt = max(stamp_s - self._stamp, 1e-3) if fresh else 1.0 / cfg.default_rate_hz
        reinit = self._theta is None
        theta = self._initialise(tg, K) if reinit else self._theta.clone()
        t1 = time.perf_counter()
        theta, error = self._solve(theta, tg, K, cfg.reinit_iterations if reinit else cfg.iterations, temporal=not reinit)
        if not error <= cfg.max_keypoint_error and not reinit:
            # The body moved too far for a few steps from the last pose (a fast move, dropped
            # frames, or the first frame after a keyframe taken seconds ago): start again from the
            # landmarks before calling it lost, so a stale start never costs a keyframe.
            reinit = True
            for f in self._filters:
                f.reset()
            theta, error = self._solve(self._initialise(tg, K), tg, K, cfg.reinit_iterations, temporal=False)
        t2 = time.perf_counter()
        if not error <= cfg.max_keypoint_error:
            return self._lose("residual", t0, error)
        self._theta = theta
        self._stamp = stamp_s if stamp_s is not None else (self._stamp or 0.0) + dt
        smooth = self._filter(theta, dt)
        t3 = time.perf_counter()
        R = roma.rotvec_to_rotmat(smooth[None, :3])
        with torch.no_grad():
            joints, _ = self._kin.points(R, smooth[None, 3:6], smooth[None, 6:])
            bones = self._kin.bone_transforms(R, smooth[None, 3:6], smooth[None, 6:])
        params = BodyParams(smooth[None, :3].float(), smooth[None, 3:6].float(), smooth[None, 6:].float(), self._shape.clone())
        t4 = time.perf_counter()
        timings = {"init": t1 - t0, "solve": t2 - t1, "filter": t3 - t2, "output": t4 - t3, "total": t4 - t0}
        return TrackResult(TRACKING, "", params, joints[0].float(), bones[0].float(), error, reinit, timings)

    # ------------------------------------------------------------------------------------- internals

    def _lose(self, reason: str, t0: float, error: float = math.nan) -> TrackResult:
        self._theta = None
        for f in self._filters:
            f.reset()
        return TrackResult(LOST, reason, keypoint_error=error, timings={"total": time.perf_counter() - t0})

    def _make_filters(self) -> list[OneEuro]:
        c = self.config
        return [OneEuro(c.min_cutoff_hz, c.beta, c.d_cutoff_hz, _rotation_delta, _rotation_step),
                OneEuro(c.min_cutoff_hz, c.beta, c.d_cutoff_hz),
                OneEuro(c.min_cutoff_hz, c.beta, c.d_cutoff_hz)]

    def _filter(self, theta: torch.Tensor, dt: float) -> torch.Tensor:
        if self.config.min_cutoff_hz <= 0:
            return theta
        x = theta.numpy()
        parts = [f(x[s], dt) for f, s in zip(self._filters, (slice(0, 3), slice(3, 6), slice(6, None)))]
        return torch.from_numpy(np.concatenate(parts))

    def _targets(self, perception: Perception | Landmarks) -> _Targets:
        cfg = self.config
        lm2 = np.asarray(perception.landmarks_2d, np.float64)[self._lm]  # [K', 3]
        w, h = perception.image_size
        u, v, vis = lm2[:, 0], lm2[:, 1], lm2[:, 2]
        seen = (vis >= cfg.min_visibility) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        weight = torch.as_tensor(np.where(seen, vis, 0.0)) * self._kp_weight
        scale = float(max(np.ptp(u[seen]), np.ptp(v[seen]))) if seen.sum() >= 2 else 1.0  # also for a person lying down
        xyz = torch.as_tensor(np.asarray(perception.landmarks_3d, np.float64)[self._lm])
        # BlazePose's landmarks corrected to the body model's keypoints, as the keyframe's fit does.
        uv = calibrated_uv(lm2[:, :2], self._kp_names, seen, scale, cfg.landmark_offset_scale)
        return _Targets(torch.as_tensor(uv), weight, xyz, max(scale, 1.0), int(seen[self._torso].sum()),
                        np.asarray(perception.landmarks_2d)[:, 2], torch.as_tensor(np.asarray(perception.landmarks_3d, np.float64)))

    def _initialise(self, tg: _Targets, K: torch.Tensor) -> torch.Tensor:
        """Analytic start from the landmarks: Kabsch orientation of the torso, least-squares translation."""
        pose = self._keyframe_pose
        eye = torch.eye(3, dtype=torch.float64)[None]
        with torch.no_grad():
            _, body_kp = self._kin.points(eye, torch.zeros(1, 3, dtype=torch.float64), pose[None])
        model = body_kp[0, self._kp]  # [K', 3] body frame, pelvis at the origin
        torso = self._torso
        w = tg.weight[torso].clamp(min=1e-3)
        a = model[torso] - model[self._hips].mean(0)
        b = tg.xyz[torso] - tg.xyz[self._hips].mean(0)
        R = _kabsch(a, b, w)
        # u = fx (X + tx) / (Z + tz) + cx  <=>  fx tx - (u - cx) tz = (u - cx) Z - fx X  (and likewise for v).
        X = model @ R.T
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        du, dv = tg.uv[:, 0] - cx, tg.uv[:, 1] - cy
        zeros = torch.zeros_like(du)
        A = torch.cat([torch.stack([fx.expand_as(du), zeros, -du], -1), torch.stack([zeros, fy.expand_as(dv), -dv], -1)])
        rhs = torch.cat([du * X[:, 2] - fx * X[:, 0], dv * X[:, 2] - fy * X[:, 1]])
        torso_weight = torch.zeros_like(tg.weight)
        torso_weight[torso] = tg.weight[torso]  # the limbs are still in the keyframe's pose
        sw = torch.cat([torso_weight, torso_weight]).sqrt()[:, None]
        t = torch.linalg.lstsq(A * sw, rhs[:, None] * sw).solution[:, 0]
        return self._swing_limbs(torch.cat([roma.rotmat_to_rotvec(R), t, pose]), tg)

    def _swing_limbs(self, theta: torch.Tensor, tg: _Targets) -> torch.Tensor:
        """Turn each upper and lower limb of `theta [63]` (root first) by the smallest rotation that
        lays it along BlazePose's metric 3D limb, where both of its landmarks are seen."""
        theta = theta.clone()
        G = roma.rotvec_to_rotmat(theta[:3])
        names = self.body.joint_names
        lm = {n: i for i, n in enumerate(LANDMARK_NAMES)}
        for joint, child in LIMBS:
            a, b = BLAZEPOSE_FOR_KEYPOINT[joint], BLAZEPOSE_FOR_KEYPOINT[child]
            if min(tg.visibility[lm[a]], tg.visibility[lm[b]]) < self.config.min_visibility:
                continue
            c, k = names.index(joint), names.index(child)
            with torch.no_grad():
                R, _ = self._kin.chain(theta[None, 6:])
                joints, _ = self._kin.points(G[None], theta[None, 3:6], theta[None, 6:])
            now = joints[0, k] - joints[0, c]
            want = tg.landmarks_3d[lm[b]] - tg.landmarks_3d[lm[a]]
            swing = _swing(now, want)  # camera axes
            parent = G @ R[0, int(self._kin.parents[c])]  # body-frame axes of joint c's delta, in the camera
            D = roma.rotvec_to_rotmat(theta[6 + 3 * (c - 1) : 6 + 3 * c])
            theta[6 + 3 * (c - 1) : 6 + 3 * c] = roma.rotmat_to_rotvec(parent.T @ swing @ parent @ D)
        return theta

    def _residuals(self, theta: torch.Tensor, R0: torch.Tensor, tg: _Targets, K: torch.Tensor,
                   prior: torch.Tensor | None) -> torch.Tensor:
        """`[B, M]` residuals of bodies `theta [B, 63]` whose orientation is `exp(theta[:, :3]) R0`."""
        cfg = self.config
        R = rotvec_to_rotmat(theta[:, :3]) @ R0
        _, kp = self._kin.points(R, theta[:, 3:6], theta[:, 6:])
        kp = kp[:, self._kp]
        d = (project_points(kp, K, min_depth=1e-3) - tg.uv) / tg.scale  # [B, K', 2] person sizes
        # Geman-McClure as a residual: |r|^2 = w rho(e^2) / sigma^2 with rho(e^2) = e^2 s^2 / (e^2 + s^2),
        # so the least-squares cost is the robust one and the solver needs no reweighting state.
        s2 = cfg.robust_sigma**2
        scale = (tg.weight * s2 / (d.square().sum(-1) + s2)).sqrt() / cfg.keypoint_sigma
        parts = [(d * scale[..., None]).flatten(1)]
        if cfg.landmarks_3d_sigma > 0:
            centred = kp - kp[:, self._hips].mean(1, keepdim=True)
            ref = tg.xyz - tg.xyz[self._hips].mean(0)
            parts.append(((centred - ref) * tg.weight.sqrt()[:, None] / cfg.landmarks_3d_sigma).flatten(1))
        local = torch.einsum("bjk,jkl->bjl", theta[:, 6:].reshape(len(theta), -1, 3), self._limit_frames)  # JointLimits.local
        parts.append(((self._limit_lo - local).clamp(min=0) + (local - self._limit_hi).clamp(min=0)).flatten(1) / cfg.limit_sigma)
        parts.append(theta[:, 6:] / cfg.rest_sigma)
        if prior is not None:
            so, st, sp = cfg.temporal_sigma
            parts += [theta[:, :3] / so, (theta[:, 3:6] - prior[3:6]) / st, (theta[:, 6:] - prior[6:]) / sp]
        return torch.cat(parts, 1)

    def _solve(self, theta: torch.Tensor, tg: _Targets, K: torch.Tensor, iterations: int,
               temporal: bool) -> tuple[torch.Tensor, float]:
        """Levenberg-Marquardt from `theta [63]` (pulled towards it when `temporal`); returns the
        solution and its visibility-weighted mean 2D error (person sizes)."""
        cfg = self.config
        R0 = roma.rotvec_to_rotmat(theta[:3])
        x = torch.cat([torch.zeros(3, dtype=torch.float64), theta[3:]])  # orientation as an update on R0
        prior = x.clone() if temporal else None
        n = len(x)
        steps = torch.eye(n, dtype=torch.float64) * cfg.fd_step

        def evaluate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
            """Residuals `[M]`, finite-difference Jacobian `[M, n]` and cost at `x`, in one batch."""
            r = self._residuals(torch.cat([x[None], x[None] + steps]), R0, tg, K, prior)
            return r[0], (r[1:] - r[:1]).T / cfg.fd_step, float(r[0].square().sum())

        lam = cfg.damping
        with torch.no_grad():
            r, J, cost = evaluate(x)
            for _ in range(iterations):
                H = J.T @ J
                H = H + lam * torch.diag(H.diagonal()) + 1e-9 * torch.eye(n, dtype=torch.float64)
                candidate = x - torch.linalg.solve(H, J.T @ r)
                r_c, J_c, cost_c = evaluate(candidate)
                if cost_c < cost:
                    x, r, J, cost, lam = candidate, r_c, J_c, cost_c, max(lam / 3, 1e-7)
                else:  # uphill: stay, damp more
                    lam *= 10
            R = roma.rotvec_to_rotmat(x[:3]) @ R0
            _, kp = self._kin.points(R[None], x[None, 3:6], x[None, 6:])
            err = (project_points(kp[0, self._kp], K, min_depth=1e-3) - tg.uv).norm(dim=-1) / tg.scale
        w = tg.weight
        error = float((err * w).sum() / w.sum().clamp(min=1e-9))
        return torch.cat([roma.rotmat_to_rotvec(R), x[3:]]), error


def _swing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`[3, 3]` smallest rotation turning direction `a [3]` onto direction `b [3]`."""
    a, b = a / a.norm(), b / b.norm()
    axis = torch.linalg.cross(a, b)
    angle = torch.atan2(axis.norm(), (a * b).sum())
    return roma.rotvec_to_rotmat(axis / axis.norm().clamp(min=1e-12) * angle)


def _kabsch(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`[3, 3]` rotation R minimising `sum w |R a - b|^2` over centred point sets `a, b [N, 3]`."""
    H = (a * w[:, None]).T @ b
    U, _, Vt = torch.linalg.svd(H)
    d = torch.sign(torch.linalg.det(Vt.T @ U.T))
    D = torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=a.dtype))
    return Vt.T @ D @ U.T
