"""One training/validation sample from a cached subject, in HGM's canonical frame.

The chosen input view becomes the canonical camera `[I | (0, 0, 1.5)]` (`reader.canonical_transform`
with the subject's own ring distance), the GT body is mapped into the same frame and perturbed like
a monocular fit (`perturb_body`), and the supervision views become rasterizer cameras.

With `aim`, the input view is made exactly as inference makes it (`model.predict.network_view`):
the camera is turned about its centre to look at the (perturbed) body's box centre and the image
resampled, and the canonical frame is that virtual camera's. The ring camera looks at a fixed
point of the subject's vertical axis instead, so without this the network trains on views it never
gets live. `crop_supervision` turns a sample's whole-frame targets into person-box windows (the
person covers a small part of a frame, so most of a whole-frame loss is white background).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

import torch.nn.functional as F

from hgm_core.camera import CANONICAL_CAM_RADIUS, Cameras, cameras_from_c2w_gl, flip_camera_axes
from hgm_core.data.pack import person_window
from hgm_core.data.reader import canonical_transform
from hgm_core.model.frames import CanonicalFrame, canonical_to_optical_points
from hgm_core.model.predict import ExtraView, extra_network_view, network_view
from hgm_core.train.config import BodyNoise


@dataclass
class Sample:
    """Network inputs (batch 1) and supervision.

    Attributes:
        images: `[1, V_in, 3, S, S]` RGB in [0, 1]; K: `[1, V_in, 3, 3]`; c2w: `[1, V_in, 4, 4]` OpenGL canonical.
        vertices: `[1, Nv, 3]` (perturbed) canonical body vertices.
        cameras: C supervision cameras (canonical, S x S); views: their ring indices.
        target_rgb: `[C, S, S, 3]` in [0, 1] on white; target_mask: `[C, S, S, 1]` in [0, 1].
        target_depth: `[C, S, S, 1]` surface depth along each camera's axis in canonical units (0 =
            no surface), or None when the data has no depth maps (packs of layouts with depth have).
    """

    images: torch.Tensor
    K: torch.Tensor
    c2w: torch.Tensor
    vertices: torch.Tensor
    cameras: Cameras
    views: list[int]
    target_rgb: torch.Tensor
    target_mask: torch.Tensor
    target_depth: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Sample":
        """The same sample with every tensor (and the cameras) on `device`."""
        names = ("images", "K", "c2w", "vertices", "target_rgb", "target_mask", "target_depth")
        tensors = {k: getattr(self, k).to(device) for k in names if getattr(self, k) is not None}
        return dataclasses.replace(self, cameras=self.cameras.to(device), **tensors)


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


def aim_input(image: np.ndarray, K: np.ndarray, body: np.ndarray, c2w_gl: np.ndarray, distance: float, size: int,
              fill: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Re-aim a one-view sample's input camera at the body's box centre, as inference does.

    Args:
        image: `[H, W, 3]` uint8 input view (on white; a whole frame or a person window); K: `[3, 3]`
            its intrinsics.
        body: `[Nv, 3]` (perturbed) body in the ring camera's canonical frame (`canonical_transform`
            with ring `distance`); c2w_gl: `[C, 4, 4]` other cameras in that frame.
        size, fill: the network's input size and `input_fill` (`model.predict.network_view`).
    Returns:
        the virtual view's image `[size, size, 3]` float32 in [0, 1] and intrinsics `[3, 3]`, the
        body `[Nv, 3]` and cameras `[C, 4, 4]` in the virtual camera's canonical frame (input camera
        `[I | (0, 0, 1.5)]`), and that frame's units per unit of the ring's canonical frame.
    """
    ring = CanonicalFrame(distance / CANONICAL_CAM_RADIUS)  # the canonical frame `canonical_transform` made
    body_optical = canonical_to_optical_points(torch.from_numpy(body), ring).numpy()
    view = network_view(image, np.full(image.shape[:2], 255, np.uint8), K, body_optical, size, fill)
    M = np.linalg.inv(view.frame.matrix(torch.float64).numpy()) @ ring.matrix(torch.float64).numpy()  # ring -> virtual canonical
    k = np.cbrt(np.linalg.det(M[:3, :3]))
    cams = M @ c2w_gl
    cams[:, :3, :3] /= k
    return view.image, view.K, body @ M[:3, :3].T + M[:3, 3], cams, float(k)


