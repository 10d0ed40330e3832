"""`hgm reconstruct IMAGE -o DIR`: one photo -> avatar.ply, body.json, body.ply, turntable.png, report.json
(and mesh.ply with --mesh)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hgm_core.cli import CliError

HELP = "reconstruct an avatar from one image (writes avatar.ply, body.json, body.ply, turntable.png, report.json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="RGB/grey image file (jpg, png, ...) showing one person, ideally full body")
    p.add_argument("-o", "--output", default="out", help="output folder (default: out/)")
    p.add_argument("--mask", help="person mask image (nonzero = person); overrides the segmenter")
    p.add_argument("--camera-info", help="YAML with the camera's intrinsics (ROS camera_info layout: "
                   "image_width, image_height, camera_matrix.data or K); default: 55° across the longer image side")
    p.add_argument("--stages", default="prior", help="prior | coarse | refined | full (default: prior)")
    p.add_argument("--checkpoint", help="HGM checkpoint folder for the network stages")
    p.add_argument("--fit-iterations", type=int, default=None, help="body-fit iterations (default: library default)")
    p.add_argument("--views", type=int, default=8, help="turntable views (default: 8)")
    p.add_argument("--mesh", action="store_true", help="also extract the avatar's surface as a coloured mesh.ply (~1.5 s)")
    p.add_argument("--config", help="ReconstructorConfig JSON (as in a report.json's \"config\"); flags override it")
    p.add_argument("--threads", type=int, default=1, help="compute threads (default: 1, fastest for the body fit on a loaded machine)")


def load_image(path: str) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB from any format PIL reads; grey and RGBA are converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise CliError(f"no such image: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CliError(f"cannot read image {path}: {e}") from None


def load_mask(path: str) -> np.ndarray:
    """`[H, W]` uint8 mask (any image; nonzero in the first channel = person)."""
    return (load_image(path)[..., 0] > 127).astype(np.uint8)


def load_camera_info(path: str):
    """Intrinsics from a ROS camera_info YAML (`camera_matrix: {data: [...]}`, `K: [...]` or `k: [...]`)."""
    import yaml

    from hgm_core.types import CameraInfo

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CliError(f"cannot read camera info {path}: {e}") from None
    if not isinstance(data, dict):
        raise CliError(f"cannot read camera info {path}: not a YAML mapping")
    try:
        k = data.get("camera_matrix", {}).get("data") if isinstance(data.get("camera_matrix"), dict) else None
        k = k or data.get("K") or data.get("k")
        K = np.asarray(k, np.float64).reshape(3, 3)
        width = int(data.get("image_width") or data.get("width"))
        height = int(data.get("image_height") or data.get("height"))
    except (AttributeError, TypeError, ValueError) as e:
        raise CliError(f"{path}: expected image_width, image_height and a 3x3 camera_matrix/K ({e})") from None
    return CameraInfo(K=K, width=width, height=height)


def front_view_scores(gaussians, K: np.ndarray, image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Re-render the avatar from the input camera: IoU of its alpha (> 0.5) with the person mask,
    and PSNR over the mask pixels."""
    import torch

    from hgm_core.camera import Cameras
    from hgm_core.render import rasterize

    h, w = mask.shape
    cams = Cameras(torch.as_tensor(K, dtype=torch.float32)[None], torch.eye(4)[None], w, h)
    with torch.no_grad():
        out = rasterize(gaussians, cams, background=(1.0, 1.0, 1.0))
    alpha = out.alpha[0, ..., 0].numpy() > 0.5
    iou = float((alpha & mask).sum() / max((alpha | mask).sum(), 1))
    mse = float(((out.rgb[0].numpy() - image / 255.0)[mask] ** 2).mean())
    return {"front_iou": iou, "front_psnr_masked": float(10 * np.log10(1.0 / max(mse, 1e-12)))}


def render_turntable(gaussians, K: np.ndarray, up: np.ndarray, views: int, size: int = 384) -> np.ndarray:
    """`[rows*size, cols*size, 3]` uint8 grid of `views` renders circling the avatar (white background)."""
    import torch

    from hgm_core.camera import cameras_from_c2w_gl, intrinsics, turntable_poses
    from hgm_core.render import rasterize
    from hgm_core.render.images import image_grid

    center = gaussians.means.median(0).values.double()
    extent = float((gaussians.means - center.float()).norm(dim=-1).quantile(0.98))
    dist = float(center.norm())
    # A focal length that makes the avatar (radius `extent`) fill the square view at the orbit distance.
    f = size * 0.5 * dist / (extent * 1.15)
    Kt = intrinsics(f, f, size / 2, size / 2)
    poses = turntable_poses(center, torch.as_tensor(up, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), views)
    cams = cameras_from_c2w_gl(poses, Kt, size, size)
    with torch.no_grad():
        out = rasterize(gaussians, cams, background=(1.0, 1.0, 1.0))
    return image_grid(out.rgb.clamp(0, 1), columns=min(views, 4))


def reconstructor_config(args: argparse.Namespace):
    """The `ReconstructorConfig` of the flags shared by `hgm reconstruct` and `hgm serve`."""
    from hgm_core.configs import ConfigFieldError
    from hgm_core.pipeline import ReconstructorConfig

    try:
        config = ReconstructorConfig.load(args.config) if getattr(args, "config", None) else ReconstructorConfig()
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read --config {args.config}: {e}") from None
    changes = {"mesh_by_default": True} if args.mesh else {}
    if args.checkpoint:
        changes["coarse.checkpoint"] = args.checkpoint
    if args.fit_iterations is not None:
        changes["body.fit.iterations"] = args.fit_iterations
    try:
        return config.override(changes)
    except ConfigFieldError as e:
        raise CliError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hgm_core.pipeline import Reconstructor
    from hgm_core.runtime import set_compute_threads
    from hgm_core.types import PipelineError, ReconstructionRequest

    set_compute_threads(args.threads)
    image = load_image(args.image)
    mask = load_mask(args.mask) if args.mask else None
    camera = load_camera_info(args.camera_info) if args.camera_info else None
    t0 = time.perf_counter()
    with tqdm(total=4, desc="hgm reconstruct", unit="step") as bar:
        bar.set_postfix_str("load models")
        rec = Reconstructor.from_config(reconstructor_config(args))
        _advance(bar, "reconstruct")
        try:
            request = ReconstructionRequest(image=image, camera=camera, mask=mask, stages=args.stages)
            frame, timings = rec.run_frame(request)
            result = rec.result(frame, timings)
        except PipelineError as e:
            raise CliError(f"{e.kind}: {e}") from None
        _advance(bar, "score + turntable")
        per = frame.perception
        scores = front_view_scores(result.gaussians, per.K, image, per.mask)
        sheet = render_turntable(result.gaussians, per.K, _body_up(result), args.views)
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


def _body_up(result) -> np.ndarray:
    names = list(result.skeleton.names)
    j = result.skeleton.joints
    lower = [i for i, n in enumerate(names) if "pelvis" in n.lower() or "hip" in n.lower() or n.lower() == "root"]
    upper = [i for i, n in enumerate(names) if "neck" in n.lower() or "head" in n.lower()]
    if lower and upper:
        v = j[upper].mean(0) - j[lower].mean(0)
        if np.linalg.norm(v) > 1e-6:
            return v / np.linalg.norm(v)
    return np.array([0.0, -1.0, 0.0])
