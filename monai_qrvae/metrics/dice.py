"""Dice metrics: the best Dice over all thresholds ("[Dice]") and the Dice of a binary mask."""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric

from monai_qrvae.anomaly.utils import as_tensor, broadcast_mask
from monai_qrvae.metrics.utils import _masked_voxels, _MaskedVoxelMetric, _PerItemMaskMixin, _scores_labels_mask


def compute_best_dice(
    scores: Any, labels: Any, mask: Any = None, empty_score: float = float("nan")
) -> tuple[float, float]:
    """The best Dice over all thresholds of a score map, and the threshold that gives it.

    Exact: every distinct score inside the mask is a candidate threshold (``pred = score >= t``). Voxels are
    sorted once by decreasing score; cumulative sums give the true positives and the predicted positives at every
    cut between distinct values, so the cost is one sort, with no loop over thresholds. Ties in Dice go to the
    highest threshold. This is the "[Dice]" of the literature: an upper bound, because it looks at the labels.

    Args:
        scores: anomaly scores, e.g. ``(B, 1, spatial...)``; all voxels are pooled.
        labels: ground-truth lesion mask (non-zero = lesion), broadcastable to ``scores``.
        mask: region evaluated (non-zero = inside, e.g. the brain mask), broadcastable to ``scores``; ``None``
            evaluates every voxel.
        empty_score: Dice returned when there is no lesion voxel inside the mask (the best prediction is then the
            empty one, at threshold ``+inf``).

    Returns:
        ``(dice, threshold)`` as Python floats; ``(empty_score, inf)`` without lesion voxels.

    Raises:
        ValueError: for mismatched shapes or NaN scores inside the mask.
    """
    s, y = _masked_voxels(scores, labels, mask)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float(empty_score), math.inf
    s_sorted, order = torch.sort(s, descending=True, stable=True)
    tp = torch.cumsum(y[order].to(torch.float64), dim=0)
    predicted = torch.arange(1, s.numel() + 1, dtype=torch.float64, device=s.device)
    # a cut is valid only after the last voxel of a run of equal scores (all of them pass ``score >= t``)
    last_of_run = torch.ones_like(s_sorted, dtype=torch.bool)
    last_of_run[:-1] = s_sorted[1:] != s_sorted[:-1]
    dice = torch.where(last_of_run, 2.0 * tp / (predicted + n_pos), torch.full_like(tp, -1.0))
    best = int(torch.argmax(dice))  # first maximum = highest threshold
    return float(dice[best]), float(s_sorted[best])


def compute_dice_score(pred: Any, labels: Any, mask: Any = None, empty_score: float = float("nan")) -> float:
    """Dice of a binary prediction against the labels, over the voxels inside the mask (all voxels pooled).

    Args:
        pred: binary prediction (non-zero = lesion), e.g. a Benjamini-Hochberg mask ``(B, 1, spatial...)``.
        labels: ground-truth lesion mask, broadcastable to ``pred``.
        mask: region evaluated, broadcastable to ``pred``; ``None`` evaluates every voxel.
        empty_score: value when both the prediction and the labels are empty inside the mask (NaN by default:
            nothing to detect, nothing detected; pass ``1.0`` to count it as a perfect score).

    Returns:
        ``2 |P & L| / (|P| + |L|)`` as a Python float.

    Raises:
        ValueError: for mismatched shapes.
    """
    p = as_tensor(pred)
    p, y, m = _scores_labels_mask(p != 0 if p.dtype != torch.bool else p, labels, mask)
    p, y = p.bool() & m, y & m
    denominator = int(p.sum()) + int(y.sum())
    if denominator == 0:
        return float(empty_score)
    return 2.0 * int((p & y).sum()) / denominator


def _dice_from_counts(counts: torch.Tensor, empty_score: float) -> torch.Tensor:
    """Dice ``2 I / (P + L)`` from ``(..., 3)`` counts ``[I, P, L]``; ``empty_score`` where ``P + L = 0``."""
    denominator = counts[..., 1] + counts[..., 2]
    dice = 2.0 * counts[..., 0] / denominator.clamp_min(1.0)
    return torch.where(denominator > 0, dice, torch.full_like(dice, empty_score))


