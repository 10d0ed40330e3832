"""ament_python package `hgm`: installs the `hgm_node` Python package, the `hgm_node` executable
(lib/hgm/hgm_node, for `ros2 run hgm hgm_node` and launch_ros) and the launch files
(share/hgm/launch).

`hgm_node` and `launch` here are symlinks to the repository root's folders, so the ROS package and
the pip package ship one copy of the code: a plain `colcon build` copies the files through the
links, `colcon build --symlink-install` runs the checkout's code directly.
"""

from glob import glob

from setuptools import setup

PACKAGE = "hgm"

setup(
    # Not "hgm": that is the repository's pip distribution (hgm_core + the `hgm` command). Two
    # distributions of one name on sys.path would hide one's entry points (the `hgm` subcommands).
    name="hgm-ros",
    version="0.1.0",
    packages=["hgm_node"],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py") + glob("launch/*.yaml") + glob("launch/*.xml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="hgm maintainers",
    maintainer_email="nobody@hgm.invalid",
    description="ROS 2 node, launch files and Fast DDS profile of hgm",
    license="Apache-2.0",
    entry_points={"console_scripts": ["hgm_node = hgm_node.main:main"]},
)
