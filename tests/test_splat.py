"""gsplat_msgs/SplatArray bytes from one numpy buffer, checked with an independent decoder: rosbags
registers the message types from their definition text and decodes (and re-encodes) the CDR."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from hgm_node.splat import SPLAT_ARRAY_MSG, SPLAT_ARRAY_TYPE, SPLAT_MSG, SPLAT_TYPE, encode_splat_array


@pytest.fixture(scope="module")
def typestore():
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(SPLAT_MSG, SPLAT_TYPE) | get_types_from_msg(SPLAT_ARRAY_MSG, SPLAT_ARRAY_TYPE))
    return store


def _rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, 14)).astype(np.float32)
    raw[:, 7:10] = rng.uniform(-6, -2, size=(n, 3))  # log scales of 2.5 mm .. 14 cm
    return raw


def _rotmat(q_wxyz: np.ndarray) -> np.ndarray:
    w, x, y, z = q_wxyz / np.linalg.norm(q_wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


@pytest.mark.parametrize("frame_id", ["cam", "camera_color_optical_frame", ""])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_the_splat_array_decodes_to_the_avatar(typestore, frame_id, degree):
    n = 7
    raw = _rows(n)
    rest = np.random.default_rng(1).normal(size=(n, (degree + 1) ** 2 - 1, 3)).astype(np.float32) if degree else None
    data = encode_splat_array(raw, (1700000000, 123456789), frame_id, rest)
    msg = typestore.deserialize_cdr(data, SPLAT_ARRAY_TYPE)
    assert len(msg.splats) == n
    for i, s in enumerate(msg.splats):
        assert (s.pose.header.stamp.sec, s.pose.header.stamp.nanosec, s.pose.header.frame_id) == (1700000000, 123456789, frame_id)
        p, q = s.pose.pose.pose.position, s.pose.pose.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], raw[i, :3])
        q_ref = raw[i, 10:14] / np.linalg.norm(raw[i, 10:14])
        np.testing.assert_allclose([q.x, q.y, q.z, q.w], q_ref[[1, 2, 3, 0]], rtol=1e-6, atol=1e-7)
        cov = np.asarray(s.pose.pose.covariance).reshape(6, 6)
        R = _rotmat(raw[i, 10:14].astype(np.float64))
        np.testing.assert_allclose(cov[:3, :3], R @ np.diag(np.exp(2 * raw[i, 7:10].astype(np.float64))) @ R.T,
                                   rtol=1e-5, atol=1e-12)
        assert not cov[3:].any() and not cov[:, 3:].any()
        assert s.opacity == round(255 / (1 + np.exp(-float(raw[i, 6]))))
        assert s.harmonics_deg == degree
        sh = np.asarray(s.spherical_harmonics).reshape(-1, 3)  # coefficient-major, RGB interleaved
        assert len(sh) == (degree + 1) ** 2
        np.testing.assert_array_equal(sh[0], raw[i, 3:6])
        if degree:
            np.testing.assert_array_equal(sh[1:], rest[i])
    # rosbags writes the same bytes back: same alignment and padding, nothing left over
    assert bytes(typestore.serialize_cdr(msg, SPLAT_ARRAY_TYPE)) == data


def test_an_empty_avatar_is_an_empty_array(typestore):
    data = encode_splat_array(np.zeros((0, 14), np.float32), (0, 0), "cam")
    assert data == b"\x00\x01\x00\x00" + b"\x00" * 4
    assert len(typestore.deserialize_cdr(data, SPLAT_ARRAY_TYPE).splats) == 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\[N, 14\]"):
        encode_splat_array(np.zeros((3, 13), np.float32), (0, 0), "cam")
    with pytest.raises(ValueError, match="sh_rest"):
        encode_splat_array(_rows(3), (0, 0), "cam", np.zeros((3, 4, 3), np.float32))


def _gsplat_msgs_missing() -> bool:
    try:
        import gsplat_msgs.msg  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(_gsplat_msgs_missing(), reason="gsplat_msgs is not importable (no wheel; build RVizSplat's "
                    "message package with colcon and source it to run this)")
def test_a_real_publisher_sends_the_bytes_to_a_typed_subscriber():
    """With a built gsplat_msgs: the node's publisher sends the raw bytes, rclpy decodes them on the other side."""
    import random
    import time

    import rclpy
    from gsplat_msgs.msg import SplatArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from hgm_node.qos import LATCHED_QOS
    from hgm_node.splat import splat_publisher

    context = Context()
    rclpy.init(context=context, domain_id=random.randint(100, 200))
    try:
        publisher_node, subscriber_node = Node("pub", context=context), Node("sub", context=context)
        publisher = splat_publisher(publisher_node, LATCHED_QOS)
        assert publisher is not None and publisher.topic_name == "/human_splats"
        raw = _rows(2000)
        publisher.publish(encode_splat_array(raw, (5, 6), "cam"))
        got = []
        subscriber_node.create_subscription(SplatArray, "human_splats", got.append, LATCHED_QOS)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(subscriber_node)
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        splats = got[0].splats
        assert len(splats) == 2000 and splats[-1].pose.header.frame_id == "cam" and splats[-1].pose.header.stamp.sec == 5
        np.testing.assert_allclose([[s.pose.pose.pose.position.x, s.pose.pose.pose.position.y, s.pose.pose.pose.position.z]
                                    for s in splats], raw[:, :3])
        np.testing.assert_array_equal([s.spherical_harmonics for s in splats], raw[:, 3:6])
    finally:
        rclpy.try_shutdown(context=context)


@pytest.mark.skipif(_gsplat_msgs_missing(), reason="gsplat_msgs is not importable (see above)")
def test_the_node_publishes_the_avatar_on_human_splats(tmp_path):
    """hgm_node and its worker as processes (tests/test_node_ros.py's graph): a frame in, a SplatArray out."""
    import time

    from gsplat_msgs.msg import SplatArray

    from hgm_core.serve.client import WorkerClient
    from hgm_node.qos import LATCHED_QOS
    from tests.test_node_ros import K, Graph, _frame, _rgb

    graph = Graph(tmp_path)
    try:
        got = []
        graph.ros.create_subscription(SplatArray, "human_splats", got.append, LATCHED_QOS)
        graph.ready()
        rgb = _rgb(4)
        graph.publish_until(_frame(rgb, 404), lambda: bool(got), 60.0, "a SplatArray")
        with WorkerClient(graph.endpoint, timeout_s=30) as client:
            expected = client.reconstruct(rgb, K=K).gaussians
        splats = got[-1].splats
        assert len(splats) == len(expected) and splats[0].pose.header.stamp.sec == 404
        np.testing.assert_allclose([[s.pose.pose.pose.position.x, s.pose.pose.pose.position.y, s.pose.pose.pose.position.z]
                                    for s in splats], expected[:, :3])
        time.sleep(0.1)
    finally:
        graph.close()
