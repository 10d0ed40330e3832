"""Run the HGM network on one camera image: crop/normalise exactly as training did, predict, map back.

`predict_avatar` is what the pipeline's `coarse` stage calls. The network sees each subject from a
camera whose optical axis passes through the body's box centre, with the person composited on white,
in HGM's canonical frame (camera at `(0, 0, 1.5)`, OpenGL axes). For a live image that view is made
by *rotating* the real camera about its centre until it looks at the fitted body's centre (a
homography: no depth needed) and resampling the image at the network's size; training makes its
input views the same way (`hgm_core.train.sample.aim_input`). The focal length is either fixed
(`TRAIN_FOCAL_RATIO * size`) or, with the config's `input_fill`, chosen so the body's box spans that
share of the frame: a person crop whatever the distance. `CanonicalFrame.from_look_at` is the
rotation plus the metres-per-unit scale, so the network's Gaussians map back into the real optical
frame exactly. A two-view network also takes a second camera's image (`ExtraView`: the `fuse` stage's
refined back view), turned and zoomed the same way and placed in the input view's canonical frame
(`extra_network_view`; training makes its back inputs with it too).

`check_avatar` is the cheap test the caller uses to fall back to another stage: finite values,
enough visible Gaussians, and those lying near the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hgm_core.camera import CANONICAL_CAM_RADIUS, flip_camera_axes
from hgm_core.gaussians import Gaussians
from hgm_core.model.frames import CanonicalFrame, canonical_to_optical, optical_to_canonical_points
from hgm_core.model.hgm import HGM, InputError, to_gaussians
from hgm_core.paths import ASSETS_DIR

TRAIN_FOCAL_RATIO = 0.8
"""fx = fy = 0.8 * size in the training renders (`hgm_core.data.render.RenderConfig.focal_ratio`): the
virtual camera's focal ratio when the config's `input_fill` is 0."""
DEFAULT_CHECKPOINT = ASSETS_DIR / "checkpoints" / "tiny_1view"
"""The embedded checkpoint (the best `tiny` one-view network so far; replaced in place)."""
TWO_VIEW_CHECKPOINT = ASSETS_DIR / "checkpoints" / "tiny_2view"
"""Where an embedded two-view (front + back) checkpoint lives, for the `fuse` stage, when one ships."""


def default_checkpoint_dir(views: int = 1) -> Path:
    """Folder of the embedded checkpoint of a `views`-view network (`HGM.from_pretrained` reads it;
    it may not exist)."""
    if views not in (1, 2):
        raise ValueError(f"HGM networks have 1 or 2 views, not {views}")
    return DEFAULT_CHECKPOINT if views == 1 else TWO_VIEW_CHECKPOINT


def load_default_model(map_location: str | torch.device = "cpu") -> HGM:
    """The embedded network in eval mode, as float32 (the file stores fp16)."""
    return HGM.from_pretrained(DEFAULT_CHECKPOINT, map_location=map_location).float().eval()


@dataclass(frozen=True)
class NetworkView:
    """The network's input view of one image.

    Attributes:
        image: `[S, S, 3]` float32 RGB in [0, 1], the person on white, S = the network's input size.
        K: `[3, 3]` float64 intrinsics of `image` (fx = fy, principal point at the centre).
        frame: canonical -> real optical frame (`CanonicalFrame.from_look_at` of the body centre).
    """

    image: np.ndarray
    K: np.ndarray
    frame: CanonicalFrame


@dataclass(frozen=True)
class AvatarCheck:
    ok: bool
    reason: str


def body_centre(body_vertices: np.ndarray) -> np.ndarray:
    """`[3]` centre of the body's bounding box (optical frame): the look-at point, as the training
    renders aim at the subject's mid-height on its vertical axis."""
    v = np.asarray(body_vertices, np.float64)
    return 0.5 * (v.min(0) + v.max(0))


def fill_focal(body_vertices: np.ndarray, rotation: np.ndarray, size: int, fill: float) -> float:
    """Focal length (pixels) at which the body's box spans `fill` of a `size`-pixel virtual view.

    Args:
        body_vertices: `[Nv, 3]` optical frame of the real camera (metres); rotation: `[3, 3]` virtual
            optical axes -> real optical axes (the virtual camera shares the real one's centre).
    Raises:
        InputError: part of the body lies behind the camera or on its plane (no crop can frame it).
    """
    v = np.asarray(body_vertices, np.float64) @ np.asarray(rotation, np.float64)  # virtual optical frame
    z = v[:, 2]
    if not (z > 1e-3).all():
        raise InputError(f"the body reaches behind the camera (nearest vertex at z = {z.min():.3f} m); cannot frame it")
    half = float(np.abs(v[:, :2] / z[:, None]).max())  # tangent of the half-angle the body subtends
    return fill * (size / 2) / max(half, 1e-6)


