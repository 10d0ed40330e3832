"""`hgm eval`: reconstruct every subject of a render layout from view 0 and score it like the paper.

For each subject view 0 (with its intrinsics and GT mask) goes through `perceive` and `fit_body`
once; every method (`prior`; a one-view checkpoint run by the `coarse` stage; a two-view checkpoint
run as `full` does: `coarse` -> `back_view` -> `fuse`) then builds its avatar from that same fit, so
methods differ only in what they do with it. Protocols (issue #11):

- `wild`: the fit as it is (metric placement from one image, its distance error included);
- `canonical`: the fit moved onto the ground-truth body's placement — the similarity (scale,
  rotation, translation) that best maps its vertices onto the GT body's (same body model) — as the
  paper's normalised renders give the network the subject's true frame. Pose and shape stay the
  fit's, so appearance and shape are scored apart from the monocular distance error.

The avatar (in view 0's optical frame) is rendered from the other views, whose cameras are the
layout's extrinsics relative to view 0 (`E_v E_0^-1`). Per novel view: PSNR, PSNR inside the GT
mask ("fg PSNR": a white background mostly rewards the outline), SSIM, LPIPS (Table 1), averaged
over views and by view group (front: within 30° of the input, back: 150°-210°, side: the rest).
The avatar mesh (TSDF-fused from its Gaussians) is compared with the GT mesh (Chamfer / P2S / NC,
Table 3); the body's COCO keypoints with the GT keypoints (MPJPE / PA-MPJPE). The body fit itself
is scored once per subject, image only and again with the layout's depth through a simulated RGB-D
sensor (MPJPE, root-aligned, PA-MPJPE, distance error: `hgm_core/train/body_metrics.py`). Writes `eval.json`,
`eval.md` and side-by-side images (input | method | ground truth) of the worst subjects.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hgm_core.device import add_device_argument

if TYPE_CHECKING:
    from hgm_core.pipeline import Reconstructor, Stage

HELP = "evaluate methods on a render layout (novel-view PSNR/fg PSNR/SSIM/LPIPS by view group, mesh Chamfer/P2S/NC, MPJPE)"
NOVEL_VIEWS_SHOWN = (3, 6, 9)
PROTOCOLS = ("wild", "canonical")
IMAGE_METRICS = ("psnr", "fg_psnr", "ssim", "lpips")
GROUPS = ("all", "front", "side", "back")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="render layout (hgm datagen output or THuman2.0 renders)")
    p.add_argument("--method", nargs="+", default=["prior"],
                   help="methods: 'prior' (no network) and/or checkpoint directories: a one-view one runs the coarse stage, a "
                        "two-view one the full chain coarse -> back_view -> fuse; all use one fit per subject")
    p.add_argument("--fuse-coarse", type=Path, default=None,
                   help="one-view checkpoint whose avatar a two-view method's back view is rendered from (default: the embedded one)")
    p.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=["wild"],
                   help="wild: the fit's own placement; canonical: the fit moved onto the GT body's placement (default: wild)")
    p.add_argument("-o", "--output", "--out", type=Path, default=None, help="output directory (default: DATA/eval_<methods>)")
    p.add_argument("--size", type=int, default=None, help="evaluation image size (default: the dataset's)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N subjects")
    p.add_argument("--worst", type=int, default=3, help="subjects shown side by side per protocol and method (default: 3)")
    p.add_argument("--backend", default="auto", help="rasterizer backend (default: auto)")
    add_device_argument(p)


# --------------------------------------------------------------------------------------------- pure parts


def placement_transform(fitted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`[4, 4]` similarity (scale * rotation, translation) that best maps `fitted [N, 3]` onto `target [N, 3]`
    (corresponding points, least squares: `body.metrics.procrustes_align`)."""
    from hgm_core.body.metrics import procrustes_align

    fitted = np.asarray(fitted, np.float64)
    aligned = procrustes_align(fitted, np.asarray(target, np.float64))
    # The aligned points are an exact similarity of the fitted ones: recover it as an affine map.
    A, *_ = np.linalg.lstsq(np.c_[fitted, np.ones(len(fitted))], aligned, rcond=None)  # [4, 3]
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = A[:3].T, A[3]
    return M


