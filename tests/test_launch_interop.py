"""What bringup.launch.py decides, end to end with peers that run ROS 2's defaults (issue #10).

The launch file cannot run here (no `launch`/`launch_ros` wheels), so its own functions compute what
it decides (the stand-ins of tests/test_launch.py) and this test starts exactly that: `hgm_node` with
the environment the launch file sets and the parameters and remappings of its Node action. Around it
run processes that know nothing of hgm's Fast DDS settings, as on a user's robot: a camera-driver-like
process publishing Image + CameraInfo and an AR-client-like subscriber of /human_gaussians, both with
ROS 2's default QoS (reliable, depth 10; or a best-effort camera, as drivers using the sensor-data
profile are) and middleware settings. The worker is the real `Worker` in
this process serving `PixelSplatHandler` on at most 131,072 pixels, so avatars are as large as the
product's biggest (7.9 MB) without the pipeline's cost; the colours of the avatar's points are the
image's pixels, so the avatar arriving proves the frame arrived intact.

Discovery is ROS 2's default (multicast with TTL 1, unicast on this host's addresses) on a free domain
id from 215-232, which no other test uses. Not ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: with it
rmw_fastrtps adds its own shared-memory and UDP transports to every participant, which hides exactly
the mismatch under test. The peers' roles run as `python -m tests.test_launch_interop camera|client`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from hgm_core.io.pointcloud import unpack_gaussians  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_GAUSSIANS = 131_072
"""The largest avatar the product promises to deliver (issue #10): 7.9 MB of PointCloud2."""
CAMERA_FRAME = "camera_color_optical_frame"
FIRST_STAMP_SEC = 1000
DDS_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS",
                 "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS", "RMW_IMPLEMENTATION")
"""Cleared for every process: what a user's shell may set beyond ROS 2's defaults."""
PEERS = {
    "defaults": {},
    # A peer on another host reaches the node only over UDP (no shared memory between hosts); a peer
    # on this host restricted to UDPv4 takes exactly that path.
    "udp_only": {"FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"},
}


def free_domain_id() -> int:
    """A ROS domain id in 215-232 whose first participant port is free on this host.

    Those ids keep Fast DDS's ports (7400 + 250 * id + ...) above Linux's ephemeral range and away from
    the 1-101 the other ROS tests draw from."""
    ids = list(range(215, 233))
    random.SystemRandom().shuffle(ids)
    for domain in ids:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", 7400 + 250 * domain + 10))
            except OSError:
                continue
            return domain
    raise RuntimeError("no free ROS domain id in 215-232")


def ros_defaults(domain: int, **extra: str) -> dict[str, str]:
    """This process's environment with ROS 2's default middleware settings on `domain`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in DDS_VARIABLES}
    return {**env, "ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1", **extra}


def camera_image(width: int, height: int) -> np.ndarray:
    """The camera's frame: random RGB, the same in every process for one size."""
    return np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)




