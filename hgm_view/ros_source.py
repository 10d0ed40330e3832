"""The page fed from the node's topics: `human_gaussians` (PointCloud2) with the skeleton of
`human_body` (MarkerArray: bones as a LINE_LIST, joints as a SPHERE_LIST), both latched by the
node, so a viewer started late still gets the last avatar."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from hgm_core.io.pointcloud import PointCloudLayoutError, unpack_gaussians
from hgm_node.qos import LATCHED_QOS
from hgm_view.avatar import AvatarUpdate


def _seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _xyz(points) -> np.ndarray:
    return np.array([(p.x, p.y, p.z) for p in points], np.float32).reshape(-1, 3)


def skeleton_from_markers(msg: MarkerArray) -> tuple[np.ndarray, np.ndarray]:
    """`human_body` -> (segments `[S, 2, 3]`, joints `[J, 3]`) from its LINE_LIST and SPHERE_LIST markers."""
    segments, joints = np.zeros((0, 2, 3), np.float32), np.zeros((0, 3), np.float32)
    for marker in msg.markers:
        if marker.type == Marker.LINE_LIST:
            segments = _xyz(marker.points)[: len(marker.points) // 2 * 2].reshape(-1, 2, 3)
        elif marker.type == Marker.SPHERE_LIST:
            joints = _xyz(marker.points)
    return segments, joints


class AvatarTopics(Node):
    """Subscribes to the node's avatar topics and calls `publish(AvatarUpdate)` for every new cloud."""

    def __init__(self, publish: Callable[[AvatarUpdate], object], node_name: str = "hgm_view", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._publish = publish
        self._skeleton = (np.zeros((0, 2, 3), np.float32), np.zeros((0, 3), np.float32))
        self._skeleton_stamp = -1.0
        self._last: AvatarUpdate | None = None
        self._last_skeleton_stamp = -1.0  # stamp of the skeleton sent with `_last`
        self.create_subscription(PointCloud2, "human_gaussians", self._on_cloud, LATCHED_QOS)
        self.create_subscription(MarkerArray, "human_body", self._on_body, LATCHED_QOS)

    def _on_body(self, msg: MarkerArray) -> None:
        self._skeleton = skeleton_from_markers(msg)
        self._skeleton_stamp = _seconds(msg.markers[0].header.stamp) if msg.markers else -1.0
        # The node publishes the cloud first: send the avatar shown again once its own skeleton arrives.
        last = self._last
        if last is not None and self._skeleton_stamp == last.stamp != self._last_skeleton_stamp:
            self._send(last)

    def _on_cloud(self, msg: PointCloud2) -> None:
        try:
            raw, _ = unpack_gaussians(msg.fields, msg.point_step, msg.data, is_bigendian=msg.is_bigendian)
        except PointCloudLayoutError as e:
            self.get_logger().warning(f"human_gaussians ignored: {e}", throttle_duration_sec=5.0)
            return
        self._last = AvatarUpdate(raw=np.array(raw), stamp=_seconds(msg.header.stamp), frame_id=msg.header.frame_id,
                                  source=f"topic {self.resolve_topic_name('human_gaussians')}")
        self._send(self._last)

    def _send(self, update: AvatarUpdate) -> None:
        segments, joints = self._skeleton
        self._last_skeleton_stamp = self._skeleton_stamp
        self._publish(AvatarUpdate(raw=update.raw, segments=segments, joints=joints, stamp=update.stamp,
                                   frame_id=update.frame_id, source=update.source))
