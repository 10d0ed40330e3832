"""Bring up hgm: `hgm_node` (which starts its own local worker unless told where one runs).

    ros2 launch hgm bringup.launch.py
    ros2 launch hgm bringup.launch.py image:=/camera/color/image_raw camera_info:=/camera/color/camera_info
    ros2 launch hgm bringup.launch.py worker_endpoint:=tcp://gpu-host:5555
    ros2 launch hgm bringup.launch.py start_worker:=true worker_endpoint:=ipc:///tmp/hgm.sock

Arguments: see ARGUMENTS below (`ros2 launch hgm bringup.launch.py --show-args`). The node's
parameters come from `params_file` (default: params.yaml next to this file); `worker_endpoint`
given here overrides the file's. Fast DDS is pointed at fastdds_large.xml (large-data transports)
unless `fastdds_profile:=''`.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

HERE = os.path.dirname(os.path.abspath(__file__))
SOCKET_BUFFER_BYTES = 4 << 20
"""fastdds_large.xml asks for 4 MiB socket buffers; the kernel must allow them."""

ARGUMENTS = (
    ("image", "image", "input sensor_msgs/Image topic"),
    ("image_compressed", "image/compressed", "input sensor_msgs/CompressedImage topic (params image_transport: compressed)"),
    ("camera_info", "camera_info", "input sensor_msgs/CameraInfo topic"),
    ("mask", "mask", "optional person mask topic (mono8/mono16 Image, nonzero = person; params use_mask: true)"),
    ("namespace", "", "namespace of the node and its output topics"),
    ("params_file", os.path.join(HERE, "params.yaml"), "hgm_node parameter file"),
    ("worker_endpoint", "", "worker/broker endpoint; empty: the node starts and supervises a local worker"),
    ("start_worker", "false", "true: run `hgm serve --bind <worker_endpoint>` as its own launch process"),
    ("fastdds_profile", os.path.join(HERE, "fastdds_large.xml"), "Fast DDS XML profile; empty: leave the environment alone"),
)


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_setup)]
    )


def _setup(context, *args, **kwargs) -> list:
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    actions = _transport_env(arg["fastdds_profile"])
    endpoint = arg["worker_endpoint"]
    if arg["start_worker"].lower() in ("true", "1", "yes"):
        if not endpoint:
            raise RuntimeError("start_worker:=true needs worker_endpoint:=... (e.g. ipc:///tmp/hgm.sock)")
        actions.append(ExecuteProcess(cmd=["hgm", "serve", "--bind", endpoint], name="hgm_worker", output="screen",
                                      respawn=True, respawn_delay=2.0))
    parameters = [arg["params_file"]] + ([{"worker_endpoint": endpoint}] if endpoint else [])
    actions.append(
        Node(
            package="hgm",
            executable="hgm_node",
            name="hgm_node",
            namespace=arg["namespace"],
            output="screen",
            parameters=parameters,
            remappings=[
                ("image", arg["image"]),
                ("image/compressed", arg["image_compressed"]),
                ("camera_info", arg["camera_info"]),
                ("mask", arg["mask"]),
            ],
        )
    )
    return actions


def _transport_env(profile: str) -> list:
    if not profile:
        return []
    if _socket_buffer_limit() < SOCKET_BUFFER_BYTES:
        return [
            LogInfo(msg=f"net.core.rmem_max/wmem_max < {SOCKET_BUFFER_BYTES} bytes: not using {profile}; "
                        "falling back to FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA"),
            SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA"),
        ]
    # Fast DDS 3 reads FASTDDS_DEFAULT_PROFILES_FILE; 2.x (Humble, Jazzy) reads the FASTRTPS_ name.
    return [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile),
            SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", profile)]


def _socket_buffer_limit() -> int:
    try:
        return min(int(open(f"/proc/sys/net/core/{name}").read()) for name in ("rmem_max", "wmem_max"))
    except (OSError, ValueError):
        return SOCKET_BUFFER_BYTES  # not Linux, or hidden: let Fast DDS report it
