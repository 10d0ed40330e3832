"""`hgm_node` console script: `hgm_node [--ros-args -p key:=value --params-file launch/params.yaml -r image:=/cam/image_raw]`."""

from __future__ import annotations

import logging
import sys

import rclpy
from rclpy.executors import ExternalShutdownException


def main(args: list[str] | None = None) -> int:
    # The worker link logs through `logging`; show its state changes next to the node's own log.
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    rclpy.init(args=args)
    from hgm_node.node import HgmNode  # after init: parameter errors then print as ROS errors

    node = None
    try:
        node = HgmNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as e:  # an invalid parameter value
        print(f"hgm_node: error: {e}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
