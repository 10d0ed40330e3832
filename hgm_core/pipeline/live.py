"""Live mode on the worker: keyframes bound to the body, then a pose per camera frame (docs/live_stream.md).

    live = LivePipeline(Reconstructor.from_config(config))
    key = live.run(ReconstructionRequest(image, stream="cam", bind=True)).keyframe   # canonical avatar + binding
    pose = live.track(ReconstructionRequest(next_image, stream="cam"))              # bone transforms [J, 4, 4]

A worker serves `run` (reconstruct jobs, keyframes) and `track` (track jobs) on two threads
(`hgm_core.serve.worker`), so a keyframe never holds up the frames tracked meanwhile. The two share
only the per-stream table of keyframes, behind a lock: `run` records a keyframe's body fit and
binding id, `track` makes the stream's tracker from it on its first frame. Trackers, the landmark
estimators (one per stream, in mediapipe's video mode: the person detector runs only when the
landmarks lose the person) and the trackers' body model (none of them thread-safe) live on the
track thread only, built when first needed, so a keyframe never waits for them. A tracker that
reads landmarks only (`needs_mask` False: the `PoseTracker`) gets `perceive_landmarks` from an
estimator without segmentation (no person mask per frame: ~4 ms less; a given mask is not used).
When the person seen in the last frame is not found, the estimator runs again on the same frame
(the video mode then runs its person detector), so a person who jumped is found in that frame
instead of being "lost" for one frame (which costs a keyframe).

Tracking a stream starts from its latest keyframe: the body fitted with the keyframe's avatar
freezes shape and scale, so the bone transforms of every tracked pose skin that keyframe's
canonical avatar. `start_tracker` is the one place that makes a stream's tracker: the camera-rate
`hgm_core.body.pose_tracker.PoseTracker` for anny (landmarks + a few Levenberg-Marquardt steps on
the reduced body), else `WarmFitTracker`, the warm-started full body fit (~10x slower).
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from hgm_core.body.base import BodyModel
from hgm_core.body.fit import BodyFit, FitConfig, fit_body, mirror_landmarks, skeleton
from hgm_core.body.pose_tracker import PoseTrackConfig, PoseTracker
from hgm_core.body.skinning import bind_body
from hgm_core.perception.perceive import Landmarks, Perception, PoseEstimator, perceive, perceive_landmarks
from hgm_core.pipeline.reconstructor import Reconstructor, load_body_model
from hgm_core.types import CropTooSmallError, Keyframe, NoPersonError, Reconstruction, ReconstructionRequest, Skeleton, TrackedPose


TRACKERS = ("pose", "warm_fit")


@dataclass(frozen=True)
class LiveConfig:
    """How streams are tracked between keyframes.

    Attributes:
        tracker: "pose" (`PoseTracker`, anny only; other body models use "warm_fit") or "warm_fit".
        pose: the `PoseTracker`'s settings.
        warm_iterations: steps of the warm-started body fit per tracked frame (`WarmFitTracker`);
            fewer than the pipeline's own warm fit (40) because consecutive camera frames are close.
        max_streams: streams tracked at once; the least recently keyframed one is dropped beyond this.
    """

    tracker: str = "pose"
    pose: PoseTrackConfig = field(default_factory=PoseTrackConfig)
    warm_iterations: int = 20
    max_streams: int = 16

    def __post_init__(self) -> None:
        if self.tracker not in TRACKERS:
            raise ValueError(f"LiveConfig.tracker must be one of {TRACKERS}, got {self.tracker!r}")


class StreamTracker(Protocol):
    """One stream's tracker: started from a keyframe's body fit, then fed each frame's perception
    (a full `Perception` with the person mask when `needs_mask`, else `Landmarks`)."""

    needs_mask: bool

    def track(self, perception: Perception | Landmarks | None, stamp_s: float) -> TrackedPose:
        """The pose in this frame (binding id left 0: the pipeline sets it), or a "lost" pose with
        its reason; `perception` None: nobody was found in the frame; `stamp_s`: the frame's time."""
        ...


