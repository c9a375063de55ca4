"""Lesion-level inference: candidate lesions of a score map, their cluster statistics, conformal p-values and BH.

A candidate lesion is a connected component (26-connectivity by default) of the voxels above a primary threshold;
its statistic is its ``extent`` (mL), ``mass`` (sum of ``(score - threshold) * voxel mL``) or ``peak`` (largest
score). Compared with the same statistic of the clusters of healthy calibration volumes, each candidate gets the
conformal p-value ``(1 + #{healthy >= s}) / (N + 1)``; Benjamini-Hochberg over the candidates of a volume controls
the share of reported lesions that are false. Beyond the largest healthy statistic the conformal p-value stops at
its floor ``1 / (N + 1)``; there a generalised Pareto distribution fitted to the largest healthy statistics (the
tail approximation of permutation p-values, Winkler et al. 2016, NeuroImage 141) extrapolates it, capped at that
floor. Pure numpy / scipy; no engine or file handling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.utils import convert_to_tensor
from scipy import ndimage, stats

__all__ = [
    "LESION_STATISTICS",
    "voxel_volume_ml",
    "lesion_candidates",
    "cluster_statistics",
    "LesionTail",
    "fit_lesion_tail",
    "lesion_p_values",
    "bh_q_values",
    "bh_reject",
]

#: the cluster statistics of a candidate lesion.
LESION_STATISTICS = ("extent", "mass", "peak")
#: share of the healthy statistics (the largest) the generalised Pareto tail is fitted to, and their fewest number.
TAIL_SHARE = 0.1
TAIL_MIN = 10
#: smallest p-value the fitted tail gives (a bounded tail, shape < 0, reaches 0 at its end point).
TAIL_P_FLOOR = 1e-12


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


@dataclass(frozen=True)
class LesionTail:
    """A generalised Pareto tail fitted to the largest healthy cluster statistics.

    ``P(S > s) = k / n * genpareto.sf(s - threshold, shape, scale=scale)`` for ``s > threshold``.

    Attributes:
        threshold: the largest healthy statistic not in the tail (the exceedances are above it).
        exceedances: ``k``, the number of healthy statistics in the tail.
        n: the number of healthy statistics.
        shape: the generalised Pareto shape (``> 0``: heavy tail; ``< 0``: bounded).
        scale: its scale.
        maximum: the largest healthy statistic (the tail is used beyond it only).
    """

    threshold: float
    exceedances: int
    n: int
    shape: float
    scale: float
    maximum: float

    def sf(self, s: Any) -> np.ndarray:
        """The tail's ``P(S >= s)`` (for ``s`` above ``threshold``), at least :data:`TAIL_P_FLOOR`."""
        x = np.asarray(s, dtype=np.float64) - self.threshold
        p = self.exceedances / self.n * stats.genpareto.sf(x, self.shape, loc=0.0, scale=self.scale)
        return np.maximum(p, TAIL_P_FLOOR)


def fit_lesion_tail(healthy: Any, share: float = TAIL_SHARE, minimum: int = TAIL_MIN) -> LesionTail | None:
    """Fit a generalised Pareto distribution (maximum likelihood, location 0) to the largest healthy statistics.

    Args:
        healthy: the statistic of every healthy calibration cluster (1-D).
        share: share of the statistics in the tail (the largest ``max(minimum, ceil(share * n))``).
        minimum: fewest statistics in the tail.

    Returns:
        The :class:`LesionTail`, or ``None`` when there are fewer than ``2 * minimum`` statistics, ties at the tail
        threshold leave too few exceedances, or the fit does not converge to finite values.
    """
    h = np.sort(np.asarray(healthy, dtype=np.float64).ravel())
    n = h.size
    if n < 2 * minimum:
        return None
    k = max(minimum, int(np.ceil(share * n)))
    threshold = float(h[n - k - 1])
    excess = h[h > threshold] - threshold
    if excess.size < minimum or not np.isfinite(excess).all():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    if not (np.isfinite(shape) and np.isfinite(scale) and scale > 0):
        return None
    return LesionTail(threshold, int(excess.size), int(n), float(shape), float(scale), float(h[-1]))


def lesion_p_values(statistics: Any, healthy: Any, tail: LesionTail | None = None) -> np.ndarray:
    """Conformal p-values ``(1 + #{healthy >= s}) / (N + 1)`` of candidate statistics against ``N`` healthy ones.

    Args:
        statistics: the candidates' statistic (1-D).
        healthy: the same statistic of every healthy calibration cluster (1-D, any order).
        tail: a tail fitted to ``healthy`` (:func:`fit_lesion_tail`); candidates beyond the largest healthy
            statistic then get ``min(1 / (N + 1), tail.sf(s))`` instead of the floor ``1 / (N + 1)``.

    Returns:
        float64 p-values in ``[1 / (N + 1), 1]`` (down to :data:`TAIL_P_FLOOR` beyond the healthy range with a
        tail), non-increasing in the statistic.
    """
    s = np.asarray(statistics, dtype=np.float64).ravel()
    h = np.sort(np.asarray(healthy, dtype=np.float64).ravel())
    at_least = h.size - np.searchsorted(h, s, side="left")
    p = (1.0 + at_least) / (h.size + 1.0)
    if tail is not None and h.size:
        beyond = s > h[-1]
        p[beyond] = np.minimum(p[beyond], tail.sf(s[beyond]))
    return p


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
