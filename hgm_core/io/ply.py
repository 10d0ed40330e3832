"""The reference 3DGS PLY (graphdeco-inria layout), written and read with numpy only.

Layout (docs/architecture.md, "Conventions"): `x y z nx ny nz f_dc_0..2 [f_rest_0..3K-1] opacity
scale_0..2 rot_0..3`, float32, binary little endian; opacity stored as a logit, scales as logs,
quaternions w-first, `f_dc = (rgb - 0.5) / SH_C0`, `f_rest` channel-major (all K coefficients of
red, then green, then blue). Normals are written as zeros, as the reference does. The reader accepts any property order and
extra properties (e.g. HGM's uint8 `red green blue`), ascii or binary of either endianness.
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from hgm_core.layout import RAW_FIELDS

if TYPE_CHECKING:
    from hgm_core.gaussians import Gaussians

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class PlyError(ValueError):
    """Raised for PLY files that are not 3DGS Gaussian point files."""


def ply_property_names(n_rest: int = 0) -> list[str]:
    """The property names in file order for `n_rest = 3*K` higher-order SH coefficients."""
    return ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
            *[f"f_rest_{i}" for i in range(n_rest)],
            "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def ply_array(raw: np.ndarray, sh_rest: np.ndarray | None = None) -> np.ndarray:
    """Structured float32 array `[N]` in the PLY property layout (no file IO).

    Args:
        raw: `[N, 14]` raw rows in `RAW_FIELDS` order.
        sh_rest: optional `[N, 3*K]` channel-major `f_rest` values.
    """
    raw = np.asarray(raw, np.float32)
    if raw.ndim != 2 or raw.shape[1] != len(RAW_FIELDS):
        raise PlyError(f"raw Gaussians must be [N, {len(RAW_FIELDS)}], got {list(raw.shape)}")
    rest = np.zeros((len(raw), 0), np.float32) if sh_rest is None else np.asarray(sh_rest, np.float32)
    names = ply_property_names(rest.shape[1])
    arr = np.zeros(len(raw), dtype=[(n, "<f4") for n in names])  # normals stay zero, as the reference writes them
    for i, n in enumerate(RAW_FIELDS):
        arr[n] = raw[:, i]
    for i in range(rest.shape[1]):
        arr[f"f_rest_{i}"] = rest[:, i]
    return arr


def write_ply_file(path: str | os.PathLike, header: list[str], *payload: np.ndarray) -> Path:
    """Write a binary PLY: the `header` lines ("ply" ... "end_header"), then each payload array's bytes.

    The file is written beside `path` and renamed onto it when complete, so readers (viewers, the
    node) never see a half-written file. Parent folders are created; returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        for array in payload:
            f.write(array.tobytes())
    os.replace(tmp, path)
    return path


def write_ply_raw(path: str | os.PathLike, raw: np.ndarray, sh_rest: np.ndarray | None = None) -> Path:
    """Write raw rows (see `ply_array`) as a 3DGS PLY, bit-exactly; returns the path."""
    arr = ply_array(raw, sh_rest)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(arr)}"]
    header += [f"property float {n}" for n in arr.dtype.names]
    header.append("end_header")
    return write_ply_file(path, header, arr)


def write_ply(path: str | os.PathLike, g: Gaussians) -> Path:
    """Write Gaussians as a reference 3DGS PLY; returns the path. Parent folders are created."""
    import torch  # only the Gaussians entry points need torch: raw-row readers (hgm view) start without it

    g = g.detach().to("cpu", torch.float32)
    rest = None
    if g.sh is not None:
        # [N, K, 3] -> channel-major [N, 3*K], as 3DGS's features_rest.transpose(1, 2).flatten(1)
        rest = g.sh.numpy().transpose(0, 2, 1).reshape(len(g), -1)
    return write_ply_raw(path, g.to_raw().numpy(), rest)


def parse_header(f) -> tuple[str, list[tuple[str, int, list[tuple]]]]:
    """Read a PLY header from binary file `f` (left at the first data byte).

    Returns:
        (format, elements): each element is `(name, count, properties)`, a property being
        `(name, "scalar", numpy_type)` or `(name, "list", (count_type, item_type))`.
    """
    if f.readline().strip() != b"ply":
        raise PlyError("not a PLY file (missing 'ply' magic)")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise PlyError("PLY header has no end_header")
        tok = line.decode("ascii", "replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "end_header":
            break
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise PlyError("PLY property before any element")
            types = tok[2:4] if tok[1] == "list" else tok[1:2]
            unknown = [t for t in types if t not in _PLY_TYPES]
            if unknown:
                raise PlyError(f"unknown PLY type {unknown[0]!r}")
            if tok[1] == "list":
                elements[-1][2].append((tok[4], "list", (_PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]])))
            else:
                elements[-1][2].append((tok[2], "scalar", _PLY_TYPES[tok[1]]))
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise PlyError(f"unsupported PLY format {fmt!r}")
    return fmt, elements


def read_ply_array(path: str | os.PathLike) -> np.ndarray:
    """The `vertex` element of a PLY as a native-endian structured numpy array."""
    with open(path, "rb") as f:
        fmt, elements = parse_header(f)
        if not elements or elements[0][0] != "vertex":
            raise PlyError(f"{path}: the first element must be 'vertex'")
        _, n, props = elements[0]
        lists = [p[0] for p in props if p[1] == "list"]
        if lists:
            raise PlyError(f"list property '{lists[0]}' in element 'vertex' is not supported here")
        props = [(p[0], p[2]) for p in props]
        if fmt == "ascii":
            dt = np.dtype([(p, t) for p, t in props])
            data = np.loadtxt(f, dtype=np.float64, max_rows=n, ndmin=2)
            arr = np.empty(n, dt)
            for i, (p, _) in enumerate(props):
                arr[p] = data[:, i]
            return arr
        order = "<" if fmt == "binary_little_endian" else ">"
        dt = np.dtype([(p, order + t) for p, t in props])
        buf = f.read(n * dt.itemsize)
        if len(buf) != n * dt.itemsize:
            raise PlyError(f"{path}: truncated ({len(buf)} of {n * dt.itemsize} vertex bytes)")
        return np.frombuffer(buf, dt).astype(dt.newbyteorder("="))


def read_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY into activated `Gaussians` (float32). `sh` is set when `f_rest_*` exist."""
    import torch

    from hgm_core.gaussians import Gaussians
    arr = read_ply_array(path)
    missing = [n for n in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                           "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3") if n not in arr.dtype.names]
    if missing:
        raise PlyError(f"{path}: not a 3DGS Gaussian PLY, missing properties {missing}")
    raw = np.stack([arr[n].astype(np.float32) for n in RAW_FIELDS], -1)
    rest_names = sorted((n for n in arr.dtype.names if n.startswith("f_rest_")), key=lambda s: int(s[7:]))
    sh = None
    if rest_names:
        if len(rest_names) % 3:
            raise PlyError(f"{path}: {len(rest_names)} f_rest properties is not a multiple of 3")
        rest = np.stack([arr[n].astype(np.float32) for n in rest_names], -1)
        sh = torch.from_numpy(rest.reshape(len(arr), 3, -1).transpose(0, 2, 1).copy())
    return Gaussians.from_raw(torch.from_numpy(raw), sh=sh)


def read_ply_raw(path: str | os.PathLike) -> np.ndarray:
    """`[N, 14]` float32 raw rows (RAW_FIELDS order) exactly as stored: the lossless view of the file."""
    arr = read_ply_array(path)
    return np.stack([arr[n].astype(np.float32) for n in RAW_FIELDS], -1)