class PoseTrackerStream:
    """`StreamTracker` over `hgm_core.body.pose_tracker.PoseTracker` (the camera-rate tracker)."""

    needs_mask = False

    def __init__(self, keyframe_fit: BodyFit, body_model: BodyModel, config: PoseTrackConfig) -> None:
        self.body_model = body_model
        self.bones = tuple((p, c) for c, p in enumerate(body_model.joint_parents) if p >= 0)
        self._tracker = PoseTracker(body_model, config)
        self._tracker.start(keyframe_fit)

    def track(self, perception: Perception | Landmarks | None, stamp_s: float) -> TrackedPose:
        r = self._tracker.track(perception, stamp_s)
        timings = {f"tracker_{k}": v for k, v in r.timings.items()}
        if r.state != "tracking":
            return TrackedPose("lost", reason=r.reason, timings=timings)
        return TrackedPose("tracking", bone_transforms=r.bone_transforms.numpy(),
                           skeleton=Skeleton(r.joints.numpy(), self.body_model.joint_names, self.bones), timings=timings,
                           info={"keypoint_error": r.keypoint_error, "reinitialised": r.reinitialised})


class WarmFitTracker:
    """Interim tracker: each frame is a body fit warm-started from the previous frame's, shape frozen.

    A frame whose warm fit fails its own check (the body moved too far, or the fit diverged: the
    fit falls back to a cold fit, which would change the shape) is "lost" and the last pose is kept.
    """

    needs_mask = True  # the fit's silhouette term

    def __init__(self, keyframe_fit: BodyFit, body_model: BodyModel, fit_config: FitConfig) -> None:
        self.body_model = body_model
        self.fit_config = replace(fit_config, warm_shape=False)
        self._last = keyframe_fit

    def track(self, perception: Perception | None, stamp_s: float) -> TrackedPose:
        if perception is None:
            return TrackedPose("lost", reason="no person in the frame")
        fit = fit_body(perception, None, self.body_model, config=self.fit_config, init=self._last.params)
        if not fit.warm_started:
            return TrackedPose("lost", reason="the pose moved too far from the last frame's to follow it",
                               info={"fit": fit.residuals()})
        self._last = fit
        with torch.no_grad():
            bones = self.body_model.bone_transforms(fit.params)[0].numpy()
        return TrackedPose("tracking", bone_transforms=bones, skeleton=skeleton(fit), info={"fit": fit.residuals()})


def start_tracker(keyframe_fit: BodyFit, body_model: BodyModel, fit_config: FitConfig, config: LiveConfig) -> StreamTracker:
    """The tracker of a stream from its keyframe's body fit (the one place a tracker is chosen)."""
    if config.tracker == "pose" and body_model.name == "anny":
        return PoseTrackerStream(keyframe_fit, body_model, config.pose)
    return WarmFitTracker(keyframe_fit, body_model, replace(fit_config, warm_iterations=config.warm_iterations))


@dataclass
class _Stream:
    """A stream's latest keyframe: its body fit and binding id, and the tracker `track` made from it."""

    fit: BodyFit
    binding_id: int
    tracker: StreamTracker | None = None
    person_seen: bool = True  # the person was found in the stream's last tracked frame