class BestDiceMetric(_MaskedVoxelMetric):
    """Best Dice over all thresholds, pooled over every iteration (see :func:`compute_best_dice`).

    ``metric(y_pred=scores, y=labels, mask=brain_mask)`` on each batch, then ``aggregate()``. This is the "[Dice]"
    of the literature: an upper bound, since the threshold is chosen on the labels. ``get_buffer()`` gives each
    item's Dice at the pooled best threshold (the literature's per-volume "[Dice]").

    Args:
        empty_score: Dice when there is no lesion and nothing is predicted (NaN by default).
    """

    def __init__(self, empty_score: float = float("nan")) -> None:
        super().__init__()
        self.empty_score = empty_score

    def aggregate(self, return_threshold: bool = False) -> float | tuple[float, float]:  # type: ignore[override]
        """The pooled best Dice (a float, what Ignite handlers record), or ``(dice, threshold)``.

        Args:
            return_threshold: also return the threshold (``pred = score >= threshold``).
        """
        scores, labels, _ = self._voxels()
        dice, threshold = compute_best_dice(scores, labels, None, self.empty_score)
        return (dice, threshold) if return_threshold else dice

    def _per_item(self, scores: torch.Tensor, labels: torch.Tensor, lengths: list[int]) -> list[float]:
        _, threshold = compute_best_dice(scores, labels, None, self.empty_score)
        return [
            compute_dice_score(s >= threshold, y, None, self.empty_score)
            for s, y in zip(torch.split(scores, lengths), torch.split(labels, lengths))
        ]


class DiceScoreMetric(_PerItemMaskMixin, CumulativeIterationMetric):
    """Dice of binary lesion masks (e.g. the label-free FDR mask), pooled over every iteration.

    ``metric(y_pred=pred_mask, y=labels, mask=brain_mask)`` on each batch; only per-item counts (intersection,
    predicted, lesion voxels inside the mask) are accumulated, so ``aggregate()`` is the pooled Dice
    ``2 sum(I) / (sum(P) + sum(L))`` (see :func:`compute_dice_score`) and ``get_buffer()`` each item's Dice ``(N, 1)``.

    Args:
        empty_score: Dice when both prediction and labels are empty (NaN by default).
    """

    def __init__(self, empty_score: float = float("nan")) -> None:
        super().__init__()
        self.empty_score = empty_score

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: Any = None
    ) -> torch.Tensor:
        """Per-item counts ``(B, 3)``: intersection, predicted and lesion voxels inside the mask."""
        if y is None:
            raise ValueError("y (the lesion labels) is required, got None.")
        p = as_tensor(y_pred)
        if p.ndim < 2:
            raise ValueError(f"y_pred must be batch-first (B, C, spatial...), got shape {tuple(p.shape)}.")
        p = p if p.dtype == torch.bool else p != 0
        labels = broadcast_mask(y, p.shape, p.device, name="labels")
        m = (
            torch.ones(p.shape, dtype=torch.bool, device=p.device)
            if mask is None
            else broadcast_mask(as_tensor(mask).detach(), p.shape, p.device)
        )
        p, labels = (p & m).flatten(1), (labels & m).flatten(1)
        return torch.stack([(p & labels).sum(1), p.sum(1), labels.sum(1)], dim=1).to(torch.float64)

    def aggregate(self) -> float:  # type: ignore[override]
        """The Dice of all accumulated voxels."""
        counts = super().get_buffer()
        if counts is None:
            raise ValueError(f"{self.__class__.__name__} has no data: call it on at least one batch first.")
        return float(_dice_from_counts(counts.sum(0), self.empty_score))

    def get_buffer(self) -> torch.Tensor | None:  # type: ignore[override]
        """Per-item Dice ``(N, 1)`` (float64), or ``None`` before the first call."""
        counts = super().get_buffer()
        return None if counts is None else _dice_from_counts(counts, self.empty_score).reshape(-1, 1)
