"""Procedural test scenes: a person-shaped set of Gaussians and cameras that frame it.

The person is built from ellipsoids and capsules (head, neck, torso, pelvis, arms, hands, legs,
feet), ~1.7 m tall, centred at the origin, y up, facing +z (the HGM canonical OpenGL world, where
view 0 of an orbit looks at the front). Gaussians are flat discs on the part surfaces, spaced so
that neighbours overlap, with a soft top-light baked into their colours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hgm_core.camera import Cameras, orbit_cameras
from hgm_core.gaussians import Gaussians, quat_from_z

SKIN, HAIR, SHIRT, TROUSERS, SHOES = (0.86, 0.67, 0.55), (0.23, 0.15, 0.09), (0.20, 0.42, 0.72), (0.22, 0.22, 0.28), (0.10, 0.08, 0.07)


@dataclass(frozen=True)
class _Ellipsoid:
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    color: tuple[float, float, float]

    def area(self) -> float:
        # Knud Thomsen's approximation (within ~1 %).
        p = 1.6075
        a, b, c = self.radii
        return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.tensor(self.radii, dtype=torch.float64)
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
        return torch.tensor(self.center, dtype=torch.float64) + d * r, torch.nn.functional.normalize(d / r, dim=-1)


@dataclass(frozen=True)
class _Capsule:
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius: float
    color: tuple[float, float, float]

    def area(self) -> float:
        length = math.dist(self.a, self.b)
        return 2 * math.pi * self.radius * length + 4 * math.pi * self.radius**2

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = torch.tensor(self.a, dtype=torch.float64), torch.tensor(self.b, dtype=torch.float64)
        length = float((b - a).norm())
        axis = (b - a) / length
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
        # Cylinder or one of the two hemispherical caps, chosen by area.
        on_cap = torch.rand(n, generator=gen, dtype=torch.float64) * self.area() < 4 * math.pi * self.radius**2
        at_b = torch.rand(n, generator=gen, dtype=torch.float64) < 0.5
        outward = torch.where(at_b, 1.0, -1.0).to(torch.float64)
        cap_dir = d * torch.sign(d @ axis * outward + 1e-12)[:, None]  # onto the cap's own hemisphere
        radial = torch.nn.functional.normalize(d - (d @ axis)[:, None] * axis, dim=-1)
        t = torch.rand(n, 1, generator=gen, dtype=torch.float64) * length
        normal = torch.where(on_cap[:, None], cap_dir, radial)
        base = torch.where(on_cap[:, None], torch.where(at_b[:, None], b, a), a + t * axis)
        return base + self.radius * normal, normal


def _body_parts() -> list[_Ellipsoid | _Capsule]:
    parts: list[_Ellipsoid | _Capsule] = [
        _Ellipsoid((0.0, 0.74, 0.0), (0.085, 0.11, 0.095), SKIN),
        _Capsule((0.0, 0.58, -0.005), (0.0, 0.66, -0.005), 0.048, SKIN),
        _Ellipsoid((0.0, 0.33, 0.0), (0.17, 0.27, 0.11), SHIRT),
        _Ellipsoid((0.0, 0.04, 0.0), (0.155, 0.12, 0.10), TROUSERS),
    ]
    for s in (-1.0, 1.0):
        parts += [
            _Ellipsoid((s * 0.17, 0.53, 0.0), (0.07, 0.06, 0.07), SHIRT),  # shoulder
            _Capsule((s * 0.20, 0.52, 0.0), (s * 0.27, 0.27, -0.01), 0.045, SHIRT),  # upper arm
            _Capsule((s * 0.27, 0.27, -0.01), (s * 0.31, 0.03, 0.02), 0.037, SKIN),  # forearm
            _Ellipsoid((s * 0.32, -0.06, 0.025), (0.025, 0.07, 0.04), SKIN),  # hand
            _Capsule((s * 0.09, -0.02, 0.0), (s * 0.10, -0.42, 0.0), 0.068, TROUSERS),  # thigh
            _Capsule((s * 0.10, -0.42, 0.0), (s * 0.10, -0.79, -0.01), 0.048, TROUSERS),  # shin
            _Ellipsoid((s * 0.10, -0.83, 0.045), (0.045, 0.028, 0.11), SHOES),  # foot
        ]
    return parts


def person_scene(n: int = 65536, seed: int = 0) -> Gaussians:
    """A person-shaped set of `n` Gaussians (float32, activated values).

    ~1.7 m tall, feet at y ~ -0.86, head top at y ~ 0.85, facing +z.
    """
    if n < 1:
        raise ValueError(f"person_scene needs n >= 1, got {n}")
    gen = torch.Generator().manual_seed(seed)
    parts = _body_parts()
    areas = torch.tensor([p.area() for p in parts], dtype=torch.float64)
    counts = torch.floor(areas / areas.sum() * n).long()
    counts[torch.argmax(areas)] += n - int(counts.sum())
    means, normals, colors = [], [], []
    for part, k in zip(parts, counts.tolist()):
        m, nrm = part.sample(k, gen)
        col = torch.tensor(part.color, dtype=torch.float64).expand(k, 3)
        if part is parts[0]:  # hair on the top and back of the head
            hair = (nrm[:, 1] > 0.35) | ((nrm[:, 2] < -0.2) & (m[:, 1] > 0.68))
            col = torch.where(hair[:, None], torch.tensor(HAIR, dtype=torch.float64), col)
        means.append(m), normals.append(nrm), colors.append(col)
    means, normals, colors = torch.cat(means), torch.cat(normals), torch.cat(colors)
    shade = 0.72 + 0.28 * (0.5 + 0.5 * normals[:, 1])  # soft light from above
    colors = (colors * shade[:, None] * (1 + 0.06 * torch.randn(n, 1, generator=gen, dtype=torch.float64))).clamp(0, 1)
    # Disc radius from the mean spacing, so neighbouring discs overlap and the surface closes.
    spacing = math.sqrt(float(areas.sum()) / n)
    tangential = spacing * (0.7 + 0.3 * torch.rand(n, 1, generator=gen, dtype=torch.float64))
    scales = torch.cat((tangential.expand(n, 2), 0.15 * tangential), -1)
    opacities = 0.75 + 0.2 * torch.rand(n, generator=gen, dtype=torch.float64)
    g = Gaussians(means=means, quats=quat_from_z(normals), scales=scales, opacities=opacities, colors=colors)
    return g.to(dtype=torch.float32)


def turntable_cameras(size: int, n_views: int = 8, radius: float = 2.3, elevation_deg: float = 5.0) -> Cameras:
    """`n_views` square cameras on a ring around the person, view 0 in front (+z), framing the whole body."""
    return orbit_cameras(size, size, n_views=n_views, radius=radius, elevation_deg=elevation_deg)
