"""Body-fit accuracy: MPJPE and Procrustes-aligned MPJPE (the paper's body-fit metrics)."""

from __future__ import annotations

import numpy as np


def mpjpe(pred: np.ndarray, gt: np.ndarray, root: np.ndarray | None = None) -> float:
    """Mean per-joint position error of `pred`, `gt` `[J, 3]` (same units as the inputs).

    Args:
        root: `[J]` bool/weights of the joints whose mean is the root; both sets are centred on their
            own root first (the usual root-aligned MPJPE). None compares positions as they are.
    """
    if root is not None:
        w = np.asarray(root, np.float64)[:, None]
        pred = pred - (w * pred).sum(0) / w.sum()
        gt = gt - (w * gt).sum(0) / w.sum()
    return float(np.linalg.norm(pred - gt, axis=-1).mean())


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """MPJPE after the similarity transform (rotation, translation, scale) that best maps `pred` onto `gt`."""
    p, g = pred - pred.mean(0), gt - gt.mean(0)
    U, S, Vt = np.linalg.svd(p.T @ g)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = U @ D @ Vt  # applied as p @ R
    scale = (S * np.diag(D)).sum() / (p**2).sum()
    return float(np.linalg.norm(scale * p @ R - g, axis=-1).mean())
