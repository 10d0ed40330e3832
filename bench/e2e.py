"""End to end: an Image published -> the /human_gaussians built from it received, per stage.

    .venv/bin/python bench/e2e.py [--image PATH] [--runs 4] [--stages prior]

Processes: `hgm_node` (python -m hgm_node.main) with its supervised local worker (`hgm serve`, the
real pipeline), and this script as camera + subscriber. Each run publishes one new frame (again,
with a new stamp, if the best-effort input dropped it) and waits for the avatar with that stamp.
Stage figures come from the node's /diagnostics (the worker's own timings plus the node's round
trip and total); the first run is reported but left out of the medians (model warm-up).

    e2e        frame published -> cloud received by this process
    node_total frame accepted by the node -> outputs published
    roundtrip  node -> worker -> node (ZeroMQ, both directions, incl. the worker's time)
    worker_total and its stages (perceive, fit_body, prior, ...)
(e2e - node_total is the DDS time of the image in and the cloud out, within the timer resolution;
the node stamps `total` after publishing all outputs, so it can come out slightly negative.)

Writes JSON to stdout and bench/results/e2e.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from _results import add_out_argument, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from hgm_demo.cli import DEFAULT_IMAGE  # noqa: E402
from hgm_node.qos import LATCHED_QOS, SENSOR_QOS  # noqa: E402


class Bench:
    def __init__(self, rgb: np.ndarray, K: np.ndarray, context: rclpy.Context) -> None:
        self.node = rclpy.create_node("e2e_bench", context=context)
        h, w = rgb.shape[:2]
        self.image = Image(height=h, width=w, encoding="rgb8", step=3 * w, data=rgb.tobytes())
        self.info = CameraInfo(width=w, height=h, k=K.reshape(-1).tolist())
        self.image.header.frame_id = self.info.header.frame_id = "bench_camera_optical"
        self.image_pub = self.node.create_publisher(Image, "image", SENSOR_QOS)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", SENSOR_QOS)
        self.clouds: dict[tuple[int, int], tuple[float, int]] = {}
        self.pipeline: dict[str, str] = {}
        self.worker: dict[str, str] = {}
        self.node.create_subscription(PointCloud2, "human_gaussians", self._on_cloud, LATCHED_QOS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.clouds[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (time.monotonic(), msg.width)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for s in msg.status:
            values = {kv.key: kv.value for kv in s.values}
            (self.pipeline if s.name.endswith(": pipeline") else self.worker).update(values, level=s.level[0], message=s.message)

    def run_once(self, timeout_s: float) -> dict:
        published = int(self.pipeline.get("jobs_published", 0))
        deadline = time.monotonic() + timeout_s
        while True:
            received = int(self.pipeline.get("frames_received", 0))
            stamp = self.node.get_clock().now().to_msg()
            self.image.header.stamp = self.info.header.stamp = stamp
            self.info_pub.publish(self.info)
            t0 = time.monotonic()
            self.image_pub.publish(self.image)
            key = (stamp.sec, stamp.nanosec)
            _until(lambda: int(self.pipeline.get("frames_received", 0)) > received or key in self.clouds, 2.0)
            if int(self.pipeline.get("frames_received", 0)) > received or key in self.clouds:
                break  # the node has it; else best effort dropped it: publish a new frame
        _until(lambda: key in self.clouds and int(self.pipeline.get("jobs_published", 0)) > published, deadline - time.monotonic())
        if key not in self.clouds:
            raise RuntimeError(f"no avatar for the frame within {timeout_s} s: {self.pipeline.get('message')}")
        t1, n = self.clouds[key]
        stages = {k[len("latency."):-2]: float(v) for k, v in self.pipeline.items() if k.startswith("latency.")}
        return {"e2e": t1 - t0, "gaussians": n, "cloud_bytes": int(self.pipeline["last_cloud_bytes"]), **stages}


def _until(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--stages", default="prior")
    parser.add_argument("--timeout", type=float, default=300.0)
    add_out_argument(parser)
    args = parser.parse_args()

    from hgm_core.perception import default_intrinsics

    rgb = np.ascontiguousarray(cv2.imread(str(args.image))[:, :, ::-1])
    K = default_intrinsics(rgb.shape[1], rgb.shape[0])
    domain = random.SystemRandom().randint(1, 101)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    node = subprocess.Popen([sys.executable, "-m", "hgm_node.main", "--ros-args", "-p", f"stages:={args.stages}",
                             "-p", "diagnostics_period_s:=0.1", "-p", "health_period_s:=0.5"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    bench = Bench(rgb, K, context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(bench.node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        t0 = time.monotonic()
        _until(lambda: bench.worker.get("level") == 0, args.timeout)
        startup = time.monotonic() - t0
        runs = [bench.run_once(args.timeout) for _ in range(args.runs)]
    finally:
        executor.shutdown()
        rclpy.try_shutdown(context=context)
        node.terminate()
        node.wait(30)
    warm = runs[1:] or runs
    keys = [k for k in runs[-1] if isinstance(runs[-1][k], float)]
    report = {
        "bench": "e2e",
        "image": str(args.image), "size": [rgb.shape[1], rgb.shape[0]], "stages": args.stages,
        "host": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "node_and_worker_startup_s": startup,
        "median_s": {k: statistics.median(r[k] for r in warm if k in r) for k in keys},
        "gaussians": runs[-1]["gaussians"], "cloud_bytes": runs[-1]["cloud_bytes"],
        "runs": runs,
    }
    m = report["median_s"]
    report["derived_median_s"] = {
        "zmq_and_codec": m.get("roundtrip", 0) - m.get("worker_total", 0),
        "node_convert_and_publish": m.get("total", 0) - m.get("roundtrip", 0),
    }
    write_results("e2e", report, args.out)


if __name__ == "__main__":
    main()
