"""launch/: bringup.launch.py's structure and decisions, params.yaml against the node, fastdds_large.xml.

`launch` and `launch_ros` are not installable here (no PyPI wheels), so the launch file runs against
FakeLaunch* recorder modules defined below — they only record constructor arguments; what is tested
is the launch file's own logic (arguments, node, parameters, remappings, worker process, Fast DDS env).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"


class FakeLaunchAction:
    """Stands in for every launch/launch_ros action class: keeps its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class FakeLaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: "FakeLaunchContext") -> str:
        return context.values[self.name]


@dataclasses.dataclass
class FakeLaunchContext:
    values: dict[str, str]


def _fake_launch_modules() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in ("launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions")}
    for cls in ("LaunchDescription",):
        setattr(mods["launch"], cls, type(cls, (FakeLaunchAction,), {}))
    for cls in ("DeclareLaunchArgument", "ExecuteProcess", "LogInfo", "OpaqueFunction", "SetEnvironmentVariable"):
        setattr(mods["launch.actions"], cls, type(cls, (FakeLaunchAction,), {}))
    mods["launch.substitutions"].LaunchConfiguration = FakeLaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (FakeLaunchAction,), {})
    return mods


@pytest.fixture
def bringup(monkeypatch):
    for name, mod in _fake_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("bringup_launch", LAUNCH / "bringup.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_socket_buffer_limit", lambda: 4 << 20)
    return module


