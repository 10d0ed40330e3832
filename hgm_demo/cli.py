"""`hgm demo`: the whole ROS graph in one process, from a sample frame to an avatar on a topic.

Three nodes on one MultiThreadedExecutor (the worker is still its own process, started by hgm_node):

    hgm_player  --image, camera_info-->  hgm_node  --human_gaussians-->  hgm_ar_client
    (a still photo as a camera stream)   (+ local `hgm serve` worker)    (writes PLY + render)
                                               <--~/capture (std_srvs/Trigger)--

hgm_node runs with `trigger: service`: once the worker is warm, the AR client asks for exactly one
capture of the live stream, as an app would ("scan me now"). The AR client decodes the first
`/human_gaussians` it receives into out/avatar_from_topic.ply (a standard 3DGS PLY) and renders it
from the input camera and from the side (out/avatar_from_topic.png); then the demo prints what
happened: worker stage timings, frame -> avatar latency, message size.

With `--sequence DIR` (a folder of `hgm datagen --sequence`: a body walking, turning and waving)
the player plays that sequence at its frame rate and hgm_node runs in live mode (`mode: live`,
docs/live_stream.md): one keyframe reconstruction, then every frame tracked and the keyframe avatar
re-posed. The AR client keeps every posed avatar; the demo renders a few of them beside their input
frames (out/live_sequence.png) and prints how many frames became avatars, how fast and how late.

This is the demo process: it runs the node (`hgm_node`) and also renders what the AR client got with
hgm_core's rasterizer (torch), which is why it lives outside the torch-free `hgm_node` package.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

from hgm_core.cli import CliError
from hgm_core.paths import ASSETS_DIR
from hgm_core.types import DEFAULT_STAGES
from hgm_node.diagnostics import PipelineStats
from hgm_node.node import HgmNode
from hgm_node.qos import INPUT_QOS, LATCHED_QOS, SENSOR_QOS

HELP = "run the ROS graph (player -> hgm_node + worker -> AR client) on a sample frame and save what the client got"

SAMPLE_DIR = ASSETS_DIR / "sample"
DEFAULT_IMAGE = SAMPLE_DIR / "person.jpg"
"""The bundled sample frame: a synthetic person rendered by this project (clear licence, see its README)."""
DEFAULT_CAMERA_INFO = SAMPLE_DIR / "camera_info.yaml"
FRAME_ID = "hgm_demo_camera_optical"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="photo of one person (default: the bundled sample frame)")
    parser.add_argument("--camera-info", type=Path, default=None,
                        help="camera_info YAML of --image (default: the sample's for the sample frame, else a 55° field of view)")
    parser.add_argument("-o", "--output", "--out", type=Path, default=Path("out"), help="output directory (default: out/)")
    parser.add_argument("--stages", default=DEFAULT_STAGES, help=f"pipeline stages for the worker (default: {DEFAULT_STAGES})")
    parser.add_argument("--worker-endpoint", default="", help="use this worker instead of starting a local one")
    parser.add_argument("--rate", type=float, default=2.0, help="frames per second the player publishes (default: 2)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default: 600)")
    parser.add_argument("--sequence", type=Path, default=None,
                        help="play this `hgm datagen --sequence` folder at its frame rate with hgm_node in live mode "
                             "(keyframe + per-frame tracking) instead of capturing one photo")


def run(args: argparse.Namespace) -> int:
    from hgm_core.io.inputs import load_camera_info, load_image
    from hgm_core.perception import default_intrinsics
    from hgm_core.types import BadInputError

    if args.sequence is not None:
        return _run_sequence(args)

    camera_info = args.camera_info or (DEFAULT_CAMERA_INFO if args.image == DEFAULT_IMAGE else None)
    try:
        rgb = load_image(args.image)
        K = load_camera_info(camera_info).K if camera_info else default_intrinsics(rgb.shape[1], rgb.shape[0])
    except BadInputError as e:
        raise CliError(str(e)) from None

    rclpy.init(args=[])
    executor = MultiThreadedExecutor(num_threads=4)
    nodes = []
    try:
        player = Player(lambda i: rgb, K, args.rate)
        client = ArClient()
        node = HgmNode(parameter_overrides=_overrides(args))
        nodes = [player, node, client]
        for n in nodes:
            executor.add_node(n)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        print(f"hgm demo: {args.image.name} ({rgb.shape[1]}x{rgb.shape[0]}) -> /image at {args.rate:g} Hz; "
              f"hgm_node worker {'local, starting' if not args.worker_endpoint else args.worker_endpoint}")
        cloud, received = _wait_for_avatar(node, client, args.timeout)
        stats = node.stats()
        sent = player.published_at(cloud.header.stamp)
    finally:
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown()
    return _report(args, rgb, K, cloud, received - sent if sent else None, stats)


def _overrides(args: argparse.Namespace) -> list[Parameter]:
    return [
        Parameter("trigger", value="service"),
        Parameter("stages", value=args.stages),
        Parameter("worker_endpoint", value=args.worker_endpoint),
        Parameter("health_period_s", value=0.5),
    ]


def _run_sequence(args: argparse.Namespace) -> int:
    """`hgm demo --sequence DIR`: the sequence played once (after the first avatar) through live mode."""
    from hgm_core.data.sequence import SequenceError, read_sequence

    try:
        seq = read_sequence(args.sequence)
    except SequenceError as e:
        raise CliError(str(e)) from None
    frames = [seq.image(f) for f in range(len(seq))]
    rclpy.init(args=[])
    executor = MultiThreadedExecutor(num_threads=4)
    nodes = []
    try:
        player = Player(lambda i: frames[i % len(frames)], seq.K, seq.fps, reliable=True)
        client = ArClient(capture=False)
        node = HgmNode(parameter_overrides=[Parameter("mode", value="live"), *_overrides(args)[1:]])
        nodes = [player, node, client]
        for n in nodes:
            executor.add_node(n)
        threading.Thread(target=executor.spin, daemon=True).start()
        print(f"hgm demo: {args.sequence} ({len(frames)} frames {seq.size[0]}x{seq.size[1]} at {seq.fps:g} Hz) -> /image; "
              f"hgm_node in live mode, worker {'local, starting' if not args.worker_endpoint else args.worker_endpoint}")
        _wait_for_avatar(node, client, args.timeout)
        start = player.frames_published()
        while player.frames_published() < start + len(frames):  # the whole sequence once, tracked
            time.sleep(0.1)
        time.sleep(1.0)  # the last frames' avatars
        stats = node.stats()
        avatars = client.avatars()
        played = {stamp: player.frame_of(stamp) for stamp in avatars}
        latencies = [received - player.published_at(m.header.stamp) for stamp, (m, received) in avatars.items()
                     if played[stamp] is not None and played[stamp] >= start]
    finally:
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown()
    tracked = sorted((played[s], m) for s, (m, _) in avatars.items() if played[s] is not None and played[s] >= start)
    if not tracked:
        raise CliError("no posed avatar arrived while the sequence played")
    png = _render_sequence([(frames[i % len(frames)], m) for i, m in tracked], seq.K, args.output / "live_sequence.png")
    print("\nhgm demo: the sequence through live mode")
    print(f"  {len(tracked)} posed avatars on /human_gaussians for {len(frames)} frames played in "
          f"{len(frames) / seq.fps:.1f} s ({len(tracked) * seq.fps / len(frames):.1f} avatars/s); "
          f"{stats.keyframes} keyframe(s)")
    print(f"  frame published -> posed avatar received: median {np.median(latencies) * 1e3:.0f} ms, "
          f"p95 {np.percentile(latencies, 95) * 1e3:.0f} ms")
    print("  last frame: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in stats.timings.items()))
    print(f"  wrote {png}" if png else "  (no render: no rasterizer backend ran here)")
    return 0


def _render_sequence(pairs: list[tuple[np.ndarray, PointCloud2]], K: np.ndarray, path: Path, columns: int = 4) -> Path | None:
    """Input frames (top row) above their posed avatars rendered from the input camera (bottom row),
    for `columns` avatars spread over the sequence."""
    import cv2
    import torch

    from hgm_core.gaussians import Gaussians
    from hgm_core.io.pointcloud import unpack_gaussians
    from hgm_core.render.output import RenderError
    from hgm_core.render.views import render_input_view

    picks = [pairs[round(j * (len(pairs) - 1) / max(columns - 1, 1))] for j in range(min(columns, len(pairs)))]
    tops, bottoms = [], []
    for rgb, cloud in picks:
        raw, _ = unpack_gaussians(cloud.fields, cloud.point_step, cloud.data)
        h, w = rgb.shape[:2]
        try:
            out = render_input_view(Gaussians.from_raw(torch.from_numpy(raw)), K, w, h)
        except RenderError:
            return None
        tops.append(rgb)
        bottoms.append((out.rgb[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate([np.concatenate(tops, 1), np.concatenate(bottoms, 1)], 0)[:, :, ::-1])
    return path


def _wait_for_avatar(node: HgmNode, client: "ArClient", timeout_s: float) -> tuple[PointCloud2, float]:
    deadline = time.monotonic() + timeout_s
    worker_line = capture_reply = ""
    while not client.done.wait(0.5):
        status = node.worker_status()
        line = f"  worker {status.state}: {status.message}"
        if line != worker_line:
            print(line, flush=True)
            worker_line = line
        # Captures are refused while the worker warms up, which its own line already says: show later replies only.
        if client.capture_reply != capture_reply and status.state == "ok":
            print(f"  capture: {client.capture_reply}", flush=True)
        capture_reply = client.capture_reply
        if time.monotonic() > deadline:
            raise CliError(f"no avatar within {timeout_s:g} s; last state: {line.strip()}, capture: {capture_reply or '-'}")
    return client.cloud, client.received_at


def _report(args: argparse.Namespace, rgb: np.ndarray, K: np.ndarray, cloud: PointCloud2, latency_s: float | None,
            stats: PipelineStats) -> int:
    import torch

    from hgm_core.gaussians import Gaussians
    from hgm_core.io.ply import write_ply_raw
    from hgm_core.io.pointcloud import unpack_gaussians

    raw, _ = unpack_gaussians(cloud.fields, cloud.point_step, cloud.data)
    ply = write_ply_raw(args.output / "avatar_from_topic.ply", raw)
    png = _render(Gaussians.from_raw(torch.from_numpy(raw)), rgb, K, args.output / "avatar_from_topic.png")
    timings = stats.timings
    stages = [k for k in timings if k not in ("queue", "worker_total", "roundtrip", "total")]
    print("\nhgm demo: avatar received on /human_gaussians")
    print(f"  frame_id {cloud.header.frame_id}, stamp {cloud.header.stamp.sec}.{cloud.header.stamp.nanosec:09d}")
    print(f"  {cloud.width} Gaussians, {len(cloud.data) / 1e6:.2f} MB PointCloud2 ({cloud.point_step} bytes/point)")
    print("  worker stages: " + ", ".join(f"{k} {timings[k]:.2f} s" for k in stages))
    print(f"  worker total {timings.get('worker_total', float('nan')):.2f} s, node round trip {timings.get('roundtrip', float('nan')):.2f} s")
    if latency_s is not None:
        print(f"  frame published -> avatar received: {latency_s:.2f} s")
    print(f"  capture: {stats.received} frames streamed to hgm_node, one reconstructed on request")
    print(f"  wrote {ply}" + (f" and {png}" if png else " (no render: no rasterizer backend ran here)"))
    return 0


def _render(gaussians, rgb: np.ndarray, K: np.ndarray, path: Path) -> Path | None:
    """Input photo | avatar from the input camera | avatar turned 90 degrees, side by side."""
    import cv2
    import torch

    from hgm_core.render.output import RenderError
    from hgm_core.render.views import render_input_view

    h, w = rgb.shape[:2]
    centre = gaussians.means.mean(0)
    a = math.pi / 2  # about the camera's vertical (optical -y) axis, through the avatar's centre
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=gaussians.dtype)
    turned = gaussians.transform(R, centre - R @ centre)
    views = []
    for g in (gaussians, turned):
        try:
            out = render_input_view(g, K, w, h)
        except RenderError:
            return None
        views.append((out.rgb[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate([rgb, *views], 1)[:, :, ::-1])
    return path


class Player(Node):
    """Publishes frames as a camera stream (Image rgb8 + CameraInfo) stamped with the current time:
    `frame(i)` is the `[H, W, 3]` uint8 RGB of the i-th tick (one photo, or a sequence). `reliable`:
    publish reliably (a sequence's frames should all arrive) instead of best effort, like most cameras."""

    def __init__(self, frame: Callable[[int], np.ndarray], K: np.ndarray, rate_hz: float, reliable: bool = False) -> None:
        super().__init__("hgm_player")
        self._frame = frame
        rgb = frame(0)
        h, w = rgb.shape[:2]
        self._image = Image(height=h, width=w, encoding="rgb8", step=3 * w, data=rgb.tobytes())
        self._info = CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                                k=K.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(),
                                p=np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist())
        self._image.header.frame_id = self._info.header.frame_id = FRAME_ID
        qos = INPUT_QOS if reliable else SENSOR_QOS
        self._image_pub = self.create_publisher(Image, "image", qos)
        self._info_pub = self.create_publisher(CameraInfo, "camera_info", qos)
        self._sent: dict[tuple[int, int], tuple[float, int]] = {}  # stamp -> (monotonic, tick)
        self._ticks = 0
        self.create_timer(1.0 / rate_hz, self._tick)

    def _tick(self) -> None:
        stamp = self.get_clock().now().to_msg()
        if self._ticks:
            self._image.data = self._frame(self._ticks).tobytes()
        self._image.header.stamp = self._info.header.stamp = stamp
        self._info_pub.publish(self._info)
        self._image_pub.publish(self._image)
        self._sent[(stamp.sec, stamp.nanosec)] = (time.monotonic(), self._ticks)
        self._ticks += 1

    def published_at(self, stamp) -> float | None:
        """time.monotonic() when the frame with this stamp was published, or None."""
        sent = self._sent.get((stamp.sec, stamp.nanosec))
        return None if sent is None else sent[0]

    def frame_of(self, stamp: tuple[int, int]) -> int | None:
        """The tick (frame index) published with this `(sec, nanosec)` stamp, or None."""
        sent = self._sent.get(stamp)
        return None if sent is None else sent[1]

    def frames_published(self) -> int:
        return self._ticks


