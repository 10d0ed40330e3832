"""Does `refine_body` improve the body fit? MPJPE / PA-MPJPE before and after, and seconds per call.

    python bench/refine_body.py [--data /work/data/fitbench] [--limit N] [--iterations 45]

Data: the body-fit benchmark's subjects (`hgm datagen --seed 7070 --subjects 24 --size 512 --views 1`,
seed 7070 reserved for benchmarks, never trained on). Per subject, view 0 goes through the real
`perceive` (the ground-truth mask and intrinsics given, as `hgm eval` does), the default cold
`fit_body`, the embedded one-view network (`predict_avatar`) and then `refine_body` with its
default config (one torch thread). Figures against the generator's ground truth in view 0's frame,
computed with `bench/fit.py`'s `score` (23 COCO-WholeBody keypoints): `mpjpe_mm` (as placed),
`root_mpjpe_mm` (hip midpoints aligned), `pa_mpjpe_mm` (similarity-aligned),
`distance_error_mm`, `surface_mm` (visible body vs rendered depth), plus the silhouette IoU in the
input view. With a multi-view layout (`--data /work/data/eval_s9090`, 12 views, seed 9090) the avatars
before (the coarse network's, made with the fit) and after (the last re-run's) are also rendered in
views 1..V-1 (cameras `E_v E_0^-1`, white background) and scored against the ground truth: PSNR,
foreground PSNR (inside the GT mask) and SSIM, averaged over views. `before` = the fit, `after` = the refined fit; `seconds` = the whole `refine_body` call
(its 3 network re-runs included; `cpu_seconds` is its process CPU time, one thread, which a loaded
machine does not inflate as it does the wall time), `network_seconds` = one `predict_avatar` call beside it.
`--canonical` moves the fit onto the ground-truth body's placement first (`hgm eval`'s canonical
protocol), so the refinement starts without the monocular distance error. `--oracle` replaces the network by the subject's ground-truth mesh as Gaussians (a perfect network):
it separates what the method can do from what the embedded checkpoint gives it. `--sheet FILE`
draws, for the first subjects, the side silhouettes the refinement matches (the body's left and
right, `side_targets`): red = the network's avatar, green = the ground-truth mesh, blue = the
fitted body, from the same cameras (yellow = avatar and truth agree, magenta = avatar and body);
`side_iou` gives those silhouettes' IoUs for every subject.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from fit import DEFAULT_DATA, load_subject, score, summarise  # noqa: E402

METRICS = ("mpjpe_mm", "root_mpjpe_mm", "pa_mpjpe_mm", "distance_error_mm", "surface_mm", "silhouette_iou")


def oracle_avatar(root: Path, sid: str, count: int = 30000):
    """Small opaque grey Gaussians spread over the subject's ground-truth mesh (view 0's optical frame):
    the shape a perfect network would give."""
    import trimesh

    from hgm_core.data.reader import load_subject_cameras

    E, _, _ = load_subject_cameras(root, sid)
    mesh = trimesh.load(root / "mesh" / f"{sid}.ply", process=False, force="mesh")
    points, _ = trimesh.sample.sample_surface_even(mesh, count, seed=0)
    return point_gaussians(points @ E[0, :3, :3].T + E[0, :3, 3], 0.008)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape."""
    return float((a & b).sum() / max((a | b).sum(), 1))


def point_gaussians(points: np.ndarray, scale: float):
    """Small opaque grey Gaussians (radius `scale` m) on `points [N, 3]`: a surface as the renderer sees it."""
    import torch

    from hgm_core.gaussians import Gaussians

    p = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    n = len(p)
    return Gaussians(means=p, quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), scales=torch.full((n, 3), scale),
                     opacities=torch.full((n,), 0.95), colors=torch.full((n, 3), 0.5))