def view_offset_deg(relative: np.ndarray) -> float:
    """Angle in [0, 180] of the rotation part of `relative [4, 4]` (view-0 camera -> view v camera).

    Ring cameras about a vertical axis differ by a rotation about that axis, so this is the azimuth
    between the input view and view v, elevation or not."""
    R = np.asarray(relative, np.float64)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def group_means(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Image metrics averaged over every (subject, novel view) pair, overall and by view group.

    `rows`: subject rows whose `views` list has per-view dicts with `group` and `IMAGE_METRICS`."""
    out: dict[str, dict[str, float]] = {}
    for g in GROUPS:
        views = [v for r in rows for v in r["views"] if g == "all" or v["group"] == g]
        if views:
            out[g] = {k: float(np.mean([v[k] for v in views])) for k in IMAGE_METRICS} | {"views": len(views)}
    return out


# --------------------------------------------------------------------------------------------- one subject


def _load_view_image(root: Path, sid: str, v: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    img = cv2.imread(str(root / "img" / f"{sid}_{v:03d}" / "0.jpg"))[..., ::-1]
    mask = cv2.imread(str(root / "mask" / f"{sid}_{v:03d}" / "0.png"), cv2.IMREAD_GRAYSCALE)
    if img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img), mask


class Subject:
    """One subject of the layout at the evaluation size: view 0's request, the novel views' cameras,
    images and masks, and the GT body / mesh / keypoints in view 0's optical frame."""

    def __init__(self, root: Path, sid: str, size: int | None) -> None:
        import torch

        from hgm_core.camera import Cameras
        from hgm_core.data.reader import load_subject_cameras

        E, Ks, native = load_subject_cameras(root, sid)
        self.root, self.id, self.size = root, sid, size or native
        scale = np.array([[self.size / native], [self.size / native], [1.0]])
        self.K0 = Ks[0] * scale
        self.image, self.mask = _load_view_image(root, sid, 0, self.size)
        self.E0 = E[0]
        self.novel = list(range(1, len(E)))
        rel = E[self.novel] @ np.linalg.inv(E[0])  # view-0 optical frame -> camera v
        self.offsets = [view_offset_deg(r) for r in rel]
        Kn = Ks[self.novel] * scale[None]
        self.cameras = Cameras(torch.from_numpy(Kn).float(), torch.from_numpy(rel).float(), self.size, self.size)
        views = [_load_view_image(root, sid, v, self.size) for v in self.novel]
        self.gt_images = [v[0] for v in views]
        self.gt = torch.from_numpy(np.stack(self.gt_images)).float().permute(0, 3, 1, 2) / 255.0
        self.gt_mask = torch.from_numpy(np.stack([v[1] for v in views]) > 127).float()[:, None]

    def to_view0(self, world: np.ndarray) -> np.ndarray:
        return np.asarray(world, np.float64) @ self.E0[:3, :3].T + self.E0[:3, 3]

    def gt_body(self) -> np.ndarray | None:
        """GT body vertices `[Nv, 3]` in view 0's optical frame, or None when the layout has none."""
        path = self.root / "body" / f"{self.id}.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            return self.to_view0(f["vertices"])


def place_body(fit, target_vertices: np.ndarray):
    """The `canonical` protocol: `fit` (a `BodyFit`) moved by the similarity that best maps its vertices
    onto `target_vertices` (same body model); vertices, joints and keypoints move together, pose and
    shape stay the fit's."""
    from hgm_core.cli import CliError

    if target_vertices.shape != fit.vertices.shape:
        raise CliError(f"the canonical protocol needs the GT body in the fit's body model ({fit.body_model}, "
                       f"{len(fit.vertices)} vertices); the layout's body has {len(target_vertices)}")
    M = placement_transform(fit.vertices, target_vertices)

    def move(p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, np.float64) @ M[:3, :3].T + M[:3, 3]).astype(np.asarray(p).dtype)

    return dataclasses.replace(fit, vertices=move(fit.vertices), joints=move(fit.joints), keypoints=move(fit.keypoints))