class ArClient(Node):
    """Asks hgm_node for one capture (unless `capture` is False: live mode needs none) and keeps the
    first /human_gaussians it gets, and every one by stamp (subscribed like an AR client would:
    reliable, TRANSIENT_LOCAL)."""

    def __init__(self, capture: bool = True) -> None:
        super().__init__("hgm_ar_client")
        self.done = threading.Event()
        self.cloud: PointCloud2 | None = None
        self.received_at = 0.0
        self.capture_reply = ""
        self._lock = threading.Lock()
        self._avatars: dict[tuple[int, int], tuple[PointCloud2, float]] = {}
        self.create_subscription(PointCloud2, "human_gaussians", self._on_cloud, LATCHED_QOS)
        self._capture = self.create_client(Trigger, "hgm_node/capture")
        self._pending = None
        if capture:
            self._timer = self.create_timer(0.5, self._ask)

    def _ask(self) -> None:
        # Until hgm_node accepts (it refuses while its worker warms up or before a frame arrived).
        if self._pending is not None and self._pending.done():
            reply, self._pending = self._pending.result(), None
            self.capture_reply = reply.message
            if reply.success:
                self._timer.cancel()
                return
        if self._pending is None and self._capture.service_is_ready():
            self._pending = self._capture.call_async(Trigger.Request())

    def _on_cloud(self, msg: PointCloud2) -> None:
        now = time.monotonic()
        with self._lock:
            self._avatars.setdefault((msg.header.stamp.sec, msg.header.stamp.nanosec), (msg, now))
        if not self.done.is_set():
            self.cloud, self.received_at = msg, now
            self.done.set()

    def avatars(self) -> dict[tuple[int, int], tuple[PointCloud2, float]]:
        """Every avatar received, by stamp: (message, time.monotonic() on arrival)."""
        with self._lock:
            return dict(self._avatars)
