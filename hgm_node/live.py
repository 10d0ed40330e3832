"""The node's live mode (parameter `mode: live`, docs/live_stream.md): keyframes now and then, a
tracked pose for every frame, the keyframe avatar re-posed by numpy skinning (no torch here).

Per frame, two stages that overlap in time: on the node's job thread (`LiveMode.process`) a
`track` job on the worker returns the body's bone transforms (a few KB) and hands them over; on the
publish thread (`LiveMode._publish_loop`) the node skins the keyframe's canonical avatar with them
(`hgm_core.io.live_stream.skin_raw`) and publishes the posed avatar on `human_gaussians` with the
joints, plus the compact frame on `human_avatar/bones`. So frame k is skinned and published while
the worker tracks frame k+1. The hand-over holds one pose: a newer one replaces a pose not yet
taken (newest wins, counted in `skipped`), so nothing queues up. Keyframes run on a thread of their own
(`LiveMode._keyframe_loop`), concurrently with the frame path, at start, on `~/capture`, when
tracking is lost, and every `keyframe_period_s`; each publishes the canonical avatar and its
binding, latched, on `human_avatar/canonical` and `human_avatar/binding`.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, PointCloud2
from std_msgs.msg import Header

from hgm_core.io.live_stream import BindingArrays, encode_frame, skin_raw, write_binding
from hgm_core.serve.client import JobResult, WorkerError
from hgm_core.types import TrackedPose
from hgm_node.appearance import appearance_error
from hgm_node.conversions import gaussians_to_pointcloud2
from hgm_node.qos import LATCHED_QOS

CANONICAL_FRAME_ID = "hgm_avatar_canonical"
"""frame_id of `human_avatar/canonical`: the body model's canonical frame, which TF does not know."""
BINDING_FORMAT = "hgm-binding"
BONES_FORMAT = "hgm-bones"
"""`format` of the CompressedImage messages that carry the binding file and the compact frames."""


@dataclass(frozen=True)
class LiveInput:
    """One converted camera frame: `[H, W, 3]` uint8 image, `[3, 3]` K or None, `[H, W]` mask and
    depth or None (the depth goes to keyframes, whose body fit it makes metric), the source header,
    when the node received it and when the job thread took it (monotonic seconds)."""

    image: np.ndarray
    K: np.ndarray | None
    mask: np.ndarray | None
    depth: np.ndarray | None
    header: Header
    received: float
    started: float


@dataclass(frozen=True)
class LiveAvatar:
    """What the node skins with: the keyframe's canonical raw rows `[N, 14]` and their binding; and
    the appearance error of the keyframe's own avatar on its frame (`hgm_node.appearance`; None
    without intrinsics), against which the tracked frames' drift is measured."""

    canonical_raw: np.ndarray
    binding: BindingArrays
    appearance: float | None = None

    @property
    def binding_id(self) -> int:
        return self.binding.binding_id


@dataclass(frozen=True)
class FrameOutcome:
    """What became of one frame: state "tracking" (published), "lost", or "waiting" (no keyframe
    yet, or the pose belongs to a keyframe the node does not hold yet); `cloud_bytes`/`gaussians`
    of the published avatar; the track job's timings (+ the node's steps once published)."""

    state: str
    message: str
    cloud_bytes: int = 0
    gaussians: int = 0
    timings: dict[str, float] | None = None


@dataclass(frozen=True)
class _Tracked:
    """A tracked pose on its way from the job thread to the publish thread."""

    frame: LiveInput
    pose: TrackedPose
    avatar: LiveAvatar
    timings: dict[str, float]
    handed_over: float  # time.perf_counter()