def make_sample(subject: dict[str, np.ndarray], input_view: int, views: list[int], num_input_views: int,
                noise: BodyNoise | None, rng: np.random.Generator, aim: bool = False, input_size: int = 0,
                fill: float = 0.0) -> Sample:
    """Build a `Sample` from a cached or packed subject (`hgm_core.data.cache`, `hgm_core.data.pack`).

    Args:
        input_view: ring index of the (first) input view; with two input views the second is the
            opposite one (`input_view + n / 2`), as HGM's front + back.
        views: ring indices of the supervision views.
        noise: body perturbation, None for the exact GT body.
        aim: aim the input camera at the body's box centre (`aim_input`), at `input_size` (0 = the
            subject's image size) with the network's `fill`; a second input view is aimed the way
            inference aims its back view (`model.predict.extra_network_view`).
    """
    n = len(subject["extrinsics"])
    inputs = [(input_view + k * n // 2) % n for k in range(num_input_views)]
    order = inputs + list(views)
    c2w_gl, world_to_canon = canonical_transform(subject["extrinsics"][order], float(subject["distance"]))
    body = subject["body"].astype(np.float64) @ world_to_canon[:3, :3].T + world_to_canon[:3, 3]
    if noise is not None:
        body = perturb_body(body, noise, rng)
    size = subject["images"].shape[1]
    units_per_metre = CANONICAL_CAM_RADIUS / float(subject["distance"])  # `canonical_transform`'s scale
    Ks = torch.from_numpy(subject["intrinsics"][order]).float()
    images = torch.from_numpy(subject["images"][order]).float() / 255.0  # [V, S, S, 3]
    masks = torch.from_numpy(subject["masks"][order]).float()[..., None] / 255.0
    k = len(inputs)
    inputs_rgb = images[:k]
    if aim:
        n_in = input_size or size
        rgb, K_in, body, c2w_gl[1:], rescale = aim_input(subject["images"][input_view], subject["intrinsics"][input_view],
                                                         body, c2w_gl[1:], float(subject["distance"]), n_in, fill)
        units_per_metre *= rescale
        rgbs, Ks_in = [rgb], [K_in]
        c2w_gl[0] = np.eye(4)
        c2w_gl[0, 2, 3] = CANONICAL_CAM_RADIUS
        unit = CanonicalFrame(1.0)  # the virtual canonical frame as an optical frame, one unit per "metre"
        body_unit = canonical_to_optical_points(torch.from_numpy(body), unit).numpy()
        for j in range(1, k):  # the back view, made the way inference makes its second view
            pose = unit.matrix(torch.float64).numpy() @ flip_camera_axes(torch.from_numpy(c2w_gl[j])).numpy()
            extra = ExtraView(subject["images"][inputs[j]], subject["intrinsics"][inputs[j]], pose)
            rgb_j, K_j, c2w_gl[j] = extra_network_view(extra, body_unit, unit, n_in, fill)
            rgbs.append(rgb_j)
            Ks_in.append(K_j)
        inputs_rgb = torch.from_numpy(np.stack(rgbs))
        Ks[:k] = torch.from_numpy(np.stack(Ks_in)).float()
    c2w = torch.from_numpy(c2w_gl).float()
    return Sample(
        images=inputs_rgb.permute(0, 3, 1, 2)[None].contiguous(),
        K=Ks[:k][None],
        c2w=c2w[:k][None],
        vertices=torch.from_numpy(body).float()[None],
        cameras=cameras_from_c2w_gl(c2w[k:], Ks[k:], size, size),
        views=list(views),
        target_rgb=images[k:],
        target_mask=masks[k:],
        target_depth=(torch.from_numpy(subject["depth"][order[k:]]).float()[..., None] * units_per_metre
                      if "depth" in subject else None),
    )


def draw_views(n_views: int, input_view: int, count: int, rng: np.random.Generator) -> list[int]:
    """Supervision views: the input view plus `count - 1` distinct others (uniform over the ring)."""
    others = [v for v in range(n_views) if v != input_view]
    picked = rng.choice(len(others), min(count - 1, len(others)), replace=False)
    return [input_view] + [others[i] for i in sorted(picked)]


def person_box(mask: torch.Tensor, margin: float) -> tuple[int, int, int]:
    """Square window `(x0, y0, side)` in pixels around the person in `mask [S, S]` (> 0.5); the rule of
    the packs' windows (`hgm_core.data.pack.person_window`), so a pack's windows and these agree."""
    return person_window(mask.detach().cpu().numpy(), margin)


def crop_supervision(sample: Sample, size: int, margin: float) -> Sample:
    """`sample` with every supervision view cut to its person window (`person_box`) and resampled to
    `size x size`: targets (white / mask 0 / no depth past the image edge; depth nearest-sampled, so
    no depth is blended across the silhouette) and cameras (intrinsics shifted and scaled) alike.
    `size` keeps about the frame's pixel density for a person of average size."""
    C, S = sample.target_rgb.shape[:2]
    boxes = [person_box(sample.target_mask[c, ..., 0], margin) for c in range(C)]
    pad = max([0] + [max(-x0, -y0, x0 + b - S, y0 + b - S) for x0, y0, b in boxes])
    rgb = F.pad(sample.target_rgb.permute(0, 3, 1, 2), (pad,) * 4, value=1.0)
    mask = F.pad(sample.target_mask.permute(0, 3, 1, 2), (pad,) * 4, value=0.0)
    depth = None if sample.target_depth is None else F.pad(sample.target_depth.permute(0, 3, 1, 2), (pad,) * 4, value=0.0)
    crops_rgb, crops_mask, crops_depth, Ks = [], [], [], []
    for c, (x0, y0, b) in enumerate(boxes):
        window = (slice(None), slice(y0 + pad, y0 + pad + b), slice(x0 + pad, x0 + pad + b))
        crops_rgb.append(F.interpolate(rgb[c][window][None], size=(size, size), mode="bilinear", antialias=True, align_corners=False))
        crops_mask.append(F.interpolate(mask[c][window][None], size=(size, size), mode="bilinear", antialias=True, align_corners=False))
        if depth is not None:
            crops_depth.append(F.interpolate(depth[c][window][None], size=(size, size), mode="nearest-exact"))
        K = sample.cameras.K[c].clone()
        K[0, 2] -= x0
        K[1, 2] -= y0
        K[:2] *= size / b
        Ks.append(K)
    cameras = Cameras(torch.stack(Ks), sample.cameras.viewmats, size, size)
    return dataclasses.replace(sample, cameras=cameras, target_rgb=torch.cat(crops_rgb).permute(0, 2, 3, 1).clamp(0, 1),
                               target_mask=torch.cat(crops_mask).permute(0, 2, 3, 1).clamp(0, 1),
                               target_depth=torch.cat(crops_depth).permute(0, 2, 3, 1) if crops_depth else None)
