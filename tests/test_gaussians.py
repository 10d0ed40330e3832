import math

import pytest
import torch

from hgm_core.gaussians import (
    RAW_FIELDS, Gaussians, GaussiansError, quat_from_z, quat_multiply, quat_to_rotmat, rgb_to_sh0, rotmat_to_quat, sh0_to_rgb,
)
from tests.conftest import random_gaussians


def _rot(axis: str, deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return {
        "x": torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis].float()


def test_shapes_are_checked_with_clear_messages():
    g = random_gaussians(5)
    with pytest.raises(GaussiansError, match=r"quats must have shape \[5, 4\]"):
        Gaussians(g.means, g.quats[:, :3], g.scales, g.opacities, g.colors)
    with pytest.raises(GaussiansError, match="opacities"):
        Gaussians(g.means, g.quats, g.scales, g.opacities[:, None], g.colors)
    with pytest.raises(GaussiansError, match="floating point"):
        Gaussians(g.means.long(), g.quats, g.scales, g.opacities, g.colors)
    with pytest.raises(GaussiansError, match="sh"):
        Gaussians(g.means, g.quats, g.scales, g.opacities, g.colors, sh=torch.zeros(4, 3, 3))


def test_validate_reports_out_of_range_values():
    g = random_gaussians(6)
    assert g.validate() is g
    bad = Gaussians(g.means, g.quats, g.scales, g.opacities.clone().fill_(1.0), g.colors)
    with pytest.raises(GaussiansError, match=r"opacities: 6 of 6 entries are not in \(0, 1\)"):
        bad.validate()
    with pytest.raises(GaussiansError, match="scales"):
        Gaussians(g.means, g.quats, -g.scales, g.opacities, g.colors).validate()
    with pytest.raises(GaussiansError, match="quats"):
        Gaussians(g.means, g.quats * 2, g.scales, g.opacities, g.colors).validate()


def test_raw_round_trip_and_layout():
    g = random_gaussians(50, dtype=torch.float64)
    raw = g.to_raw()
    assert raw.shape == (50, len(RAW_FIELDS)) == (50, 14)
    torch.testing.assert_close(raw[:, 3:6], (g.colors - 0.5) / 0.28209479177387814)
    torch.testing.assert_close(torch.sigmoid(raw[:, 6]), g.opacities)
    torch.testing.assert_close(torch.exp(raw[:, 7:10]), g.scales)
    back = Gaussians.from_raw(raw)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name))
    torch.testing.assert_close(sh0_to_rgb(rgb_to_sh0(g.colors)), g.colors)


def test_subset_concat_and_moves():
    g = random_gaussians(10)
    a, b = g.subset(slice(0, 4)), g.subset(torch.arange(4, 10))
    c = Gaussians.concat([a, b])
    torch.testing.assert_close(c.means, g.means)
    m = g.subset(g.opacities > 0.5)
    assert len(m) == int((g.opacities > 0.5).sum())
    assert g.to(dtype=torch.float64).dtype == torch.float64
    with pytest.raises(GaussiansError, match="boolean subset mask"):
        g.subset(torch.ones(3, dtype=torch.bool))
    with pytest.raises(GaussiansError, match="mix"):
        Gaussians.concat([g, Gaussians(g.means, g.quats, g.scales, g.opacities, g.colors, sh=torch.zeros(10, 3, 3))])


@pytest.mark.parametrize("axis,deg", [("x", 30), ("y", 180), ("z", -90), ("x", 179.9)])
def test_rotmat_quat_round_trip(axis, deg):
    R = _rot(axis, deg)
    q = rotmat_to_quat(R)
    torch.testing.assert_close(quat_to_rotmat(q), R, atol=1e-5, rtol=0)
    assert q[0] >= 0


def test_similarity_transform_rotates_covariances_consistently():
    g = random_gaussians(20, dtype=torch.float64)
    R = (_rot("y", 40) @ _rot("x", -25)).double()
    t = torch.tensor([0.1, -0.2, 1.5], dtype=torch.float64)
    s = 1.7
    h = g.transform(R, t, s)
    torch.testing.assert_close(h.means, s * g.means @ R.T + t)
    torch.testing.assert_close(h.scales, s * g.scales)

    def cov(x: Gaussians) -> torch.Tensor:
        M = quat_to_rotmat(x.quats) * x.scales[:, None, :]
        return M @ M.transpose(1, 2)

    # The covariance of a transformed Gaussian is s² R Σ Rᵀ: this is what "rotating quats correctly" means.
    torch.testing.assert_close(cov(h), s * s * R @ cov(g) @ R.T)
    torch.testing.assert_close(h.quats.norm(dim=-1), torch.ones(20, dtype=torch.float64))


def test_transform_rejects_reflections_and_bad_scale():
    g = random_gaussians(3)
    with pytest.raises(GaussiansError, match="det"):
        g.transform(torch.diag(torch.tensor([1.0, 1.0, -1.0])), torch.zeros(3))
    with pytest.raises(GaussiansError, match="scale"):
        g.transform(torch.eye(3), torch.zeros(3), scale=0.0)


def test_quat_multiply_composes_rotations():
    A, B = _rot("x", 30), _rot("z", 70)
    q = quat_multiply(rotmat_to_quat(A), rotmat_to_quat(B))
    torch.testing.assert_close(quat_to_rotmat(q), A @ B, atol=1e-6, rtol=0)


def test_quat_from_z_turns_z_onto_each_normal():
    n = torch.nn.functional.normalize(torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), dim=-1)
    n = torch.cat((n, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64)))  # both poles
    q = quat_from_z(n)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(n), dtype=torch.float64))
    torch.testing.assert_close(quat_to_rotmat(q)[:, :, 2], n)
