"""Torch-free constants of the raw Gaussian row layout, shared by files, messages and the wire.

Kept apart from `hgm_core.gaussians` so ROS-side code (which never imports torch) can use them.
"""

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical harmonic; `f_dc = (rgb - 0.5) / SH_C0` (3DGS convention)."""

RAW_FIELDS: tuple[str, ...] = (
    "x", "y", "z",
    "f_dc_0", "f_dc_1", "f_dc_2",
    "opacity",
    "scale_0", "scale_1", "scale_2",
    "rot_0", "rot_1", "rot_2", "rot_3",
)
"""Names of the 14 raw columns, in order (PLY property names, PointCloud2 field names):
position, SH DC colour, logit opacity, log scales, quaternion w-first."""
