"""Hostile camera input for hgm_node (issue #17): property-based fuzzing of the Image / CameraInfo
conversions, then hostile messages over real rclpy/DDS to a running node, which must stay up.

The graph (node process, `PixelSplatHandler` worker process, this process as the camera) is the
one of tests/test_node_ros.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from hgm_core.serve.schema import check_camera  # noqa: E402
from hgm_node.conversions import (  # noqa: E402
    IMAGE_ENCODINGS,
    ImageConversionError,
    camera_info_to_K,
    compressed_to_rgb,
    image_to_mask,
    image_to_rgb,
)

MAX_PIXELS = 200_000
UINT32 = st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1))
encodings = st.one_of(st.sampled_from(list(IMAGE_ENCODINGS)), st.text(max_size=12))
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def images(draw) -> Image:
    """An Image whose header fields may contradict each other and its data."""
    h, w = draw(UINT32), draw(UINT32)
    encoding = draw(encodings)
    channels, depth, _ = IMAGE_ENCODINGS.get(encoding, (3, 1, None))
    step = draw(st.one_of(st.just(w * channels * depth), UINT32))
    size = min(step * h, 4096) if draw(st.booleans()) else draw(st.integers(0, 512))
    return Image(height=h, width=w, encoding=encoding, is_bigendian=draw(st.booleans()), step=step, data=bytes(size))


floats = st.one_of(st.floats(), st.sampled_from([0.0, 1e39, -1e39, 1e-30, 3.4e38, 500.0, 320.0, 240.0, 1.0]))


@settings(max_examples=400, **FUZZ)
@given(images())
def test_any_image_converts_or_raises_image_conversion_error(msg):
    for convert in (image_to_rgb, image_to_mask):
        try:
            out = convert(msg, MAX_PIXELS)
        except ImageConversionError:
            continue
        assert out.dtype == np.uint8 and out.shape[:2] == (msg.height, msg.width)


@settings(max_examples=200, **FUZZ)
@given(st.binary(max_size=300), st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "tiff", ""]))
def test_any_compressed_image_decodes_or_raises_image_conversion_error(data, fmt):
    for head in (b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"):
        try:
            compressed_to_rgb(CompressedImage(format=fmt, data=head + data), MAX_PIXELS)
        except ImageConversionError:
            pass


@settings(max_examples=400, **FUZZ)
@given(st.lists(floats, min_size=9, max_size=9), UINT32, UINT32, st.integers(1, 4096), st.integers(1, 4096))
def test_any_camera_info_gives_usable_intrinsics_or_none(k, info_w, info_h, w, h):
    K = camera_info_to_K(CameraInfo(width=info_w, height=info_h, k=k), w, h)
    if K is not None:  # what the node sends, the worker accepts
        assert K.dtype == np.float64 and check_camera(K, w, h).K is not None


# -- a live node ---------------------------------------------------------------------------------


def test_node_fed_hostile_images_and_camera_infos_stays_up(tmp_path):
    from tests.test_node_ros import Graph, _frame, _rgb

    graph = Graph(tmp_path, node_params={"max_image_pixels": MAX_PIXELS})
    try:
        graph.ready()
        rng = np.random.default_rng(17)
        hostile_infos = [CameraInfo(width=64, height=48, k=[float(v) for v in k]) for k in (
            [1e39, 0.0, 32, 0, 1e39, 24, 0, 0, 1], [1e-30, 0.0, 32, 0, 1e-30, 24, 0, 0, 1], [np.nan] * 9,
            [np.inf, 0, 32, 0, 60, 24, 0, 0, 1], [60, 0, 32, 0, 60, 24, 0, 0, 0], [-60, 0, 32, 0, -60, 24, 0, 0, 1],
        )] + [CameraInfo(width=1, height=2**32 - 1, k=[60.0, 0, 32, 0, 60, 24, 0, 0, 1])]
        hostile_images = [
            Image(height=2**32 - 1, width=2**32 - 1, encoding="rgb8", step=2**32 - 1, data=b"\0" * 16),
            Image(height=48, width=64, encoding="rgb8", step=1, data=b"\0" * 100),
            Image(height=48, width=64, encoding="rgb16", step=64 * 6, data=b"\0" * 10),
            Image(height=48, width=64, encoding="32FC1", step=64 * 4, data=b"\0" * (64 * 4 * 48)),
            Image(height=0, width=64, encoding="rgb8", step=192, data=b""),
            Image(height=1000, width=1000, encoding="mono8", step=1000, data=b"\0" * 1_000_000),  # over max_image_pixels
            Image(height=48, width=64, encoding="\0\xff", step=192, data=b"\0" * (192 * 48)),
        ]
        for i in range(60):
            info = hostile_infos[i % len(hostile_infos)]
            info.header = Header(frame_id="test_camera_optical")
            graph.info_pub.publish(info)
            image = hostile_images[i % len(hostile_images)]
            image.header = Header(stamp=Time(sec=500 + i), frame_id="test_camera_optical")
            graph.image_pub.publish(image)
            if i % 10 == 0:  # a sane frame among the hostile ones: with a hostile K it runs at the default FOV
                graph.image_pub.publish(_frame(_rgb(int(rng.integers(1000))), 600 + i))
        before = graph.published()
        graph.send_info()
        graph.publish_until(_frame(_rgb(7), 700), lambda: graph.published() > before, 60.0, "a job after the hostile input")
        assert graph.node.poll() is None and graph.worker.poll() is None
        assert int(graph.diag("pipeline").get("frames_rejected", 0)) > 0, graph.diagnostics
    finally:
        graph.close()