def novel_views(root: Path, sid: str, avatars: dict) -> dict[str, dict[str, float]]:
    """PSNR / fg PSNR / SSIM of each avatar (view 0's optical frame) in the subject's other views."""
    import cv2
    import torch

    from hgm_core.camera import Cameras
    from hgm_core.data.reader import load_subject_cameras
    from hgm_core.render import rasterize
    from hgm_core.train import metrics

    E, Ks, size = load_subject_cameras(root, sid)
    if len(E) < 2:
        return {}
    views = range(1, len(E))
    gt = torch.stack([torch.from_numpy(cv2.imread(str(root / "img" / f"{sid}_{v:03d}" / "0.jpg"))[..., ::-1].copy()) for v in views])
    gt = gt.permute(0, 3, 1, 2).float() / 255
    mask = torch.stack([torch.from_numpy(cv2.imread(str(root / "mask" / f"{sid}_{v:03d}" / "0.png"), cv2.IMREAD_GRAYSCALE) > 127) for v in views])[:, None]
    rel = torch.from_numpy(np.stack([E[v] @ np.linalg.inv(E[0]) for v in views])).float()
    out = {}
    for name, g in avatars.items():
        with torch.no_grad():
            pred = torch.stack([rasterize(g.to(dtype=torch.float32), Cameras(torch.from_numpy(Ks[v])[None].float(), rel[i:i + 1], size, size),
                                          background=(1.0, 1.0, 1.0)).rgb[0].clamp(0, 1) for i, v in enumerate(views)]).permute(0, 3, 1, 2)
        out[name] = {"psnr": float(metrics.psnr(pred, gt).mean()), "fg_psnr": float(metrics.psnr(pred, gt, mask).mean()),
                     "ssim": float(metrics.ssim(pred, gt).mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    parser.add_argument("--iterations", type=int, default=None, help="refine_body iterations (default: its config's)")
    parser.add_argument("--free-distance", action="store_true", help="let the refinement move the body along its viewing ray")
    parser.add_argument("--oracle", action="store_true", help="an ideal network: the avatar is Gaussians on the subject's "
                        "ground-truth (clothed) mesh, whatever body it is given")
    parser.add_argument("--canonical", action="store_true", help="move the fit onto the GT body's placement first "
                        "(hgm eval's canonical protocol): the refinement then starts without the distance error")
    parser.add_argument("--sheet", type=Path, default=None, help="PNG of the side silhouettes (avatar, truth, body) of the first subjects")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a RefineBodyConfig field (repeatable)")
    add_out_argument(parser)
    args = parser.parse_args()

    import torch

    from hgm_core.body import AnnyBody, fit_body
    from hgm_core.model.predict import load_default_model, predict_avatar
    from hgm_core.perception import PoseEstimator, perceive
    from hgm_core.body.fit import skeleton
    from hgm_core.pipeline.refine_body import RefineBodyConfig, refine_body, side_targets
    from hgm_core.render.views import body_up
    from hgm_core.train.eval_cli import place_body
    from hgm_core.types import CameraInfo

    changes = {"hold_distance": not args.free_distance} | ({} if args.iterations is None else {"iterations": args.iterations})
    for item in args.set:
        key, value = item.split("=", 1)
        changes[key] = type(getattr(RefineBodyConfig(), key))(value)
    config = RefineBodyConfig(**changes)
    subjects = json.loads((args.data / "dataset.json").read_text())["subjects"][: args.limit]
    body, estimator, model = AnnyBody(), PoseEstimator(), load_default_model()
    result: dict = {"data": str(args.data), "seed": json.loads((args.data / "dataset.json").read_text())["seed"], "canonical": args.canonical,
                    "subjects": len(subjects), "threads": 1, "config": dataclasses.asdict(config),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()], "rows": []}  # fmt: skip
    t_all = time.perf_counter()
    sheet = []
    for sid in subjects:
        s = load_subject(args.data, sid)
        h, w = s["mask"].shape
        perception = perceive(s["image"], mask=s["mask"], camera=CameraInfo(s["K"], w, h), estimator=estimator)
        fit = fit_body(perception, None, body)
        if args.canonical:
            fit = place_body(fit, s["vertices"].astype(fit.vertices.dtype))

        def predict(vertices: np.ndarray):
            with torch.inference_mode():
                return predict_avatar(model, s["image"], perception.mask, perception.K, vertices)

        if args.oracle:
            truth = oracle_avatar(args.data, sid)
            predict = lambda vertices: truth  # noqa: E731
        t0 = time.perf_counter()
        avatar = predict(fit.vertices)
        network_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        refined = refine_body(perception, fit, avatar, body, predict, config)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        row = {"id": sid, "rounds": refined.report["rounds"], "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3), "network_seconds": round(network_s, 3),
               "network_runs": refined.report["network_runs"], "stopped": refined.report.get("stopped")}
        nv = novel_views(args.data, sid, {"before": avatar, "after": refined.gaussians})
        for side, f in (("before", fit), ("after", refined.body)):
            r = score(f, s)
            row[side] = ({k: round(r[k], 3) for k in METRICS} | {"keypoint_root_mm": r["keypoint_root_mm"]}
                         | {k: round(v, 4) for k, v in nv.get(side, {}).items()})
        result["rows"].append(row)
        # What the side terms see: the avatar's side silhouettes against the fitted body's and the truth's.
        up = body_up(skeleton(fit))
        masks = [side_targets(g, fit.vertices, up, config).masks for g in (avatar, oracle_avatar(args.data, sid), point_gaussians(fit.vertices, 0.012))]
        row["side_iou"] = {"avatar_vs_body": round(iou(masks[0], masks[2]), 3), "avatar_vs_truth": round(iou(masks[0], masks[1]), 3),
                           "body_vs_truth": round(iou(masks[2], masks[1]), 3)}
        if args.sheet and len(sheet) < 6:
            sheet.append(np.concatenate([np.stack(masks, -1)[v] for v in range(2)], 1).astype(np.uint8) * 255)
        b, a = row["before"], row["after"]
        print(f"{sid}: MPJPE {b['mpjpe_mm']:.0f} -> {a['mpjpe_mm']:.0f}, PA {b['pa_mpjpe_mm']:.1f} -> {a['pa_mpjpe_mm']:.1f}, "
              f"root {b['root_mpjpe_mm']:.0f} -> {a['root_mpjpe_mm']:.0f} mm, IoU {b['silhouette_iou']:.3f} -> {a['silhouette_iou']:.3f}, "
              f"{seconds:.2f} s" + (f", fg PSNR {b['fg_psnr']:.2f} -> {a['fg_psnr']:.2f}" if nv else ""), file=sys.stderr)  # fmt: skip
    for side in ("before", "after"):
        result[side] = {k: v for k, v in summarise([r[side] for r in result["rows"]]).items()}
    result["median_seconds"] = round(float(np.median([r["seconds"] for r in result["rows"]])), 3)
    result["median_cpu_seconds"] = round(float(np.median([r["cpu_seconds"] for r in result["rows"]])), 3)
    result["median_network_seconds"] = round(float(np.median([r["network_seconds"] for r in result["rows"]])), 3)
    net = result["median_network_seconds"]
    result["ratio_seconds_vs_network"] = round(result["median_seconds"] / net, 1) if net > 0 else None  # None: --oracle
    result["mean_side_iou"] = {k: round(float(np.mean([r["side_iou"][k] for r in result["rows"]])), 3) for k in result["rows"][0]["side_iou"]}
    result["improved_pa_mpjpe"] = sum(r["after"]["pa_mpjpe_mm"] < r["before"]["pa_mpjpe_mm"] for r in result["rows"])
    result["improved_mpjpe"] = sum(r["after"]["mpjpe_mm"] < r["before"]["mpjpe_mm"] for r in result["rows"])
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.sheet and sheet:
        import cv2

        cv2.imwrite(str(args.sheet), np.concatenate(sheet, 0)[..., ::-1])
    write_results("refine_body", result, args.out)
    print(markdown(result), file=sys.stderr)


def markdown(result: dict) -> str:
    """The before/after table."""
    cols = (("mean_mpjpe_mm", "MPJPE mm"), ("mean_root_mpjpe_mm", "root-aligned mm"), ("mean_pa_mpjpe_mm", "PA-MPJPE mm"),
            ("median_pa_mpjpe_mm", "median PA-MPJPE mm"), ("mean_abs_distance_error_mm", "|distance| mm"),
            ("median_surface_mm", "surface mm (median)"), ("mean_silhouette_iou", "IoU"))  # fmt: skip
    cols += tuple((f"mean_{k}", label) for k, label in (("psnr", "PSNR"), ("fg_psnr", "fg PSNR"), ("ssim", "SSIM")) if f"mean_{k}" in result["before"])
    lines = ["| body | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for side in ("before", "after"):
        lines.append(f"| {side} | " + " | ".join(f"{result[side][c[0]]:.3f}" if "iou" in c[0] or "ssim" in c[0] else f"{result[side][c[0]]:.2f}" if "psnr" in c[0] else f"{result[side][c[0]]:.1f}" for c in cols) + " |")
    n = result["subjects"]
    lines += ["", f"PA-MPJPE lower after refinement for {result['improved_pa_mpjpe']}/{n} subjects, MPJPE for {result['improved_mpjpe']}/{n}; "
              f"refine_body {result['median_seconds']:.2f} s median per call ({result['median_cpu_seconds']:.2f} CPU s) ({result['ratio_seconds_vs_network'] or 'n/a'}x one network run).",
              "Side silhouettes (mean IoU): " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in result["mean_side_iou"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
