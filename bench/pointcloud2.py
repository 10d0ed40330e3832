"""/human_gaussians PointCloud2 cost: encode/decode vs a plain copy, and pub -> sub latency across processes.

    .venv/bin/python bench/pointcloud2.py [--messages 30]

1. encode: `hgm_node.conversions.gaussians_to_pointcloud2` (pack + message build) vs copying the same
   number of bytes once; decode: `hgm_core.io.pointcloud.unpack_gaussians` on the message's data vs
   the same copy. Medians of repeated runs, ratio = median / copy median.
2. latency against peers with ROS 2's default middleware settings, each in its own process:
   - avatars out: a publisher with the node's output QoS (reliable, TRANSIENT_LOCAL, depth 1) under
     each Fast DDS configuration the launch file could give the node, and a default-configured
     subscriber with the same QoS (an AR client, RViz); plus the opt-in large-data profile on both
     sides (what a user gets who also sets it on every peer). 16,384 and 131,072 Gaussians.
   - camera frames in: a subscriber under the launch file's default profile with the node's input QoS
     (`hgm_node.qos`: INPUT_QOS, reliable, for a reliable camera; SENSOR_QOS, best effort) and a
     default-configured camera driver with ROS 2's default QoS (reliable, depth 10) or, to the
     best-effort subscriber, a best-effort one (sensor-data QoS), also given that profile (its larger
     shared-memory segment). 640x480 and 1920x1080 RGB.
   Latency = wall time at the subscriber callback minus the stamp set right before `publish()`
   (serialisation, transport and deserialisation into Python); `received` of `sent` counts what
   arrived, 0 means the two never talked. Both processes use ROS 2's default discovery (not
   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, which makes rmw_fastrtps add its own transports to a
   profile's and so would hide a mismatch) on a random domain id.

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
from _results import add_out_argument, median_s, write_results

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "default": {},
    "LARGE_DATA": {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"},
    "fastdds_large.xml": {"FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "launch" / "fastdds_large.xml")},
    "fastdds_interop.xml": {"FASTDDS_DEFAULT_PROFILES_FILE": str(REPO / "launch" / "fastdds_interop.xml")},
}
"""Fast DDS configurations by name: the environment a process gets on top of the cleared one."""
CLEARED = ("FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
           "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS")
CASES = (
    [("cloud", n, node, "latched", "default", "latched") for n in (16_384, 131_072) for node in CONFIGS]
    + [("cloud", n, "fastdds_large.xml", "latched", "fastdds_large.xml", "latched") for n in (16_384, 131_072)]
    + [("image", size, "default", "default", "fastdds_interop.xml", qos) for size in ("640x480", "1920x1080")
       for qos in ("input", "sensor")]
    + [("image", size, camera, "sensor", "fastdds_interop.xml", "sensor") for size in ("640x480", "1920x1080")
       for camera in ("default", "fastdds_interop.xml")]
)
"""(message kind, size, publisher configuration, publisher QoS, subscriber configuration, subscriber QoS)
measured. Publishers: the node's output QoS (`latched`) or a camera driver's (`default`: ROS 2's
default, reliable; `sensor`: best effort); subscribers: an AR client's or the node's inputs."""
FIRST_MESSAGE_TIMEOUT_S = 20.0
"""A subscriber that got nothing by then never will (peers that cannot talk)."""


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


def _qos(name: str):
    from hgm_node.qos import INPUT_QOS, LATCHED_QOS, SENSOR_QOS

    return {"latched": LATCHED_QOS, "input": INPUT_QOS, "sensor": SENSOR_QOS, "default": 10}[name]


def _message(kind: str, size: str):
    """An avatar of `size` Gaussians, or a `size` = "WxH" RGB camera frame."""
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from hgm_node.conversions import gaussians_to_pointcloud2

    if kind == "cloud":
        return gaussians_to_pointcloud2(_raw(int(size)), Header(frame_id="cam"))
    w, h = map(int, size.split("x"))
    return Image(header=Header(frame_id="cam"), height=h, width=w, encoding="rgb8", step=3 * w, data=bytes(3 * w * h))


def _publisher(kind: str, size: str, qos: str, messages: int, period_s: float) -> None:
    import rclpy

    rclpy.init()
    node = rclpy.create_node("bench_pub")
    msg = _message(kind, size)
    pub = node.create_publisher(type(msg), "bench_topic", _qos(qos))
    deadline = time.monotonic() + FIRST_MESSAGE_TIMEOUT_S
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


def _subscriber(kind: str, qos: str, messages: int, timeout_s: float) -> None:
    import rclpy
    from sensor_msgs.msg import Image, PointCloud2

    rclpy.init()
    node = rclpy.create_node("bench_sub")
    latencies: list[float] = []

    def on_message(msg: PointCloud2 | Image) -> None:
        now = time.time_ns()
        latencies.append((now - (msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)) / 1e6)

    node.create_subscription(PointCloud2 if kind == "cloud" else Image, "bench_topic", on_message, _qos(qos))
    start = time.monotonic()
    while len(latencies) < messages and time.monotonic() < start + timeout_s:
        if not latencies and time.monotonic() > start + FIRST_MESSAGE_TIMEOUT_S:
            break
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(latencies))
    node.destroy_node()
    rclpy.shutdown()


def latency(kind: str, size: int | str, publisher: str, pub_qos: str, subscriber: str, sub_qos: str, messages: int,
            period_s: float) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in CLEARED}
    base.update(ROS_DOMAIN_ID=str(random.SystemRandom().randint(1, 101)))
    me = [sys.executable, __file__, "--kind", kind, "--messages", str(messages)]
    sub = subprocess.Popen(me + ["--role", "sub", "--qos", sub_qos], env={**base, **CONFIGS[subscriber]},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pub = subprocess.Popen(me + ["--role", "pub", "--qos", pub_qos, "--size", str(size), "--period", str(period_s)],
                           env={**base, **CONFIGS[publisher]}, stderr=subprocess.PIPE, text=True)
    out, sub_err = sub.communicate(timeout=180)
    _, pub_err = pub.communicate(timeout=60)
    got = json.loads(out.strip().splitlines()[-1]) if out.strip() else []
    errors = [line for line in (sub_err + pub_err).splitlines() if "Error]" in line or "Warning]" in line]
    result = {"kind": kind, "size": size, "publisher": publisher, "publisher_qos": pub_qos, "subscriber": subscriber,
              "subscriber_qos": sub_qos, "sent": messages, "received": len(got)}
    if got:
        q = np.percentile(got, [50, 95])
        result.update(p50_ms=float(q[0]), p95_ms=float(q[1]), min_ms=float(min(got)))
    if errors:
        result["dds_messages"] = errors[:3]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["bench", "pub", "sub"], default="bench")
    parser.add_argument("--n", type=int, default=131_072, help="Gaussians per message (codec)")
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--period", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--kind", choices=["cloud", "image"], help="pub/sub roles: the message")
    parser.add_argument("--size", help="pub role: Gaussians (cloud) or WxH (image)")
    parser.add_argument("--qos", choices=["latched", "input", "sensor", "default"], help="pub/sub roles: the QoS")
    add_out_argument(parser)
    args = parser.parse_args()
    if args.role == "pub":
        return _publisher(args.kind, args.size, args.qos, args.messages, args.period)
    if args.role == "sub":
        return _subscriber(args.kind, args.qos, args.messages, timeout_s=60 + args.messages * 2)
    report = {
        "bench": "pointcloud2",
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_1m": os.getloadavg()[0]},
        "codec": codec(args.n, args.repeats),
        "latency": [latency(*case, args.messages, args.period) for case in CASES],
    }
    write_results("pointcloud2", report, args.out)


if __name__ == "__main__":
    main()