def network_view(image: np.ndarray, mask: np.ndarray, K: np.ndarray, body_vertices: np.ndarray, size: int,
                 fill: float = 0.0) -> NetworkView:
    """Resample `image` into the virtual camera that looks at the body centre (see the module docstring).

    Args:
        image: `[H, W, 3]` uint8 RGB; mask: `[H, W]` person mask (bool, uint8 0/255 or float in [0, 1]);
        K: `[3, 3]` intrinsics in pixels; body_vertices: `[Nv, 3]` metres in the optical frame (REP 103).
        size: the network's input size; fill: 0 = focal `TRAIN_FOCAL_RATIO * size`, else the body's box
            spans this share of the view (`fill_focal`).
    """
    import cv2

    image, mask, K = np.asarray(image), np.asarray(mask), np.asarray(K, np.float64)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image must be [H, W, 3] uint8, got {image.dtype} {list(image.shape)}")
    if mask.shape != image.shape[:2]:
        raise InputError(f"mask must be [H, W] = {list(image.shape[:2])}, got {list(mask.shape)}")
    if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise InputError(f"K must be a [3, 3] pinhole matrix with positive focal lengths, got {K.tolist()}")
    frame = CanonicalFrame.from_look_at(torch.from_numpy(body_centre(body_vertices)))
    R = frame.rotation.numpy()  # virtual optical axes -> real optical axes
    f = fill_focal(body_vertices, R, size, fill) if fill > 0 else TRAIN_FOCAL_RATIO * size
    Kv = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])

    alpha = mask.astype(np.float32)
    alpha = alpha / 255.0 if mask.dtype == np.uint8 else alpha
    rgb = image.astype(np.float32) / 255.0 * alpha[..., None] + (1 - alpha[..., None])  # on white, as trained
    # Shrink first when the virtual pixels are much larger than the real ones (warpPerspective does not filter).
    shrink = min(1.0, 2.0 * Kv[0, 0] / K[0, 0])
    if shrink < 1.0:
        w, h = max(1, round(rgb.shape[1] * shrink)), max(1, round(rgb.shape[0] * shrink))
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        K = np.diag([w / image.shape[1], h / image.shape[0], 1.0]) @ K
    H = Kv @ R.T @ np.linalg.inv(K)  # real pixel -> virtual pixel (pure rotation about the camera centre)
    # OpenCV's pixel grid has centres at integers; ours at +0.5: shift in and out.
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    H_cv = np.linalg.inv(shift) @ H @ shift
    out = cv2.warpPerspective(rgb, H_cv, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(1.0, 1.0, 1.0))
    return NetworkView(np.clip(out, 0, 1).astype(np.float32), Kv, frame)


@dataclass(frozen=True)
class ExtraView:
    """Another camera's image of the same person (a two-view network's second view: the back).

    Attributes:
        image: `[H, W, 3]` uint8 RGB on white (e.g. the `back_view` stage's refined image).
        K: `[3, 3]` its intrinsics in pixels.
        pose: `[4, 4]` rigid transform from that camera's optical frame to the input camera's optical
            frame (metres; the inverse of the stage's `viewmat`).
    """

    image: np.ndarray
    K: np.ndarray
    pose: np.ndarray