def score_avatar(rec, subject: Subject, lpips_model, backend: str) -> tuple[dict, dict]:
    """Metrics of one reconstruction of `subject` and the images for the side-by-side figure."""
    import torch

    from hgm_core.body.metrics import mpjpe, pa_mpjpe
    from hgm_core.io.mesh import read_mesh_ply
    from hgm_core.render import rasterize
    from hgm_core.train import metrics
    from hgm_core.train.validate import angle_group

    g = rec.gaussians.to(dtype=torch.float32)
    with torch.no_grad():  # one view at a time keeps the CPU rasterizer's memory bounded
        pred = torch.stack([rasterize(g, subject.cameras[i], background=(1.0, 1.0, 1.0), backend=backend).rgb[0].clamp(0, 1)
                            for i in range(len(subject.novel))]).permute(0, 3, 1, 2)
    per_view = {"psnr": metrics.psnr(pred, subject.gt), "fg_psnr": metrics.psnr(pred, subject.gt, subject.gt_mask),
                "ssim": metrics.ssim(pred, subject.gt), "lpips": metrics.lpips(lpips_model, pred, subject.gt)}
    views = [{"view": v, "offset_deg": round(a, 1), "group": angle_group(round(a, 1))} | {k: float(per_view[k][i]) for k in IMAGE_METRICS}
             for i, (v, a) in enumerate(zip(subject.novel, subject.offsets))]
    row: dict = {"id": subject.id} | {k: float(np.mean([v[k] for v in views])) for k in IMAGE_METRICS} | {"views": views}
    mesh = rec.mesh if rec.mesh is not None else rec.body_mesh
    gt_mesh_path = subject.root / "mesh" / f"{subject.id}.ply"
    if mesh is not None and gt_mesh_path.exists():
        gv, gf, _ = read_mesh_ply(gt_mesh_path)
        mm = metrics.mesh_metrics((mesh.vertices, mesh.faces), (subject.to_view0(gv), gf))
        row |= {"mesh_source": "mesh" if rec.mesh is not None else "body_mesh", "chamfer_cm": mm.chamfer_cm,
                "p2s_cm": mm.p2s_cm, "nc": mm.normal_consistency}
    kp_path = subject.root / "keypoints" / f"{subject.id}.json"
    if rec.skeleton is not None and kp_path.exists():
        kp = json.loads(kp_path.read_text())
        names = [n for n in kp["names"] if n in rec.skeleton.names]
        if len(names) >= 4:
            gt_cam = subject.to_view0(np.array([kp["world"][kp["names"].index(n)] for n in names]))
            pred_j = np.array([rec.skeleton.joints[rec.skeleton.names.index(n)] for n in names])
            row |= {"mpjpe_mm": mpjpe(pred_j, gt_cam, scale=1000), "pa_mpjpe_mm": pa_mpjpe(pred_j, gt_cam, scale=1000),
                    "joints": len(names)}
    # A layout with fewer views than NOVEL_VIEWS_SHOWN assumes shows its first ones instead.
    numbers = [v for v in NOVEL_VIEWS_SHOWN if v - 1 < len(subject.novel)] or list(range(1, min(len(NOVEL_VIEWS_SHOWN), len(subject.novel)) + 1))
    shown = {v: ((pred[v - 1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), subject.gt_images[v - 1])
             for v in numbers}
    return row, {"input": subject.image, "views": shown}


# --------------------------------------------------------------------------------------------- tables

_COLUMNS = (("psnr", "PSNR ↑", 2), ("fg_psnr", "fg PSNR ↑", 2), ("ssim", "SSIM ↑", 4), ("lpips", "LPIPS ↓", 4),
            ("chamfer_cm", "CD (cm) ↓", 3), ("p2s_cm", "P2S (cm) ↓", 3), ("nc", "NC ↑", 4), ("mpjpe_mm", "MPJPE (mm) ↓", 1),
            ("pa_mpjpe_mm", "PA-MPJPE (mm) ↓", 1))
_GROUP_NAMES = {"all": "all novel views", "front": "near-front (≤ 30°)", "side": "sides", "back": "back (150°–210°)"}


def _fmt(value, digits: int) -> str:
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


def markdown_table(summary: dict) -> str:
    """Per protocol: one mean row per method (paper Tables 1 and 3 columns plus fg PSNR), the image
    metrics per view group, then one row per subject and method, then the worst cases."""
    lines = [f"# `hgm eval` — {', '.join(f'`{m}`' for m in summary['methods'])}", "",
             f"Data: `{summary['data']}` ({summary['n_subjects']} subjects, {summary['size']}² px, novel views "
             f"1..{summary['n_views'] - 1} from view 0). One body fit per subject shared by every method. fg PSNR: PSNR "
             "inside the ground-truth mask.", ""]
    img_cols = [c for c in _COLUMNS if c[0] in IMAGE_METRICS]
    for protocol, by_method in summary["results"].items():
        rows_all = [r for res in by_method.values() for r in res["subjects"]]
        cols = [c for c in _COLUMNS if any(c[0] in r for r in rows_all)]
        lines += [f"## Protocol `{protocol}`", "", "| method | " + " | ".join(c[1] for c in cols) + " |",
                  "|" + "---|" * (len(cols) + 1)]
        lines += [f"| {m} | " + " | ".join(_fmt(res["mean"].get(c[0]), c[2]) for c in cols) + " |" for m, res in by_method.items()]
        lines += ["", "By view group (means over subject × view):", "",
                  "| view group | method | views | " + " | ".join(c[1] for c in img_cols) + " |", "|" + "---|" * (len(img_cols) + 3)]
        for g in GROUPS:
            for m, res in by_method.items():
                if g in res["groups"]:
                    gm = res["groups"][g]
                    lines.append(f"| {_GROUP_NAMES[g]} | {m} | {gm['views']} | " + " | ".join(_fmt(gm[c[0]], c[2]) for c in img_cols) + " |")
        lines += ["", "<details><summary>per subject</summary>", "", "| subject | method | " + " | ".join(c[1] for c in cols) + " |",
                  "|" + "---|" * (len(cols) + 2)]
        for m, res in by_method.items():
            lines += [f"| {r['id']} | {m} | " + " | ".join(_fmt(r.get(c[0]), c[2]) for c in cols) + " |" for r in res["subjects"]]
        lines += ["", "</details>", ""]
        for m, res in by_method.items():
            if res.get("failures"):
                lines += [f"Failures ({m}): " + "; ".join(f"{k}: {v}" for k, v in res["failures"].items()), ""]
            if res.get("worst"):
                lines += [f"Worst subjects of `{m}` by LPIPS (input view 0 | {m} | ground truth; rows: views "
                          + ", ".join(str(v) for v in NOVEL_VIEWS_SHOWN) + "):", ""]
                lines += [f"![{w}]({_figure_name(protocol, m, w)})" for w in res["worst"]] + [""]
    if summary.get("body_fit"):
        from hgm_core.train.body_metrics import markdown_lines

        lines += markdown_lines(summary["body_fit"])
    return "\n".join(lines).rstrip() + "\n"


def _figure_name(protocol: str, method: str, sid: str) -> str:
    return f"worst_{protocol}_{method}_{sid}.png"


def _side_by_side(figure: dict) -> np.ndarray:
    rows = [np.concatenate([figure["input"], ours, gt], 1) for ours, gt in figure["views"].values()]
    return np.concatenate(rows, 0) if rows else figure["input"]


def summarise(rows: list[dict], failures: dict[str, str], worst: int) -> dict:
    """Means of one (protocol, method): every metric over subjects, image metrics by view group."""
    keys = [c[0] for c in _COLUMNS]
    mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys if any(k in r for r in rows)}
    return {"mean": mean, "groups": group_means(rows), "subjects": rows, "failures": failures,
            "worst": [r["id"] for r in sorted(rows, key=lambda r: -r["lpips"])[:worst]],
            "mesh_source": rows[0].get("mesh_source") if rows else None}


