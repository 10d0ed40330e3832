"""The `align_depth` stage: an RGB-D camera's depth moves the avatar's visible surface onto the measured one.

The body fit already uses the depth image (`fit_body(depth=...)`), which fixes the avatar's distance
and size, but the avatar's own surface (clothes, hair, the network's or the prior's guess of them)
stays where the avatar stage put it: about as far from the real surface as the unclothed body model
is from the clothed person, 3 cm on the fit benchmark. This stage closes that gap.

How (all in the input camera's optical frame; the Gaussians' pixel positions never change):
1. The avatar is rendered from the input camera over the person's box (at most `resolution` px on
   its longer side): its front depth and opacity.
2. Where the person's depth is usable (`hgm_core.body.depth.depth_target`: on the mask, away from
   its outline, near the person's median) and the avatar is opaque, the measured minus rendered
   depth is the surface error. Its median is a shift of the whole avatar; the rest, clipped to
   `max_shift_m` and smoothed over `smooth` box heights (a normalised convolution, which also fills
   holes from their neighbours), is the local correction.
3. Every Gaussian slides along its camera ray by the global shift plus the local correction at its
   pixel, the latter faded out over `front_thickness_m` behind the rendered front surface: the
   front layer follows the measurement, the unseen back keeps the avatar's thickness. Scales grow
   with the distance so each Gaussian keeps its footprint in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from hgm_core.body.depth import depth_metres, depth_target
from hgm_core.camera import Cameras, crop_intrinsics
from hgm_core.gaussians import Gaussians
from hgm_core.perception.crop import square_box
from hgm_core.pipeline.stage import Frame, Stage, update
from hgm_core.render.api import rasterize


@dataclass(frozen=True)
class DepthAlignConfig:
    """Settings of `align_depth` (see the module docstring).

    Attributes:
        enabled: run the stage when a request carries a depth image.
        resolution: the avatar's render over the person's box has at most this many pixels along its
            longer side (the correction is smooth, so a coarse grid suffices).
        margin: the box grows by this fraction of its size on every side.
        min_alpha: rendered pixels at least this opaque count as avatar surface.
        max_shift_m: local corrections are clipped to +- this (a larger gap is a wrong measurement
            or something in front of the person, not their clothes).
        smooth: the local correction's Gaussian smoothing, in box heights (sigma): it averages the
            sensor's noise (about 1 cm at 2.5 m, `simulate_sensor`) over a few pixels of the grid.
        fill: pixels without usable depth nearby (holes, the outline) take the correction smoothed
            over this many box heights.
        front_thickness_m: the local correction fades to 0 this far behind the rendered front surface.
        min_pixels: fewer usable pixels than this leave the avatar as it is.
    """

    enabled: bool = True
    resolution: int = 192
    margin: float = 0.05
    min_alpha: float = 0.9
    max_shift_m: float = 0.1
    smooth: float = 0.005
    fill: float = 0.03
    front_thickness_m: float = 0.12
    min_pixels: int = 200


@dataclass(frozen=True)
class SurfaceShift:
    """The depth correction of one avatar on its render grid.

    Attributes:
        K: `[3, 3]` intrinsics of the render grid; size: `(W, H)` of it.
        front: `[H, W]` rendered front depth (metres, 0 where the avatar is not opaque).
        local: `[H, W]` local correction (metres, measured minus rendered, global shift removed).
        global_shift: the median surface error (metres) by which the whole avatar moves.
        pixels: usable pixels it was measured on.
        before_m / after_m: median |measured - rendered| on them before and after the correction.
    """

    K: np.ndarray
    size: tuple[int, int]
    front: np.ndarray
    local: np.ndarray
    global_shift: float
    pixels: int
    before_m: float
    after_m: float


def _resample(depth_m: np.ndarray, usable: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The measured depth and its usable share on the render grid: area means over usable pixels only."""
    x0, y0, x1, y1 = box
    h, w = depth_m.shape
    pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)))
    crop = lambda a: np.pad(a, pad)[y0 + pad[0][0]: y1 + pad[0][0], x0 + pad[1][0]: x1 + pad[1][0]]  # noqa: E731
    weight = cv2.resize(crop(usable.astype(np.float32)), size, interpolation=cv2.INTER_AREA)
    total = cv2.resize(crop(np.where(usable, depth_m, 0).astype(np.float32)), size, interpolation=cv2.INTER_AREA)
    return np.where(weight > 0.5, total / np.maximum(weight, 1e-6), 0.0), weight > 0.5


def _fill(values: np.ndarray, known: np.ndarray, sigma: float, fill_sigma: float) -> np.ndarray:
    """`values [H, W]` (valid where `known`) smoothed by a normalised Gaussian convolution of `sigma`
    px; pixels with little support nearby (holes, the mask's outline, which `depth_target` leaves
    out) take a wider one of `fill_sigma` px instead, and stay 0 beyond that."""
    out = np.zeros_like(values)
    for s in (fill_sigma, sigma):  # the fine estimate overwrites the coarse one where it has support
        support = cv2.GaussianBlur(known.astype(np.float32), (0, 0), s)
        smooth = cv2.GaussianBlur(values * known, (0, 0), s) / np.maximum(support, 1e-6)
        out = np.where(support > (0.2 if s == sigma else 1e-3), smooth, out)
    return out