def extra_network_view(extra: ExtraView, body_vertices: np.ndarray, front: CanonicalFrame, size: int,
                       fill: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make `extra` a network input view the way the input view is made (`network_view`: the camera
    turned about its centre to look at the body's box centre, the same `fill`), placed in the input
    view's canonical frame `front`.

    Args:
        body_vertices: `[Nv, 3]` in the input camera's optical frame (the frame `extra.pose` maps into).
    Returns:
        image `[size, size, 3]` float32 in [0, 1], intrinsics `[3, 3]` and OpenGL camera-to-world
        `[4, 4]` in `front`'s canonical frame (float64).
    """
    pose = np.asarray(extra.pose, np.float64)
    if pose.shape != (4, 4) or not np.allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-4):
        raise InputError(f"the extra view's pose must be a [4, 4] rigid transform, got {pose.tolist()}")
    body_cam = (np.asarray(body_vertices, np.float64) - pose[:3, 3]) @ pose[:3, :3]  # in the extra camera's optical frame
    view = network_view(extra.image, np.full(extra.image.shape[:2], 255, np.uint8), extra.K, body_cam, size, fill)
    aimed = pose.copy()
    aimed[:3, :3] = pose[:3, :3] @ view.frame.rotation.numpy()  # the turned camera's axes
    c2w = np.linalg.inv(front.matrix(torch.float64).numpy()) @ aimed  # -> canonical, scaled by 1 / metres_per_unit
    c2w[:3, :3] *= front.metres_per_unit
    return view.image, view.K, flip_camera_axes(torch.from_numpy(c2w)).numpy()


@torch.no_grad()
def predict_avatar(model: HGM, image: np.ndarray, mask: np.ndarray, K: np.ndarray, body_vertices: np.ndarray,
                   extra: ExtraView | None = None) -> Gaussians:
    """Avatar from one image (one-view network) or from it and a second view (two-view network).

    Args:
        model: an `HGM` (e.g. `load_default_model()`), in eval mode; `extra` must be given exactly
            when it has two views.
        image: `[H, W, 3]` uint8 RGB; mask: `[H, W]` person mask (bool, uint8 0/255 or float in [0, 1]).
        K: `[3, 3]` intrinsics in pixels (pixel centres at +0.5).
        body_vertices: `[Nv, 3]` fitted body vertices of the model's body model (`model.config.body_model`),
            metres, in the input camera's optical frame (REP 103: x right, y down, z forward).
        extra: the second view (HGM's back view) for a two-view network.
    Returns:
        `Gaussians` in the same optical frame (metres): the body set (one per vertex) followed by the
        pixel-aligned merged set, float32, on the CPU. The inputs go to the model's device once and
        the output comes back once; under a float16 autocast the network computes in half precision.
    """
    cfg = model.config
    if cfg.num_views != 1 + (extra is not None):
        raise InputError(f"this network has num_views={cfg.num_views}; got {1 + (extra is not None)} view(s)")
    verts = np.asarray(body_vertices, np.float64)
    if verts.ndim != 2 or verts.shape != (cfg.num_vertices, 3) or not np.isfinite(verts).all():
        raise InputError(f"body_vertices must be finite [{cfg.num_vertices}, 3] ({cfg.body_model}), got {list(verts.shape)}")
    view = network_view(image, mask, K, verts, cfg.input_size, cfg.input_fill)
    vertices = optical_to_canonical_points(torch.from_numpy(verts), view.frame).float()
    c2w = np.eye(4)[None]
    c2w[0, 2, 3] = CANONICAL_CAM_RADIUS
    images, Ks = [view.image], [view.K]
    if extra is not None:
        image2, K2, c2w2 = extra_network_view(extra, verts, view.frame, cfg.input_size, cfg.input_fill)
        images, Ks, c2w = images + [image2], Ks + [K2], np.concatenate((c2w, c2w2[None]))
    device = next(model.parameters()).device
    batch = [torch.from_numpy(np.stack(a)).float()[None].to(device) for a in (images, Ks, c2w)]
    out = model(batch[0].permute(0, 1, 4, 2, 3), vertices[None].to(device), batch[1], batch[2])
    avatar = to_gaussians(torch.cat((out.body[0], out.merged[0])).float().cpu())
    return canonical_to_optical(avatar.to(dtype=torch.float64), view.frame).to(dtype=torch.float32)


def check_avatar(gaussians: Gaussians, body_vertices: np.ndarray, min_visible: int = 1000, max_distance_m: float = 0.15,
                 min_opacity: float = 0.05) -> AvatarCheck:
    """Is the network's avatar usable? Finite, at least `min_visible` Gaussians with opacity above
    `min_opacity`, and 95% of those within `max_distance_m` of a body vertex (same frame, metres)."""
    from scipy.spatial import cKDTree

    fields = (gaussians.means, gaussians.scales, gaussians.quats, gaussians.opacities, gaussians.colors)
    if not all(bool(torch.isfinite(f).all()) for f in fields):
        return AvatarCheck(False, "non-finite values in the network output")
    visible = gaussians.means[gaussians.opacities > min_opacity].double().numpy()
    if len(visible) < min_visible:
        return AvatarCheck(False, f"only {len(visible)} Gaussians above opacity {min_opacity} (need {min_visible})")
    dist, _ = cKDTree(np.asarray(body_vertices, np.float64)).query(visible)
    p95 = float(np.percentile(dist, 95))
    if p95 > max_distance_m:
        return AvatarCheck(False, f"95% of visible Gaussians lie within {p95:.2f} m of the body (limit {max_distance_m} m)")
    return AvatarCheck(True, f"{len(visible)} visible Gaussians, 95% within {p95:.3f} m of the body")
