"""Skinning: the body models' LBS data, binding Gaussians to a body, re-posing them (hgm_core.body.skinning)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hgm_core.body import AnnyBody, BodyModel, BodyParams
from hgm_core.body.skinning import bind, bind_body, closest_surface_points, lbs, load_binding, pose, save_binding
from hgm_core.gaussians import Gaussians, quat_to_rotmat


@pytest.fixture(scope="module")
def anny() -> AnnyBody:
    return AnnyBody()


@pytest.fixture(scope="module")
def smplx_body(tmp_path_factory):
    from hgm_core.body import SmplxBody
    from tests.test_body_smplx import write_synthetic_smplx

    return SmplxBody(write_synthetic_smplx(tmp_path_factory.mktemp("smplx") / "SMPLX_NEUTRAL.npz"))


def plausible_params(body: BodyModel, batch: int, seed: int) -> BodyParams:
    """Random poses inside the anatomical joint limits, random shape, orientation and placement."""
    g = torch.Generator().manual_seed(seed)
    lim = body.joint_limits
    local = lim.lo + (lim.hi - lim.lo) * torch.rand(batch, *lim.lo.shape, generator=g)
    pose = torch.einsum("bjl,jkl->bjk", local, lim.frames).reshape(batch, -1)  # frames are orthonormal
    return BodyParams(
        global_orient=torch.randn(batch, 3, generator=g),
        transl=torch.randn(batch, 3, generator=g) + torch.tensor([0.0, 0.0, 3.0]),
        pose=pose,
        shape=0.5 * torch.randn(batch, body.shape_dim, generator=g),
    )


def _lbs_error(body: BodyModel, params: BodyParams) -> float:
    vertices, rest = body.bind_pose(params.shape)
    posed = lbs(vertices, body.skinning_weights, body.bone_transforms(params) @ torch.linalg.inv(rest))
    return float((posed - body(params).vertices).norm(dim=-1).max())


@pytest.mark.parametrize("model", ["anny", "smplx_body"])
def test_lbs_of_the_bind_pose_reproduces_forward(model: str, request) -> None:
    body = request.getfixturevalue(model)
    params = plausible_params(body, batch=4, seed=0)
    with torch.no_grad():
        assert _lbs_error(body, params) < 1e-4  # metres; float32 round-off, far below the 1 mm asked
        T = body.bone_transforms(params)
        out = body(params)
    J = len(body.skinning_joint_names)
    assert T.shape == (4, J, 4, 4) and body.skinning_weights.shape == (body.num_vertices, J)
    assert len(body.skinning_parents) == J and body.skinning_parents[0] == -1
    torch.testing.assert_close(body.skinning_weights.sum(-1), torch.ones(body.num_vertices))
    torch.testing.assert_close(T[:, 0, :3, 3], out.joints[:, 0])  # joint 0 is the pelvis
    R = T[..., :3, :3]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)


def test_bind_pose_is_centred_canonical(anny: AnnyBody) -> None:
    """The canonical pose is the body frame (y up, facing +z) with the pelvis at the origin."""
    vertices, rest = anny.bind_pose(torch.zeros(1, anny.shape_dim))
    torch.testing.assert_close(rest[0, 0, :3, 3], torch.zeros(3))
    extent = vertices[0].amax(0) - vertices[0].amin(0)
    assert extent[1] > 1.4 and extent[1] > extent[2]  # a standing adult, tallest along y


def test_closest_surface_points_against_dense_sampling() -> None:
    from tests.test_body_smplx import _tube

    v, f = _tube(np.zeros(3), np.array([0.0, 0.5, 0.0]), 0.1, rings=8, around=10)
    vertices, faces = torch.tensor(v, dtype=torch.float32), torch.tensor(f)
    points = torch.randn(200, 3, generator=torch.Generator().manual_seed(1)) * 0.2 + torch.tensor([0.0, 0.25, 0.0])
    tri, bary = closest_surface_points(points, vertices, faces)
    assert bool((bary >= 0).all()) and torch.allclose(bary.sum(-1), torch.ones(200))
    found = (bary[:, :, None] * vertices[faces[tri]]).sum(1)
    dist = (found - points).norm(dim=-1)
    s = torch.linspace(0, 1, 25)
    u, w = torch.meshgrid(s, s, indexing="ij")
    keep = (u + w) <= 1
    grid = torch.stack((1 - u[keep] - w[keep], u[keep], w[keep]), -1)  # barycentric samples
    samples = torch.einsum("sc,fcd->fsd", grid, vertices[faces]).reshape(-1, 3)
    brute = torch.cdist(points, samples).amin(-1)
    assert bool((dist <= brute + 1e-6).all())  # never worse than any sample of any triangle
    assert float((brute - dist).max()) < 0.01  # and within the sampling resolution of the best


def _surface_gaussians(body: BodyModel, params: BodyParams, n: int, seed: int, jitter: float = 0.01) -> tuple[Gaussians, torch.Tensor]:
    """N random Gaussians near random body vertices, and those vertices' indices `[N]`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        v = body(params).vertices[0]
    idx = torch.randint(0, len(v), (n,), generator=g)
    return Gaussians(
        means=v[idx] + jitter * torch.randn(n, 3, generator=g),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=torch.rand(n, 3, generator=g) * 0.01 + 0.002,
        opacities=torch.rand(n, generator=g) * 0.9 + 0.05,
        colors=torch.rand(n, 3, generator=g),
    ), idx


