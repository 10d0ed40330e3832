"""launch/: bringup.launch.py's structure and decisions, params.yaml against the node, the Fast DDS profiles.

`launch` and `launch_ros` are not installable here (no PyPI wheels), so the launch file runs against
FakeLaunch* recorder modules defined below — they only record constructor arguments; what is tested
is the launch file's own logic (arguments, node, parameters, remappings, worker process, Fast DDS env).
tests/test_launch_interop.py runs what it decides against default-configured peers.
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

    @property
    def environment(self) -> os._Environ:
        return os.environ  # what launch's LaunchContext.environment is


def _fake_launch_modules() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in ("launch", "launch.actions", "launch.substitutions", "launch_ros", "launch_ros.actions")}
    for cls in ("LaunchDescription",):
        setattr(mods["launch"], cls, type(cls, (FakeLaunchAction,), {}))
    for cls in ("DeclareLaunchArgument", "ExecuteProcess", "LogInfo", "OpaqueFunction", "SetEnvironmentVariable"):
        setattr(mods["launch.actions"], cls, type(cls, (FakeLaunchAction,), {}))
    mods["launch.substitutions"].LaunchConfiguration = FakeLaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (FakeLaunchAction,), {})
    return mods


def load_bringup() -> types.ModuleType:
    """bringup.launch.py as a module, its launch/launch_ros imports bound to the recording stand-ins
    (which are in sys.modules only while it loads)."""
    fakes = _fake_launch_modules()
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    try:
        spec = importlib.util.spec_from_file_location("bringup_launch", LAUNCH / "bringup.launch.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, mod in saved.items():
            if mod is None:
                del sys.modules[name]
            else:
                sys.modules[name] = mod
    return module


def run_bringup(bringup: types.ModuleType, **overrides: str) -> list:
    """The actions bringup.launch.py returns for its default arguments updated by `overrides`."""
    description = bringup.generate_launch_description()
    entities = description.args[0]
    defaults = {a.args[0]: a.kwargs["default_value"] for a in entities if type(a).__name__ == "DeclareLaunchArgument"}
    opaque = [a for a in entities if type(a).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    return opaque[0].kwargs["function"](FakeLaunchContext({**defaults, **overrides}))


def by_type(actions: list, name: str) -> list:
    return [a for a in actions if type(a).__name__ == name]


@pytest.fixture
def bringup(monkeypatch):
    """The launch file as launched from a Kilted shell that does not configure Fast DDS itself."""
    module = load_bringup()
    for name in module.FASTDDS_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ROS_DISTRO", "kilted")
    monkeypatch.setattr(module, "_socket_buffer_limit", lambda: 4 << 20)
    return module


def test_declared_arguments(bringup):
    entities = bringup.generate_launch_description().args[0]
    declared = {a.args[0]: a.kwargs for a in by_type(entities, "DeclareLaunchArgument")}
    assert set(declared) == {"image", "image_compressed", "camera_info", "mask", "namespace", "params_file",
                             "worker_endpoint", "start_worker", "fastdds_profile"}
    assert all(kw["description"] for kw in declared.values())
    assert Path(declared["params_file"]["default_value"]) == LAUNCH / "params.yaml"
    assert Path(declared["fastdds_profile"]["default_value"]) == LAUNCH / "fastdds_interop.xml"
    assert declared["worker_endpoint"]["default_value"] == ""  # the node's own local worker


def test_default_bringup_runs_the_node_with_its_local_worker(bringup):
    actions = run_bringup(bringup)
    (node,) = by_type(actions, "Node")
    assert (node.kwargs["package"], node.kwargs["executable"], node.kwargs["name"]) == ("hgm", "hgm_node", "hgm_node")
    assert node.kwargs["parameters"] == [str(LAUNCH / "params.yaml")]
    assert dict(node.kwargs["remappings"]) == {"image": "image", "image/compressed": "image/compressed",
                                               "camera_info": "camera_info", "mask": "mask"}
    assert not by_type(actions, "ExecuteProcess")
    # Fast DDS 3 (Kilted) reads only FASTDDS_DEFAULT_PROFILES_FILE and warns about the old name.
    assert _env(actions) == {"FASTDDS_DEFAULT_PROFILES_FILE": str(LAUNCH / "fastdds_interop.xml")}


def test_remote_worker_and_remappings(bringup):
    actions = run_bringup(bringup, worker_endpoint="tcp://gpu-host:5555", image="/cam/image_raw", camera_info="/cam/info", fastdds_profile="")
    (node,) = by_type(actions, "Node")
    assert node.kwargs["parameters"][1] == {"worker_endpoint": "tcp://gpu-host:5555"}
    assert ("image", "/cam/image_raw") in node.kwargs["remappings"] and ("camera_info", "/cam/info") in node.kwargs["remappings"]
    assert not by_type(actions, "ExecuteProcess") and not by_type(actions, "SetEnvironmentVariable")


def test_separate_worker_process(bringup):
    actions = run_bringup(bringup, start_worker="true", worker_endpoint="ipc:///tmp/hgm.sock")
    (worker,) = by_type(actions, "ExecuteProcess")
    assert worker.kwargs["cmd"] == ["hgm", "serve", "--bind", "ipc:///tmp/hgm.sock"] and worker.kwargs["respawn"]
    assert by_type(actions, "Node")[0].kwargs["parameters"][1] == {"worker_endpoint": "ipc:///tmp/hgm.sock"}
    with pytest.raises(RuntimeError, match="needs worker_endpoint"):
        run_bringup(bringup, start_worker="true")


def _env(actions: list) -> dict[str, str]:
    return {a.args[0]: a.args[1] for a in by_type(actions, "SetEnvironmentVariable")}


@pytest.mark.parametrize(("distro", "variable"), [("humble", "FASTRTPS_DEFAULT_PROFILES_FILE"), ("jazzy", "FASTRTPS_DEFAULT_PROFILES_FILE"),
                                                  ("kilted", "FASTDDS_DEFAULT_PROFILES_FILE"), ("rolling", "FASTDDS_DEFAULT_PROFILES_FILE"),
                                                  ("", "FASTDDS_DEFAULT_PROFILES_FILE")])
def test_profile_variable_is_the_one_this_distros_fast_dds_reads(bringup, monkeypatch, distro, variable):
    monkeypatch.setenv("ROS_DISTRO", distro)
    assert _env(run_bringup(bringup)) == {variable: str(LAUNCH / "fastdds_interop.xml")}


def test_large_data_profile_is_opt_in(bringup):
    large = str(LAUNCH / "fastdds_large.xml")
    assert _env(run_bringup(bringup, fastdds_profile=large)) == {"FASTDDS_DEFAULT_PROFILES_FILE": large}


@pytest.mark.parametrize("variable", ["FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS"])
def test_a_graph_wide_fast_dds_configuration_is_kept(bringup, monkeypatch, variable):
    """A user who configured Fast DDS for the whole graph gets the node on the same configuration,
    unless a profile is asked for explicitly."""
    monkeypatch.setenv(variable, "/robot/fastdds.xml")
    actions = run_bringup(bringup)
    assert not _env(actions) and variable in by_type(actions, "LogInfo")[0].kwargs["msg"]
    large = str(LAUNCH / "fastdds_large.xml")
    assert _env(run_bringup(bringup, fastdds_profile=large)) == {"FASTDDS_DEFAULT_PROFILES_FILE": large}


def test_small_socket_buffers_leave_fast_dds_at_its_defaults(bringup, monkeypatch):
    monkeypatch.setattr(bringup, "_socket_buffer_limit", lambda: 212992)  # a stock Linux rmem_max
    actions = run_bringup(bringup)
    assert not _env(actions) and "rmem_max" in by_type(actions, "LogInfo")[0].kwargs["msg"]


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


def _transport_types(profile: Path) -> tuple[set[str], str | None]:
    """The transport kinds of `profile`'s default participant: (user transport types, builtin mode)."""
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(profile).getroot()
    (participant,) = [p for p in root.findall("d:profiles/d:participant", ns) if p.get("is_default_profile") == "true"]
    kinds = {d.findtext("d:transport_id", namespaces=ns): d.findtext("d:type", namespaces=ns)
             for d in root.findall("d:profiles/d:transport_descriptors/d:transport_descriptor", ns)}
    user = {kinds[t.text] for t in participant.findall("d:rtps/d:userTransports/d:transport_id", ns)}
    builtin = participant.find("d:rtps/d:builtinTransports", ns)
    if participant.findtext("d:rtps/d:useBuiltinTransports", namespaces=ns) == "false":
        assert builtin is None
        return user, None
    return user, builtin.text if builtin is not None else "DEFAULT"


def test_default_profile_keeps_the_transports_default_peers_use():
    """UDPv4 (every peer, on every host) and shared memory (peers on this host), nothing else; the
    opt-in large-data profile replaces UDP user data by TCP, which default peers do not speak."""
    assert _transport_types(LAUNCH / "fastdds_interop.xml") == ({"SHM", "UDPv4"}, None)
    assert _transport_types(LAUNCH / "fastdds_large.xml") == (set(), "LARGE_DATA")


@pytest.mark.parametrize("profile", ["fastdds_interop.xml", "fastdds_large.xml"])
def test_fastdds_profile_is_accepted_by_fast_dds(profile):
    limits = [int(Path(f"/proc/sys/net/core/{n}").read_text()) for n in ("rmem_max", "wmem_max")]
    if min(limits) < 4 << 20:
        pytest.skip("this host's socket buffer limit is below the profiles' 4 MiB (the launch file sets none)")
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(LAUNCH / profile), ROS_DOMAIN_ID="98")
    code = "import rclpy; rclpy.init(); n = rclpy.create_node('profile_check'); n.destroy_node(); rclpy.shutdown()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "Error]" not in result.stderr and "Warning]" not in result.stderr, result.stderr
