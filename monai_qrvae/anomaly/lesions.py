"""Lesion-level inference: candidate lesions of a score map, their cluster statistics, conformal p-values and BH.

A candidate lesion is a connected component (26-connectivity by default) of the voxels above a primary threshold;
its statistic is its ``extent`` (mL), ``mass`` (sum of ``(score - threshold) * voxel mL``) or ``peak`` (largest
score). Compared with the same statistic of the clusters of healthy calibration volumes, each candidate gets the
conformal p-value ``(1 + #{healthy >= s}) / (N + 1)``; Benjamini-Hochberg over the candidates of a volume controls
the share of reported lesions that are false. Pure numpy / scipy; no engine or file handling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.utils import convert_to_tensor
from scipy import ndimage

__all__ = [
    "LESION_STATISTICS",
    "voxel_volume_ml",
    "lesion_candidates",
    "cluster_statistics",
    "lesion_p_values",
    "bh_q_values",
    "bh_reject",
]

#: the cluster statistics of a candidate lesion.
LESION_STATISTICS = ("extent", "mass", "peak")


def _array(x: Any) -> np.ndarray:
    """A numpy view of a tensor, MetaTensor or array (metadata dropped)."""
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(convert_to_tensor(x, track_meta=False).detach().cpu())


def voxel_volume_ml(affine: Any) -> float:
    """Volume of one voxel in mL: ``|det(affine[:3, :3])| / 1000`` of a voxel-to-world affine in mm."""
    a = _array(affine).astype(np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4 x 4 affine, got shape {a.shape}.")
    return abs(float(np.linalg.det(a[:3, :3]))) / 1000.0


def lesion_candidates(
    score: Any, threshold: float, mask: Any = None, connectivity: int | None = None
) -> tuple[np.ndarray, int]:
    """Label the connected components of ``score > threshold`` inside ``mask``.

    Args:
        score: score map, any number of spatial axes, no channel axis.
        threshold: the primary (cluster-forming) threshold; voxels at exactly ``threshold`` are not above it.
        mask: brain mask of ``score``'s shape (``None``: every voxel).
        connectivity: ``scipy.ndimage.generate_binary_structure`` connectivity (``None``: full, 26 in 3D).

    Returns:
        ``(labels, n)``: int32 labels ``1..n`` (0 = background) and the number of candidates.
    """
    s = _array(score).astype(np.float64)
    above = s > threshold
    if mask is not None:
        m = _array(mask) != 0
        if m.shape != s.shape:
            raise ValueError(f"mask shape {m.shape} does not match the score {s.shape}.")
        above &= m
    conn = s.ndim if connectivity is None else int(connectivity)
    labels, n = ndimage.label(above, structure=ndimage.generate_binary_structure(s.ndim, conn))
    return labels.astype(np.int32), int(n)


def cluster_statistics(
    score: Any, labels: np.ndarray, n: int, threshold: float, voxel_ml: float = 1.0
) -> dict[str, np.ndarray]:
    """The statistics of each labelled cluster: ``extent`` (mL), ``mass`` (mL above the threshold) and ``peak``.

    Args:
        score: the score map the clusters were formed on.
        labels: ``1..n`` cluster labels of ``score``'s shape (:func:`lesion_candidates`).
        n: the number of clusters.
        threshold: the primary threshold (``mass`` sums ``score - threshold``).
        voxel_ml: volume of one voxel in mL (:func:`voxel_volume_ml`).

    Returns:
        ``{"voxels", "extent", "mass", "peak"}``, float64 arrays of length ``n`` (cluster ``i`` at index ``i - 1``).
    """
    s = _array(score).astype(np.float64)
    lab = np.asarray(labels)
    if lab.shape != s.shape:
        raise ValueError(f"labels shape {lab.shape} does not match the score {s.shape}.")
    if n == 0:
        empty = np.zeros(0, dtype=np.float64)
        return {"voxels": empty, "extent": empty.copy(), "mass": empty.copy(), "peak": empty.copy()}
    inside = lab > 0
    ids, values = lab[inside], s[inside]
    voxels = np.bincount(ids, minlength=n + 1)[1:].astype(np.float64)
    excess = np.bincount(ids, weights=values - threshold, minlength=n + 1)[1:]
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, ids, values)
    return {"voxels": voxels, "extent": voxels * voxel_ml, "mass": excess * voxel_ml, "peak": peak[1:]}


def lesion_p_values(statistics: Any, healthy: Any) -> np.ndarray:
    """Conformal p-values ``(1 + #{healthy >= s}) / (N + 1)`` of candidate statistics against ``N`` healthy ones.

    Args:
        statistics: the candidates' statistic (1-D).
        healthy: the same statistic of every healthy calibration cluster (1-D, any order).

    Returns:
        float64 p-values in ``[1 / (N + 1), 1]``.
    """
    s = np.asarray(statistics, dtype=np.float64).ravel()
    h = np.sort(np.asarray(healthy, dtype=np.float64).ravel())
    at_least = h.size - np.searchsorted(h, s, side="left")
    return (1.0 + at_least) / (h.size + 1.0)


def bh_q_values(p: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) ``min_{k >= rank} p_(k) m / k``, capped at 1."""
    p = np.asarray(p, dtype=np.float64).ravel()
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def bh_reject(p: Any, alpha: float) -> np.ndarray:
    """Benjamini-Hochberg step-up rejections at ``alpha``: ``q <= alpha``, as scipy's ``false_discovery_control``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    return bh_q_values(p) <= alpha
