"""Synthetic-human generation speed at a given size: build (anny + clothes + textures) and render+write.

    .venv/bin/python bench/datagen.py [--subjects 4] [--size 512]

Times each subject's two phases after one warm-up subject (anny cache load, warp kernel, HDRI SH),
reports medians, subjects per minute, and the ray-casting share: the same renders with shading
skipped (coverage only) measured in the same run as the baseline. Writes bench/results/datagen.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from _results import add_out_argument, write_results



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    add_out_argument(ap)
    args = ap.parse_args()
    from hgm_core.runtime import configure_process

    configure_process(threads=1)  # this script is an entry point: caches, OpenCV's EXR switch, one thread

    import numpy as np

    from hgm_core.camera import pixel_rays
    from hgm_core.data.render import RenderConfig, SubjectScene, _subject_box, look_at_height, ring_cameras, write_subject
    from hgm_core.data.synth import SynthBody, build_subject, sample_subject, subject_seed

    config = RenderConfig(size=args.size)
    body = SynthBody()
    build_s, render_s, cast_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.subjects + 1):
            t0 = time.perf_counter()
            geom = build_subject(sample_subject(subject_seed(args.seed, i), body), body)
            t1 = time.perf_counter()
            write_subject(Path(tmp), f"{i:04d}", geom, config)
            t2 = time.perf_counter()
            scene = SubjectScene(geom.parts)
            K, E = ring_cameras(look_at_height(geom), config)
            for e in E:  # baseline: the rays alone (same boxes, same ray counts, no shading or files)
                o, d = pixel_rays(K, e, _subject_box(scene, K, e, config.size), config.ssaa)
                scene.cast(o.reshape(-1, 3), d.reshape(-1, 3))
                o, d = pixel_rays(K, e, _subject_box(scene, K, e, config.size), 1)
                scene.cast(o.reshape(-1, 3), d.reshape(-1, 3))
            t3 = time.perf_counter()
            if i > 0:
                build_s.append(t1 - t0)
                render_s.append(t2 - t1)
                cast_s.append(t3 - t2)
    per_subject = statistics.median(np.add(build_s, render_s))
    out = {
        "size": args.size, "views": config.n_views, "ssaa": config.ssaa, "subjects_timed": args.subjects,
        "median_build_s": statistics.median(build_s), "median_render_write_s": statistics.median(render_s),
        "median_raycast_only_s": statistics.median(cast_s),
        "render_vs_raycast_ratio": statistics.median(render_s) / statistics.median(cast_s),
        "median_subject_s": per_subject, "subjects_per_min": 60.0 / per_subject,
    }
    write_results("datagen", out, args.out)


if __name__ == "__main__":
    main()
