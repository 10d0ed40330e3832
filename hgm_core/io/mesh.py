"""Triangle-mesh PLY files (binary little endian, per-vertex uchar colours), numpy only.

Written so MeshLab, Blender, open3d and trimesh open them; `read_mesh_ply` reads what we write
and any binary/ascii PLY whose faces are a `vertex_indices` (or `vertex_index`) list.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hgm_core.io.ply import PlyError, parse_header, write_ply_file


def outward_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """`faces [F, 3]` as int64, wound counter-clockwise seen from outside (the enclosed signed volume
    of the closed mesh `vertices [V, 3]` is positive, so face normals point out), as viewers expect."""
    f = np.asarray(faces, np.int64)
    if len(f) == 0:
        return f
    v = np.asarray(vertices, np.float64)
    p0, p1, p2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return f if np.einsum("ij,ij->", p0, np.cross(p1, p2)) >= 0 else f[:, [0, 2, 1]]


def write_mesh_ply(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
                   colors: np.ndarray | None = None) -> Path:
    """Write a mesh.

    Args:
        vertices: `[V, 3]` float; faces: `[F, 3]` integer indices; colors: `[V, 3]` uint8, or float in [0, 1].
    """
    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise PlyError(f"mesh must be vertices [V, 3] and faces [F, 3], got {list(v.shape)} and {list(f.shape)}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise PlyError(f"face indices must lie in [0, {len(v)})")
    vdt = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        c = np.asarray(colors)
        if c.shape != v.shape:
            raise PlyError(f"colors must be [V, 3] like the vertices, got {list(c.shape)}")
        if c.dtype != np.uint8:
            c = np.rint(np.clip(c, 0.0, 1.0) * 255).astype(np.uint8)
        vdt += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    varr = np.empty(len(v), vdt)
    varr["x"], varr["y"], varr["z"] = v.T
    if colors is not None:
        varr["red"], varr["green"], varr["blue"] = c.T
    farr = np.empty(len(f), [("n", "u1"), ("i", "<i4", (3,))])
    farr["n"] = 3
    farr["i"] = f.astype(np.int32)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(v)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    return write_ply_file(path, header, varr, farr)


def read_mesh_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read `(vertices [V, 3] float32, faces [F, 3] int64, colors [V, 3] uint8 or None)`; triangles only."""
    with open(path, "rb") as fh:
        fmt, elements = parse_header(fh)
        if fmt == "ascii":
            raise PlyError(f"{path}: ascii meshes are not supported; convert to binary")
        order = "<" if fmt == "binary_little_endian" else ">"
        out: dict[str, np.ndarray] = {}
        for name, count, props in elements:
            if name == "face":
                if len(props) != 1 or props[0][1] != "list":
                    raise PlyError(f"{path}: face element must hold exactly one list property")
                _, _, (len_t, idx_t) = props[0]
                dt = np.dtype([("n", order + len_t), ("i", order + idx_t, (3,))])
                data = np.frombuffer(fh.read(count * dt.itemsize), dt, count=count)
                if count and (data["n"] != 3).any():
                    raise PlyError(f"{path}: only triangle meshes are supported")
                out["face"] = data["i"].astype(np.int64)
            else:
                if any(p[1] == "list" for p in props):
                    raise PlyError(f"{path}: list property in element '{name}'")
                dt = np.dtype([(p[0], order + p[2]) for p in props])
                out[name] = np.frombuffer(fh.read(count * dt.itemsize), dt, count=count)
    if "vertex" not in out:
        raise PlyError(f"{path}: no vertex element")
    vert = out["vertex"]
    v = np.stack([vert[k].astype(np.float32) for k in ("x", "y", "z")], -1)
    colors = None
    if all(k in vert.dtype.names for k in ("red", "green", "blue")):
        colors = np.stack([vert[k] for k in ("red", "green", "blue")], -1).astype(np.uint8)
    return v, out.get("face", np.zeros((0, 3), np.int64)), colors
