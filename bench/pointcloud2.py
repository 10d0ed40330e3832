"""/human_gaussians PointCloud2 cost: encode/decode vs a plain copy, and pub -> sub latency across processes.

    .venv/bin/python bench/pointcloud2.py [--n 131072] [--messages 30]

1. encode: `hgm_node.conversions.gaussians_to_pointcloud2` (pack + message build) vs copying the same
   number of bytes once; decode: `hgm_core.io.pointcloud.unpack_gaussians` on the message's data vs
   the same copy. Medians of repeated runs, ratio = median / copy median.
2. latency: a publisher process and a subscriber process (reliable, TRANSIENT_LOCAL, depth 1 — the
   node's output QoS); latency = wall time at the subscriber callback minus the stamp set right
   before `publish()` (so it includes serialisation, transport and deserialisation into Python),
   under each Fast DDS transport configuration: the default (UDPv4 + 512 KiB shared memory),
   FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA, and launch/fastdds_large.xml.

Writes JSON to stdout and bench/results/pointcloud2.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _results import median_s, write_results

REPO = Path(__file__).resolve().parents[1]
TRANSPORTS = {
    "default": {},
    "LARGE_DATA": {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"},
    "fastdds_large.xml": {"FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "launch" / "fastdds_large.xml")},
}
CLEARED = ("FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def _raw(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 14)).astype(np.float32)


def codec(n: int, repeats: int) -> dict:
    from std_msgs.msg import Header

    from hgm_core.io.pointcloud import unpack_gaussians
    from hgm_node.conversions import gaussians_to_pointcloud2

    raw = _raw(n)
    msg = gaussians_to_pointcloud2(raw, Header(frame_id="cam"))
    size = len(msg.data)
    source = np.frombuffer(np.random.default_rng(1).bytes(size), np.uint8)
    copy_s = median_s(lambda: source.copy(), repeats)
    encode_s = median_s(lambda: gaussians_to_pointcloud2(raw, Header(frame_id="cam")), repeats)
    decode_s = median_s(lambda: unpack_gaussians(msg.fields, msg.point_step, msg.data), repeats)
    return {
        "gaussians": n, "message_bytes": size, "copy_ms": copy_s * 1e3,
        "encode_ms": encode_s * 1e3, "encode_vs_copy": encode_s / copy_s,
        "decode_ms": decode_s * 1e3, "decode_vs_copy": decode_s / copy_s,
    }


def _publisher(n: int, messages: int, period_s: float) -> None:
    import rclpy
    from std_msgs.msg import Header

    from hgm_node.conversions import gaussians_to_pointcloud2
    from hgm_node.qos import LATCHED_QOS
    from sensor_msgs.msg import PointCloud2

    rclpy.init()
    node = rclpy.create_node("bench_pub")
    pub = node.create_publisher(PointCloud2, "bench_cloud", LATCHED_QOS)
    msg = gaussians_to_pointcloud2(_raw(n), Header(frame_id="cam"))
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the reader's side of the match settle
    for _ in range(messages):
        t = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t, 1_000_000_000)
        pub.publish(msg)
        time.sleep(period_s)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.shutdown()


def _subscriber(messages: int, timeout_s: float) -> None:
    import rclpy
    from sensor_msgs.msg import PointCloud2

    from hgm_node.qos import LATCHED_QOS

    rclpy.init()
    node = rclpy.create_node("bench_sub")
    latencies: list[float] = []

    def on_cloud(msg: PointCloud2) -> None:
        now = time.time_ns()
        latencies.append((now - (msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)) / 1e6)

    node.create_subscription(PointCloud2, "bench_cloud", on_cloud, LATCHED_QOS)
    deadline = time.monotonic() + timeout_s
    while len(latencies) < messages and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(latencies))
    node.destroy_node()
    rclpy.shutdown()


def latency(n: int, messages: int, period_s: float, transport: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(TRANSPORTS[transport], ROS_DOMAIN_ID=str(random.SystemRandom().randint(1, 101)),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    me = [sys.executable, __file__]
    sub = subprocess.Popen(me + ["--role", "sub", "--messages", str(messages)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    pub = subprocess.Popen(me + ["--role", "pub", "--n", str(n), "--messages", str(messages), "--period", str(period_s)],
                           env=env, stderr=subprocess.PIPE, text=True)
    out, sub_err = sub.communicate(timeout=180)
    _, pub_err = pub.communicate(timeout=60)
    got = json.loads(out.strip().splitlines()[-1]) if out.strip() else []
    errors = [line for line in (sub_err + pub_err).splitlines() if "Error]" in line]
    result = {"transport": transport, "env": TRANSPORTS[transport], "sent": messages, "received": len(got)}
    if got:
        q = np.percentile(got, [50, 95])
        result.update(p50_ms=float(q[0]), p95_ms=float(q[1]), min_ms=float(min(got)))
    if errors:
        result["dds_errors"] = errors[:3]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["bench", "pub", "sub"], default="bench")
    parser.add_argument("--n", type=int, default=131_072)
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--period", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.role == "pub":
        return _publisher(args.n, args.messages, args.period)
    if args.role == "sub":
        return _subscriber(args.messages, timeout_s=60 + args.messages * 2)
    report = {
        "bench": "pointcloud2",
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_1m": os.getloadavg()[0]},
        "codec": codec(args.n, args.repeats),
        "latency": [latency(args.n, args.messages, args.period, t) for t in TRANSPORTS],
    }
    write_results("pointcloud2", report)


if __name__ == "__main__":
    main()
