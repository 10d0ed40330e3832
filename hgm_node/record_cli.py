"""`hgm record OUT.mcap`: record the hgm topics (camera inputs, avatar outputs) from the ROS graph.

Subscribes to each listed topic once a publisher offers it (types and QoS from the graph), until
Ctrl-C or --duration, then prints one line per topic. `hgm_node`'s parameter `record` does the same
from inside the node. Kept free of hgm_core's command framework: the node package stays torch-free.
"""

from __future__ import annotations

import argparse
import sys
import time

HELP = "record the hgm topics (camera inputs and avatar outputs) to an MCAP file (Foxglove / rosbag2 read it)"
TOPICS = ("image", "image/compressed", "camera_info", "mask", "depth", "human_gaussians", "human_body",
          "human_body/joints", "human_mesh", "human_splats")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="the MCAP file to write")
    p.add_argument("--topics", nargs="+", default=list(TOPICS), help=f"topics to record (default: {' '.join(TOPICS)})")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: at Ctrl-C)")
    p.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], help="ROS arguments (namespace, remappings)")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from hgm_node.record import McapSink, RecordError, TopicRecorder

    rclpy.init(args=["hgm_record", "--ros-args", *args.ros_args])
    node = Node("hgm_record")
    try:
        sink = McapSink(args.output)
    except RecordError as e:
        print(f"hgm record: error: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    recorder = TopicRecorder(node, sink)
    wanted = [node.resolve_topic_name(t) for t in args.topics]
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print(f"hgm record: writing {args.output}, waiting for {len(wanted)} topics; Ctrl-C stops", flush=True)
    start = next_poll = time.monotonic()
    try:
        while not args.duration or time.monotonic() - start < args.duration:
            if time.monotonic() >= next_poll:
                for topic in recorder.add_from_graph(wanted):
                    print(f"hgm record: recording {topic} ({sink.topics[topic].ros_type})", flush=True)
                next_poll = time.monotonic() + 0.5
            executor.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        sink.close()
    print(topic_table(sink.topics, sink.dropped))
    return 0


def topic_table(topics: dict, dropped: int = 0) -> str:
    """Markdown table of a recording's topics (messages, size, time span)."""
    lines = ["| topic | type | messages | MB | first → last (s) |", "|---|---|---|---|---|"]
    for topic, s in sorted(topics.items()):
        span = (s.last_ns - s.first_ns) / 1e9 if s.messages else 0.0
        lines.append(f"| {topic} | {s.ros_type} | {s.messages} | {s.bytes / 1e6:.2f} | {span:.2f} |")
    if dropped:
        lines.append(f"(dropped {dropped} messages: the writer fell behind)")
    return "\n".join(lines)