def _covariances(g: Gaussians) -> torch.Tensor:
    RS = quat_to_rotmat(g.quats) * g.scales[:, None, :]
    return RS @ RS.transpose(1, 2)


def _assert_same_avatar(a: Gaussians, b: Gaussians, atol: float) -> None:
    torch.testing.assert_close(a.means, b.means, atol=atol, rtol=0)
    torch.testing.assert_close(_covariances(a), _covariances(b), atol=atol * 1e-2, rtol=1e-4)
    torch.testing.assert_close(a.opacities, b.opacities)
    torch.testing.assert_close(a.colors, b.colors)


@pytest.fixture(scope="module")
def fitted(anny: AnnyBody):
    """A posed anny body in the camera frame, 2,000 Gaussians on it, and their binding."""
    params = plausible_params(anny, batch=1, seed=3)
    avatar, _ = _surface_gaussians(anny, params, 2000, seed=4)
    return params, avatar, bind_body(avatar, anny, params)


def test_posing_at_the_fit_gives_the_avatar_back(anny: AnnyBody, fitted) -> None:
    params, avatar, binding = fitted
    assert binding.joint_index.shape == (2000, 4) and binding.joint_names == anny.skinning_joint_names
    torch.testing.assert_close(binding.joint_weight.sum(-1), torch.ones(2000))
    with torch.no_grad():
        posed = pose(binding, anny.bone_transforms(params)[0])
    _assert_same_avatar(posed, avatar, atol=1e-5)


def test_rest_pose_reproduces_the_canonical_avatar(fitted) -> None:
    _, _, binding = fitted
    rest = pose(binding, binding.rest_transforms)
    _assert_same_avatar(rest, binding.canonical, atol=1e-6)
    torch.testing.assert_close(rest.scales, binding.canonical.scales, atol=1e-7, rtol=1e-5)
    same_quat = torch.minimum((rest.quats - binding.canonical.quats).abs().amax(-1), (rest.quats + binding.canonical.quats).abs().amax(-1))
    assert float(same_quat.max()) < 1e-5  # each Gaussian keeps its own axes, not just its covariance


def test_a_bone_rotation_moves_gaussians_and_covariances_with_the_body(anny: AnnyBody) -> None:
    """Flex the left elbow by 90 degrees: Gaussians on body vertices follow those vertices, the
    forearm's covariances turn by the elbow's rotation, the rest of the body does not move."""
    params = BodyParams(torch.tensor([[math.pi, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 3.0]]),
                        torch.zeros(1, anny.pose_dim), torch.zeros(1, anny.shape_dim))
    avatar, on_vertex = _surface_gaussians(anny, params, 3000, seed=5, jitter=0.0)  # exactly on vertices
    binding = bind_body(avatar, anny, params, k=9)  # anny paints at most 9 bones per vertex: no truncation
    elbow = anny.pose_joint_names.index("left_elbow")
    bent = params.pose.clone().reshape(-1, 3)
    bent[elbow] = anny.joint_limits.frames[elbow][:, 0] * (math.pi / 2)  # pure flexion
    moved = BodyParams(params.global_orient, params.transl, bent.reshape(1, -1), params.shape)
    with torch.no_grad():
        T0, T1 = anny.bone_transforms(params)[0], anny.bone_transforms(moved)[0]
        posed = pose(binding, T1)
        body_now = anny(moved).vertices[0]
    torch.testing.assert_close(posed.means, body_now[on_vertex], atol=2e-5, rtol=0)  # Gaussians ride their vertices

    names = anny.skinning_joint_names
    forearm = _descendants(anny.skinning_parents, names.index("lowerarm01.L"))
    used = binding.joint_weight > 0
    on_forearm = (torch.isin(binding.joint_index, forearm) | ~used).all(-1)
    arm = _descendants(anny.skinning_parents, names.index("clavicle.L"))
    still = ~(torch.isin(binding.joint_index, arm) & used).any(-1)
    assert int(on_forearm.sum()) > 20 and int(still.sum()) > 1000
    turn = (T1 @ torch.linalg.inv(T0))[names.index("lowerarm01.L"), :3, :3]
    assert abs(float(torch.arccos(((turn.trace() - 1) / 2).clamp(-1, 1))) - math.pi / 2) < 1e-3
    before, after = _covariances(avatar), _covariances(posed)
    torch.testing.assert_close(after[on_forearm], turn @ before[on_forearm] @ turn.T, atol=1e-8, rtol=1e-4)
    assert float((posed.means[on_forearm] - avatar.means[on_forearm]).norm(dim=-1).mean()) > 0.05
    torch.testing.assert_close(posed.means[still], avatar.means[still], atol=1e-5, rtol=0)
    torch.testing.assert_close(after[still], before[still], atol=1e-8, rtol=1e-4)


