"""`hgm play FILE.mcap`: publish a recording's messages again with their original timing.

With `--topics image camera_info` only the camera is replayed, so a running hgm_node reconstructs
the recorded frames again (offline, reproducibly); without it, everything, including the recorded
avatars (latched, for RViz or `hgm view`).
"""

from __future__ import annotations

import argparse
import sys
import time

HELP = "publish an MCAP recording again with its timing (e.g. the camera frames, for a live hgm_node)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an MCAP file (from `hgm record`, the node's `record` parameter or rosbag2)")
    p.add_argument("--topics", nargs="+", help="only these topics (default: all)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    p.add_argument("--linger", type=float, default=1.0, help="seconds to stay up after the last message, so "
                   "subscribers get it (default 1.0)")
    p.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], help="ROS arguments (namespace, remappings)")


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.node import Node

    from hgm_node.record import RecordError, play

    if args.rate <= 0:
        print("hgm play: error: --rate must be > 0", file=sys.stderr)
        return 2
    rclpy.init(args=["hgm_play", "--ros-args", *args.ros_args])
    node = Node("hgm_play")
    try:
        topics = None if args.topics is None else [node.resolve_topic_name(t) for t in args.topics]
        stats = play(node, args.file, rate=args.rate, topics=topics)
        time.sleep(args.linger)
    except RecordError as e:
        print(f"hgm play: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    per_topic = ", ".join(f"{t} {n}" for t, n in sorted(stats.topics.items()))
    print(f"hgm play: published {stats.messages} messages ({per_topic})")
    return 0