def _method_labels(methods: list[str]) -> dict[str, str]:
    """Table label per method argument: 'prior' or the checkpoint folder's name (made unique)."""
    labels: dict[str, str] = {}
    for m in methods:
        base = m if m == "prior" else Path(m).name
        label, k = base, 2
        while label in labels.values():
            label, k = f"{base}_{k}", k + 1
        labels[m] = label
    return labels


def method_chain(method: str, reconstructor: Reconstructor, fuse_coarse: Path | None) -> list[Stage]:
    """The stage components one `--method` runs after the shared fit: `[prior]`; `[coarse]` for a
    one-view checkpoint; `[coarse, back_view, fuse]` for a two-view one (`full` without the mesh,
    which every method gets; `refine_body` stays off, as `full` runs it only where it is enabled),
    its coarse avatar from `fuse_coarse` or the embedded one-view checkpoint.

    Raises:
        StageUnavailableError: a checkpoint does not load, or a two-view method lacks its parts.
    """
    from hgm_core.device import resolve_device
    from hgm_core.model.checkpoint import CheckpointError, read_checkpoint_config
    from hgm_core.model.predict import default_checkpoint_dir
    from hgm_core.pipeline.coarse import CoarseStage, FuseStage
    from hgm_core.types import StageUnavailableError

    if method == "prior":
        return [reconstructor.stages["prior"]]
    config, device = reconstructor.config, resolve_device(reconstructor.config.device)
    body_model, prior = config.body.model, reconstructor.stages["prior"]
    try:
        views = read_checkpoint_config(method)[0].num_views
    except CheckpointError as e:
        raise StageUnavailableError(f"cannot read checkpoint {method}: {e}") from None
    if views == 1:
        return [CoarseStage.from_checkpoint(method, prior, body_model, device)]
    if "back_view" not in reconstructor.stages:
        raise StageUnavailableError(f"two-view method {method}: {reconstructor.unavailable['back_view']}")
    coarse = CoarseStage.from_checkpoint(fuse_coarse or default_checkpoint_dir(1), prior, body_model, device)
    return [coarse, reconstructor.stages["back_view"], FuseStage.from_checkpoint(method, body_model, device)]


