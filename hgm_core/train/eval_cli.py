"""`hgm eval`: reconstruct every subject of a render layout from view 0 and score it like the paper.

For each subject the `Reconstructor` gets view 0 with its intrinsics and GT mask; its Gaussians
(in view 0's optical frame) are rendered from the other views, whose cameras are the layout's
extrinsics relative to view 0 (`E_v E_0^-1`). Novel-view PSNR / SSIM / LPIPS (Table 1) are averaged
over views 1..V-1; the avatar mesh (TSDF-fused from its Gaussians, `ReconstructorConfig.mesh`) is compared with
the GT mesh in view 0's frame (Chamfer / P2S / NC, Table 3); the body fit's COCO keypoints with
the GT keypoints (MPJPE / PA-MPJPE). Writes `eval.json`, `eval.md` and side-by-side images
(input | ours | ground truth) of the worst subjects.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

HELP = "evaluate a method on a render layout (novel-view PSNR/SSIM/LPIPS, mesh Chamfer/P2S/NC, MPJPE)"
NOVEL_VIEWS_SHOWN = (3, 6, 9)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="render layout (hgm datagen output or THuman2.0 renders)")
    p.add_argument("--method", default="prior", help="'prior' (no network) or a checkpoint directory")
    p.add_argument("--stages", default=None, help="pipeline stages (default: prior, or coarse with a checkpoint)")
    p.add_argument("-o", "--output", "--out", type=Path, default=None, help="output directory (default: DATA/eval_<method>)")
    p.add_argument("--size", type=int, default=None, help="evaluation image size (default: the dataset's)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N subjects")
    p.add_argument("--worst", type=int, default=3, help="subjects shown side by side (default: 3)")
    p.add_argument("--backend", default="auto", help="rasterizer backend (default: auto)")


def _load_view_image(root: Path, sid: str, v: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    img = cv2.imread(str(root / "img" / f"{sid}_{v:03d}" / "0.jpg"))[..., ::-1]
    mask = cv2.imread(str(root / "mask" / f"{sid}_{v:03d}" / "0.png"), cv2.IMREAD_GRAYSCALE)
    if img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img), mask


def _read_ply_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    m = trimesh.load(path, process=False, force="mesh")
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)


def evaluate_subject(reconstructor, lpips_model, root: Path, sid: str, stages: str, size: int | None, backend: str) -> tuple[dict, dict]:
    """Metrics of one subject and the images needed for the side-by-side figure."""
    import torch

    from hgm_core.body.metrics import mpjpe, pa_mpjpe
    from hgm_core.camera import Cameras
    from hgm_core.data.reader import load_subject_cameras
    from hgm_core.types import CameraInfo, ReconstructionRequest
    from hgm_core.render import rasterize
    from hgm_core.train import metrics

    E, Ks, native = load_subject_cameras(root, sid)
    size = size or native
    K0 = Ks[0] * np.array([[size / native], [size / native], [1.0]])
    image, mask = _load_view_image(root, sid, 0, size)
    t0 = time.perf_counter()
    rec = reconstructor.run(ReconstructionRequest(image, camera=CameraInfo(K0, size, size), mask=mask, stages=stages))
    seconds = time.perf_counter() - t0

    novel = list(range(1, len(E)))
    rel = E[novel] @ np.linalg.inv(E[0])  # view-0 optical frame -> camera v
    Kn = Ks[novel] * np.array([[size / native], [size / native], [1.0]])[None]
    cams = Cameras(torch.from_numpy(Kn).float(), torch.from_numpy(rel).float(), size, size)
    g = rec.gaussians.to(dtype=torch.float32)
    renders = []
    with torch.no_grad():
        for i in range(len(novel)):  # one view at a time keeps the CPU rasterizer's memory bounded
            renders.append(rasterize(g, cams[i], background=(1.0, 1.0, 1.0), backend=backend).rgb[0].clamp(0, 1))
    pred = torch.stack(renders).permute(0, 3, 1, 2)
    gt_imgs = [_load_view_image(root, sid, v, size)[0] for v in novel]
    gt = torch.from_numpy(np.stack(gt_imgs)).float().permute(0, 3, 1, 2) / 255.0

    row: dict = {"id": sid, "seconds": seconds,
                 "psnr": float(metrics.psnr(pred, gt).mean()), "ssim": float(metrics.ssim(pred, gt).mean()),
                 "lpips": float(metrics.lpips(lpips_model, pred, gt).mean())}
    mesh = rec.mesh if rec.mesh is not None else rec.body_mesh
    gt_mesh_path = root / "mesh" / f"{sid}.ply"
    if mesh is not None and gt_mesh_path.exists():
        gv, gf = _read_ply_mesh(gt_mesh_path)
        gv = gv @ E[0, :3, :3].T + E[0, :3, 3]
        mm = metrics.mesh_metrics((mesh.vertices, mesh.faces), (gv, gf))
        row |= {"mesh_source": "mesh" if rec.mesh is not None else "body_mesh", "chamfer_cm": mm.chamfer_cm,
                "p2s_cm": mm.p2s_cm, "nc": mm.normal_consistency}
    kp_path = root / "keypoints" / f"{sid}.json"
    if rec.skeleton is not None and kp_path.exists():
        kp = json.loads(kp_path.read_text())
        names = [n for n in kp["names"] if n in rec.skeleton.names]
        if len(names) >= 4:
            gt_world = np.array([kp["world"][kp["names"].index(n)] for n in names])
            gt_cam = gt_world @ E[0, :3, :3].T + E[0, :3, 3]
            pred_j = np.array([rec.skeleton.joints[rec.skeleton.names.index(n)] for n in names])
            row |= {"mpjpe_mm": mpjpe(pred_j, gt_cam, scale=1000), "pa_mpjpe_mm": pa_mpjpe(pred_j, gt_cam, scale=1000),
                    "joints": len(names)}
    shown = {v: ((pred[v - 1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), gt_imgs[v - 1])
             for v in NOVEL_VIEWS_SHOWN if v < len(E)}
    return row, {"input": image, "views": shown}


_COLUMNS = (("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 4), ("lpips", "LPIPS ↓", 4), ("chamfer_cm", "CD (cm) ↓", 3),
            ("p2s_cm", "P2S (cm) ↓", 3), ("nc", "NC ↑", 4), ("mpjpe_mm", "MPJPE (mm) ↓", 1), ("pa_mpjpe_mm", "PA-MPJPE (mm) ↓", 1))


def _fmt(value, digits: int) -> str:
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


def markdown_table(summary: dict) -> str:
    """Mean row (paper Tables 1 and 3 columns), then one row per subject, then the worst cases."""
    cols = [c for c in _COLUMNS if any(c[0] in r for r in summary["subjects"])]
    head = "| " + " | ".join(["subject"] + [c[1] for c in cols]) + " |"
    sep = "|" + "---|" * (len(cols) + 1)
    lines = [f"# `hgm eval` — method `{summary['method']}`, stages `{summary['stages']}`", "",
             f"Data: `{summary['data']}` ({summary['n_subjects']} subjects, {summary['size']}² px, novel views 1..{summary['n_views'] - 1} "
             f"from view 0). Mesh metrics use `{summary.get('mesh_source', '–')}` vs the GT mesh.", "", head, sep,
             "| **mean** | " + " | ".join(_fmt(summary["mean"].get(c[0]), c[2]) for c in cols) + " |"]
    for r in summary["subjects"]:
        lines.append(f"| {r['id']} | " + " | ".join(_fmt(r.get(c[0]), c[2]) for c in cols) + " |")
    if summary.get("worst"):
        lines += ["", "Worst subjects by LPIPS (columns: input view 0 | ours | ground truth; rows: views "
                  + ", ".join(str(v) for v in NOVEL_VIEWS_SHOWN) + "):", ""]
        lines += [f"![{w}](worst_{w}.png)" for w in summary["worst"]]
    return "\n".join(lines) + "\n"


def _side_by_side(figure: dict) -> np.ndarray:
    rows = [np.concatenate([figure["input"], ours, gt], 1) for ours, gt in figure["views"].values()]
    return np.concatenate(rows, 0)


def run(args: argparse.Namespace) -> int:
    import cv2

    from hgm_core.cli import CliError
    from hgm_core.data.reader import DatasetLayoutError, list_subjects

    try:
        subjects = list(list_subjects(args.data))
    except DatasetLayoutError as e:
        raise CliError(str(e)) from e
    if args.limit:
        subjects = subjects[: args.limit]
    if not subjects:
        raise CliError(f"no subjects under {args.data}")
    try:
        from hgm_core.pipeline import Reconstructor, ReconstructorConfig
        from hgm_core.types import PipelineError
    except ImportError as e:
        raise CliError(f"the reconstruction pipeline is not available here ({e})") from e
    # Subjects are independent people: no warm start from the previous subject's fit.
    config = ReconstructorConfig().override({"mesh_by_default": True, "body.track.enabled": False})
    if args.method == "prior":
        stages = args.stages or "prior"
    else:
        if not Path(args.method).is_dir():
            raise CliError(f"--method must be 'prior' or a checkpoint directory; {args.method} is neither")
        config, stages = config.override({"coarse.checkpoint": str(args.method)}), args.stages or "coarse"
    out: Path = args.output or args.data / f"eval_{Path(args.method).name}"
    out.mkdir(parents=True, exist_ok=True)
    reconstructor = Reconstructor.from_config(config)

    from tqdm import tqdm

    from hgm_core.train.lpips import LPIPS

    lpips_model = LPIPS.load()
    rows, figures, failures = [], {}, {}
    size = args.size
    for sid in tqdm(subjects, desc="eval", unit="subj"):
        try:
            row, fig = evaluate_subject(reconstructor, lpips_model, args.data, sid, stages, size, args.backend)
        except PipelineError as e:  # a documented failure counts against the method, not the tool
            failures[sid] = f"{type(e).__name__}: {e}"
            continue
        rows.append(row)
        figures[sid] = fig
        size = size or fig["input"].shape[0]
    if not rows:
        raise CliError(f"every subject failed: {failures}")
    keys = [c[0] for c in _COLUMNS]
    mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys if any(k in r for r in rows)}
    worst = [r["id"] for r in sorted(rows, key=lambda r: -r["lpips"])[: args.worst]]
    n_views = len(list((args.data / "parm").glob(f"{subjects[0]}_*")))
    summary = {"method": str(args.method), "stages": stages, "data": str(args.data), "size": size, "n_views": n_views,
               "n_subjects": len(rows), "failures": failures, "mean": mean, "subjects": rows, "worst": worst,
               "mesh_source": rows[0].get("mesh_source")}
    for sid in worst:
        cv2.imwrite(str(out / f"worst_{sid}.png"), _side_by_side(figures[sid])[..., ::-1])
    (out / "eval.json").write_text(json.dumps(summary, indent=1))
    (out / "eval.md").write_text(markdown_table(summary))
    print(markdown_table(summary))
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return 0
