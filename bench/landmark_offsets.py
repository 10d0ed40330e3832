"""Where BlazePose puts each landmark in the image relative to the body model's keypoint of the same name.

    python bench/landmark_offsets.py [--data /work/data/calib_s1000_v3] [--limit N]

Data: `hgm datagen --seed 1000 --subjects 100 --size 512 --views 1 -o /work/data/calib_s1000_v3` (the
training seed: this calibrates the fit, so it must not see the benchmark's seed 7070 or the eval seeds).
Each subject's view 0 goes through the real `perceive` (ground-truth mask and intrinsics, as `hgm eval`
does). For every keypoint that BlazePose sees (visibility >= 0.5), the offset from the ground truth's
projected keypoint to BlazePose's landmark is expressed in the person's 2D torso frame (`along_left`:
from the right to the left side of the shoulders and hips; `along_up`: from the hips to the
shoulders; both measured on the ground truth) in units of the person's box height, so it does not
depend on image size, distance, roll or which way the person faces. The medians are
`hgm_core.body.fit.BLAZEPOSE_OFFSETS` (printed as a Python literal); the median absolute deviation
says how consistent each is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hgm_core.runtime import configure_process  # noqa: E402

configure_process(threads=1)

from _results import add_out_argument, write_results  # noqa: E402
from fit import load_subject  # noqa: E402

DEFAULT_DATA = Path("/work/data/calib_s1000_v3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    add_out_argument(parser)
    args = parser.parse_args()

    from hgm_core.body.fit import BLAZEPOSE_FOR_KEYPOINT, torso_frame_2d
    from hgm_core.camera import project_points
    from hgm_core.perception import PoseEstimator, perceive
    from hgm_core.perception.perceive import LANDMARK_NAMES
    from hgm_core.types import CameraInfo, NoPersonError

    meta = json.loads((args.data / "dataset.json").read_text())
    subjects = meta["subjects"][: args.limit]
    offsets: dict[str, list[tuple[float, float]]] = {}
    skipped = 0
    with PoseEstimator() as estimator:
        for sid in subjects:
            s = load_subject(args.data, sid)
            h, w = s["mask"].shape
            try:
                p = perceive(s["image"], estimator, mask=s["mask"], camera=CameraInfo(s["K"], w, h))
            except NoPersonError:
                skipped += 1
                continue
            uv = project_points(s["keypoints"], s["K"])
            names = s["keypoint_names"]
            frame = torso_frame_2d({n: uv[names.index(n)] for n in names})
            scale = p.bbox[3] - p.bbox[1]
            for name, landmark in BLAZEPOSE_FOR_KEYPOINT.items():
                u, v, vis = p.landmarks_2d[LANDMARK_NAMES.index(landmark)]
                if vis >= 0.5 and frame is not None:
                    offsets.setdefault(name, []).append(tuple(frame @ ((np.array([u, v]) - uv[names.index(name)]) / scale)))
    table = {}
    for name, values in offsets.items():
        a = np.array(values)
        median = np.median(a, 0)
        table[name] = {"along_left": round(float(median[0]), 4), "along_up": round(float(median[1]), 4),
                       "mad": [round(float(x), 4) for x in np.median(np.abs(a - median), 0)], "n": len(a)}  # fmt: skip
    result = {"data": str(args.data), "seed": meta["seed"], "subjects": len(subjects), "skipped": skipped, "offsets": table}
    write_results("landmark_offsets", result, args.out)
    print("BLAZEPOSE_OFFSETS = {" + ", ".join(f'"{n}": ({t["along_left"]}, {t["along_up"]})' for n, t in table.items()) + "}", file=sys.stderr)


if __name__ == "__main__":
    main()