def run(args: argparse.Namespace) -> int:
    import cv2

    from hgm_core.cli import CliError
    from hgm_core.data.reader import DatasetLayoutError, list_subjects
    from hgm_core.train import body_metrics

    try:
        subjects = list(list_subjects(args.data))
    except DatasetLayoutError as e:
        raise CliError(str(e)) from e
    if args.limit:
        subjects = subjects[: args.limit]
    if not subjects:
        raise CliError(f"no subjects under {args.data}")
    for m in args.method:
        if m != "prior" and not Path(m).is_dir():
            raise CliError(f"--method takes 'prior' or checkpoint directories; {m} is neither")
    try:
        from hgm_core.pipeline import Reconstructor, ReconstructorConfig
        from hgm_core.pipeline.stage import Frame, update
        from hgm_core.types import CameraInfo, PipelineError, ReconstructionRequest
    except ImportError as e:
        raise CliError(f"the reconstruction pipeline is not available here ({e})") from e
    # Subjects are independent people: no warm start from the previous subject's fit. No network
    # stage in the reconstructor: each checkpoint method gets its own below.
    config = ReconstructorConfig().override({"mesh_by_default": True, "body.track.enabled": False, "coarse.checkpoint": None,
                                             "fuse.checkpoint": None,
                                             **({} if args.device is None else {"device": args.device})})
    try:
        reconstructor = Reconstructor.from_config(config)
    except (PipelineError, ValueError) as e:  # e.g. --device cuda without CUDA
        raise CliError(f"cannot build the reconstructor: {e}") from None
    labels = _method_labels(args.method)
    try:
        chains = {label: method_chain(m, reconstructor, args.fuse_coarse) for m, label in labels.items()}
    except PipelineError as e:
        raise CliError(f"cannot build a method: {e}") from None
    out: Path = args.output or args.data / f"eval_{'_'.join(labels.values())}"
    out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    from hgm_core.train.lpips import LPIPS

    lpips_model = LPIPS.load()
    combos = [(p, label) for p in args.protocol for label in chains]
    rows: dict = {c: [] for c in combos}
    failures: dict = {c: {} for c in combos}
    figures: dict = {c: {} for c in combos}
    fit_seconds: list[float] = []
    body_rows: list[dict] = []  # body-fit figures per subject, image only and with depth (train/body_metrics.py)
    def write_summary() -> dict:
        """Tables and figures of what has been scored so far (after every subject: a run stopped early keeps them)."""
        results: dict = {p: {} for p in args.protocol}
        for (protocol, label), r in rows.items():
            res = results[protocol][label] = summarise(r, failures[(protocol, label)], args.worst)
            for sid in res["worst"]:
                cv2.imwrite(str(out / _figure_name(protocol, label, sid)), _side_by_side(figures[(protocol, label)][sid])[..., ::-1])
        n_views = len(list((args.data / "parm").glob(f"{subjects[0]}_*")))
        summary = {"methods": list(labels.values()), "method_paths": dict(zip(labels.values(), labels)), "protocols": list(args.protocol),
                   "data": str(args.data), "size": size, "n_views": n_views, "n_subjects": max(len(r) for r in rows.values()),
                   "fit_seconds_mean": float(np.mean(fit_seconds)) if fit_seconds else None, "results": results,
                   "body_fit": body_metrics.summarise(body_rows) if body_rows else None}
        (out / "eval.json").write_text(json.dumps(summary, indent=1))
        (out / "eval.md").write_text(markdown_table(summary))
        return summary

    size = args.size
    for sid in tqdm(subjects, desc="eval", unit="subj"):
        subject = Subject(args.data, sid, size)
        size = subject.size
        request = ReconstructionRequest(subject.image, camera=CameraInfo(subject.K0, size, size), mask=subject.mask, stages="prior")
        t0 = time.perf_counter()
        try:
            perceived = reconstructor.stages["perceive"](Frame(request=request))
            fitted = reconstructor.stages["fit_body"](perceived)
        except PipelineError as e:  # a documented failure counts against every method, not the tool
            for c in combos:
                failures[c][sid] = f"{type(e).__name__}: {e}"
            continue
        fit_seconds.append(time.perf_counter() - t0)
        with_depth = lambda d: reconstructor.stages["fit_body"](  # noqa: E731  (the same perception, plus a depth image)
            update(perceived, request=dataclasses.replace(request, depth=d), reports={})).body
        body_row = body_metrics.subject_row(args.data, sid, size, subject.to_view0, fitted.body, with_depth, subject.gt_body())
        if body_row is not None:
            body_rows.append(body_row)
        for protocol in args.protocol:
            frame = fitted
            if protocol == "canonical":
                gt_body = subject.gt_body()
                if gt_body is None:
                    raise CliError(f"the canonical protocol needs GT bodies ({args.data}/body/{sid}.npz is missing)")
                frame = update(fitted, body=place_body(fitted.body, gt_body))
            for label, chain in chains.items():
                done, timings = frame, {}
                try:
                    for stage in chain:
                        t = time.perf_counter()
                        done = stage(done)
                        timings[stage.name] = time.perf_counter() - t
                except PipelineError as e:
                    failures[(protocol, label)][sid] = f"{type(e).__name__}: {e}"
                    continue
                seconds = sum(timings.values())
                done = reconstructor.stages["mesh"](done)
                rec = reconstructor.result(done, timings)
                row, fig = score_avatar(rec, subject, lpips_model, args.backend)
                row["seconds"] = seconds
                row |= {"stage_seconds": timings} if len(timings) > 1 else {}
                for name in ("coarse", "fuse"):
                    if name in timings:
                        row[f"{name}_used"] = done.reports.get(name, {}).get("used")
                rows[(protocol, label)].append(row)
                figures[(protocol, label)][sid] = fig
        write_summary()
    if not any(rows.values()):
        raise CliError(f"every subject failed: {failures}")
    summary = write_summary()
    print(markdown_table(summary))
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return 0
