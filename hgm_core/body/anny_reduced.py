"""`ReducedAnny`: an `AnnyBody`'s keypoints, joints and a few chosen vertices, without the whole mesh.

The body fit's energy reads the 23 keypoints, the joints and ~2k surface samples, but
`AnnyBody.forward` blends and skins all 13,718 vertices and differentiates through all of them: the
largest part of a fit step's time before this evaluator. Both reductions here are exact:
- Samples: anny's rest vertices are linear in the blendshape coefficients and its skinning is
  linear blend skinning, so the chosen vertices are blended and skinned on their own.
- Keypoints: each is a fixed linear combination `sum_v W_kv x_v` of skinned vertices
  `x_v = sum_j w_vj (R_j r_v + t_j)`, so `keypoint_k = sum_j R_j m_kj + s_kj t_j` with per-bone moments
  `m_kj = sum_v W_kv w_vj r_v` (linear in the blendshape coefficients, precomputed per basis
  shape) and weights `s_kj = sum_v W_kv w_vj`: a few hundred thousand multiply-adds per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import roma
import torch

from hgm_core.body.base import BodyOutput, BodyParams, SampledBody, place

if TYPE_CHECKING:
    from hgm_core.body.anny_body import AnnyBody


@dataclass(frozen=True)
class RestState:
    """What `ReducedAnny` derives from the shape alone: `bone_poses [B, J, 4, 4]` (anny's rest bones),
    `vertices [B, N, 3]` (the chosen rest vertices), `moments [B, K, J, 3]` (module docstring)."""

    bone_poses: torch.Tensor
    vertices: torch.Tensor
    moments: torch.Tensor


class ReducedAnny(SampledBody):
    """`AnnyBody` as a `SampledBody`: the same joints and keypoints, the vertices `vertex_index`.

    Needs anny's "cached" bone orientations (its default), whose rest bones are computed here
    without blending the whole rest mesh.
    """

    def __init__(self, body: AnnyBody, vertex_index: torch.Tensor) -> None:
        super().__init__(body, vertex_index)
        anny = body.anny
        if anny.bone_orientation != "cached" or anny.rest_orientation_refiner is not None:
            raise ValueError(f"ReducedAnny needs anny's cached bone orientations, got {anny.bone_orientation!r}")
        idx = self.vertex_index
        self.register_buffer("template", anny.template_vertices[idx].float())  # [N, 3]
        self.register_buffer("blendshapes", anny.blendshapes[:, idx].float())  # [C, N, 3]
        # Dense [N, J] weights: one matrix product blends the bone transforms.
        self.register_buffer("bone_weights", body.skinning_weights[idx])
        m0, m1, s = _keypoint_moments(body)
        self.register_buffer("moment0", m0)  # [K, J, 3]
        self.register_buffer("moment1", m1)  # [C, K, J, 3]
        self.register_buffer("bone_sums", s)  # [K, J]

    def rest(self, shape: torch.Tensor) -> RestState:
        body, anny = self.model, self.model.anny
        _, phenotypes, local, facial = anny.get_tensor_inputs(None, body.phenotypes(shape), None, None)
        coeffs = anny._get_phenotype_blendshape_coefficients(phenotypes, local, facial)  # [B, C]
        # anny's cached rest bones (`_get_cached_rest_model`) without its all-vertex blend.
        heads = anny.template_bone_heads[None] + torch.einsum("cpd,bc->bpd", anny.bone_heads_blendshapes, coeffs)
        M = anny.bone_template_orientation_matrices[None] + torch.einsum("ba,akij->bkij", coeffs, anny.bone_orientation_blendshapes)
        poses = roma.Rigid(linear=roma.special_procrustes(M), translation=heads).to_homogeneous()
        if anny.root_identity_orientation:
            poses[:, 0, :3, :3] = torch.eye(3, dtype=poses.dtype)
        vertices = self.template[None] + torch.einsum("cnd,bc->bnd", self.blendshapes, coeffs)
        moments = self.moment0[None] + torch.einsum("bc,ckjd->bkjd", coeffs, self.moment1)
        return RestState(poses, vertices, moments)

    def posed(self, rest: RestState, params: BodyParams) -> BodyOutput:
        body = self.model
        B = max(params.pose.shape[0], rest.bone_poses.shape[0])
        T, bone_poses = body.anny.get_bone_transforms(body.anny_deltas(params.pose, B), rest.bone_poses)  # [B, J, 4, 4]
        blend = (self.bone_weights @ T[:, :, :3, :].reshape(B, -1, 12)).reshape(B, -1, 3, 4)  # [B, N, 3, 4]
        # Elementwise, not `@`: a batch of N 3x3 products is several times slower as a bmm here.
        vertices = (blend[..., :3] * rest.vertices[:, :, None, :]).sum(-1) + blend[..., 3]
        R, t = T[..., :3, :3], T[..., :3, 3]
        moments = rest.moments.expand(B, -1, -1, -1)
        keypoints = torch.einsum("bjxd,bkjd->bkx", R, moments) + torch.einsum("kj,bjx->bkx", self.bone_sums, t)
        A = body._anny_from_body  # row vectors: x_body = x_anny @ A
        joints = bone_poses[:, body._joint_bones, :3, 3] @ A
        return place(BodyOutput(vertices @ A, joints, keypoints @ A), params)


def _keypoint_moments(body: AnnyBody) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-keypoint, per-bone moments of the rest mesh (module docstring), float32.

    Returns `(m0 [K, J, 3], m1 [C, K, J, 3], s [K, J])`: `m = m0 + sum_c coeff_c m1[c]`.
    """
    anny = body.anny
    W = body._keypoint_weights.double()  # [K, V]
    K, V = W.shape
    J = body.skinning_weights.shape[1]
    k, v = W.nonzero(as_tuple=True)
    bones = anny.vertex_bone_indices[v].long()  # [P, I]
    weight = W[k, v][:, None] * anny.vertex_bone_weights[v].double()  # [P, I]
    index = torch.stack([(k[:, None] * J + bones).reshape(-1), v[:, None].expand_as(bones).reshape(-1)])
    S = torch.sparse_coo_tensor(index, weight.reshape(-1), (K * J, V), check_invariants=True).coalesce()
    shapes = torch.cat([anny.template_vertices[None], anny.blendshapes]).double()  # [1 + C, V, 3]
    moments = torch.sparse.mm(S, shapes.permute(1, 0, 2).reshape(V, -1)).reshape(K, J, -1, 3)
    s = torch.sparse.sum(S, dim=1).to_dense().reshape(K, J)
    return moments[:, :, 0].float(), moments[:, :, 1:].permute(2, 0, 1, 3).float().contiguous(), s.float()
