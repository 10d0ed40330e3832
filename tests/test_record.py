"""MCAP recording and playback in a real (in-process) ROS 2 graph, read back with the `mcap`
reader and `mcap_ros2`'s decoder (which parses the stored schema text: independent of rclpy)."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from mcap.reader import make_reader  # noqa: E402
from mcap_ros2.decoder import DecoderFactory  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from hgm_core.io.pointcloud import unpack_gaussians  # noqa: E402
from hgm_node.conversions import gaussians_to_pointcloud2, skeleton_to_markers  # noqa: E402
from hgm_node.qos import LATCHED_QOS  # noqa: E402
from hgm_node.record import McapSink, RecordError, TopicRecorder, message_definition, play  # noqa: E402
from hgm_node.record_cli import topic_table  # noqa: E402


@pytest.fixture
def ros():
    context = Context()
    rclpy.init(context=context, domain_id=random.randint(100, 200))
    executor = SingleThreadedExecutor(context=context)
    yield context, executor
    executor.shutdown()
    rclpy.try_shutdown(context=context)


def _spin_until(executor, condition, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.05)
    return condition()


def _image(i: int) -> Image:
    pixels = np.full((6, 8, 3), 40 * i, np.uint8)
    return Image(header=Header(frame_id="cam", stamp=rclpy.time.Time(seconds=100 + i, nanoseconds=i * 1000).to_msg()),
                 height=6, width=8, encoding="rgb8", step=24, data=pixels.tobytes())


def _record(ros, path):
    """A camera and an avatar publisher, recorded by a TopicRecorder found from the graph; returns what was published."""
    context, executor = ros
    camera, avatar, recorder_node = (Node(n, context=context) for n in ("camera", "avatar", "recorder"))
    for node in (camera, avatar, recorder_node):
        executor.add_node(node)
    image_pub = camera.create_publisher(Image, "image", 10)
    info_pub = camera.create_publisher(CameraInfo, "camera_info", 10)
    cloud_pub = avatar.create_publisher(PointCloud2, "human_gaussians", LATCHED_QOS)
    body_pub = avatar.create_publisher(MarkerArray, "human_body", LATCHED_QOS)
    raw = np.random.default_rng(0).normal(size=(40, 14)).astype(np.float32)
    header = Header(frame_id="cam", stamp=rclpy.time.Time(seconds=102).to_msg())
    cloud_pub.publish(gaussians_to_pointcloud2(raw, header))  # before the recorder: latched, it still gets it
    body_pub.publish(skeleton_to_markers(np.array([[0, 0, 2], [0, -0.5, 2]], np.float32), ((0, 1),), header))

    sink = McapSink(path)
    recorder = TopicRecorder(recorder_node, sink)
    wanted = ["/image", "/camera_info", "/human_gaussians", "/human_body"]
    added: list[str] = []
    assert _spin_until(executor, lambda: added.extend(recorder.add_from_graph(wanted)) or len(added) == 4), added
    assert _spin_until(executor, lambda: image_pub.get_subscription_count() and info_pub.get_subscription_count())
    images = [_image(i) for i in range(3)]
    for msg in images:
        image_pub.publish(msg)
        info_pub.publish(CameraInfo(header=msg.header, width=8, height=6, k=[5.0, 0, 4, 0, 5, 3, 0, 0, 1]))
        executor.spin_once(timeout_sec=0.05)
        time.sleep(0.1)
    assert _spin_until(executor, lambda: sum(s.messages for s in sink.topics.values()) == 8)
    sink.close()
    return images, raw, sink


def _read(path) -> list:
    with open(path, "rb") as f:
        return list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(log_time_order=True))


def test_a_recording_reads_back_with_topics_types_stamps_and_contents(ros, tmp_path):
    path = tmp_path / "run.mcap"
    images, raw, sink = _record(ros, path)
    table = topic_table(sink.topics)
    print(table)
    assert "| /image | sensor_msgs/msg/Image | 3 |" in table
    records = _read(path)
    by_topic: dict[str, list] = {}
    for schema, channel, message, decoded in records:
        by_topic.setdefault(channel.topic, []).append((schema, channel, message, decoded))
        assert channel.message_encoding == "cdr" and schema.encoding == "ros2msg"
    assert {t: len(v) for t, v in by_topic.items()} == {"/image": 3, "/camera_info": 3, "/human_gaussians": 1, "/human_body": 1}
    assert {t: v[0][0].name for t, v in by_topic.items()} == {
        "/image": "sensor_msgs/msg/Image", "/camera_info": "sensor_msgs/msg/CameraInfo",
        "/human_gaussians": "sensor_msgs/msg/PointCloud2", "/human_body": "visualization_msgs/msg/MarkerArray"}
    for (_, _, message, decoded), sent in zip(by_topic["/image"], images):
        assert (decoded.header.stamp.sec, decoded.header.stamp.nanosec) == (sent.header.stamp.sec, sent.header.stamp.nanosec)
        assert bytes(decoded.data) == bytes(sent.data) and decoded.encoding == "rgb8" and decoded.header.frame_id == "cam"
    log_times = [m.log_time for _, _, m, _ in records]
    assert log_times == sorted(log_times) and abs(log_times[-1] / 1e9 - time.time()) < 60  # receive times, now
    cloud = by_topic["/human_gaussians"][0][3]
    got, _ = unpack_gaussians(cloud.fields, cloud.point_step, bytes(cloud.data))
    np.testing.assert_array_equal(got, raw)
    assert cloud.header.stamp.sec == 102
    assert len(by_topic["/human_body"][0][3].markers) == 2


def test_play_publishes_the_recording_again_in_order(ros, tmp_path):
    path = tmp_path / "run.mcap"
    images, _, _ = _record(ros, path)
    context, executor = ros
    player, listener = Node("player", context=context), Node("listener", context=context)
    executor.add_node(listener)
    got: list[tuple[float, tuple[int, int], bytes]] = []
    listener.create_subscription(Image, "/image", lambda m: got.append((time.monotonic(), (m.header.stamp.sec, m.header.stamp.nanosec),
                                                                        bytes(m.data))), 10)
    stats = None

    def run_play():
        nonlocal stats
        stats = play(player, path, topics=["/image"], rate=2.0)

    thread = threading.Thread(target=run_play)
    thread.start()
    assert _spin_until(executor, lambda: len(got) == 3 and not thread.is_alive(), 20), len(got)
    thread.join()
    assert stats.topics == {"/image": 3}
    # play's publishers exist (and are matched) before the first message: all three arrive, in order, intact
    assert [(s, data) for _, s, data in got] == [((m.header.stamp.sec, m.header.stamp.nanosec), bytes(m.data)) for m in images]
    gaps = np.diff([t for t, _, _ in got])
    recorded = np.diff([m.log_time / 1e9 for _, c, m, _ in _read(path) if c.topic == "/image"])
    assert gaps.sum() > 0.5 * recorded.sum() / 2.0  # spaced as recorded at rate 2, not all at once


def test_unknown_types_and_bad_files_are_refused(tmp_path):
    with pytest.raises(RecordError, match="no message definition"):
        message_definition("nope_msgs/msg/Nothing")
    assert message_definition("gsplat_msgs/msg/SplatArray").startswith("gsplat_msgs/Splat[] splats")
    (tmp_path / "bad.mcap").write_bytes(b"not an mcap file")
    with pytest.raises(RecordError, match="cannot play"):
        play(None, tmp_path / "bad.mcap")
    with pytest.raises(RecordError, match="cannot record"):
        McapSink(tmp_path / "bad.mcap" / "x.mcap")


def test_the_node_records_its_inputs_and_outputs(tmp_path):
    """hgm_node with `record:=FILE` (real node and worker processes, tests/test_node_ros.py's graph)."""
    from tests.test_node_ros import Graph, _frame, _rgb

    path = tmp_path / "node.mcap"
    graph = Graph(tmp_path, node_params={"record": str(path)})
    try:
        graph.ready()
        rgb = _rgb(3)
        graph.publish_until(_frame(rgb, 303), lambda: graph.published() >= 1, 60.0, "a published avatar")
        time.sleep(0.5)  # the latched outputs reach the recorder's own subscriptions
    finally:
        graph.close()  # SIGINT: the node closes the file (index and summary written)
    assert graph.node.returncode == 0, graph.log()
    records = _read(path)
    topics = {c.topic: s.name for s, c, _, _ in records}
    assert topics == {"/image": "sensor_msgs/msg/Image", "/camera_info": "sensor_msgs/msg/CameraInfo",
                      "/human_gaussians": "sensor_msgs/msg/PointCloud2", "/human_body": "visualization_msgs/msg/MarkerArray",
                      "/human_body/joints": "geometry_msgs/msg/PoseArray", "/human_mesh": "visualization_msgs/msg/Marker"}
    images = [d for _, c, _, d in records if c.topic == "/image"]
    assert images and all((d.header.stamp.sec, d.header.stamp.nanosec) == (303, 7) for d in images)
    assert bytes(images[0].data) == rgb.tobytes()
    cloud = next(d for _, c, _, d in records if c.topic == "/human_gaussians")
    assert (cloud.header.stamp.sec, cloud.header.frame_id, cloud.width) == (303, "test_camera_optical", 48 * 64)
    first_image = min(m.log_time for _, c, m, _ in records if c.topic == "/image")
    first_cloud = min(m.log_time for _, c, m, _ in records if c.topic == "/human_gaussians")
    assert first_image < first_cloud  # the frame came in before its avatar went out