def _run(bringup, **overrides) -> list:
    description = bringup.generate_launch_description()
    entities = description.args[0]
    defaults = {a.args[0]: a.kwargs["default_value"] for a in entities if type(a).__name__ == "DeclareLaunchArgument"}
    opaque = [a for a in entities if type(a).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    return opaque[0].kwargs["function"](FakeLaunchContext({**defaults, **overrides}))


def _by_type(actions: list, name: str) -> list:
    return [a for a in actions if type(a).__name__ == name]


def test_declared_arguments(bringup):
    entities = bringup.generate_launch_description().args[0]
    declared = {a.args[0]: a.kwargs for a in _by_type(entities, "DeclareLaunchArgument")}
    assert set(declared) == {"image", "image_compressed", "camera_info", "mask", "namespace", "params_file",
                             "worker_endpoint", "start_worker", "fastdds_profile"}
    assert all(kw["description"] for kw in declared.values())
    assert Path(declared["params_file"]["default_value"]) == LAUNCH / "params.yaml"
    assert Path(declared["fastdds_profile"]["default_value"]) == LAUNCH / "fastdds_large.xml"
    assert declared["worker_endpoint"]["default_value"] == ""  # the node's own local worker


def test_default_bringup_runs_the_node_with_its_local_worker(bringup):
    actions = _run(bringup)
    (node,) = _by_type(actions, "Node")
    assert (node.kwargs["package"], node.kwargs["executable"], node.kwargs["name"]) == ("hgm", "hgm_node", "hgm_node")
    assert node.kwargs["parameters"] == [str(LAUNCH / "params.yaml")]
    assert dict(node.kwargs["remappings"]) == {"image": "image", "image/compressed": "image/compressed",
                                               "camera_info": "camera_info", "mask": "mask"}
    assert not _by_type(actions, "ExecuteProcess")
    env = {a.args[0]: a.args[1] for a in _by_type(actions, "SetEnvironmentVariable")}
    assert env == {"FASTDDS_DEFAULT_PROFILES_FILE": str(LAUNCH / "fastdds_large.xml"),
                   "FASTRTPS_DEFAULT_PROFILES_FILE": str(LAUNCH / "fastdds_large.xml")}


def test_remote_worker_and_remappings(bringup):
    actions = _run(bringup, worker_endpoint="tcp://gpu-host:5555", image="/cam/image_raw", camera_info="/cam/info", fastdds_profile="")
    (node,) = _by_type(actions, "Node")
    assert node.kwargs["parameters"][1] == {"worker_endpoint": "tcp://gpu-host:5555"}
    assert ("image", "/cam/image_raw") in node.kwargs["remappings"] and ("camera_info", "/cam/info") in node.kwargs["remappings"]
    assert not _by_type(actions, "ExecuteProcess") and not _by_type(actions, "SetEnvironmentVariable")


def test_separate_worker_process(bringup):
    actions = _run(bringup, start_worker="true", worker_endpoint="ipc:///tmp/hgm.sock")
    (worker,) = _by_type(actions, "ExecuteProcess")
    assert worker.kwargs["cmd"] == ["hgm", "serve", "--bind", "ipc:///tmp/hgm.sock"] and worker.kwargs["respawn"]
    assert _by_type(actions, "Node")[0].kwargs["parameters"][1] == {"worker_endpoint": "ipc:///tmp/hgm.sock"}
    with pytest.raises(RuntimeError, match="needs worker_endpoint"):
        _run(bringup, start_worker="true")


def test_small_socket_buffers_fall_back_to_builtin_large_data(bringup, monkeypatch):
    monkeypatch.setattr(bringup, "_socket_buffer_limit", lambda: 212992)  # a stock Linux rmem_max
    env = {a.args[0]: a.args[1] for a in _by_type(_run(bringup), "SetEnvironmentVariable")}
    assert env == {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}


def test_params_yaml_matches_the_node():
    pytest.importorskip("rclpy")
    from hgm_node.params import PARAMETER_NAMES, NodeParams

    doc = yaml.safe_load((LAUNCH / "params.yaml").read_text())
    (params,) = [v["ros__parameters"] for v in doc.values()]
    assert tuple(params) == PARAMETER_NAMES
    defaults = dataclasses.asdict(NodeParams())
    assert {k: (type(v), v) for k, v in params.items()} == {k: (type(v), v) for k, v in defaults.items()}


def test_params_yaml_loads_into_the_real_node(tmp_path):
    """rclpy parses the file — its `/**/hgm_node` key also under a namespace — into the declared parameters."""
    text = (LAUNCH / "params.yaml").read_text()
    edited = text.replace("stages: prior", "stages: full").replace("min_interval_s: 0.0", "min_interval_s: 0.5")
    assert "stages: full" in edited and "min_interval_s: 0.5" in edited
    (tmp_path / "params.yaml").write_text(edited)
    code = (
        "import rclpy, dataclasses; from hgm_node.node import HgmNode; "
        f"rclpy.init(args=['--ros-args', '--params-file', {str(tmp_path / 'params.yaml')!r}, "
        "'-r', '__ns:=/robot1', '-p', 'worker_endpoint:=tcp://127.0.0.1:9']); "
        "n = HgmNode(); print(dataclasses.asdict(n.params)); n.destroy_node(); rclpy.shutdown()"
    )
    env = dict(os.environ, ROS_DOMAIN_ID="99", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env).stdout
    params = ast.literal_eval(out.strip().splitlines()[-1])
    assert (params["stages"], params["min_interval_s"], params["worker_endpoint"]) == ("full", 0.5, "tcp://127.0.0.1:9")
    assert params["max_image_pixels"] == 16777216 and params["trigger"] == "continuous"


def test_fastdds_profile_is_accepted_by_fast_dds():
    root = ET.parse(LAUNCH / "fastdds_large.xml").getroot()
    ns = {"d": "http://www.eprosima.com"}
    (participant,) = root.findall("d:profiles/d:participant", ns)
    assert participant.get("is_default_profile") == "true"
    transports = participant.find("d:rtps/d:builtinTransports", ns)
    assert transports.text == "LARGE_DATA" and transports.get("max_msg_size") == "4MB"
    limits = [int(Path(f"/proc/sys/net/core/{n}").read_text()) for n in ("rmem_max", "wmem_max")]
    if min(limits) < 4 << 20:
        pytest.skip("this host's socket buffer limit is below the profile's 4 MiB (the launch file falls back)")
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(LAUNCH / "fastdds_large.xml"), ROS_DOMAIN_ID="98")
    code = "import rclpy; rclpy.init(); n = rclpy.create_node('profile_check'); n.destroy_node(); rclpy.shutdown()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "Error]" not in result.stderr, result.stderr
