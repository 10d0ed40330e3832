"""Bring up hgm: `hgm_node` (which starts its own local worker unless told where one runs).

    ros2 launch hgm bringup.launch.py
    ros2 launch hgm bringup.launch.py image:=/camera/color/image_raw camera_info:=/camera/color/camera_info
    ros2 launch hgm bringup.launch.py worker_endpoint:=tcp://gpu-host:5555
    ros2 launch hgm bringup.launch.py start_worker:=true worker_endpoint:=ipc:///tmp/hgm.sock

Arguments: see ARGUMENTS below (`ros2 launch hgm bringup.launch.py --show-args`). The node's
parameters come from `params_file` (default: params.yaml next to this file); `worker_endpoint`
given here overrides the file's.

Fast DDS: the node gets fastdds_interop.xml — Fast DDS's own default transports (UDPv4 + shared
memory, what every camera driver, RViz and AR client runs) with larger buffers — so it talks to
default-configured peers on this host and on others. fastdds_large.xml (LARGE_DATA: TCP + shared
memory) is faster for big avatars but talks only to peers that load it too: opt in with
`fastdds_profile:=<share/hgm/launch>/fastdds_large.xml` and point every peer at the same file. When
the environment already configures Fast DDS (a profile file or builtin transports for the whole
graph), the default leaves it alone so the node runs what its peers run.
"""

import os
from collections.abc import Mapping

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROFILE = os.path.join(HERE, "fastdds_interop.xml")
SOCKET_BUFFER_BYTES = 4 << 20
"""Both profiles ask for 4 MiB socket buffers. Where the kernel caps them lower (net.core.rmem_max /
wmem_max) Fast DDS warns on every start and runs with smaller ones, so the profile is not set there."""
FASTDDS_2_DISTROS = ("humble", "iron", "jazzy")
"""Distributions on Fast DDS 2.x, which reads only FASTRTPS_DEFAULT_PROFILES_FILE. Fast DDS 3 (Kilted
on) reads FASTDDS_DEFAULT_PROFILES_FILE and warns on every start when the old name is set."""
FASTDDS_ENVIRONMENT = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")
"""Variables by which a user configures Fast DDS for a whole graph."""

ARGUMENTS = (
    ("image", "image", "input sensor_msgs/Image topic"),
    ("image_compressed", "image/compressed", "input sensor_msgs/CompressedImage topic (params image_transport: compressed)"),
    ("camera_info", "camera_info", "input sensor_msgs/CameraInfo topic"),
    ("mask", "mask", "optional person mask topic (mono8/mono16 Image, nonzero = person; params use_mask: true)"),
    ("namespace", "", "namespace of the node and its output topics"),
    ("params_file", os.path.join(HERE, "params.yaml"), "hgm_node parameter file"),
    ("worker_endpoint", "", "worker/broker endpoint; empty: the node starts and supervises a local worker"),
    ("start_worker", "false", "true: run `hgm serve --bind <worker_endpoint>` as its own launch process"),
    ("fastdds_profile", DEFAULT_PROFILE,
     "Fast DDS XML profile of the node. Default: fastdds_interop.xml (default transports, talks to any peer; "
     "skipped when the environment already configures Fast DDS); fastdds_large.xml: faster, but every peer "
     "must load it too; empty: leave the environment alone"),
)


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_setup)]
    )


def _setup(context, *args, **kwargs) -> list:
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    actions = transport_env(arg["fastdds_profile"], context.environment)
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


def transport_env(profile: str, environ: Mapping[str, str]) -> list:
    """The actions that point the node's Fast DDS at `profile`, given the launching environment."""
    if not profile:
        return []
    configured = [name for name in FASTDDS_ENVIRONMENT if environ.get(name)]
    if profile == DEFAULT_PROFILE and configured:
        return [LogInfo(msg=f"Fast DDS configured by {', '.join(configured)}: hgm_node uses it, as its peers do")]
    if _socket_buffer_limit() < SOCKET_BUFFER_BYTES:
        return [LogInfo(msg=f"net.core.rmem_max/wmem_max < {SOCKET_BUFFER_BYTES} bytes: not using {profile} "
                            "(Fast DDS defaults); see the profile's header to allow it")]
    return [SetEnvironmentVariable(profiles_file_variable(environ.get("ROS_DISTRO", "")), profile)]


def profiles_file_variable(ros_distro: str) -> str:
    """The variable this distribution's Fast DDS reads its XML profile from (an unknown one: Fast DDS 3)."""
    return "FASTRTPS_DEFAULT_PROFILES_FILE" if ros_distro in FASTDDS_2_DISTROS else "FASTDDS_DEFAULT_PROFILES_FILE"


def _socket_buffer_limit() -> int:
    try:
        return min(int(open(f"/proc/sys/net/core/{name}").read()) for name in ("rmem_max", "wmem_max"))
    except (OSError, ValueError):
        return SOCKET_BUFFER_BYTES  # not Linux, or hidden: let Fast DDS report it
