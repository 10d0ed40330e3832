"""`hgm reconstruct IMAGE -o DIR`: one photo -> avatar.ply, body.json, body.ply, turntable.png, report.json
(and mesh.ply with --mesh)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hgm_core.cli import CliError
from hgm_core.device import add_device_argument
from hgm_core.types import DEFAULT_STAGES

HELP = "reconstruct an avatar from one image (writes avatar.ply, body.json, body.ply, turntable.png, report.json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="RGB/grey image file (jpg, png, ...) showing one person, ideally full body")
    p.add_argument("-o", "--output", default="out", help="output folder (default: out/)")
    p.add_argument("--mask", help="person mask image (nonzero = person); overrides the segmenter")
    p.add_argument("--depth", help="depth image aligned with the photo (16-bit PNG in mm, or .npy in mm/m): "
                   "metric placement for RGB-D cameras, and the avatar's visible surface moved onto the measured one")
    p.add_argument("--camera-info", help="YAML with the camera's intrinsics (ROS camera_info layout: "
                   "image_width, image_height, camera_matrix.data or K); default: 55° across the longer image side")
    p.add_argument("--stages", default=DEFAULT_STAGES, help=f"prior | coarse | refined | full (default: {DEFAULT_STAGES})")
    p.add_argument("--checkpoint", help="HGM checkpoint folder for the coarse stage (default: the one embedded "
                   "in the package when it ships one; 'none': no network)")
    p.add_argument("--fuse-checkpoint", help="two-view HGM checkpoint folder for the fuse stage of --stages full (default: "
                   "the one embedded in the package when it ships one; 'none': no fuse)")
    p.add_argument("--fit-iterations", type=int, default=None, help="body-fit iterations (default: library default)")
    p.add_argument("--views", type=int, default=8, help="turntable views (default: 8)")
    p.add_argument("--mesh", action="store_true", help="also extract the avatar's surface as a coloured mesh.ply (~1.5 s)")
    p.add_argument("--config", help="ReconstructorConfig JSON (as in a report.json's \"config\"); flags override it")
    p.add_argument("--threads", type=int, default=1, help="compute threads (default: 1, fastest for the body fit on a loaded machine)")
    add_device_argument(p)


def reconstructor_config(args: argparse.Namespace):
    """The `ReconstructorConfig` of the flags shared by `hgm reconstruct` and `hgm serve`."""
    from hgm_core.configs import ConfigFieldError
    from hgm_core.pipeline import ReconstructorConfig

    try:
        config = ReconstructorConfig.load(args.config) if args.config else ReconstructorConfig()
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read --config {args.config}: {e}") from None
    changes = {"mesh_by_default": True} if args.mesh else {}
    if args.checkpoint:
        changes["coarse.checkpoint"] = None if args.checkpoint == "none" else args.checkpoint
    if args.fuse_checkpoint:
        changes["fuse.checkpoint"] = None if args.fuse_checkpoint == "none" else args.fuse_checkpoint
    if args.fit_iterations is not None:
        changes["body.fit.iterations"] = args.fit_iterations
    if getattr(args, "device", None) is not None:
        from hgm_core.device import check_device_name

        try:
            changes["device"] = check_device_name(args.device)
        except ValueError as e:
            raise CliError(f"--device: {e}") from None
    try:
        return config.override(changes)
    except ConfigFieldError as e:
        raise CliError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hgm_core.io.inputs import load_camera_info, load_depth, load_image, load_mask
    from hgm_core.pipeline import Reconstructor
    from hgm_core.render.views import body_up, front_view_scores, render_turntable
    from hgm_core.runtime import set_compute_threads
    from hgm_core.types import BadInputError, PipelineError, ReconstructionRequest

    set_compute_threads(args.threads)
    try:
        image = load_image(args.image)
        mask = load_mask(args.mask) if args.mask else None
        depth = load_depth(args.depth) if args.depth else None
        camera = load_camera_info(args.camera_info) if args.camera_info else None
    except BadInputError as e:
        raise CliError(str(e)) from None
    t0 = time.perf_counter()
    with tqdm(total=4, desc="hgm reconstruct", unit="step") as bar:
        bar.set_postfix_str("load models")
        try:
            rec = Reconstructor.from_config(reconstructor_config(args))
        except PipelineError as e:  # e.g. --device cuda without CUDA, SMPL-X without its files
            raise CliError(f"{e.kind}: {e}") from None
        _advance(bar, "reconstruct")
        try:
            request = ReconstructionRequest(image=image, camera=camera, mask=mask, depth=depth, stages=args.stages)
            frame, timings = rec.run_frame(request)
            result = rec.result(frame, timings)
        except PipelineError as e:
            raise CliError(f"{e.kind}: {e}") from None
        _advance(bar, "score + turntable")
        per = frame.perception
        scores = front_view_scores(result.gaussians, per.K, image, per.mask)
        sheet = render_turntable(result.gaussians, body_up(result.skeleton), args.views)
        _advance(bar, "write files")
        written = _write_outputs(Path(args.output), args, frame, result, scores, sheet, time.perf_counter() - t0)
        bar.update()
    print(f"avatar: {len(result.gaussians)} Gaussians ({', '.join(result.info['stages_run'])}) -> {written[0]}")
    print(f"front view: IoU {scores['front_iou']:.3f}, masked PSNR {scores['front_psnr_masked']:.1f} dB; "
          f"fit keypoint error {frame.body.keypoint_error_px:.1f} px")
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def _advance(bar, next_step: str) -> None:
    bar.update()
    bar.set_postfix_str(next_step)


def _write_outputs(out_dir: Path, args: argparse.Namespace, frame, result, scores: dict, sheet: np.ndarray,
                   wall_s: float) -> list[Path]:
    from PIL import Image

    from hgm_core.io.mesh import write_mesh_ply
    from hgm_core.io.ply import write_ply

    out_dir.mkdir(parents=True, exist_ok=True)
    fit, per = frame.body, frame.perception
    written = [write_ply(out_dir / "avatar.ply", result.gaussians),
               write_mesh_ply(out_dir / "body.ply", result.body_mesh.vertices, result.body_mesh.faces)]
    if result.mesh is not None:
        written.append(write_mesh_ply(out_dir / "mesh.ply", result.mesh.vertices, result.mesh.faces, result.mesh.colors))
    Image.fromarray(sheet).save(out_dir / "turntable.png")
    body = {
        "body_model": fit.body_model,
        "frame": "camera optical (x right, y down, z forward), metres",
        "params": fit.params.to_dict(),
        "joint_names": list(fit.joint_names),
        "joints": fit.joints.tolist(),
        "bones": [list(b) for b in result.skeleton.bones] if result.skeleton is not None else [],  # for hgm view
        "keypoint_names": list(fit.keypoint_names),
        "keypoints_2d": fit.keypoints_2d.tolist(),
        "K": fit.K.tolist(),
        "residuals": fit.residuals(),
    }
    report = {
        "image": str(args.image),
        "image_size": list(per.image_size),
        "timings_s": result.timings | {"wall": wall_s},
        "fit_residuals": fit.residuals(),
        **scores,
        **result.info,
    }
    for name, data in (("body.json", body), ("report.json", report)):
        (out_dir / name).write_text(json.dumps(data, indent=1))
    return written + [out_dir / n for n in ("turntable.png", "body.json", "report.json")]
