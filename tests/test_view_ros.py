"""`hgm view` following the node's topics: the latched avatar and its skeleton from a real
(in-process) ROS 2 graph become one AvatarUpdate each."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from hgm_node.conversions import gaussians_to_pointcloud2, skeleton_to_markers  # noqa: E402
from hgm_node.qos import LATCHED_QOS  # noqa: E402
from hgm_view.ros_source import AvatarTopics  # noqa: E402


def test_the_viewer_gets_the_avatar_and_then_its_skeleton():
    context = Context()
    rclpy.init(context=context, domain_id=random.randint(100, 200))
    executor = SingleThreadedExecutor(context=context)
    try:
        node = Node("fake_hgm_node", context=context)
        cloud_pub = node.create_publisher(PointCloud2, "human_gaussians", LATCHED_QOS)
        body_pub = node.create_publisher(MarkerArray, "human_body", LATCHED_QOS)
        raw = np.random.default_rng(0).normal(size=(30, 14)).astype(np.float32)
        joints = np.array([[0, 0, 2], [0, -0.5, 2], [0.2, -0.4, 2]], np.float32)
        header = Header(frame_id="cam", stamp=rclpy.time.Time(seconds=7, nanoseconds=5).to_msg())
        cloud_pub.publish(gaussians_to_pointcloud2(raw, header))  # as the node does: the cloud first
        body_pub.publish(skeleton_to_markers(joints, ((0, 1), (1, 2)), header))
        got = []
        viewer = AvatarTopics(got.append, context=context)  # started after: latched, it still gets both
        executor.add_node(node)
        executor.add_node(viewer)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (got and len(got[-1].joints)):
            executor.spin_once(timeout_sec=0.05)
        last = got[-1]
        np.testing.assert_array_equal(last.raw, raw)
        np.testing.assert_allclose(last.joints, joints)
        np.testing.assert_allclose(last.segments, joints[[[0, 1], [1, 2]]])
        assert (last.stamp, last.frame_id) == (pytest.approx(7.000000005), "cam")
        assert len(got) <= 2  # at most once without the skeleton, once with it
    finally:
        executor.shutdown()
        rclpy.try_shutdown(context=context)
