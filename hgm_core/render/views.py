"""Views of a finished avatar for people and reports: from the input camera (and how well that
view matches the photo), and a turntable around it. Avatars here live in the input camera's
optical frame (x right, y down, z forward), as the pipeline returns them."""

from __future__ import annotations

import numpy as np
import torch

from hgm_core.camera import Cameras, cameras_from_c2w_gl, intrinsics, turntable_poses
from hgm_core.gaussians import Gaussians
from hgm_core.render.api import rasterize
from hgm_core.render.images import image_grid
from hgm_core.render.output import RenderOutput
from hgm_core.types import Skeleton

WHITE = (1.0, 1.0, 1.0)


def render_input_view(gaussians: Gaussians, K: np.ndarray, width: int, height: int) -> RenderOutput:
    """The avatar seen by the input camera (`K [3, 3]`, identity pose), on white; a batch of one view."""
    cameras = Cameras(torch.as_tensor(K, dtype=torch.float32)[None], torch.eye(4)[None], width, height)
    with torch.no_grad():
        return rasterize(gaussians, cameras, background=WHITE)


def front_view_scores(gaussians: Gaussians, K: np.ndarray, image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How well the input view reproduces the photo: IoU of the rendered alpha (> 0.5) with the person
    `mask [H, W]` bool, and PSNR of the colours over the mask pixels against `image [H, W, 3]` uint8."""
    h, w = mask.shape
    out = render_input_view(gaussians, K, w, h)
    alpha = out.alpha[0, ..., 0].numpy() > 0.5
    iou = float((alpha & mask).sum() / max((alpha | mask).sum(), 1))
    mse = float(((out.rgb[0].numpy() - image / 255.0)[mask] ** 2).mean())
    return {"front_iou": iou, "front_psnr_masked": float(10 * np.log10(1.0 / max(mse, 1e-12)))}


def render_turntable(gaussians: Gaussians, up: np.ndarray, views: int, size: int = 384) -> np.ndarray:
    """`[rows*size, cols*size, 3]` uint8 grid of `views` renders circling the avatar about the axis `up [3]`
    (white background, 4 per row); view 0 looks from the input camera's centre."""
    center = gaussians.means.median(0).values.double()
    extent = float((gaussians.means - center.float()).norm(dim=-1).quantile(0.98))
    dist = float(center.norm())
    # A focal length that makes the avatar (radius `extent`) fill the square view at the orbit distance.
    f = size * 0.5 * dist / (extent * 1.15)
    poses = turntable_poses(center, torch.as_tensor(up, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), views)
    cams = cameras_from_c2w_gl(poses, intrinsics(f, f, size / 2, size / 2), size, size)
    with torch.no_grad():
        out = rasterize(gaussians, cams, background=WHITE)
    return image_grid(out.rgb.clamp(0, 1), columns=min(views, 4))


def body_up(skeleton: Skeleton) -> np.ndarray:
    """`[3]` unit vector from the hips to the neck/head of a fitted skeleton (the turntable axis);
    the optical frame's up, -y, when the skeleton names neither."""
    names = [n.lower() for n in skeleton.names]
    lower = [i for i, n in enumerate(names) if "pelvis" in n or "hip" in n or n == "root"]
    upper = [i for i, n in enumerate(names) if "neck" in n or "head" in n]
    if lower and upper:
        v = skeleton.joints[upper].mean(0) - skeleton.joints[lower].mean(0)
        if np.linalg.norm(v) > 1e-6:
            return v / np.linalg.norm(v)
    return np.array([0.0, -1.0, 0.0])
