"""gsplat_msgs/SplatArray serialization: `hgm_node.splat.encode_splat_array` (one numpy buffer) vs
building the nested messages splat by splat (rosbags' message classes, then its CDR serializer: the
way a Python publisher fills a SplatArray; the same values up to float rounding, see
tests/test_splat.py for the encoder's correctness), and vs packing the same avatar as `human_gaussians`
PointCloud2 bytes. Single thread; medians; the ratios are against our encoder in the same run.

    .venv/bin/python bench/splat_array.py [--sizes 1000 15000 100000] [--baseline-max 15000] [--out PATH]

Writes JSON to stdout and bench/results/splat_array.json.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
from _results import add_out_argument, median_s, write_results

from hgm_core.io.pointcloud import pack_gaussians
from hgm_node.splat import SPLAT_ARRAY_MSG, SPLAT_ARRAY_TYPE, SPLAT_MSG, SPLAT_TYPE, encode_splat_array


def _rows(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(n, 14)).astype(np.float32)
    raw[:, 7:10] = rng.uniform(-6, -2, size=(n, 3))
    return raw


def _per_splat(store, raw: np.ndarray) -> bytes:
    """The nested message built one Python object per field, then serialized."""
    from hgm_node.splat import quat_to_rotmat

    T = store.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Point, Quaternion, Pose = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"], T["geometry_msgs/msg/Pose"]
    PoseCov, PoseCovStamped = T["geometry_msgs/msg/PoseWithCovariance"], T["geometry_msgs/msg/PoseWithCovarianceStamped"]
    Splat, SplatArray = T[SPLAT_TYPE], T[SPLAT_ARRAY_TYPE]
    splats = []
    for row32 in raw:
        row = row32.astype(np.float64)
        q = (row32[10:14] / np.linalg.norm(row32[10:14])).astype(np.float64)  # normalised in float32, as the encoder does
        R = quat_to_rotmat(q).astype(np.float64)
        cov = np.zeros((6, 6))
        cov[:3, :3] = (R * np.exp(2 * row[7:10])) @ R.T
        pose = PoseCovStamped(header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"), pose=PoseCov(
            pose=Pose(position=Point(x=row[0], y=row[1], z=row[2]), orientation=Quaternion(x=q[1], y=q[2], z=q[3], w=q[0])),
            covariance=cov.reshape(36)))
        splats.append(Splat(pose=pose, opacity=int(round(255 / (1 + np.exp(-row[6])))), harmonics_deg=0,
                            spherical_harmonics=row[3:6].astype(np.float32)))
    return bytes(store.serialize_cdr(SplatArray(splats=splats), SPLAT_ARRAY_TYPE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 15000, 100000], help="avatar sizes (splats)")
    parser.add_argument("--baseline-max", type=int, default=15000, help="largest size the per-splat baseline runs at")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    add_out_argument(parser)
    args = parser.parse_args()

    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(SPLAT_MSG, SPLAT_TYPE) | get_types_from_msg(SPLAT_ARRAY_MSG, SPLAT_ARRAY_TYPE))
    rows = []
    for n in args.sizes:
        raw = _rows(n)
        data = encode_splat_array(raw, (1, 2), "cam")
        row = {"splats": n, "bytes": len(data),
               "ours_s": median_s(lambda: encode_splat_array(raw, (1, 2), "cam"), args.repeats),
               "pointcloud2_pack_s": median_s(lambda: pack_gaussians(raw), args.repeats)}
        if n <= args.baseline_max:
            row["per_splat_s"] = median_s(lambda: _per_splat(store, raw), max(1, args.repeats // 2))
            row["per_splat_over_ours"] = row["per_splat_s"] / row["ours_s"]
        row["ours_over_pointcloud2"] = row["ours_s"] / row["pointcloud2_pack_s"]
        rows.append(row)
        print(f"{n:>7} splats: ours {row['ours_s'] * 1e3:.1f} ms"
              + (f", per splat {row['per_splat_s'] * 1e3:.0f} ms ({row['per_splat_over_ours']:.0f}x)" if "per_splat_s" in row else "")
              + f", PointCloud2 pack {row['pointcloud2_pack_s'] * 1e3:.1f} ms", flush=True)
    write_results("splat_array", {"machine": platform.machine(), "threads": 1, "repeats": args.repeats, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