def launched_node(**launch_args: str) -> tuple[dict[str, str], list[str]]:
    """What `ros2 launch hgm bringup.launch.py` with `launch_args` runs: the environment variables its
    actions set and the `hgm_node` command line of its Node action (`python -m hgm_node.main` is the
    package's `hgm_node` executable)."""
    from tests.test_launch import by_type, load_bringup, run_bringup

    actions = run_bringup(load_bringup(), **launch_args)
    env = {a.args[0]: a.args[1] for a in by_type(actions, "SetEnvironmentVariable")}
    (node,) = by_type(actions, "Node")
    args = ["--ros-args", "-r", f"__node:={node.kwargs['name']}"]
    if node.kwargs["namespace"]:
        args += ["-r", f"__ns:={node.kwargs['namespace']}"]
    for entry in node.kwargs["parameters"]:
        args += ["--params-file", entry] if isinstance(entry, str) else [a for k, v in entry.items() for a in ("-p", f"{k}:={v}")]
    args += [a for src, dst in node.kwargs["remappings"] for a in ("-r", f"{src}:={dst}")]
    return env, [sys.executable, "-m", "hgm_node.main", *args]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.parametrize(
    ("width", "height", "peers", "camera_qos"),
    [
        pytest.param(640, 480, "defaults", "default", id="640x480"),
        pytest.param(1920, 1080, "defaults", "default", id="1920x1080"),
        # Best effort loses large frames to any lost fragment whatever the node does; this one is small.
        pytest.param(320, 240, "defaults", "sensor_data", id="320x240-best-effort-camera"),
        pytest.param(1920, 1080, "udp_only", "default", id="1920x1080-udp-peers"),
    ],
)
def test_launched_node_talks_to_default_peers(tmp_path, monkeypatch, width, height, peers, camera_qos):
    from tests.handlers import PixelSplatHandler, running_worker  # torch: only the test process needs it

    class CappedPixelSplatHandler(PixelSplatHandler):
        """One Gaussian per pixel for the first MAX_GAUSSIANS pixels (raster order)."""

        def __call__(self, request):
            keep = np.zeros(request.image.shape[:2], np.uint8)
            keep.reshape(-1)[:MAX_GAUSSIANS] = 1
            return super().__call__(dataclasses.replace(request, mask=keep))

    # Launched from a Kilted shell (setup.bash sets ROS_DISTRO) that configures no Fast DDS of its own.
    monkeypatch.setenv("ROS_DISTRO", "kilted")
    for name in DDS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    domain = free_domain_id()
    endpoint = f"ipc://{tmp_path}/worker.sock"
    launch_env, node_command = launched_node(image="/camera/image_raw", camera_info="/camera/camera_info",
                                             worker_endpoint=endpoint)
    peer_env = ros_defaults(domain, **PEERS[peers])
    me = [sys.executable, "-m", "tests.test_launch_interop"]
    out = tmp_path / "human_gaussians.cdr"
    with running_worker(CappedPixelSplatHandler(), bind=endpoint), open(tmp_path / "node.log", "w+") as log:
        processes = [
            subprocess.Popen(node_command, cwd=REPO, env=ros_defaults(domain, **launch_env), stdout=log, stderr=subprocess.STDOUT),
            subprocess.Popen(me + ["client", "--out", str(out), "--timeout", "45"], cwd=REPO, env=peer_env),
            subprocess.Popen(me + ["camera", "--width", str(width), "--height", str(height), "--qos", camera_qos,
                                   "--seconds", "60"], cwd=REPO, env=peer_env),
        ]
        try:
            client_code = processes[1].wait(60)
        finally:
            for p in processes:
                _stop(p)
        log.seek(0)
        node_log = log.read()
    assert client_code == 0, f"the default-configured client got no avatar; launch env {launch_env}; node log:\n{node_log[-3000:]}"

    cloud = deserialize_message(out.read_bytes(), PointCloud2)
    n = min(width * height, MAX_GAUSSIANS)
    assert cloud.header.frame_id == CAMERA_FRAME and cloud.header.stamp.sec >= FIRST_STAMP_SEC
    assert (cloud.height, cloud.width) == (1, n)
    _, colors = unpack_gaussians(cloud.fields, cloud.point_step, cloud.data)
    np.testing.assert_array_equal(colors, camera_image(width, height).reshape(-1, 3)[:n])  # the frame arrived intact
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in node_log, node_log  # Fast DDS 3 (Kilted) warns about the old name
    # The node takes the camera's reliability: reliable from a reliable camera, else best effort.
    assert ("subscribing reliable" in node_log) == (camera_qos == "default"), node_log


# -- peer processes: ROS 2 defaults, nothing from hgm ----------------------------------------------


def camera(argv: list[str]) -> int:
    """A camera driver: Image (rgb8) + CameraInfo on /camera/*, 2 Hz, for `--seconds`, with ROS 2's default
    QoS or the sensor-data one (best effort)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--qos", choices=["default", "sensor_data"], required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    w, h = args.width, args.height
    qos = 10 if args.qos == "default" else qos_profile_sensor_data
    rclpy.init()
    node = rclpy.create_node("camera_driver")
    image_pub = node.create_publisher(Image, "/camera/image_raw", qos)
    info_pub = node.create_publisher(CameraInfo, "/camera/camera_info", qos)
    image = Image(height=h, width=w, encoding="rgb8", step=3 * w, data=camera_image(w, h).tobytes())
    f = 0.5 * w / np.tan(np.radians(30))
    info = CameraInfo(width=w, height=h, k=[f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0])
    image.header.frame_id = info.header.frame_id = CAMERA_FRAME
    deadline = time.monotonic() + args.seconds
    sec = FIRST_STAMP_SEC
    try:
        while time.monotonic() < deadline:
            image.header.stamp.sec = info.header.stamp.sec = sec
            info_pub.publish(info)
            image_pub.publish(image)
            sec += 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def client(argv: list[str]) -> int:
    """An AR client: the first /human_gaussians message, default QoS, saved as received (CDR bytes)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    rclpy.init()
    node = rclpy.create_node("ar_client")
    received: list[bytes] = []
    node.create_subscription(PointCloud2, "/human_gaussians", received.append, 10, raw=True)
    deadline = time.monotonic() + args.timeout
    try:
        while not received and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    if received:
        args.out.write_bytes(received[0])
    node.destroy_node()
    rclpy.try_shutdown()
    return 0 if received else 1


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    sys.exit({"camera": camera, "client": client}[role](rest))
