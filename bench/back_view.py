"""Does the learned back refiner improve the back view? Held-out scores, refined vs unrefined, and
the seconds of `coarse`, `refine_body` and `back_view` on this CPU.

    python bench/back_view.py [--data /work/data/eval_s9090_n20] [--limit N] [--refiner DIR] [--timing 3] [--out FILE]

Data: a multi-view layout of seeds never trained on (default eval seed 9090, 20 subjects, 12 views).
Per subject, view 0 (its intrinsics and GT mask given, as `hgm eval` does) goes through the
pipeline's own `perceive`, a cold `fit_body` and the `coarse` component (the embedded checkpoint),
in `hgm eval`'s two protocols: `wild` (the fit's placement) and `canonical` (the fit moved onto the
GT body's placement, `eval_cli.place_body`, before the network runs). The avatar (view 0's optical
frame) is rendered in the back views (150°-210° around: views 5-7 of 12) through the person-window
cameras of the ground truth (`data.pack.pack_subject`: 128², margin 0.12, as the training pairs),
and refined by the learned refiner (`--refiner`, default the back_view stage's: the embedded one).
Both are scored against the GT window: PSNR, fg PSNR (inside the GT mask), SSIM and LPIPS (VGG).

Timings (`--timing` subjects, wild): the components' own seconds as `Reconstructor.run_frame`
times them, one torch thread: `perceive`, `fit_body`, `coarse`, `refine_body` (enabled here, 45
steps, 3 network re-runs) and `back_view` (render at `back_view.size` + refine), plus the refiner
call alone at the stage's size. `--sheet FILE` writes unrefined | refined | ground truth of the
middle back view for the first subjects.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hgm_core.runtime import configure_process  # noqa: E402

configure_process(threads=1)

from _results import add_out_argument, write_results  # noqa: E402

METRICS = ("psnr", "fg_psnr", "ssim", "lpips")
PROTOCOLS = ("wild", "canonical")


def scores(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, lpips_model) -> dict[str, float]:
    """Mean metrics of uint8 `pred`, `target` `[P, S, S, 3]` with GT `mask [P, S, S]` (uint8)."""
    import torch

    from hgm_core.train import metrics

    x = torch.from_numpy(pred).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(target).permute(0, 3, 1, 2).float() / 255
    m = torch.from_numpy(mask > 127)[:, None]
    return {"psnr": float(metrics.psnr(x, y).mean()), "fg_psnr": float(metrics.psnr(x, y, m).mean()),
            "ssim": float(metrics.ssim(x, y).mean()), "lpips": float(metrics.lpips(lpips_model, x, y).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/data/eval_s9090_n20"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    parser.add_argument("--refiner", default="embedded", help="learned refiner folder (default: the embedded one)")
    parser.add_argument("--timing", type=int, default=3, help="time the stages on this many subjects (0: none)")
    parser.add_argument("--size", type=int, default=None, help="back_view.size for the timings (default: the config's)")
    parser.add_argument("--sheet", type=Path, default=None, help="PNG: unrefined | refined | GT for the first subjects")
    add_out_argument(parser)
    args = parser.parse_args()

    import cv2

    from hgm_core.data.pack import decode_packed, pack_subject
    from hgm_core.data.reader import load_subject_cameras
    from hgm_core.pipeline import Reconstructor, ReconstructorConfig
    from hgm_core.pipeline.stage import Frame, update
    from hgm_core.pipeline.back_view import render_views
    from hgm_core.train.back_train import back_views, window_cameras
    from hgm_core.train.eval_cli import _load_view_image, place_body
    from hgm_core.train.lpips import LPIPS
    from hgm_core.types import CameraInfo, PipelineError, ReconstructionRequest

    import json

    changes = {"refine_body.enabled": True, "back_view.cnn_path": args.refiner} | ({"back_view.size": args.size} if args.size else {})
    rec = Reconstructor.from_config(ReconstructorConfig(device="cpu").override(changes))
    refiner = rec.stages["back_view"].refiner
    lpips_model = LPIPS.load()
    index = json.loads((args.data / "dataset.json").read_text())
    subjects = index["subjects"][: args.limit]
    result: dict = {"data": str(args.data), "seed": index["seed"], "subjects": len(subjects), "threads": 1,
                    "refiner": refiner.source, "back_view_size": rec.config.back_view.size,
                    "load_average_before": [round(x, 2) for x in os.getloadavg()], "rows": [], "timings": [], "failures": {}}
    sheet = []
    t_all = time.perf_counter()
    for n, sid in enumerate(subjects):
        E, Ks, native = load_subject_cameras(args.data, sid)
        image, mask = _load_view_image(args.data, sid, 0, native)
        windows = decode_packed(pack_subject(args.data, sid, 128, 0.12))
        views = back_views(E, 0)
        rel = np.stack([E[v] @ np.linalg.inv(E[0]) for v in views])
        request = ReconstructionRequest(image, camera=CameraInfo(Ks[0], native, native), mask=mask, stages="refined")
        timing = n < args.timing
        t = {}
        frame = Frame(request=request)
        try:
            for name in ("perceive", "fit_body"):
                t0 = time.perf_counter()
                frame = rec.stages[name](frame)
                t[name] = time.perf_counter() - t0
        except PipelineError as e:  # a documented failure (e.g. no person detected): reported, not scored
            result["failures"][sid] = f"{type(e).__name__}: {e}"
            print(f"{sid}: {result['failures'][sid]}", file=sys.stderr, flush=True)
            continue
        gt_body = windows["body"].astype(np.float64) @ E[0, :3, :3].T + E[0, :3, 3]
        row: dict = {"id": sid, "views": views}
        for protocol in PROTOCOLS:
            f = frame if protocol == "wild" else update(frame, body=place_body(frame.body, gt_body.astype(frame.body.vertices.dtype)))
            t0 = time.perf_counter()
            f = rec.stages["coarse"](f)
            if protocol == "wild":
                t["coarse"] = time.perf_counter() - t0
            rgb, alpha = render_views(f.gaussians, window_cameras(windows["intrinsics"][views], rel, 128))
            refined = np.stack([refiner(rgb[i], alpha[i]) for i in range(len(views))])
            target, gt_mask = windows["images"][views], windows["masks"][views]
            row[protocol] = {"network": f.reports["coarse"].get("used"), "unrefined": scores(rgb, target, gt_mask, lpips_model),
                             "refined": scores(refined, target, gt_mask, lpips_model)}
            if protocol == "canonical" and len(sheet) < 6:
                m = len(views) // 2
                sheet.append(np.concatenate([rgb[m], refined[m], target[m]], 1))
            if protocol == "wild" and timing:
                for name in ("refine_body", "back_view"):
                    t0 = time.perf_counter()
                    f = rec.stages[name](f)
                    t[name] = time.perf_counter() - t0
                back = f.back_view
                t0 = time.perf_counter()
                refiner(back.rendered, back.alpha)
                t["refiner_call"] = time.perf_counter() - t0
                t["back_view_render"] = f.reports["back_view"]["render_seconds"]
        if timing:
            result["timings"].append({"id": sid} | {k: round(v, 3) for k, v in t.items()})
        result["rows"].append(row)
        w, c = row["wild"], row["canonical"]
        print(f"{sid}: back fg PSNR wild {w['unrefined']['fg_psnr']:.2f} -> {w['refined']['fg_psnr']:.2f}, canonical "
              f"{c['unrefined']['fg_psnr']:.2f} -> {c['refined']['fg_psnr']:.2f}; LPIPS canonical {c['unrefined']['lpips']:.3f} -> "
              f"{c['refined']['lpips']:.3f}" + (f"; {t}" if timing else ""), file=sys.stderr, flush=True)
    for protocol in PROTOCOLS:
        result[protocol] = {side: {k: round(float(np.mean([r[protocol][side][k] for r in result["rows"]])), 4) for k in METRICS}
                            for side in ("unrefined", "refined")}
        result[protocol]["improved_fg_psnr"] = sum(r[protocol]["refined"]["fg_psnr"] > r[protocol]["unrefined"]["fg_psnr"] for r in result["rows"])
        result[protocol]["improved_lpips"] = sum(r[protocol]["refined"]["lpips"] < r[protocol]["unrefined"]["lpips"] for r in result["rows"])
    if result["timings"]:
        keys = [k for k in result["timings"][0] if k != "id"]
        result["median_seconds"] = {k: round(float(np.median([r[k] for r in result["timings"]])), 3) for k in keys}
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.sheet and sheet:
        cv2.imwrite(str(args.sheet), np.concatenate(sheet, 0)[..., ::-1])
    write_results("back_view", result, args.out)
    print(markdown(result), file=sys.stderr)


def markdown(result: dict) -> str:
    """The unrefined / refined table per protocol and the median stage seconds."""
    lines = ["| protocol | back view | PSNR | fg PSNR | SSIM | LPIPS |", "|---|---|---|---|---|---|"]
    for p in PROTOCOLS:
        for side in ("unrefined", "refined"):
            r = result[p][side]
            lines.append(f"| {p} | {side} | {r['psnr']:.2f} | {r['fg_psnr']:.2f} | {r['ssim']:.3f} | {r['lpips']:.3f} |")
    n = len(result["rows"])
    lines += [""] + [f"{p}: fg PSNR higher after refinement for {result[p]['improved_fg_psnr']}/{n} subjects, "
                     f"LPIPS lower for {result[p]['improved_lpips']}/{n}." for p in PROTOCOLS]
    if "median_seconds" in result:
        lines.append("median seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in result["median_seconds"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