class LiveMode:
    """Keyframe thread + per-frame tracking for one node (see the module docstring).

    Args:
        node: publishes `human_avatar/*` through it.
        link: the node's `WorkerLink` (`track`, `reconstruct(bind=True)`).
        stream: the worker-side stream name (the node's fully qualified name).
        stages: level of the keyframe reconstructions.
        publish_avatar: `(raw [N, 14], joints [J, 3] | None, bones, header) -> cloud bytes`, the node's
            own publisher of `human_gaussians` and the joints.
        report: `(frame, outcome)`, called once per frame with what became of it: from the job thread
            for "lost"/"waiting", from the publish thread once a tracked frame is out (not for a pose
            a newer one replaced before it was published).
        keyframe_period_s: also re-keyframe this often (0: never just for age).
        drift_threshold / drift_frames: re-keyframe when the appearance error of `drift_frames`
            published frames in a row exceeds the keyframe's own by `drift_threshold` (0: never);
            checked on the publish thread after the frame is out, for frames with intrinsics.
        retry_s: least time between a failed keyframe and the next attempt.
        logger: the node's logger (`get_logger()`).
    """

    def __init__(self, node: Node, link, *, stream: str, stages: str, publish_avatar: Callable,
                 report: Callable[[LiveInput, FrameOutcome], None] | None = None,
                 keyframe_period_s: float = 0.0, drift_threshold: float = 0.0, drift_frames: int = 5,
                 retry_s: float = 1.0, logger=None) -> None:
        self._link, self._stream, self._stages = link, stream, stages
        self._publish_avatar = publish_avatar
        self._report = report or (lambda frame, outcome: None)
        self._period_s, self._retry_s = keyframe_period_s, retry_s
        self._drift_threshold, self._drift_frames = drift_threshold, drift_frames
        self._drifted = 0  # published frames in a row whose appearance drifted (publish thread)
        self._drift_binding = 0  # the keyframe they were counted against
        self.last_drift: float | None = None  # the last checked frame's appearance error minus the keyframe's
        self._logger = logger or node.get_logger()
        self._pub_canonical = node.create_publisher(PointCloud2, "human_avatar/canonical", LATCHED_QOS)
        self._pub_binding = node.create_publisher(CompressedImage, "human_avatar/binding", LATCHED_QOS)
        self._pub_bones = node.create_publisher(CompressedImage, "human_avatar/bones", LATCHED_QOS)
        self._cond = threading.Condition()
        self._publish_lock = threading.Lock()  # orders the publish thread's and the keyframe thread's avatars
        self._avatar: LiveAvatar | None = None
        self._input: LiveInput | None = None  # newest converted frame (what a keyframe reconstructs)
        self._wanted: str | None = "start"  # why a keyframe is wanted, None when not
        self._fresh = 0  # requests that want a frame from after the request (~/capture), counted
        self._not_before = 0.0  # no keyframe attempt before this (monotonic), after a failure
        self._keyframed_at = -float("inf")
        self._last_published = -float("inf")  # `received` of the newest frame published on human_gaussians
        self._handover: _Tracked | None = None  # the newest tracked pose, until the publish thread takes it
        self._stopping = False
        self.keyframes = 0
        self.keyframe_failures = 0
        self.skipped = 0  # tracked poses a newer one replaced before they were published
        self.last_keyframe_s = 0.0
        self._threads = [threading.Thread(target=self._keyframe_loop, name="hgm-keyframes", daemon=True),
                         threading.Thread(target=self._publish_loop, name="hgm-live-publish", daemon=True)]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5.0)

    def request_keyframe(self, reason: str, *, fresh: bool = False) -> None:
        """Ask for a new keyframe from the next frame (a request already pending keeps its reason).
        `fresh`: a keyframe already running from an older frame does not count (~/capture)."""
        with self._cond:
            if self._wanted is None or fresh:
                self._wanted = reason
                self._not_before = 0.0
            self._fresh += fresh
            self._cond.notify_all()

    @property
    def avatar(self) -> LiveAvatar | None:
        with self._cond:
            return self._avatar

    # -- frame path (the node's job thread) --------------------------------------------------------

    def process(self, frame: LiveInput) -> FrameOutcome:
        """Track one frame and hand its pose to the publish thread, which skins and publishes it
        while the caller goes on to the next frame. Raises `WorkerError` when the job fails.

        Returns the outcome so far: "tracking" here means handed over. Timings (seconds) reported
        once published: the track job's, plus "wait" (received -> taken by the job thread),
        "convert" (taken -> here: pixels and intrinsics), "handover" (track reply -> publish
        thread), "skin", "publish" and, with the drift check, "appearance"."""
        t_in = time.monotonic()
        with self._cond:
            self._input = frame
            avatar = self._avatar
            if self._period_s > 0 and time.monotonic() - self._keyframed_at > self._period_s and self._wanted is None:
                self._wanted = "periodic"
            self._cond.notify_all()
        if avatar is None:
            return self._outcome(frame, FrameOutcome("waiting", "waiting for the first keyframe"))
        stamp = frame.header.stamp.sec + 1e-9 * frame.header.stamp.nanosec
        pose = self._link.track(frame.image, K=frame.K, mask=frame.mask, stream=self._stream, stamp=stamp)
        if pose.state == "lost":
            self.request_keyframe(f"tracking lost: {pose.reason}")
            return self._outcome(frame, FrameOutcome("lost", f"tracking lost ({pose.reason}); new keyframe requested", timings=pose.timings))
        if pose.binding_id != avatar.binding_id and (current := self.avatar) is not None and current.binding_id == pose.binding_id:
            avatar = current  # the keyframe's result landed here while the frame was being tracked
        if pose.binding_id != avatar.binding_id:
            # The worker tracks from a keyframe this node does not hold: usually one whose result is
            # on its way (then this request is a no-op), else one whose reply was lost: ask again.
            self.request_keyframe(f"the worker tracks keyframe {pose.binding_id}, this node holds {avatar.binding_id}")
            return self._outcome(frame, FrameOutcome("waiting", f"pose of keyframe {pose.binding_id}, holding {avatar.binding_id}",
                                                     timings=pose.timings))
        timings = {**pose.timings, "wait": frame.started - frame.received, "convert": t_in - frame.started}
        with self._cond:
            if self._handover is not None:
                self.skipped += 1
            self._handover = _Tracked(frame, pose, avatar, timings, time.perf_counter())
            self._cond.notify_all()
        return FrameOutcome("tracking", f"tracking (keyframe {avatar.binding_id}); handed to the publish thread", timings=timings)

    def _outcome(self, frame: LiveInput, outcome: FrameOutcome) -> FrameOutcome:
        self._report(frame, outcome)
        return outcome

    def _publish_loop(self) -> None:
        """Skin and publish the newest tracked pose (the publish thread)."""
        while True:
            with self._cond:
                while self._handover is None and not self._stopping:
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                tracked, self._handover = self._handover, None
            try:
                self._report(tracked.frame, self._skin_and_publish(tracked))
            except Exception as e:  # a bug here must not end the publish thread
                self._logger.error(f"publishing a tracked frame failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    def _skin_and_publish(self, tracked: _Tracked) -> FrameOutcome:
        pose, avatar = tracked.pose, tracked.avatar
        t0 = time.perf_counter()
        posed = skin_raw(avatar.canonical_raw, avatar.binding, pose.bone_transforms)
        t1 = time.perf_counter()
        skeleton = pose.skeleton
        cloud_bytes = self._publish(tracked.frame, posed, pose.bone_transforms, pose.binding_id,
                                    None if skeleton is None else skeleton.joints, () if skeleton is None else skeleton.bones)
        t2 = time.perf_counter()
        timings = {**tracked.timings, "handover": t0 - tracked.handed_over, "skin": t1 - t0, "publish": t2 - t1}
        if self._drift_threshold > 0:
            self._check_drift(tracked.frame, posed, avatar)
            timings["appearance"] = time.perf_counter() - t2
        return FrameOutcome("tracking", f"tracking (keyframe {avatar.binding_id})", cloud_bytes, len(posed), timings)

    def _publish(self, frame: LiveInput, raw: np.ndarray, transforms: np.ndarray, binding_id: int,
                 joints: np.ndarray | None, bones: tuple[tuple[int, int], ...]) -> int:
        """Publish the posed avatar `raw [N, 14]`, its joints and its compact frame, stamped like
        `frame`; nothing (0 bytes) when a newer frame is out already (the keyframe thread and the
        frame path both publish)."""
        header = Header(stamp=frame.header.stamp, frame_id=frame.header.frame_id)
        with self._publish_lock:  # not `_cond`: the job thread must not wait for a publish
            if frame.received < self._last_published:
                return 0
            self._last_published = frame.received
            cloud_bytes = self._publish_avatar(raw, joints, bones, header)
            self._pub_bones.publish(CompressedImage(header=header, format=BONES_FORMAT, data=encode_frame(transforms, binding_id)))
        return cloud_bytes

    def _check_drift(self, frame: LiveInput, posed: np.ndarray, avatar: LiveAvatar) -> None:
        """Count frames whose appearance drifted from the keyframe's; enough in a row ask for a keyframe."""
        if avatar.appearance is None or frame.K is None or avatar.binding_id != self.avatar.binding_id:
            return
        error = appearance_error(posed, frame.image, frame.K)
        if error is None:
            return
        if avatar.binding_id != self._drift_binding:  # a new keyframe: a new count
            self._drifted, self._drift_binding = 0, avatar.binding_id
        self.last_drift = error - avatar.appearance
        self._drifted = self._drifted + 1 if self.last_drift > self._drift_threshold else 0
        if self._drifted >= self._drift_frames:
            self._drifted = 0
            self.request_keyframe(f"appearance drift: colour error {error:.3f}, {avatar.appearance:.3f} at the keyframe")

    # -- keyframes (their own thread) ---------------------------------------------------------------

    def _keyframe_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._wanted is None or self._input is None
                                              or time.monotonic() < self._not_before):
                    self._cond.wait(0.1)
                if self._stopping:
                    return
                frame, reason, fresh = self._input, self._wanted, self._fresh
            try:
                self._keyframe(frame, reason, fresh)
            except Exception as e:  # a bug here must not end the keyframe thread
                self._failed(f"keyframe failed unexpectedly: {type(e).__name__}: {e}")

    def _keyframe(self, frame: LiveInput, reason: str, fresh: int) -> None:
        t0 = time.monotonic()
        try:
            result = self._link.reconstruct(frame.image, K=frame.K, mask=frame.mask, depth=frame.depth, stages=self._stages,
                                            stream=self._stream, bind=True)
        except WorkerError as e:
            self._failed(f"keyframe ({reason}) failed: {e}")
            return
        if result.keyframe is None:
            self._failed("the worker's result has no keyframe (a worker without live support)")
            return
        self._install(result, frame, fresh)
        self.last_keyframe_s = time.monotonic() - t0
        self._logger.info(f"keyframe {result.keyframe.binding.binding_id} ({reason}): {len(result.gaussians)} Gaussians "
                          f"in {self.last_keyframe_s:.2f} s")

    def _install(self, result: JobResult, frame: LiveInput, fresh: int) -> None:
        """Publish the keyframe's canonical avatar and binding, then skin with it; the request stays
        when a fresh one came in after `frame` was taken (`fresh`: the count then)."""
        key = result.keyframe
        canonical_header = Header(stamp=frame.header.stamp, frame_id=CANONICAL_FRAME_ID)
        binding_file = io.BytesIO()
        write_binding(binding_file, key.binding)
        self._pub_canonical.publish(gaussians_to_pointcloud2(key.canonical_raw, canonical_header))
        self._pub_binding.publish(CompressedImage(header=Header(stamp=frame.header.stamp, frame_id=frame.header.frame_id),
                                                  format=BINDING_FORMAT, data=binding_file.getvalue()))
        appearance = None if frame.K is None else appearance_error(np.asarray(result.gaussians), frame.image, frame.K)
        with self._cond:
            self._avatar = LiveAvatar(np.array(key.canonical_raw), key.binding, appearance)
            if self._fresh == fresh:
                self._wanted = None
            self._keyframed_at = time.monotonic()
            self.keyframes += 1
        # The keyframe's own avatar, unless the frame path has published a newer frame meanwhile.
        self._publish(frame, np.asarray(result.gaussians), key.bone_transforms, key.binding.binding_id, result.joints, result.bones)

    def _failed(self, message: str) -> None:
        with self._cond:
            self.keyframe_failures += 1
            self._not_before = time.monotonic() + self._retry_s
        self._logger.warning(message, throttle_duration_sec=5.0)
