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

This is the demo process: it runs the node (`hgm_node`) and also renders what the AR client got with
hgm_core's rasterizer (torch), which is why it lives outside the torch-free `hgm_node` package.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

from hgm_core.cli import CliError
from hgm_core.paths import ASSETS_DIR
from hgm_node.diagnostics import PipelineStats
from hgm_node.node import HgmNode
from hgm_node.qos import LATCHED_QOS, SENSOR_QOS

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
    parser.add_argument("--stages", default="prior", help="pipeline stages for the worker (default: prior)")
    parser.add_argument("--worker-endpoint", default="", help="use this worker instead of starting a local one")
    parser.add_argument("--rate", type=float, default=2.0, help="frames per second the player publishes (default: 2)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default: 600)")


def run(args: argparse.Namespace) -> int:
    from hgm_core.io.inputs import load_camera_info, load_image
    from hgm_core.perception import default_intrinsics
    from hgm_core.types import BadInputError

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
        player = Player(rgb, K, args.rate)
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
    """Publishes one photo as a camera stream (Image rgb8 + CameraInfo) stamped with the current time."""

    def __init__(self, rgb: np.ndarray, K: np.ndarray, rate_hz: float) -> None:
        super().__init__("hgm_player")
        h, w = rgb.shape[:2]
        self._image = Image(height=h, width=w, encoding="rgb8", step=3 * w, data=rgb.tobytes())
        self._info = CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5,
                                k=K.reshape(-1).tolist(), r=np.eye(3).reshape(-1).tolist(),
                                p=np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist())
        self._image.header.frame_id = self._info.header.frame_id = FRAME_ID
        self._image_pub = self.create_publisher(Image, "image", SENSOR_QOS)
        self._info_pub = self.create_publisher(CameraInfo, "camera_info", SENSOR_QOS)
        self._sent: dict[tuple[int, int], float] = {}
        self.create_timer(1.0 / rate_hz, self._tick)

    def _tick(self) -> None:
        stamp = self.get_clock().now().to_msg()
        self._image.header.stamp = self._info.header.stamp = stamp
        self._info_pub.publish(self._info)
        self._image_pub.publish(self._image)
        self._sent[(stamp.sec, stamp.nanosec)] = time.monotonic()

    def published_at(self, stamp) -> float | None:
        """time.monotonic() when the frame with this stamp was published, or None."""
        return self._sent.get((stamp.sec, stamp.nanosec))


class ArClient(Node):
    """Asks hgm_node for one capture and keeps the first /human_gaussians it gets (subscribed like an
    AR client would: reliable, TRANSIENT_LOCAL)."""

    def __init__(self) -> None:
        super().__init__("hgm_ar_client")
        self.done = threading.Event()
        self.cloud: PointCloud2 | None = None
        self.received_at = 0.0
        self.capture_reply = ""
        self.create_subscription(PointCloud2, "human_gaussians", self._on_cloud, LATCHED_QOS)
        self._capture = self.create_client(Trigger, "hgm_node/capture")
        self._pending = None
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
        if not self.done.is_set():
            self.cloud, self.received_at = msg, time.monotonic()
            self.done.set()
