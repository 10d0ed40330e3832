"""`hgm demo`: the ROS graph in one process (`hgm_demo.cli`).

Not part of `hgm_node`: the demo renders what it received with hgm_core's rasterizer (torch), and the
node package never imports torch. This package may import both `hgm_node` and all of `hgm_core`.
"""
