"""`hgm_node`: camera frames in, a Gaussian avatar out (docs/architecture.md §2-§3).

Subscribes (remappable, depth 1, reliable unless the publisher is best effort: `hgm_node.qos.InputSubscription`):
`image` (sensor_msgs/Image) or `image/compressed` (sensor_msgs/CompressedImage), `camera_info`, and optionally `mask`
and `depth` (aligned 16UC1 mm / 32FC1 m, paired by stamp: the body fit's placement becomes metric). Publishes (reliable,
TRANSIENT_LOCAL, depth 1): `human_gaussians` (PointCloud2), `human_body` (MarkerArray skeleton),
`human_body/joints` (PoseArray), `human_mesh` (Marker TRIANGLE_LIST, with parameter `mesh`, when the worker makes a
mesh), `human_splats` (gsplat_msgs/SplatArray for RVizSplat, only when gsplat_msgs is importable:
`hgm_node.splat`), all stamped with the source image's header; and `/diagnostics`. With parameter
`record`, every input and output topic also goes to an MCAP file (`hgm_node.record`). With `mode: live` also
`human_avatar/canonical`, `human_avatar/binding` and `human_avatar/bones` (`hgm_node.live`,
docs/live_stream.md), and `human_gaussians` is the keyframe avatar re-posed in every frame.

Threads: executor callbacks only validate headers and store the frame; one job thread converts
pixels, calls the worker and publishes (in live mode it tracks, and `hgm_node.live`'s publish
thread skins and publishes the previous frame meanwhile); the worker link's thread supervises the worker. So the
executor never blocks, the latest frame always wins, and a dead worker leaves the node up.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from hgm_core.serve.client import JobResult, WorkerError, load_curve_client_keys
from hgm_node.conversions import (
    ImageConversionError,
    camera_info_to_K,
    check_compressed,
    check_image,
    compressed_to_rgb,
    depth_to_array,
    gaussians_to_pointcloud2,
    image_to_mask,
    image_to_rgb,
    joints_to_pose_array,
    mesh_to_marker,
    nearest_stamp,
    skeleton_to_markers,
)
from hgm_node.diagnostics import ERROR, OK, WARN, PipelineStats, diagnostic_array
from hgm_node.live import FrameOutcome, LiveInput, LiveMode
from hgm_node.params import NodeParams, declare_parameters
from hgm_node.qos import DIAGNOSTICS_QOS, LATCHED_QOS, InputSubscription
from hgm_node.record import McapSink, TopicRecorder
from hgm_node.splat import encode_splat_array, splat_publisher
from hgm_node.worker_link import WorkerLink, WorkerStatus

SEVERE_WORKER_ERRORS = ("timeout", "internal", "unavailable", "protocol")
"""Job failures that mean the worker (not the frame) is in trouble: diagnostics ERROR."""
MASKS_KEPT = 8


@dataclass(frozen=True)
class _Frame:
    msg: Image | CompressedImage
    received: float  # time.monotonic() when the callback accepted it


class HgmNode(Node):
    """The hgm ROS 2 node; see the module docstring and `hgm_node.params.NodeParams`."""

    def __init__(self, node_name: str = "hgm_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        # Set before anything can raise: rclpy's shutdown calls destroy_node() on a half-built node.
        self._cond = threading.Condition()
        self._stopping = False
        self._link: WorkerLink | None = None
        self._live: LiveMode | None = None
        self._job_thread: threading.Thread | None = None
        self._sink: McapSink | None = None
        self.params: NodeParams = declare_parameters(self)
        p = self.params
        self._stats = PipelineStats()
        self._latest: _Frame | None = None  # newest accepted frame (what ~/capture reconstructs)
        self._pending: _Frame | None = None  # frame waiting for the job thread
        self._camera_info: CameraInfo | None = None
        self._masks: OrderedDict[tuple[int, int], Image] = OrderedDict()
        self._depths: OrderedDict[tuple[int, int], Image] = OrderedDict()

        client_kwargs = load_curve_client_keys(p.curve_server_key, p.curve_client_secret or None) if p.curve_server_key else {}
        self._link = WorkerLink(
            p.worker_endpoint,
            local_command=WorkerLink.parse_command(p.local_worker_command),
            timeout_s=p.timeout_s,
            retries=p.retries,
            health_period_s=p.health_period_s,
            restart_backoff_max_s=p.restart_backoff_max_s,
            client_kwargs=client_kwargs,
        )

        self._pub_gaussians = self.create_publisher(PointCloud2, "human_gaussians", LATCHED_QOS)
        self._pub_body = self.create_publisher(MarkerArray, "human_body", LATCHED_QOS)
        self._pub_joints = self.create_publisher(PoseArray, "human_body/joints", LATCHED_QOS)
        self._pub_mesh = self.create_publisher(Marker, "human_mesh", LATCHED_QOS)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self._pub_splats = splat_publisher(self, LATCHED_QOS)  # RVizSplat's SplatArray, when gsplat_msgs is importable

        if p.image_transport == "raw":
            self._image_sub = InputSubscription(self, Image, "image", self._on_image)
        else:
            self._image_sub = InputSubscription(self, CompressedImage, "image/compressed", self._on_image)
        self._info_sub = InputSubscription(self, CameraInfo, "camera_info", self._on_camera_info)
        if p.use_mask:
            self._mask_sub = InputSubscription(self, Image, "mask", self._on_mask)
        if p.use_depth:
            self._depth_sub = InputSubscription(self, Image, "depth", self._on_depth)
        if p.mode == "live":
            self._live = LiveMode(self, self._link, stream=self.get_fully_qualified_name(), stages=p.stages,
                                  publish_avatar=self._publish_avatar, report=self._live_outcome, keyframe_period_s=p.keyframe_period_s,
                                  drift_threshold=p.drift_threshold, drift_frames=p.drift_frames,
                                  retry_s=p.keyframe_retry_s)
        self._continuous = p.trigger == "continuous" or p.mode == "live"  # live mode tracks every frame
        if p.trigger == "service" or p.mode == "live":
            self.create_service(Trigger, "~/capture", self._on_capture)
        self.create_timer(p.diagnostics_period_s, self.publish_diagnostics)

        if p.record:  # last: it records every topic created above
            self._sink = McapSink(p.record)
            TopicRecorder(self, self._sink).add_node_topics(self)
        self._link.start()
        self._job_thread = threading.Thread(target=self._job_loop, name="hgm-jobs", daemon=True)
        self._job_thread.start()
        self.get_logger().info(
            f"subscribed to {self._image_sub.topic_name} ({p.image_transport}), mode={p.mode}, trigger={p.trigger}, "
            f"stages={p.stages}, worker {'local on ' if not p.worker_endpoint else ''}{self._link.endpoint}"
        )

    def destroy_node(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._link is not None:
            self._link.close()  # also ends a job in flight, so the job thread can be joined
        if self._live is not None:
            self._live.close()
        if self._job_thread is not None:
            self._job_thread.join(timeout=5.0)
        if self._sink is not None:
            self._sink.close()
        super().destroy_node()

    def worker_status(self) -> WorkerStatus:
        return self._link.status()

    def stats(self) -> PipelineStats:
        """A copy of the pipeline counters and the last job's timings."""
        with self._cond:
            return replace(self._stats, timings=dict(self._stats.timings))

    # -- executor callbacks (cheap, never block) ------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        try:
            if isinstance(msg, Image):
                check_image(msg, self.params.max_image_pixels)
            else:
                check_compressed(msg, self.params.max_image_pixels)
        except ImageConversionError as e:
            self._reject(e)
            return
        frame = _Frame(msg, time.monotonic())
        with self._cond:
            self._stats.received += 1
            self._latest = frame
            if self._continuous:
                self._offer(frame)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._cond:
            self._camera_info = msg

    def _on_mask(self, msg: Image) -> None:
        with self._cond:
            self._masks[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            while len(self._masks) > MASKS_KEPT:
                self._masks.popitem(last=False)

    def _on_depth(self, msg: Image) -> None:
        with self._cond:
            self._depths[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            while len(self._depths) > MASKS_KEPT:
                self._depths.popitem(last=False)

    def _on_capture(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._cond:
            frame = self._latest
        status = self._link.status()
        if frame is None:
            response.success, response.message = False, f"no frame received yet on {self._image_sub.topic_name}"
        elif status.state != "ok":
            response.success, response.message = False, f"worker not ready ({status.state}): {status.message}"
        elif self._live is not None:
            self._live.request_keyframe("~/capture", fresh=True)
            response.success, response.message = True, "a new keyframe will be reconstructed from the next frame"
        else:
            with self._cond:
                self._offer(frame)
            stamp = frame.msg.header.stamp
            response.success, response.message = True, f"reconstructing the frame stamped {stamp.sec}.{stamp.nanosec:09d}"
        return response

    def publish_diagnostics(self) -> None:
        stats = self.stats()
        self._pub_diagnostics.publish(diagnostic_array(self.get_clock().now().to_msg(), self.get_name(), self._link.status(), stats))

    def _offer(self, frame: _Frame) -> None:
        """Make `frame` the next job (caller holds the lock); a frame it supersedes is a drop."""
        if self._pending is not None:
            self._stats.dropped += 1
        self._pending = frame
        self._cond.notify_all()

    def _reject(self, error: Exception) -> None:
        with self._cond:
            self._stats.rejected += 1
            self._stats.level, self._stats.message = WARN, f"input frame rejected: {error}"
        self.get_logger().warning(f"input frame rejected: {error}", throttle_duration_sec=5.0)

    # -- job thread ---------------------------------------------------------------------------

    def _job_loop(self) -> None:
        last_start = -float("inf")
        while True:
            # Wait for the worker first: frames arriving meanwhile supersede each other.
            while not self._link.wait_ready(0.25):
                if self._stopping:
                    return
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                if self._continuous:
                    wait = last_start + self.params.min_interval_s - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)  # a newer frame may replace the pending one meanwhile
                        continue
                frame, self._pending = self._pending, None
                info, masks, depths = self._camera_info, dict(self._masks), dict(self._depths)
            last_start = time.monotonic()
            try:
                self._run_job(frame, info, masks, depths)
            except Exception as e:  # a bug here must not end the job thread: report it and go on
                self.get_logger().error(f"job failed unexpectedly: {type(e).__name__}: {e}")
                with self._cond:
                    self._stats.failed += 1
                    self._stats.level, self._stats.message = ERROR, f"node error: {type(e).__name__}: {e}"

    def _run_job(self, frame: _Frame, info: CameraInfo | None, masks: dict, depths: dict) -> None:
        started = time.monotonic()
        limit = self.params.max_image_pixels
        try:
            image = image_to_rgb(frame.msg, limit) if isinstance(frame.msg, Image) else compressed_to_rgb(frame.msg, limit)
            mask = _mask_for(frame.msg.header, masks, image.shape[:2], limit)
            depth = _depth_for(frame.msg.header, depths, image.shape[:2], limit, self.params.depth_max_skew_s)
        except ImageConversionError as e:
            self._reject(e)
            return
        h, w = image.shape[:2]
        K = camera_info_to_K(info, w, h) if info is not None else None
        if self._live is not None:
            self._run_live(LiveInput(image, K, mask, depth, frame.msg.header, frame.received, started))
            return
        try:
            result = self._link.reconstruct(image, K=K, mask=mask, depth=depth, stages=self.params.stages,
                                            mesh=self.params.mesh, stream=self.get_fully_qualified_name())
        except WorkerError as e:
            self._job_failed(e)
            return
        cloud_bytes = self._publish(result, frame.msg.header)
        total = time.monotonic() - frame.received
        with self._cond:
            self._stats.processed += 1
            self._stats.level, self._stats.message = OK, f"published {len(result.gaussians)} Gaussians"
            self._stats.timings = {**result.timings, "total": total}
            self._stats.gaussians, self._stats.cloud_bytes = len(result.gaussians), cloud_bytes

    def _run_live(self, frame: LiveInput) -> None:
        try:
            self._live.process(frame)  # what becomes of the frame comes to _live_outcome
        except WorkerError as e:
            self._job_failed(e)

    def _live_outcome(self, frame: LiveInput, outcome: FrameOutcome) -> None:
        """Live mode's per-frame report (the job thread's, or the publish thread's once published)."""
        total = time.monotonic() - frame.received
        with self._cond:
            self._stats.keyframes, self._stats.track_state = self._live.keyframes, outcome.state
            self._stats.live_skipped = self._live.skipped
            self._stats.level, self._stats.message = (OK if outcome.state == "tracking" else WARN), f"live: {outcome.message}"
            if outcome.state == "tracking":
                self._stats.processed += 1
                self._stats.timings = {**(outcome.timings or {}), "total": total}
                self._stats.gaussians, self._stats.cloud_bytes = outcome.gaussians, outcome.cloud_bytes

    def _job_failed(self, e: WorkerError) -> None:
        if self._stopping:
            return
        level = ERROR if e.kind in SEVERE_WORKER_ERRORS else WARN
        with self._cond:
            self._stats.failed += 1
            self._stats.level, self._stats.message = level, f"job failed: {e}"
        self.get_logger().warning(f"job failed: {e}", throttle_duration_sec=5.0)

    def _publish(self, result: JobResult, source: Header) -> int:
        header = Header(stamp=source.stamp, frame_id=source.frame_id)
        cloud_bytes = self._publish_avatar(result.gaussians, result.joints, result.bones, header)
        if result.mesh_vertices is not None and result.mesh_faces is not None:
            self._pub_mesh.publish(mesh_to_marker(result.mesh_vertices, result.mesh_faces, result.mesh_colors, header))
        return cloud_bytes

    def _publish_avatar(self, raw: np.ndarray, joints: np.ndarray | None, bones: tuple[tuple[int, int], ...], header: Header) -> int:
        """`human_gaussians` from raw rows `[N, 14]`, and the skeleton when there are joints `[J, 3]`; the cloud's bytes."""
        cloud = gaussians_to_pointcloud2(raw, header)
        self._pub_gaussians.publish(cloud)
        if self._pub_splats is not None:
            self._pub_splats.publish(encode_splat_array(raw, (header.stamp.sec, header.stamp.nanosec), header.frame_id))
        if joints is not None and len(joints):
            self._pub_body.publish(skeleton_to_markers(joints, bones, header))
            self._pub_joints.publish(joints_to_pose_array(joints, header))
        return len(cloud.data)


def _mask_for(header: Header, masks: dict, hw: tuple[int, int], max_pixels: int) -> np.ndarray | None:
    """The `[H, W]` uint8 mask stamped exactly like the image, or None.

    Raises:
        ImageConversionError: the mask is not a mono image of the image's size.
    """
    msg = masks.get((header.stamp.sec, header.stamp.nanosec))
    if msg is None:
        return None
    if not msg.encoding.startswith("mono") or (msg.height, msg.width) != hw:
        raise ImageConversionError(f"mask must be mono8/mono16 of {hw[1]} x {hw[0]}, got {msg.encoding} {msg.width} x {msg.height}")
    return image_to_mask(msg, max_pixels)


def _depth_for(header: Header, depths: dict, hw: tuple[int, int], max_pixels: int, max_skew_s: float) -> np.ndarray | None:
    """The `[H, W]` depth image (uint16 mm or float32 m) stamped nearest the image, within
    `max_skew_s`, or None (the fit is then image-only).

    Raises:
        ImageConversionError: that depth image is not 16UC1/32FC1 of the image's size.
    """
    stamp = (header.stamp.sec, header.stamp.nanosec)
    key = nearest_stamp(stamp, depths, max_skew_s)
    if key is None:
        return None
    msg = depths[key]
    if (msg.height, msg.width) != hw:
        raise ImageConversionError(f"depth must be aligned with the {hw[1]} x {hw[0]} image, got {msg.width} x {msg.height}")
    return depth_to_array(msg, max_pixels)
