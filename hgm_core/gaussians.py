"""The `Gaussians` container: activated 3D Gaussian parameters in memory (docs/architecture.md, "Conventions").

In memory every attribute is *activated*: linear scales, opacities in (0, 1), unit quaternions
(w, x, y, z), colours in [0, 1] (SH degree 0 as RGB). On disk and on the wire the *raw* parameters
are used instead (logit opacity, log scale, SH DC coefficients); `to_raw` / `from_raw` convert.

The raw row layout `[N, 14]` is the one shared by the PLY writer, the PointCloud2 packer and the
worker protocol: `x y z f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterable, Sequence

import torch

from hgm_core.layout import RAW_FIELDS, SH_C0  # re-exported: the layout is part of this API

_EPS = 1e-7


class GaussiansError(ValueError):
    """Raised for Gaussians whose shapes or values break the container's invariants."""


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """`[..., 3]` colours in [0,1] -> `[..., 3]` SH DC coefficients."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """`[..., 3]` SH DC coefficients -> `[..., 3]` colours (not clamped)."""
    return sh0 * SH_C0 + 0.5


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of `[..., 4]` quaternions (w, x, y, z): the rotation `a` applied after `b`."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """`[..., 4]` quaternions (w, x, y, z; normalised here) -> `[..., 3, 3]` rotation matrices."""
    q = torch.nn.functional.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        (
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ),
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """`[..., 3, 3]` rotation matrices -> `[..., 4]` unit quaternions (w, x, y, z) with w >= 0.

    Uses the largest-diagonal branch per element so it is stable for every rotation (incl. 180°).
    """
    m = R.reshape(-1, 3, 3)
    t = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = torch.stack(
        (
            torch.stack((1 + t, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]), -1),
            torch.stack((m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]), -1),
            torch.stack((m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]), -1),
            torch.stack((m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]), -1),
        ),
        dim=1,
    )  # [M, 4 branches, 4]
    diag = torch.stack((t, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]), -1)
    best = diag.argmax(-1)
    q = cand[torch.arange(m.shape[0]), best]
    q = torch.nn.functional.normalize(q, dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)


def quat_from_z(normals: torch.Tensor) -> torch.Tensor:
    """`[..., 3]` unit vectors -> `[..., 4]` unit quaternions (w, x, y, z) turning +z onto them (the
    shortest arc; a half turn about x for -z, where the shortest arc is not unique)."""
    nx, ny, nz = normals.unbind(-1)
    q = torch.stack((1 + nz, -ny, nx, torch.zeros_like(nz)), -1)
    q = torch.where((1 + nz)[..., None] < 1e-6, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=q.dtype, device=q.device), q)
    return torch.nn.functional.normalize(q, dim=-1)


@dataclass(frozen=True)
class Gaussians:
    """A set of N 3D Gaussians with activated parameters.

    Attributes:
        means: `[N, 3]` centres (metres, or canonical units inside the network).
        quats: `[N, 4]` unit quaternions, w first.
        scales: `[N, 3]` linear standard deviations along the local axes, > 0.
        opacities: `[N]` in (0, 1).
        colors: `[N, 3]` RGB in [0, 1] (the SH degree-0 colour).
        sh: optional `[N, K, 3]` higher-order SH coefficients (K = (deg+1)^2 - 1), stored as in
            3DGS `f_rest` (channel-major on disk; see `hgm_core.io.ply`).
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    sh: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expect = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "colors": (n, 3)}
        for name, shape in expect.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise GaussiansError(f"Gaussians.{name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape or n < 0:
                raise GaussiansError(f"Gaussians.{name} must have shape {list(shape)} (N={n}), got {list(t.shape)}")
            if not t.is_floating_point():
                raise GaussiansError(f"Gaussians.{name} must be floating point, got {t.dtype}")
        if self.sh is not None and (self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3):
            raise GaussiansError(f"Gaussians.sh must have shape [N, K, 3] with N={n}, got {list(self.sh.shape)}")
        devices = {t.device for t in self._tensors()}
        if len(devices) > 1:
            raise GaussiansError(f"Gaussians tensors live on several devices: {sorted(map(str, devices))}")

    # ------------------------------------------------------------------ basics
    def _tensors(self) -> Iterable[torch.Tensor]:
        for f in fields(self):
            t = getattr(self, f.name)
            if t is not None:
                yield t

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def sh_degree(self) -> int:
        """0 without `sh`, else the degree implied by K = (deg+1)^2 - 1."""
        if self.sh is None:
            return 0
        return int(round((self.sh.shape[1] + 1) ** 0.5)) - 1

    def validate(self) -> "Gaussians":
        """Check value ranges (shapes are always checked on construction); returns self.

        Raises `GaussiansError` naming the first offending attribute and how many entries break it.
        """
        checks = (
            ("means", torch.isfinite(self.means).all(-1), "finite"),
            ("scales", (self.scales > 0).all(-1) & torch.isfinite(self.scales).all(-1), "finite and > 0"),
            ("opacities", (self.opacities > 0) & (self.opacities < 1), "in (0, 1)"),
            ("colors", ((self.colors >= 0) & (self.colors <= 1)).all(-1), "in [0, 1]"),
            ("quats", (self.quats.norm(dim=-1) - 1).abs() < 1e-3, "unit length"),
        )
        for name, ok, what in checks:
            bad = int((~ok).sum())
            if bad:
                raise GaussiansError(f"Gaussians.{name}: {bad} of {len(self)} entries are not {what}")
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Gaussians":
        """Move every tensor to `device` and/or cast to floating `dtype`."""
        return Gaussians(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device=device, dtype=dtype))
                            for f in fields(self)})

    def detach(self) -> "Gaussians":
        return Gaussians(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).detach()) for f in fields(self)})

    def subset(self, index: torch.Tensor | slice | Sequence[int]) -> "Gaussians":
        """Select Gaussians by boolean mask `[N]`, integer index `[M]` or slice."""
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool and index.shape != (len(self),):
            raise GaussiansError(f"boolean subset mask must have shape [{len(self)}], got {list(index.shape)}")
        return Gaussians(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index]) for f in fields(self)})

    @staticmethod
    def concat(items: Sequence["Gaussians"]) -> "Gaussians":
        """Concatenate sets; all must agree on having `sh` (and its K)."""
        if not items:
            raise GaussiansError("Gaussians.concat needs at least one set")
        has_sh = {g.sh is not None for g in items}
        if len(has_sh) > 1:
            raise GaussiansError("Gaussians.concat: cannot mix sets with and without `sh`")
        out = {}
        for f in fields(Gaussians):
            parts = [getattr(g, f.name) for g in items]
            out[f.name] = None if parts[0] is None else torch.cat(parts, 0)
        return Gaussians(**out)

    # ------------------------------------------------------------------ transforms
    def transform(self, R: torch.Tensor, t: torch.Tensor, scale: float | torch.Tensor = 1.0) -> "Gaussians":
        """Similarity transform `x -> scale * R x + t` applied to every Gaussian.

        Args:
            R: `[3, 3]` proper rotation (det +1; reflections cannot be expressed by a quaternion).
            t: `[3]` translation.
            scale: positive uniform scale (multiplies `scales` too).
        SH coefficients of degree > 0 are not rotated; `sh` is dropped with a `GaussiansError` if present
        and R is not the identity, rather than silently producing wrong view-dependent colour.
        """
        R = torch.as_tensor(R, dtype=self.dtype, device=self.device)
        t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        s = torch.as_tensor(scale, dtype=self.dtype, device=self.device)
        if R.shape != (3, 3) or t.shape != (3,):
            raise GaussiansError(f"transform expects R [3,3] and t [3], got {list(R.shape)} and {list(t.shape)}")
        det = torch.linalg.det(R.double())
        if abs(float(det) - 1.0) > 1e-4:
            raise GaussiansError(f"transform needs a proper rotation (det +1), got det {float(det):.4f}")
        if s.numel() != 1 or float(s) <= 0:
            raise GaussiansError(f"transform scale must be one positive number, got {s.tolist()}")
        if self.sh is not None and not torch.allclose(R, torch.eye(3, dtype=R.dtype, device=R.device)):
            raise GaussiansError("rotating higher-order SH is not supported; drop `sh` first (replace(g, sh=None))")
        q = rotmat_to_quat(R)
        quats = quat_multiply(q.expand_as(self.quats), self.quats)
        return replace(
            self,
            means=s * self.means @ R.T + t,
            quats=torch.nn.functional.normalize(quats, dim=-1),
            scales=self.scales * s,
        )

    # ------------------------------------------------------------------ raw parameters
    def to_raw(self) -> torch.Tensor:
        """`[N, 14]` raw rows in `RAW_FIELDS` order (logit opacity, log scale, SH DC, quats w-first)."""
        op = self.opacities.clamp(_EPS, 1 - _EPS)
        return torch.cat(
            (
                self.means,
                rgb_to_sh0(self.colors),
                torch.log(op / (1 - op))[:, None],
                torch.log(self.scales.clamp_min(1e-12)),
                self.quats,
            ),
            dim=-1,
        )

    @staticmethod
    def from_raw(raw: torch.Tensor, sh: torch.Tensor | None = None) -> "Gaussians":
        """Inverse of `to_raw`: `[N, 14]` raw rows -> activated Gaussians (quats normalised, colours clamped)."""
        if raw.ndim != 2 or raw.shape[1] != len(RAW_FIELDS):
            raise GaussiansError(f"raw Gaussians must have shape [N, {len(RAW_FIELDS)}], got {list(raw.shape)}")
        return Gaussians(
            means=raw[:, 0:3],
            colors=sh0_to_rgb(raw[:, 3:6]).clamp(0, 1),
            opacities=torch.sigmoid(raw[:, 6]),
            scales=torch.exp(raw[:, 7:10]),
            quats=torch.nn.functional.normalize(raw[:, 10:14], dim=-1),
            sh=sh,
        )
