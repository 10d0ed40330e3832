"""Validation on a fixed held-out split: novel-view metrics of the network and of the body-colour baseline.

Every subject is reconstructed from ring view 0 with a body perturbed by a fixed, per-subject seed
(the same noisy body for the network and the baseline), then every other view is rendered and
scored: PSNR over the whole image, PSNR inside the GT mask ("fg_psnr": a white background mostly
rewards the outline), SSIM and LPIPS, overall and per view group (near-front within 30°, sides,
back 150°-210°).
"""

from __future__ import annotations

import numpy as np
import torch

from hgm_core.model import HGM, to_gaussians
from hgm_core.model.hgm import body_colour_baseline
from hgm_core.render import rasterize
from hgm_core.render.images import image_grid
from hgm_core.train import metrics
from hgm_core.train.config import BodyNoise
from hgm_core.train.lpips import LPIPS
from hgm_core.train.sample import Sample, make_sample

METRICS = ("psnr", "fg_psnr", "ssim", "lpips")
GRID_VIEWS = (3, 6, 9)


def angle_group(offset_deg: float) -> str:
    """View group of a view `offset_deg` in [0, 180] away from the input: 'front' (within 30°),
    'back' (150°-210°, i.e. offset >= 150°) or 'side'."""
    if offset_deg <= 30.0:
        return "front"
    return "back" if offset_deg >= 150.0 else "side"


def view_group(view: int, n_views: int) -> str:
    """`angle_group` of ring view `view` of `n_views` evenly spaced ones (view 0 is the input)."""
    angle = (view * 360.0 / n_views) % 360.0
    return angle_group(min(angle, 360.0 - angle))


def avatar(model: HGM, sample: Sample) -> torch.Tensor:
    """Activated `[N, 14]` Gaussians the product shows: the body set and the merged (pixel-aligned) set."""
    out = model(sample.images, sample.vertices, sample.K, sample.c2w)
    return torch.cat((out.body[0], out.merged[0]))


def render_rgb(gaussians: torch.Tensor, sample: Sample) -> torch.Tensor:
    """`[C, S, S, 3]` renders of activated Gaussians from the sample's cameras, on white."""
    return rasterize(to_gaussians(gaussians), sample.cameras, background=(1.0, 1.0, 1.0), backend="auto").rgb.clamp(0, 1)


def score(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lpips_model: LPIPS) -> dict[str, np.ndarray]:
    """Per-view metrics of `pred`, `target [C, S, S, 3]` with the GT `mask [C, S, S, 1]`."""
    p, t = pred.permute(0, 3, 1, 2).float(), target.permute(0, 3, 1, 2).float()
    m = (mask.permute(0, 3, 1, 2) > 0.5).float()
    values = {"psnr": metrics.psnr(p, t), "fg_psnr": metrics.psnr(p, t, m), "ssim": metrics.ssim(p, t),
              "lpips": metrics.lpips(lpips_model, p, t)}
    return {k: v.cpu().numpy() for k, v in values.items()}


def _summary(rows: list[dict[str, np.ndarray]], groups: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for g in ("all", "front", "side", "back"):
        sel = [i for i, name in enumerate(groups) if g == "all" or name == g]
        if sel:
            out[g] = {k: float(np.mean([r[k][i] for r in rows for i in sel])) for k in METRICS}
    return out


@torch.no_grad()
def validate(model: HGM, subjects: list[dict[str, np.ndarray]], noise: BodyNoise, lpips_model: LPIPS,
             with_baseline: bool = True, aim: bool = False) -> tuple[dict, np.ndarray]:
    """Score `model` (and, with `with_baseline`, the body-colour baseline) on cached `subjects`
    (input view made with `aim` as in training: `sample.make_sample`).

    Returns:
        `{"model": {group: {metric: mean}}, ["baseline": {...},] "subjects": n}` and an image grid
        (uint8) of the first four subjects: input | GT, network, baseline at views 3, 6, 9. The
        baseline depends only on the data and the fixed noise seeds, so a trainer scores it once.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    rows_m, rows_b, tiles = [], [], []
    groups: list[str] = []
    for i, subject in enumerate(subjects):
        n = len(subject["extrinsics"])
        views = list(range(1, n))
        sample = make_sample(subject, 0, views, model.config.num_views, noise, np.random.default_rng(i), aim=aim,
                             input_size=model.config.input_size, fill=model.config.input_fill).to(device)
        pred = render_rgb(avatar(model, sample), sample)
        rows_m.append(score(pred, sample.target_rgb, sample.target_mask, lpips_model))
        groups = [view_group(v, n) for v in views]
        base = None
        if with_baseline or i < 4:
            base = render_rgb(body_colour_baseline(sample.images, sample.vertices, sample.K, sample.c2w)[0], sample)
        if with_baseline:
            rows_b.append(score(base, sample.target_rgb, sample.target_mask, lpips_model))
        if i < 4:
            shown = [views.index(v) for v in GRID_VIEWS if v in views]
            tiles.append(torch.cat([sample.images[0, 0].permute(1, 2, 0)[None], sample.target_rgb[shown], pred[shown],
                                    base[shown]]).cpu())
    model.train(was_training)
    grid = image_grid(torch.cat(tiles), columns=tiles[0].shape[0]) if tiles else np.zeros((1, 1, 3), np.uint8)
    result = {"model": _summary(rows_m, groups), "subjects": len(subjects)}
    if with_baseline:
        result["baseline"] = _summary(rows_b, groups)
    return result, grid
