"""`ReducedAnny`: an `AnnyBody`'s keypoints, joints and a few chosen vertices, without the whole mesh.

The body fit's energy reads the 23 keypoints, the joints and ~1k surface samples, but
`AnnyBody.forward` blends and skins all 13,718 vertices through anny's 104 bones and differentiates
through all of them. Everything here is exact:
- Samples: anny's rest vertices are linear in the blendshape coefficients and its skinning is
  linear blend skinning, so the chosen vertices are blended and skinned on their own.
- Keypoints: each is a fixed linear combination `sum_v W_kv x_v` of skinned vertices
  `x_v = sum_j w_vj (R_j r_v + t_j)`, so `keypoint_k = sum_j R_j m_kj + s_kj t_j` with per-bone moments
  `m_kj = sum_v W_kv w_vj r_v` (linear in the blendshape coefficients, precomputed per basis
  shape) and weights `s_kj = sum_v W_kv w_vj`: a few hundred thousand multiply-adds per call.
- 20 joints, not 104 bones: only the 19 articulated joints move (`AnnyKinematics`), every other bone
  follows its nearest articulated ancestor, so with the shape's zero-pose bones folded into per-joint
  moments (`RestState`), posing is a 20-joint chain and one small product per point. The shape part
  (`rest`) runs anny's bones once per shape; a fit that holds the shape pays it once.
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
class AnnyRest:
    """anny's shape-dependent state for the chosen vertices (its frame): `bone_poses [B, 104, 4, 4]`
    (rest bones), `vertices [B, N, 3]` (the chosen rest vertices), `moments [B, K, 104, 3]` (the
    keypoints' per-bone moments, module docstring)."""

    bone_poses: torch.Tensor
    vertices: torch.Tensor
    moments: torch.Tensor


@dataclass(frozen=True)
class RestState:
    """What `ReducedAnny.posed` needs from a fixed shape: the 20-joint chain in the body frame
    (`hgm_core.body.base`, pelvis not at the origin), as `AnnyKinematics` describes it.

    Attributes:
        heads: `[B, 20, 3]` zero-pose heads of `AnnyBody.joint_names`.
        vertices: `[B, N, 20, 3]` the chosen vertices' per-joint moments `sum_b w_vb T0_b r_v` over
            the bones b each joint owns (`T0_b`: the bone's zero-pose skinning transform); with
            `ReducedAnny.vertex_weights [N, 20]` a vertex poses as `sum_c R_c m_vc + s_vc t_c`.
        keypoints: `[B, K, 20, 3]` the same for the keypoints (`ReducedAnny.keypoint_weights [K, 20]`).
    """

    heads: torch.Tensor
    vertices: torch.Tensor
    keypoints: torch.Tensor


class PhenotypeCoefficients(torch.nn.Module):
    """anny's blendshape coefficients `[B, C]` of phenotype values `[B, P]` (its `phenotype_labels`
    order), as `Anny._get_phenotype_blendshape_coefficients` gives them without local changes or
    facial actions, in a dozen batched ops instead of ~150 small ones (a quarter of a shape step's
    cost with its gradient): each interpolated phenotype's weights on its anchors (piecewise linear,
    clamped to the anchors; at an anchor the segment on its left, as anny's `searchsorted` picks),
    the phenotypes it does not expose at anny's defaults (0.5; each race 1/3), and each phenotype
    blendshape the product of its variations' weights, projected onto anny's compact basis."""

    def __init__(self, anny: torch.nn.Module) -> None:
        super().__init__()
        from anny.models.model_data import PHENOTYPE_VARIATIONS
        from anny.utils.interpolation import linear_interpolation_coefficients

        labels = list(anny.phenotype_labels)
        unsupported = anny.extrapolate_phenotypes or anny.local_change_labels or anny.facial_action_labels
        if unsupported or anny.phenotype_blendshape_projection is None or set(labels) & set(PHENOTYPE_VARIATIONS["race"]):
            raise ValueError("PhenotypeCoefficients needs anny's compact phenotype blendshapes without extrapolation, "
                             "local changes, facial actions or race phenotypes")
        slots = {(f, j): i for i, (f, j) in enumerate((f, j) for f, keys in PHENOTYPE_VARIATIONS.items() for j in range(len(keys)))}
        fixed = torch.ones(len(slots) + 1)  # the last slot: 1, the factor of a blendshape's unused variations
        features = [f for f in PHENOTYPE_VARIATIONS if f != "race" and f in labels]
        for f, keys in PHENOTYPE_VARIATIONS.items():
            if f == "race":
                fixed[[slots[f, j] for j in range(len(keys))]] = 1 / len(keys)
            elif f not in labels:
                fixed[[slots[f, j] for j in range(len(keys))]] = linear_interpolation_coefficients(torch.tensor([0.5]), anny.anchors[f].float().cpu())[0]
        count = torch.tensor([len(PHENOTYPE_VARIATIONS[f]) for f in features])
        table = torch.full((len(features), int(count.max())), float("inf"))
        for i, f in enumerate(features):
            table[i, : count[i]] = anny.anchors[f].float()
        self.register_buffer("fixed", fixed)
        self.register_buffer("anchors", table)  # [F, n], rows padded with inf
        self.register_buffer("last", count - 1)
        self.register_buffer("column", torch.tensor([labels.index(f) for f in features]))
        self.register_buffer("targets", torch.tensor([slots[f, j] for f in features for j in range(len(PHENOTYPE_VARIATIONS[f]))]))
        self.register_buffer("sources", torch.tensor([i * table.shape[1] + j for i, f in enumerate(features) for j in range(len(PHENOTYPE_VARIATIONS[f]))]))
        mask = anny.stacked_phenotype_blend_shapes_mask.bool().cpu()  # [K, V]
        width = int(mask.sum(1).max())
        factors = torch.full((len(mask), width), len(slots))
        for k, row in enumerate(mask):
            used = row.nonzero()[:, 0]
            factors[k, : len(used)] = used
        self.register_buffer("factors", factors)  # [K, width] slots multiplied per blendshape
        self.register_buffer("projection", anny.phenotype_blendshape_projection.float())  # [K, C]

    def forward(self, phenotypes: torch.Tensor) -> torch.Tensor:
        a = self.anchors
        v = phenotypes[:, self.column].T  # [F, B]
        low, high = a[:, :1], a.gather(1, self.last[:, None])
        v = torch.where(v < low, low, v)
        v = torch.where(v > high, high, v)
        idx = torch.minimum(torch.searchsorted(a, v.contiguous(), side="left"), self.last[:, None]).clamp(min=1)  # [F, B]
        left, right = a.gather(1, idx - 1), a.gather(1, idx)
        alpha = (v - left) / (right - left)
        w = v.new_zeros(*v.shape, a.shape[1]).scatter(2, (idx - 1)[..., None], (1 - alpha)[..., None]).scatter(2, idx[..., None], alpha[..., None])
        w = w.permute(1, 0, 2).flatten(1)  # [B, F * n]
        phens = self.fixed.expand(len(phenotypes), -1).index_copy(1, self.targets, w[:, self.sources])
        coefficients = phens[:, self.factors].prod(-1)  # [B, K]
        return coefficients @ self.projection


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
        self.coefficients = PhenotypeCoefficients(anny)
        idx = self.vertex_index
        self.register_buffer("template", anny.template_vertices[idx].float())  # [N, 3]
        self.register_buffer("blendshapes", anny.blendshapes[:, idx].float())  # [C, N, 3]
        # Dense [N, 104] weights: one matrix product blends the bone transforms.
        self.register_buffer("bone_weights", body.skinning_weights[idx])
        m0, m1, s = _keypoint_moments(body)
        self.register_buffer("moment0", m0)  # [K, J, 3]
        self.register_buffer("moment1", m1)  # [C, K, J, 3]
        self.register_buffer("bone_sums", s)  # [K, J]
        # The 20-joint chain: each bone's articulated owner, and the skinning weights summed per owner.
        joint_bones = body._joint_bones.tolist()
        self.register_buffer("owner", torch.tensor(_owners(list(anny.bone_parents), joint_bones)))  # [104]
        self.register_buffer("vertex_bones", anny.vertex_bone_indices[idx].long())  # [N, I]
        self.register_buffer("vertex_bone_weights", anny.vertex_bone_weights[idx].float())  # [N, I]
        J = len(joint_bones)
        self.register_buffer("vertex_weights", _per_owner(self.vertex_bone_weights[..., None], self.owner[self.vertex_bones], J)[..., 0])
        self.register_buffer("keypoint_weights", _per_owner(s[..., None], self.owner[None].expand_as(s), J)[..., 0])
        self.parents = torch.tensor(body.joint_parents)
        self.levels = _levels(body.joint_parents)

    def anny_rest(self, shape: torch.Tensor) -> AnnyRest:
        """anny's rest bones, the chosen rest vertices and the keypoint moments of `shape [B, S]`."""
        body, anny = self.model, self.model.anny
        coeffs = self.coefficients(body.phenotypes(shape))  # [B, C]
        # anny's cached rest bones (`_get_cached_rest_model`) without its all-vertex blend.
        heads = anny.template_bone_heads[None] + torch.einsum("cpd,bc->bpd", anny.bone_heads_blendshapes, coeffs)
        M = anny.bone_template_orientation_matrices[None] + torch.einsum("ba,akij->bkij", coeffs, anny.bone_orientation_blendshapes)
        poses = roma.Rigid(linear=roma.special_procrustes(M), translation=heads).to_homogeneous()
        if anny.root_identity_orientation:
            poses[:, 0, :3, :3] = torch.eye(3, dtype=poses.dtype)
        vertices = self.template[None] + torch.einsum("cnd,bc->bnd", self.blendshapes, coeffs)
        moments = self.moment0[None] + torch.einsum("bc,ckjd->bkjd", coeffs, self.moment1)
        return AnnyRest(poses, vertices, moments)

    def zero_pose(self, rest: AnnyRest) -> tuple[torch.Tensor, torch.Tensor]:
        """anny's skinning transforms and bone poses `[B, 104, 4, 4]` (its frame) at the zero pose."""
        body = self.model
        return body.anny.get_bone_transforms(body.anny_deltas(rest.bone_poses.new_zeros(1, body.pose_dim), len(rest.bone_poses)), rest.bone_poses)

    def rest(self, shape: torch.Tensor) -> AnnyRest | RestState:
        """The shape part for `posed`: anny's bones (`AnnyRest`) while `shape` is being
        differentiated, whose posing costs more but whose derivation is cheaper to differentiate;
        else the 20-joint chain (`RestState`), which costs a zero-pose pass of anny's bones once and
        poses ~3x faster. Both are exact."""
        rest = self.anny_rest(shape)
        if shape.requires_grad and torch.is_grad_enabled():
            return rest
        body = self.model
        T0, W0 = self.zero_pose(rest)
        A = body._anny_from_body  # row vectors: x_body = x_anny @ A
        J = len(self.parents)
        # Each vertex's bones at the zero pose: w_vb T0_b r_v, summed per owning joint.
        Tv = T0[:, self.vertex_bones, :3]  # [B, N, I, 3, 4]
        skinned = (Tv[..., :3] * rest.vertices[:, :, None, None, :]).sum(-1) + Tv[..., 3]  # [B, N, I, 3]
        vertices = _per_owner(self.vertex_bone_weights[..., None] * skinned, self.owner[self.vertex_bones], J) @ A
        keypoints = _per_owner(_pushed(T0, rest.moments, self.bone_sums), self.owner[None].expand_as(self.bone_sums), J) @ A
        return RestState(W0[:, body._joint_bones, :3, 3] @ A, vertices, keypoints)

    def posed(self, rest: AnnyRest | RestState, params: BodyParams) -> BodyOutput:
        body = self.model
        A = body._anny_from_body  # row vectors: x_body = x_anny @ A
        if isinstance(rest, AnnyRest):
            B = max(params.pose.shape[0], rest.bone_poses.shape[0])
            T, bone_poses = body.anny.get_bone_transforms(body.anny_deltas(params.pose, B), rest.bone_poses)  # [B, 104, 4, 4]
            blend = (self.bone_weights @ T[:, :, :3, :].reshape(B, -1, 12)).reshape(B, -1, 3, 4)  # [B, N, 3, 4]
            # Elementwise, not `@`: a batch of N 3x3 products is several times slower as a bmm here.
            vertices = (blend[..., :3] * rest.vertices[:, :, None, :]).sum(-1) + blend[..., 3]
            R, t = T[..., :3, :3], T[..., :3, 3]
            moments = rest.moments.expand(B, -1, -1, -1)
            keypoints = torch.einsum("bjxd,bkjd->bkx", R, moments) + torch.einsum("kj,bjx->bkx", self.bone_sums, t)
            joints = bone_poses[:, body._joint_bones, :3, 3] @ A
            return place(BodyOutput(vertices @ A, joints, keypoints @ A), params)
        R, t = chain(params.pose, rest.heads, self.parents, self.levels)  # [B, 20, 3, 3], [B, 20, 3]
        Rf = R.permute(0, 2, 1, 3).flatten(2)  # [B, 3, 20 * 3]: one product per point set
        vertices = rest.vertices.flatten(-2) @ Rf.transpose(1, 2) + self.vertex_weights @ t
        keypoints = rest.keypoints.flatten(-2) @ Rf.transpose(1, 2) + self.keypoint_weights @ t
        joints = (R @ rest.heads[..., None])[..., 0] + t  # V_c q_c: each joint's head follows its own bone
        return place(BodyOutput(vertices, joints, keypoints), params)


def chain(pose: torch.Tensor, heads: torch.Tensor, parents: torch.Tensor, levels: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """`V_c = [R_c | t_c]` of anny's articulated joints for `pose [B, 3 (J - 1)]` (axis-angles,
    body frame) and zero-pose heads `heads [J, 3]` or `[B, J, 3]`: `V_c = V_p [D_c | q_c - D_c q_c]`,
    the pelvis fixed (`AnnyKinematics`). Returns `R [B, J, 3, 3]`, `t [B, J, 3]`, differentiable in
    both inputs (the in-place copies' backward reads neither `R` nor `t`)."""
    B, J = pose.shape[0], heads.shape[-2]
    D = rotvec_to_rotmat(pose.reshape(B, J - 1, 3))
    q = heads[..., 1:, :].to(pose.dtype)
    offset = q - (D @ q[..., None])[..., 0]  # each joint turns about its own head
    R = pose.new_zeros(B, J, 3, 3)
    t = pose.new_zeros(B, J, 3)
    R[:, 0] = torch.eye(3, dtype=pose.dtype)
    for level in levels[1:]:  # one batched step per depth level, parents already done
        parent = parents.index_select(0, level)
        Rp = R.index_select(1, parent)
        R = R.index_copy(1, level, Rp @ D.index_select(1, level - 1))
        t = t.index_copy(1, level, (Rp @ offset.index_select(-2, level - 1)[..., None])[..., 0] + t.index_select(1, parent))
    return R, t


def _owners(bone_parents: list[int], joint_bones: list[int]) -> list[int]:
    """For each bone, the index in `joint_bones` of itself or its nearest ancestor in it."""
    owner = []
    for b in range(len(bone_parents)):
        while b not in joint_bones:
            b = int(bone_parents[b])
        owner.append(joint_bones.index(b))
    return owner


def _per_owner(values: torch.Tensor, owner: torch.Tensor, joints: int) -> torch.Tensor:
    """`[..., R, I, D]` values summed over I into `[..., R, joints, D]` by `owner [R, I]`."""
    index = owner.expand(values.shape[:-1]).unsqueeze(-1).expand_as(values)
    return values.new_zeros(*values.shape[:-2], joints, values.shape[-1]).scatter_add(-2, index, values)


def _pushed(T: torch.Tensor, moments: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """`[B, K, 104, 3]` per-bone keypoint moments through the bones' transforms `T [B, 104, 4, 4]`:
    `R_b m_kb + s_kb t_b` (`moments [B, K, 104, 3]`, `sums [K, 104]`)."""
    return torch.einsum("bjxd,bkjd->bkjx", T[..., :3, :3], moments) + sums[..., None] * T[:, None, :, :3, 3]


def _levels(parents: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Joint indices grouped by depth in the tree `parents` (root -1 first), the root's level first."""
    depth = [0] * len(parents)
    for c in range(1, len(parents)):
        depth[c] = depth[parents[c]] + 1
    return tuple(torch.tensor([c for c in range(len(parents)) if depth[c] == d]) for d in range(max(depth) + 1))


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


@dataclass(frozen=True)
class AnnyKinematics:
    """anny with its shape frozen, reduced to the 20 articulated joints: the per-frame tracker's model.

    anny poses each articulated bone c by a rotation `D_c` about its head `q_c` in the zero pose
    (its "local-ref" deltas), composed with the parent's: `V_c = V_p [D_c | q_c - D_c q_c]`, and
    every other bone (twists, fingers, toes, eyes) follows its nearest articulated ancestor
    unchanged. So with the shape fixed, the whole body is a 20-joint chain whose keypoints are
    `sum_c R_c M_kc + S_kc t_c` (`V_c = [R_c | t_c]`, moments from `ReducedAnny`'s per-bone moments
    pushed through the zero pose) and whose 104 bone poses are `V_owner(b) W0_b`: exact, and a few
    hundred small tensor ops for a whole batch, so a Jacobian by batched finite differences is cheap.
    All tensors are in the body frame (`hgm_core.body.base`), float64.

    Attributes:
        heads: `[20, 3]` zero-pose heads `q_c` of `AnnyBody.joint_names` (pelvis first).
        parents: `[20]` parent joint index (-1 for the pelvis).
        levels: joint indices grouped by depth, the pelvis's level first.
        moments: `[K, 20, 3]` `M_kc`; weights: `[K, 20]` `S_kc`.
        zero_bones: `[104, 4, 4]` zero-pose bone poses `W0_b`; owner: `[104]` articulated ancestor joint.
    """

    heads: torch.Tensor
    parents: torch.Tensor
    levels: tuple[torch.Tensor, ...]
    moments: torch.Tensor
    weights: torch.Tensor
    zero_bones: torch.Tensor
    owner: torch.Tensor

    @classmethod
    def build(cls, reduced: ReducedAnny, shape: torch.Tensor) -> "AnnyKinematics":
        """The chain of `reduced`'s body for `shape [1, S]` (a few ms; once per keyframe)."""
        body = reduced.model
        with torch.no_grad():
            rest = reduced.anny_rest(shape.detach().float())
            T0, W0 = reduced.zero_pose(rest)  # [1, 104, 4, 4] anny frame
        T0, W0 = T0.double(), W0[0].double()
        A = body._anny_from_body.double()  # row vectors: x_body = x_anny @ A
        B4 = body._body_from_anny_4x4.double()
        s = reduced.bone_sums.double()  # [K, 104]
        owner = reduced.owner[None].expand_as(s)
        J = len(reduced.parents)
        moments = _per_owner(_pushed(T0, rest.moments.double(), s), owner, J)[0] @ A
        weights = _per_owner(s[..., None], owner, J)[..., 0]
        heads = W0[body._joint_bones, :3, 3] @ A
        return cls(heads, reduced.parents, reduced.levels, moments, weights, B4 @ W0, reduced.owner)

    def chain(self, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`V_c = [R_c | t_c]` for `pose [B, 57]` (axis-angles, body frame): `R [B, 20, 3, 3]`, `t [B, 20, 3]`."""
        return chain(pose, self.heads, self.parents, self.levels)

    def placement(self, rotation: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """`g [B, 3]` of `place`'s map `X -> G X + g` (`G = rotation [B, 3, 3]`): the pelvis lands on `transl`."""
        return transl - (rotation @ self.heads[0][:, None])[..., 0]

    def points(self, rotation: torch.Tensor, transl: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joints `[B, 20, 3]` and keypoints `[B, K, 3]` in the output frame, as `AnnyBody(params)` gives
        them for `global_orient = rotvec(rotation [B, 3, 3])`, `transl [B, 3]`, `pose [B, 57]`."""
        R, t = self.chain(pose)
        parent = self.parents.clamp(min=0)
        joints = (R[:, parent] @ self.heads[:, :, None])[..., 0] + t[:, parent]  # V_p q_c; the pelvis: q_0
        keypoints = torch.einsum("bcxd,kcd->bkx", R, self.moments) + torch.einsum("kc,bcx->bkx", self.weights, t)
        g = self.placement(rotation, transl)
        move = lambda x: x @ rotation.transpose(1, 2) + g[:, None]  # noqa: E731
        return move(joints), move(keypoints)

    def bone_transforms(self, rotation: torch.Tensor, transl: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """`[B, 104, 4, 4]` placed bone poses, as `AnnyBody.bone_transforms(params)` gives them (skinning input)."""
        R, t = self.chain(pose)
        G, g = rotation, self.placement(rotation, transl)
        V = torch.zeros(pose.shape[0], len(self.heads), 4, 4, dtype=pose.dtype)
        V[:, :, :3, :3] = G[:, None] @ R
        V[:, :, :3, 3] = t @ G.transpose(1, 2) + g[:, None]
        V[:, :, 3, 3] = 1
        return V[:, self.owner] @ self.zero_bones.to(pose.dtype)


def rotvec_to_rotmat(rotvec: torch.Tensor) -> torch.Tensor:
    """`[..., 3, 3]` rotations of axis-angles `[..., 3]` (Rodrigues; a few fused ops, which at the
    tracker's small sizes is several times faster than the general-purpose `roma` conversion)."""
    theta2 = rotvec.square().sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = theta2 < 1e-8
    theta = theta2.clamp(min=1e-8).sqrt()
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta.square())
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    return torch.eye(3, dtype=rotvec.dtype) + a * K + b * (K @ K)