def _descendants(parents: tuple[int, ...], joint: int) -> torch.Tensor:
    """`[M]` indices of `joint` and every joint below it."""
    inside = [joint]
    for j, p in enumerate(parents):  # parents precede children in both models' orders
        if p in inside:
            inside.append(j)
    return torch.tensor(inside)


def test_blended_covariance_is_the_polar_approximation() -> None:
    """Between two bones the covariance is A S A^T up to A's shear: exact when the bones agree,
    about 1% for bones 20 degrees apart (the figure documented in hgm_core.body.skinning)."""
    from hgm_core.body.skinning import Binding

    g = Gaussians(torch.zeros(1, 3), torch.nn.functional.normalize(torch.tensor([[0.9, 0.3, -0.2, 0.4]]), dim=-1),
                  torch.tensor([[0.01, 0.02, 0.04]]), torch.tensor([0.5]), torch.zeros(1, 3))
    binding = Binding(g, torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]), torch.eye(4).expand(2, 4, 4), ("a", "b"), (-1, 0))
    base = torch.tensor([0.3, -0.5, 0.8])
    for spread, tol in ((0.0, 1e-6), (20.0, 0.02)):
        half = torch.tensor([0.0, 0.0, math.radians(spread / 2)])  # the bones turn 20 degrees apart
        T = torch.eye(4).repeat(2, 1, 1)
        T[0, :3, :3], T[1, :3, :3] = _rotation(base + half), _rotation(base - half)
        A = 0.5 * (T[0, :3, :3] + T[1, :3, :3])
        exact = A @ _covariances(g)[0] @ A.T
        got = _covariances(pose(binding, T))[0]
        assert float((got - exact).norm() / exact.norm()) <= tol


def _rotation(rotvec: torch.Tensor) -> torch.Tensor:
    import roma

    return roma.rotvec_to_rotmat(rotvec)


def test_bind_works_on_any_skinned_mesh() -> None:
    """`bind` needs no BodyModel: one triangle, two joints, Gaussians moved into the canonical pose."""
    vertices = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    weights = torch.tensor([[1.0, 0], [0, 1], [0.5, 0.5]])
    T = torch.eye(4).repeat(2, 1, 1)
    T[:, :3, 3] = torch.tensor([0.0, 0.0, 1.0])  # the posed mesh is the rest mesh lifted by 1 along z
    g = Gaussians(torch.tensor([[0.2, 0.2, 1.1]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.01),
                  torch.tensor([0.5]), torch.zeros(1, 3))
    binding = bind(g, vertices + torch.tensor([0.0, 0, 1]), torch.tensor([[0, 1, 2]]), weights, T,
                   torch.eye(4).repeat(2, 1, 1), ("a", "b"), (-1, 0), k=2)
    torch.testing.assert_close(binding.canonical.means, torch.tensor([[0.2, 0.2, 0.1]]))
    torch.testing.assert_close(binding.joint_weight, torch.tensor([[0.7, 0.3]]))  # bary (0.6, 0.2, 0.2)
    assert binding.joint_index.tolist() == [[0, 1]]


def test_save_and_load_binding(tmp_path, fitted) -> None:
    _, _, binding = fitted
    save_binding(binding, tmp_path / "canonical.ply", tmp_path / "binding.npz", binding_id=7, body_model="anny")
    loaded = load_binding(tmp_path / "canonical.ply", tmp_path / "binding.npz")
    _assert_same_avatar(loaded.canonical, binding.canonical, atol=1e-7)
    assert torch.equal(loaded.joint_index, binding.joint_index) and loaded.joint_names == binding.joint_names
    torch.testing.assert_close(loaded.joint_weight, binding.joint_weight)
    torch.testing.assert_close(loaded.rest_transforms, binding.rest_transforms)