def surface_shift(gaussians: Gaussians, K: np.ndarray, depth_m: np.ndarray, mask: np.ndarray, config: DepthAlignConfig) -> SurfaceShift | None:
    """How far the avatar's visible surface lies from the measured depth (steps 1-2 of the module
    docstring), or None when the person has too little usable depth.

    Args:
        gaussians: the avatar in the camera's optical frame; K: `[3, 3]` intrinsics of the image.
        depth_m: `[H, W]` metres (0 = none), aligned with the image; mask: `[H, W]` bool person mask.
    """
    target = depth_target(depth_m, mask)
    if target is None:
        return None
    ys, xs = np.nonzero(mask)
    box = square_box((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), config.margin)
    side = box[2] - box[0]
    n = int(min(config.resolution, side))
    Kc = crop_intrinsics(torch.as_tensor(K, dtype=torch.float32), tuple(float(b) for b in box), (n, n))
    cams = Cameras(Kc[None], torch.eye(4)[None], n, n)
    with torch.no_grad():
        out = rasterize(gaussians.to(dtype=torch.float32, device="cpu"), cams)
    front = (out.median_depth if out.median_depth is not None else out.depth)[0, ..., 0].numpy()
    opaque = out.alpha[0, ..., 0].numpy() >= config.min_alpha
    measured, usable = _resample(target.depth[0, 0].numpy(), target.usable[0, 0].numpy() > 0, box, (n, n))
    both = usable & opaque & (front > 0)
    if both.sum() < min(config.min_pixels, n * n // 50):
        return None
    error = np.where(both, measured - front, 0.0)
    shift = float(np.median(error[both]))
    local = np.clip(error - shift, -config.max_shift_m, config.max_shift_m) * both
    local = _fill(local.astype(np.float32), both, max(config.smooth * n, 0.5), config.fill * n) * opaque
    after = np.abs(error - shift - local)[both]
    return SurfaceShift(Kc.numpy().astype(np.float64), (n, n), np.where(opaque, front, 0.0), local.astype(np.float32), shift,
                        int(both.sum()), float(np.median(np.abs(error[both]))), float(np.median(after)))


def shift_gaussians(gaussians: Gaussians, shift: SurfaceShift, front_thickness_m: float) -> Gaussians:
    """`gaussians` (camera frame) slid along their camera rays by `shift` (step 3 of the module
    docstring): `means [N, 3]` scaled by `(z + dz) / z`, scales likewise, everything else kept."""
    means = gaussians.means
    z = means[:, 2].clamp(min=1e-4)
    like = dict(dtype=means.dtype, device=means.device)  # the avatar stays where it is (CPU or a GPU)
    uv = (means @ torch.as_tensor(shift.K, **like).T)[:, :2] / z[:, None]
    w, h = shift.size
    col = uv[:, 0].floor().long().clamp(0, w - 1)
    row = uv[:, 1].floor().long().clamp(0, h - 1)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    front = torch.as_tensor(shift.front, **like)[row, col]
    local = torch.as_tensor(shift.local, **like)[row, col]
    fade = (1 - (z - front) / front_thickness_m).clamp(0, 1) * inside * (front > 0)
    dz = shift.global_shift + fade * local
    ratio = ((z + dz) / z)[:, None]
    return Gaussians(means * ratio, gaussians.quats, gaussians.scales * ratio, gaussians.opacities, gaussians.colors, gaussians.sh)


class DepthAlignStage(Stage):
    """Moves the avatar's visible surface onto the request's depth image (see the module docstring).

    `Reconstructor.plan` runs it after the avatar stages of any level whose request carries a depth
    image, before `mesh`.
    """

    name = "align_depth"
    needs = ("perception", "gaussians")
    provides = ("gaussians",)

    def __init__(self, config: DepthAlignConfig = DepthAlignConfig()) -> None:
        self.config = config

    def run(self, frame: Frame) -> Frame:
        per = frame.perception
        shift = surface_shift(frame.gaussians, per.K, depth_metres(frame.request.depth), per.mask, self.config)
        if shift is None:
            frame.reports[self.name] = {"skipped": "too little usable depth on the person"}
            return frame
        frame.reports[self.name] = {
            "pixels": shift.pixels, "global_shift_m": round(shift.global_shift, 4),
            "surface_error_before_m": round(shift.before_m, 4), "surface_error_after_m": round(shift.after_m, 4),
        }
        return update(frame, gaussians=shift_gaussians(frame.gaussians, shift, self.config.front_thickness_m))
