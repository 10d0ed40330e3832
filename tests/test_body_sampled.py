"""`BodyModel.sampled`: the body fit's evaluator equals the full model at the sampled vertices."""

from __future__ import annotations

import pytest
import torch

from hgm_core.body import AnnyBody, BodyParams
from hgm_core.body.anny_reduced import ReducedAnny
from hgm_core.body.base import SampledBody


@pytest.fixture(scope="module")
def anny_body() -> AnnyBody:
    return AnnyBody()


def _random_params(body, batch: int, seed: int) -> BodyParams:
    g = torch.Generator().manual_seed(seed)
    return BodyParams(torch.randn(batch, 3, generator=g), torch.randn(batch, 3, generator=g),
                      0.4 * torch.randn(batch, body.pose_dim, generator=g), torch.randn(batch, body.shape_dim, generator=g))  # fmt: skip


def _assert_matches(sampled: SampledBody, body, params: BodyParams) -> None:
    with torch.no_grad():
        full, part = body(params), sampled(params)
    torch.testing.assert_close(part.joints, full.joints, atol=1e-5, rtol=0)
    torch.testing.assert_close(part.keypoints, full.keypoints, atol=5e-5, rtol=0)
    torch.testing.assert_close(part.vertices, full.vertices[:, sampled.vertex_index], atol=1e-5, rtol=0)


def test_reduced_anny_equals_anny(anny_body: AnnyBody) -> None:
    sampled = anny_body.sampled(500)
    assert isinstance(sampled, ReducedAnny) and sampled is anny_body.sampled(500)  # kept by the model
    assert len(sampled.vertex_index) == 500
    _assert_matches(sampled, anny_body, _random_params(anny_body, 3, seed=0))
    # The shape part computed once serves any pose of that shape.
    p = _random_params(anny_body, 1, seed=1)
    q = _random_params(anny_body, 1, seed=2)
    q.shape = p.shape
    with torch.no_grad():
        rest = sampled.rest(p.shape)
        torch.testing.assert_close(sampled.posed(rest, q).keypoints, anny_body(q).keypoints, atol=5e-5, rtol=0)


def test_reduced_anny_gradients_match(anny_body: AnnyBody) -> None:
    sampled = anny_body.sampled(300)
    grads = []
    for fn in (anny_body, sampled):
        p = _random_params(anny_body, 1, seed=3)
        for t in (p.global_orient, p.transl, p.pose, p.shape):
            t.requires_grad_(True)
        out = fn(p)
        verts = out.vertices if fn is sampled else out.vertices[:, sampled.vertex_index]
        (verts.square().sum() + out.keypoints.square().sum() + out.joints.sum()).backward()
        grads.append(torch.cat([p.global_orient.grad, p.transl.grad, p.pose.grad, p.shape.grad], 1))
    torch.testing.assert_close(grads[1], grads[0], atol=2e-3, rtol=2e-3)


def test_generic_sampled_body(tmp_path) -> None:
    from hgm_core.body import SmplxBody
    from tests.test_body_smplx import write_synthetic_smplx

    body = SmplxBody(write_synthetic_smplx(tmp_path / "SMPLX_NEUTRAL.npz"))
    sampled = body.sampled(200)
    assert type(sampled) is SampledBody
    _assert_matches(sampled, body, _random_params(body, 2, seed=4))


def test_reduced_anny_held_shape_chain(anny_body: AnnyBody) -> None:
    """With the shape held (no gradient), `rest` gives the 20-joint chain: same outputs and pose
    gradients as the full model, and the same as the bone path a shape under optimisation takes."""
    from hgm_core.body.anny_reduced import AnnyRest, RestState

    sampled = anny_body.sampled(300)
    p = _random_params(anny_body, 2, seed=5)
    with torch.no_grad():
        chain = sampled.rest(p.shape)
    bones = sampled.rest(p.shape.clone().requires_grad_(True))
    assert isinstance(chain, RestState) and isinstance(bones, AnnyRest)
    a, b = sampled.posed(chain, p), sampled.posed(bones, p)
    for x, y in ((a.vertices, b.vertices), (a.joints, b.joints), (a.keypoints, b.keypoints)):
        torch.testing.assert_close(x, y.detach(), atol=2e-5, rtol=0)
    grads = []
    for fn in (anny_body, sampled):
        q = BodyParams(*(t.clone().requires_grad_(t is not p.shape) for t in (p.global_orient, p.transl, p.pose, p.shape)))
        out = fn(q)
        verts = out.vertices if fn is sampled else out.vertices[:, sampled.vertex_index]
        (verts.square().sum() + out.keypoints.square().sum() + out.joints.sum()).backward()
        grads.append(torch.cat([q.global_orient.grad, q.transl.grad, q.pose.grad], 1))
    torch.testing.assert_close(grads[1], grads[0], atol=2e-3, rtol=2e-3)


def test_phenotype_coefficients_match_anny(anny_body: AnnyBody) -> None:
    """`PhenotypeCoefficients` gives anny's blendshape coefficients and their gradients, on anchors too
    (shape 0 puts gender, muscle, weight, height and proportions exactly on 0.5)."""
    anny = anny_body.anny
    coefficients = anny_body.sampled(300).coefficients
    g = torch.Generator().manual_seed(6)
    values = torch.cat([torch.rand(8, 6, generator=g), anny_body.phenotypes(torch.zeros(1, 6)),
                        torch.tensor([[0.0, 1.0, 0.5, 1.0, 0.0, 1.0], [1.0, 1 / 3, 0.0, 0.5, 1.0, 0.0]])])  # fmt: skip
    weights = torch.randn(len(values), anny.phenotype_blendshape_projection.shape[1], generator=g)
    out = []
    for fn in (coefficients, lambda p: anny._get_phenotype_blendshape_coefficients(*anny.get_tensor_inputs(None, p, None, None)[1:])):
        p = values.clone().requires_grad_(True)
        c = fn(p)
        (c * weights).sum().backward()
        out.append((c.detach(), p.grad))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-5, rtol=1e-4)
