"""One training/validation sample from a cached subject, in HGM's canonical frame.

The chosen input view becomes the canonical camera `[I | (0, 0, 1.5)]` (`reader.canonical_transform`
with the subject's own ring distance), the GT body is mapped into the same frame and perturbed like
a monocular fit (`perturb_body`), and the supervision views become rasterizer cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hgm_core.camera import Cameras, cameras_from_c2w_gl
from hgm_core.data.reader import canonical_transform
from hgm_core.train.config import BodyNoise


@dataclass
class Sample:
    """Network inputs (batch 1) and supervision.

    Attributes:
        images: `[1, V_in, 3, S, S]` RGB in [0, 1]; K: `[1, V_in, 3, 3]`; c2w: `[1, V_in, 4, 4]` OpenGL canonical.
        vertices: `[1, Nv, 3]` (perturbed) canonical body vertices.
        cameras: C supervision cameras (canonical, S x S); views: their ring indices.
        target_rgb: `[C, S, S, 3]` in [0, 1] on white; target_mask: `[C, S, S, 1]` in [0, 1].
    """

    images: torch.Tensor
    K: torch.Tensor
    c2w: torch.Tensor
    vertices: torch.Tensor
    cameras: Cameras
    views: list[int]
    target_rgb: torch.Tensor
    target_mask: torch.Tensor


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    k = axis / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def perturb_body(vertices: np.ndarray, noise: BodyNoise, rng: np.random.Generator) -> np.ndarray:
    """`[Nv, 3]` canonical vertices -> the same body with fitting-like error (see `BodyNoise`)."""
    if rng.uniform() < noise.clean_prob:
        return vertices.copy()
    centre = vertices.mean(0)
    R = _rotation(rng.normal(size=3), math.radians(rng.normal(0, noise.rotation_deg)))
    S = np.diag((1 + rng.normal(0, noise.scale)) * (1 + rng.normal(0, noise.anisotropy, 3)))
    v = (vertices - centre) @ (R @ S).T + centre
    if noise.bumps > 0:
        centres = v[rng.choice(len(v), noise.bumps, replace=False)]
        offsets = rng.normal(0, noise.bump_amplitude, (noise.bumps, 3))
        d2 = ((v[:, None, :] - centres[None]) ** 2).sum(-1)  # [Nv, bumps]
        v = v + np.exp(-d2 / (2 * noise.bump_radius**2)) @ offsets
    return v + rng.normal(0, [noise.translation, noise.translation, noise.depth])


def make_sample(subject: dict[str, np.ndarray], input_view: int, views: list[int], num_input_views: int,
                noise: BodyNoise | None, rng: np.random.Generator) -> Sample:
    """Build a `Sample` from a cached subject (`hgm_core.data.cache`).

    Args:
        input_view: ring index of the (first) input view; with two input views the second is the
            opposite one (`input_view + n / 2`), as HGM's front + back.
        views: ring indices of the supervision views.
        noise: body perturbation, None for the exact GT body.
    """
    n = len(subject["extrinsics"])
    inputs = [(input_view + k * n // 2) % n for k in range(num_input_views)]
    order = inputs + list(views)
    c2w_gl, world_to_canon = canonical_transform(subject["extrinsics"][order], float(subject["distance"]))
    body = subject["body"].astype(np.float64) @ world_to_canon[:3, :3].T + world_to_canon[:3, 3]
    if noise is not None:
        body = perturb_body(body, noise, rng)
    size = subject["images"].shape[1]
    c2w = torch.from_numpy(c2w_gl).float()
    Ks = torch.from_numpy(subject["intrinsics"][order]).float()
    images = torch.from_numpy(subject["images"][order]).float() / 255.0  # [V, S, S, 3]
    masks = torch.from_numpy(subject["masks"][order]).float()[..., None] / 255.0
    k = len(inputs)
    return Sample(
        images=images[:k].permute(0, 3, 1, 2)[None].contiguous(),
        K=Ks[:k][None],
        c2w=c2w[:k][None],
        vertices=torch.from_numpy(body).float()[None],
        cameras=cameras_from_c2w_gl(c2w[k:], Ks[k:], size, size),
        views=list(views),
        target_rgb=images[k:],
        target_mask=masks[k:],
    )


def draw_views(n_views: int, input_view: int, count: int, rng: np.random.Generator) -> list[int]:
    """Supervision views: the input view plus `count - 1` distinct others (uniform over the ring)."""
    others = [v for v in range(n_views) if v != input_view]
    picked = rng.choice(len(others), min(count - 1, len(others)), replace=False)
    return [input_view] + [others[i] for i in sorted(picked)]