class LivePipeline:
    """Keyframes (`run` with `request.bind`) and per-frame tracking (`track`) over one `Reconstructor`.

    `run` and `track` may run on two threads at once (one each); see the module docstring.
    """

    def __init__(self, reconstructor: Reconstructor, config: LiveConfig | None = None) -> None:
        self.reconstructor = reconstructor
        self.config = config or LiveConfig()
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}  # oldest keyframe first
        self._ids = random.Random()  # binding ids: random so that a restarted worker does not repeat its predecessor's
        self._estimators: OrderedDict[str, PoseEstimator] = OrderedDict()  # per stream, the track thread's
        self._track_body: BodyModel | None = None  # the trackers', likewise

    def run(self, request: ReconstructionRequest) -> Reconstruction:
        """`Reconstructor.run`; with `request.bind` also the keyframe (the avatar bound to its body),
        from which `track` then follows `request.stream` (a "bind" timing is added)."""
        frame, timings = self.reconstructor.run_frame(request)
        recon = self.reconstructor.result(frame, timings)
        if not request.bind:
            return recon
        t0 = time.perf_counter()
        body = self.reconstructor.stages["fit_body"].body_model
        gaussians = frame.gaussians if frame.gaussians.sh is None else replace(frame.gaussians, sh=None)
        binding = bind_body(gaussians, body, frame.body.params)
        with torch.no_grad():
            bones = body.bone_transforms(frame.body.params)[0].numpy()
        binding_id = self._ids.randrange(1, 2**32)
        recon.keyframe = Keyframe(binding.canonical.to_raw().numpy(), binding.to_arrays(binding_id, body.name), bones)
        with self._lock:
            self._streams.pop(request.stream, None)
            self._streams[request.stream] = _Stream(frame.body, binding_id)
            while len(self._streams) > self.config.max_streams:
                self._streams.pop(next(iter(self._streams)))
        recon.timings["bind"] = time.perf_counter() - t0
        if frame.gaussians.sh is not None:
            recon.info.setdefault("warnings", []).append("the keyframe's avatar lost its higher-order SH colour (skinning cannot rotate it)")
        return recon

    def track(self, request: ReconstructionRequest) -> TrackedPose:
        """The pose of `request.stream`'s person in `request.image`, tracked from the stream's keyframe.

        "lost" (not an exception) when the stream has no keyframe here, no person is found, or the
        tracker loses the body. Raises `BadInputError` for a malformed image, mask or camera.
        """
        with self._lock:
            stream = self._streams.get(request.stream)
        if stream is None:
            return TrackedPose("lost", reason=f"no keyframe of stream {request.stream!r} on this worker")
        if stream.tracker is None:  # the keyframe's first frame (a newer keyframe replaces the whole entry)
            if self._track_body is None:
                self._track_body = load_body_model(self.reconstructor.config.body)
            stream.tracker = start_tracker(stream.fit, self._track_body, self.reconstructor.config.body.fit, self.config)
        needs_mask = stream.tracker.needs_mask
        estimator = self._estimator(request.stream, needs_mask)
        t0 = time.perf_counter()
        config = self.reconstructor.config.perception

        def look() -> Perception | Landmarks:
            if needs_mask:
                return perceive(request.image, estimator, mask=request.mask, camera=request.camera, config=config)
            return perceive_landmarks(request.image, estimator, camera=request.camera, config=config)

        try:
            try:
                perception, missing = look(), ""
            except NoPersonError:
                if not stream.person_seen:
                    raise
                # The video-mode estimator looks where the person was in the last frame; one who
                # moved far since (a jump, dropped frames) is missed there, and the estimator's next
                # call runs the person detector: make that call on this frame.
                perception, missing = look(), ""
        except (NoPersonError, CropTooSmallError) as e:
            perception, missing = None, str(e)
        stream.person_seen = perception is not None
        if perception is not None and stream.fit.mirrored:
            # The keyframe's fit read the landmarks the other way round (its depth said so): so must the tracker.
            perception = mirror_landmarks(perception)
        t1 = time.perf_counter()
        # The filter's clock: the frame's own stamp; without one, when the job started here (frames
        # reach the worker at the camera's spacing, give or take the network).
        pose = stream.tracker.track(perception, time.monotonic() if request.stamp is None else request.stamp)
        t2 = time.perf_counter()
        reason = f"{pose.reason}: {missing}" if missing and pose.state == "lost" else pose.reason
        return replace(pose, binding_id=stream.binding_id, reason=reason,
                       timings={**pose.timings, "perceive": t1 - t0, "track": t2 - t1})

    def _estimator(self, stream: str, segmentation: bool) -> PoseEstimator:
        """The stream's video-mode landmark estimator, with the person mask or not (track thread;
        the least recently used of more than `max_streams` is closed)."""
        estimator = self._estimators.pop(stream, None)
        if estimator is not None and estimator.segmentation != segmentation:
            estimator.close()
            estimator = None
        estimator = estimator or PoseEstimator(video=True, segmentation=segmentation)
        self._estimators[stream] = estimator
        while len(self._estimators) > self.config.max_streams:
            self._estimators.popitem(last=False)[1].close()
        return estimator
