"""Conformal p-values against healthy calibration scores, pooled or per stratum (bins of slice position).

``p = (1 + #{calibration scores >= s}) / (n + 1)`` (Bates et al. 2023); also the thinning of sorted calibration
scores to a fixed number of evenly spaced order statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import convert_to_tensor

__all__ = ["conformal_p_values", "slice_strata", "stratified_p_values", "subsample_sorted"]


def _flat(x: Any) -> torch.Tensor:
    """A plain float tensor view of ``x`` (numpy, MetaTensor or tensor), metadata dropped."""
    t = convert_to_tensor(x, track_meta=False)
    return t if t.is_floating_point() else t.float()


def conformal_p_values(scores: Any, sorted_calibration: torch.Tensor) -> torch.Tensor:
    """Conformal p-values ``(1 + #{c >= s}) / (n + 1)`` of ``scores`` against ``n`` calibration scores ``c``.

    Vectorised with ``torch.searchsorted``; NaN scores get ``p = 1``.

    Args:
        scores: scores of any shape (tensor, MetaTensor or numpy array).
        sorted_calibration: the ``n`` calibration scores, 1-D, sorted ascending (NaN-free).

    Returns:
        p-values of ``scores``' shape in ``[1 / (n + 1), 1]``, float32 (float64 for float64 scores).

    Raises:
        ValueError: when ``sorted_calibration`` is not 1-D.
    """
    s = _flat(scores)
    cal = torch.as_tensor(sorted_calibration).to(s.device)
    if cal.ndim != 1:
        raise ValueError(f"sorted_calibration must be 1-D, got shape {tuple(cal.shape)}.")
    n = cal.numel()
    work_dtype = torch.float64 if torch.float64 in (s.dtype, cal.dtype) else torch.float32
    below = torch.searchsorted(cal.to(work_dtype).contiguous(), s.to(work_dtype).contiguous(), right=False)
    p = (1.0 + (n - below).double()) / (n + 1.0)
    p = torch.where(torch.isnan(s), torch.ones_like(p), p)
    return p.to(torch.float64 if s.dtype == torch.float64 else torch.float32)


def slice_strata(shape: Sequence[int], num_strata: int) -> torch.Tensor:
    """Stratum of every voxel by its slice position: slice ``i`` of ``N`` (last axis) is in ``floor(i K / N)``.

    Args:
        shape: the map's shape; the last axis is the slice axis.
        num_strata: ``K``, the number of bins, ``>= 1``.

    Returns:
        int64 stratum indices of ``shape``.
    """
    if num_strata < 1:
        raise ValueError(f"num_strata must be >= 1, got {num_strata}.")
    n = int(shape[-1])
    ids = torch.div(torch.arange(n) * num_strata, max(n, 1), rounding_mode="floor")
    return ids.expand(tuple(shape)).clone()


def stratified_p_values(
    scores: Any, strata: torch.Tensor, sorted_scores: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Conformal p-values with one calibration set per stratum.

    Args:
        scores: scores of any shape.
        strata: int stratum index of every score (same shape).
        sorted_scores: the calibration scores of all strata, stratum after stratum, each sorted ascending.
        offsets: ``K + 1`` int boundaries: stratum ``k``'s scores are ``sorted_scores[offsets[k]:offsets[k + 1]]``.

    Returns:
        p-values of ``scores``' shape (float32; float64 for float64 scores).

    Raises:
        ValueError: for a shape mismatch, a stratum index out of range or an empty calibration stratum in use.
    """
    s = _flat(scores)
    st = torch.as_tensor(strata).to(s.device)
    if st.shape != s.shape:
        raise ValueError(f"strata shape {tuple(st.shape)} does not match the scores {tuple(s.shape)}.")
    k = len(offsets) - 1
    if st.numel() and (int(st.min()) < 0 or int(st.max()) >= k):
        raise ValueError(f"stratum indices must be in [0, {k}), got [{int(st.min())}, {int(st.max())}].")
    p = torch.ones(s.shape, dtype=torch.float64 if s.dtype == torch.float64 else torch.float32, device=s.device)
    for j in range(k):
        sel = st == j
        if not bool(sel.any()):
            continue
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        if hi <= lo:
            raise ValueError(f"calibration stratum {j} has no score but {int(sel.sum())} voxels fall in it.")
        p[sel] = conformal_p_values(s[sel], sorted_scores[lo:hi]).to(p.dtype)
    return p


def subsample_sorted(sorted_scores: torch.Tensor, max_count: int) -> torch.Tensor:
    """Thin sorted scores to ``max_count`` evenly spaced order statistics (deterministic; unchanged if fewer)."""
    n = sorted_scores.numel()
    if n <= max_count:
        return sorted_scores
    index = torch.div((2 * torch.arange(max_count, dtype=torch.int64) + 1) * n, 2 * max_count, rounding_mode="floor")
    return sorted_scores[index]


def _sorted_strata(
    scores: torch.Tensor, strata: torch.Tensor | None, num_strata: int, max_voxels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the scores within each stratum and thin them to ``max_voxels`` in all (shared out by stratum size)."""
    if strata is None:
        num_strata, strata = 1, torch.zeros_like(scores, dtype=torch.int64)
    n = scores.numel()
    parts, offsets = [], [0]
    for j in range(num_strata):
        part = torch.sort(scores[strata == j]).values
        budget = max(1, int(max_voxels * part.numel() / max(n, 1))) if part.numel() else 0
        part = subsample_sorted(part, budget)
        parts.append(part)
        offsets.append(offsets[-1] + part.numel())
    return torch.cat(parts).float(), torch.tensor(offsets, dtype=torch.int64)
