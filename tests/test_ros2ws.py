"""ros2_ws/src/hgm: the ament_python package `hgm` — its manifest, and a real `colcon build` install tree."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "ros2_ws" / "src" / "hgm"
# Imports of hgm_node that are not ROS packages (no exec_depend of their own name). Never torch:
# the `hgm demo` process, which renders with it, is the separate package hgm_demo.
NON_ROS = {"hgm_core", "hgm_node", "numpy", "cv2", "zmq"}
# Imported only inside the function of the feature that needs them, so the node runs without them:
# RVizSplat's messages (published only where they import), and MCAP recording's writer and type store
# (the `ros` extra of pyproject.toml).
OPTIONAL = {"gsplat_msgs", "mcap", "rosbags"}


def _manifest() -> ET.Element:
    return ET.parse(PKG / "package.xml").getroot()


def _imported(nodes) -> set[str]:
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__"}


def _node_imports(module_level_only: bool = False) -> set[str]:
    names = set()
    for path in (REPO / "hgm_node").glob("*.py"):
        tree = ast.parse(path.read_text())
        names |= _imported(tree.body if module_level_only else ast.walk(tree))
    return names


def test_manifest_declares_every_ros_dependency_of_hgm_node():
    root = _manifest()
    assert root.get("format") == "3" and root.findtext("name") == "hgm"
    assert root.findtext("export/build_type") == "ament_python"
    exec_depends = {e.text for e in root.findall("exec_depend")}
    ros_imports = _node_imports() - NON_ROS - OPTIONAL
    assert {"rclpy", "sensor_msgs", "visualization_msgs", "diagnostic_msgs", "std_srvs"} <= ros_imports
    assert not _node_imports(module_level_only=True) & OPTIONAL, "an optional dependency imported at module level"
    assert ros_imports <= exec_depends, ros_imports - exec_depends
    assert {"launch", "launch_ros", "python3-numpy", "python3-opencv", "python3-zmq"} <= exec_depends


def test_package_ships_the_repository_code_through_symlinks():
    assert (PKG / "hgm_node").resolve() == REPO / "hgm_node"
    assert (PKG / "launch").resolve() == REPO / "launch"
    assert (PKG / "resource" / "hgm").is_file()


@pytest.mark.skipif(shutil.which("colcon", path=str(Path(sys.executable).parent)) is None, reason="colcon not installed (pip install colcon-common-extensions)")
def test_colcon_build_install_tree(tmp_path):
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent))
    subprocess.run([colcon, "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(PKG.parent),
                    "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
                   check=True, capture_output=True, cwd=tmp_path)
    prefix = tmp_path / "install" / "hgm"
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for rel in ("lib/hgm/hgm_node", "share/hgm/package.xml", "share/ament_index/resource_index/packages/hgm",
                "share/hgm/launch/bringup.launch.py", "share/hgm/launch/params.yaml", "share/hgm/launch/fastdds_large.xml"):
        assert (prefix / rel).is_file(), rel
    assert os.access(prefix / "lib/hgm/hgm_node", os.X_OK)
    installed = sorted(p.name for p in (site / "hgm_node").glob("*.py"))
    assert installed == sorted(p.name for p in (REPO / "hgm_node").glob("*.py"))
    assert not (site / "hgm_node").is_symlink()  # a plain build copies through the links

    # The installed executable runs the installed copy (its argument check exits 2 before any ROS I/O).
    env = dict(os.environ, PYTHONPATH=str(site), ROS_DOMAIN_ID="97")
    where = subprocess.run([sys.executable, "-c", "import hgm_node; print(hgm_node.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(site)
    run = subprocess.run([str(prefix / "lib/hgm/hgm_node"), "--ros-args", "-p", "trigger:=sometimes"], env=env,
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2 and "must be one of continuous, service" in run.stderr
