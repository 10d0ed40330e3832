"""Body-fit accuracy: MPJPE and Procrustes-aligned MPJPE (the paper's body-fit metrics)."""

from __future__ import annotations

import numpy as np


class MetricError(ValueError):
    """Metric inputs of mismatched shapes (or, for meshes, empty)."""


def _joint_sets(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise MetricError(f"expected two [J, 3] joint sets, got {pred.shape} and {gt.shape}")
    return pred, gt


def mpjpe(pred: np.ndarray, gt: np.ndarray, root: np.ndarray | None = None, *, scale: float = 1.0) -> float:
    """Mean per-joint position error of `pred`, `gt` `[J, 3]`, times `scale` (1000 turns metres into mm).

    Args:
        root: `[J]` bool/weights of the joints whose mean is the root; both sets are centred on their
            own root first (the usual root-aligned MPJPE). None compares positions as they are.
    Raises:
        MetricError: the joint sets are not both `[J, 3]`.
    """
    pred, gt = _joint_sets(pred, gt)
    if root is not None:
        w = np.asarray(root, np.float64)[:, None]
        pred = pred - (w * pred).sum(0) / w.sum()
        gt = gt - (w * gt).sum(0) / w.sum()
    return float(scale * np.linalg.norm(pred - gt, axis=-1).mean())


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """`pred [J, 3]` after the similarity transform (scale, rotation, translation) that best fits `gt`."""
    mp, mg = pred.mean(0), gt.mean(0)
    p, g = pred - mp, gt - mg
    U, S, Vt = np.linalg.svd(p.T @ g)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = U @ D @ Vt  # applied as p @ R
    s = (S * np.diag(D)).sum() / max((p**2).sum(), 1e-30)
    return s * p @ R + mg


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray, *, scale: float = 1.0) -> float:
    """`mpjpe` after the similarity transform (rotation, translation, scale) that best maps `pred` onto `gt`."""
    pred, gt = _joint_sets(pred, gt)
    return mpjpe(procrustes_align(pred, gt), gt, scale=scale)
