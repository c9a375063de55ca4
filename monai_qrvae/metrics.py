"""Voxel-wise lesion-detection metrics inside a brain mask, and quantile calibration.

The field scores unsupervised lesion detection voxel-wise inside the (eroded) brain mask, pooled over the test
set and per volume: the best Dice over all thresholds (an upper bound that looks at the test labels, reported as
"[Dice]"), the Dice of a binary mask obtained *without* test labels (e.g. Benjamini-Hochberg FDR), AUROC and
AUPRC. :class:`QuantileCoverageMetric` checks the calibration of predicted quantiles: the fraction of voxels
below the predicted ``tau``-quantile should be close to ``tau``.

Every ``compute_*`` function is pure and pools over all the voxels it is given
(:func:`compute_per_volume_metrics` splits by batch item); the ``CumulativeIterationMetric`` classes only
accumulate what each iteration gives them and call the ``compute_*`` functions, like ``monai.metrics.ROCAUCMetric``:
``aggregate()`` is the value pooled over the whole test set, ``get_buffer()`` the per-volume values ``(N, 1)``
(what ``IgniteMetricHandler(save_details=True)`` stores in ``engine.state.metric_details``). They take
``metric(y_pred, y, mask=...)`` as batch-first tensors or as lists of channel-first items (``mask`` then a list).

Inputs: score maps and labels are channel-first batches, typically ``(B, 1, H, W)`` or ``(B, 1, H, W, D)``;
torch tensors, MetaTensors (metadata is ignored) and numpy arrays are accepted. A label or mask voxel is
"on" when it is non-zero; a mask may have size-1 dimensions that broadcast to the scores' shape.

Conventions:
    - Thresholding: a voxel is predicted positive when ``score >= threshold``.
    - Dice of an empty prediction and an empty label is ``empty_score`` (NaN by default, like MONAI's
      ``DiceMetric(ignore_empty=True)``), so that lesion-free volumes drop out of ``nanmean`` averages.
    - AUROC/AUPRC of voxels that are all lesion or all background (or an empty mask) is NaN, without a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric, compute_average_precision, compute_roc_auc
from monai.utils import evenly_divisible_all_gather

from monai_qrvae.anomaly import _as_tensor, _broadcast_mask, check_quantiles, split_quantiles

__all__ = [
    "compute_best_dice",
    "compute_dice_score",
    "compute_masked_roc_auc",
    "compute_masked_average_precision",
    "compute_quantile_coverage",
    "compute_detection_metrics",
    "compute_per_volume_metrics",
    "BestDiceMetric",
    "DiceScoreMetric",
    "MaskedROCAUCMetric",
    "MaskedAveragePrecisionMetric",
    "QuantileCoverageMetric",
]


def _scores_labels_mask(scores: Any, labels: Any, mask: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores (float), labels (bool) and mask (bool), all of the scores' shape.

    Raises:
        ValueError: when labels or mask do not broadcast to the scores' shape.
    """
    s = _as_tensor(scores)
    s = s.to(torch.float64 if s.dtype == torch.float64 else torch.float32)
    y = _broadcast_mask(labels, s.shape, s.device, name="labels")
    m = (
        torch.ones(s.shape, dtype=torch.bool, device=s.device)
        if mask is None
        else _broadcast_mask(mask, s.shape, s.device)
    )
    return s, y, m


def _masked_voxels(scores: Any, labels: Any, mask: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D scores and bool labels of the voxels inside the mask.

    Raises:
        ValueError: for mismatched shapes or NaN scores inside the mask.
    """
    s, y, m = _scores_labels_mask(scores, labels, mask)
    s, y = s[m], y[m]
    if bool(torch.isnan(s).any()):
        raise ValueError(f"scores inside the mask must not be NaN, got {int(torch.isnan(s).sum())} NaN values.")
    return s, y


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
    p = _as_tensor(pred)
    p, y, m = _scores_labels_mask(p != 0 if p.dtype != torch.bool else p, labels, mask)
    p, y = p.bool() & m, y & m
    denominator = int(p.sum()) + int(y.sum())
    if denominator == 0:
        return float(empty_score)
    return 2.0 * int((p & y).sum()) / denominator


def _binary_auc(fn: Any, scores: Any, labels: Any, mask: Any) -> float:
    s, y = _masked_voxels(scores, labels, mask)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.numel():
        return float("nan")
    # float64 labels make MONAI's accumulation run in float64 (float32 loses precision over millions of voxels)
    return float(fn(y_pred=s, y=y.to(torch.float64)))


def compute_masked_roc_auc(scores: Any, labels: Any, mask: Any = None) -> float:
    """Voxel-wise AUROC inside the mask, by ``monai.metrics.compute_roc_auc`` (all voxels pooled).

    Args:
        scores: anomaly scores, e.g. ``(B, 1, spatial...)``.
        labels: ground-truth lesion mask (non-zero = lesion), broadcastable to ``scores``.
        mask: region evaluated, broadcastable to ``scores``; ``None`` evaluates every voxel.

    Returns:
        The AUROC as a Python float; NaN when the voxels inside the mask are all lesion or all background.

    Raises:
        ValueError: for mismatched shapes or NaN scores inside the mask.
    """
    return _binary_auc(compute_roc_auc, scores, labels, mask)


def compute_masked_average_precision(scores: Any, labels: Any, mask: Any = None) -> float:
    """Voxel-wise average precision (AUPRC) inside the mask, by ``monai.metrics.compute_average_precision``.

    Args:
        scores: anomaly scores, e.g. ``(B, 1, spatial...)``; all voxels are pooled.
        labels: ground-truth lesion mask (non-zero = lesion), broadcastable to ``scores``.
        mask: region evaluated, broadcastable to ``scores``; ``None`` evaluates every voxel.

    Returns:
        The average precision as a Python float; NaN when the voxels inside the mask are all of one class.

    Raises:
        ValueError: for mismatched shapes or NaN scores inside the mask.
    """
    return _binary_auc(compute_average_precision, scores, labels, mask)


def _coverage_counts(
    y_pred: Any, y: Any, quantiles: Sequence[float], mask: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: voxels of ``y`` strictly below each predicted quantile ``(B, Q, C)`` and voxels counted ``(B, C)``."""
    q = check_quantiles(quantiles)
    pred = _as_tensor(y_pred)
    target = _as_tensor(y).to(pred.device)
    groups = split_quantiles(pred, len(q))  # (B, Q, C, spatial...)
    if tuple(target.shape) != (groups.shape[0], *groups.shape[2:]):
        raise ValueError(
            f"y must be (B, C, spatial...) = {(groups.shape[0], *groups.shape[2:])} to match the prediction "
            f"{tuple(pred.shape)} with {len(q)} quantiles, got {tuple(target.shape)}."
        )
    inside = (
        torch.ones(target.shape, dtype=torch.bool, device=target.device)
        if mask is None
        else _broadcast_mask(mask, target.shape, target.device)
    )
    below = (target.unsqueeze(1) < groups) & inside.unsqueeze(1)
    counts = below.flatten(3).sum(-1).to(torch.float64)
    totals = inside.flatten(2).sum(-1).to(torch.float64)
    return counts, totals


def compute_quantile_coverage(
    y_pred: Any, y: Any, quantiles: Sequence[float], mask: Any = None, per_volume: bool = False
) -> torch.Tensor:
    """Empirical coverage of predicted quantiles: the fraction of masked voxels of ``y`` below each quantile.

    For calibrated quantiles the coverage of ``q_tau`` is close to ``tau``.

    Args:
        y_pred: quantile-major prediction ``(B, Q*C, spatial...)``.
        y: target ``(B, C, spatial...)``.
        quantiles: the ``Q`` quantile levels of ``y_pred``.
        mask: voxels counted, broadcastable to ``y`` (e.g. ``(B, 1, spatial...)``); ``None`` counts all.
        per_volume: return one row per batch item instead of pooling the batch.

    Returns:
        float64 tensor ``(Q, C)`` (pooled) or ``(B, Q, C)``; NaN where the mask is empty.

    Raises:
        ValueError: for bad quantiles or mismatched shapes.
    """
    counts, totals = _coverage_counts(y_pred, y, quantiles, mask)
    if not per_volume:
        counts, totals = counts.sum(0), totals.sum(0)
    return counts / totals.unsqueeze(-2)  # 0 / 0 -> NaN for an empty mask


def compute_detection_metrics(
    scores: Any, labels: Any, mask: Any = None, threshold: float | None = None
) -> dict[str, float]:
    """All voxel-wise detection metrics of a score map, pooled over every voxel given.

    Args:
        scores: anomaly scores ``(B, 1, spatial...)``.
        labels: ground-truth lesion mask, broadcastable to ``scores``.
        mask: region evaluated (the brain mask), broadcastable to ``scores``.
        threshold: optional threshold chosen without test labels (``pred = scores >= threshold``).

    Returns:
        ``{"best_dice", "best_threshold", "auroc", "auprc", "lesion_voxels"}`` and ``"dice"`` (at ``threshold``)
        when a threshold is given.
    """
    s, y, m = _scores_labels_mask(scores, labels, mask)
    best_dice, best_threshold = compute_best_dice(s, y, m)
    out = {
        "best_dice": best_dice,
        "best_threshold": best_threshold,
        "auroc": compute_masked_roc_auc(s, y, m),
        "auprc": compute_masked_average_precision(s, y, m),
        "lesion_voxels": float((y & m).sum()),
    }
    if threshold is not None:
        out["dice"] = compute_dice_score(s >= threshold, y, m)
    return out


def compute_per_volume_metrics(
    scores: Any, labels: Any, mask: Any = None, threshold: float | None = None
) -> list[dict[str, float]]:
    """:func:`compute_detection_metrics` for each batch item (volume) separately.

    Pass the pooled best threshold (or an FDR/validation threshold) as ``threshold`` to get the per-volume Dice
    at one common threshold, as the literature reports it; ``"best_dice"`` is each volume's own optimum.

    Args:
        scores: anomaly scores ``(B, 1, spatial...)``.
        labels: ground-truth lesion masks, broadcastable to ``scores``.
        mask: brain masks, broadcastable to ``scores``.
        threshold: optional common threshold for ``"dice"``.

    Returns:
        A list of ``B`` dicts, see :func:`compute_detection_metrics`.
    """
    s, y, m = _scores_labels_mask(scores, labels, mask)
    return [compute_detection_metrics(s[i], y[i], m[i], threshold=threshold) for i in range(s.shape[0])]


def _dice_from_counts(counts: torch.Tensor, empty_score: float) -> torch.Tensor:
    """Dice ``2 I / (P + L)`` from ``(..., 3)`` counts ``[I, P, L]``; ``empty_score`` where ``P + L = 0``."""
    denominator = counts[..., 1] + counts[..., 2]
    dice = 2.0 * counts[..., 0] / denominator.clamp_min(1.0)
    return torch.where(denominator > 0, dice, torch.full_like(dice, empty_score))


class _PerItemMaskMixin:
    """``_compute_list`` that pairs the i-th list item with the i-th mask (MONAI's passes ``mask`` unchanged)."""

    def _compute_list(  # type: ignore[override]
        self, y_pred: Any, y: Any = None, mask: Any = None
    ) -> torch.Tensor | list[torch.Tensor]:
        preds = list(y_pred)
        targets = [None] * len(preds) if y is None else list(y)
        masks = [None] * len(preds) if mask is None else list(mask)
        if not len(preds) == len(targets) == len(masks):
            raise ValueError(
                f"y_pred, y and mask must have one item each per sample, got {len(preds)}, {len(targets)} and "
                f"{len(masks)} items."
            )
        results = [
            self._compute_tensor(  # type: ignore[attr-defined]
                _as_tensor(p).detach().unsqueeze(0),
                None if t is None else _as_tensor(t).detach().unsqueeze(0),
                mask=None if m is None else _as_tensor(m).detach().unsqueeze(0),
            )
            for p, t, m in zip(preds, targets, masks)
        ]
        if isinstance(results[0], torch.Tensor):
            return torch.cat(results, dim=0)
        return [torch.cat(parts, dim=0) for parts in zip(*results)]


class _MaskedVoxelMetric(_PerItemMaskMixin, CumulativeIterationMetric):
    """Accumulates, per item, the scores and labels of the voxels inside the mask (pooled in ``aggregate``).

    Only the masked voxels are kept (float32 score + bool label, about 5 bytes per brain voxel; no subsampling),
    so items of different shapes (e.g. volumes in their native grids) can be pooled. Each call takes
    ``y_pred`` (scores ``(B, 1, spatial...)``), ``y`` (labels) and optionally ``mask``, as batch-first tensors or
    as lists of channel-first items (then ``mask`` is a list too). ``get_buffer()`` returns one value per
    accumulated item ``(N, 1)``, like MONAI's per-image metric buffers, so ``IgniteMetricHandler(save_details=True)``
    and ``MetricsSaver`` record per-volume values.
    """

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked voxels of one batch: ``(scores, labels, lengths)``, the first two 1-D, ``lengths`` ``(B,)``.

        Args:
            y_pred: anomaly scores ``(B, 1, spatial...)``.
            y: lesion labels (non-zero = lesion), broadcastable to ``y_pred``.
            mask: region evaluated, broadcastable to ``y_pred``, or ``None`` for every voxel.
        """
        if y is None:
            raise ValueError("y (the lesion labels) is required, got None.")
        if y_pred.ndim < 2:
            raise ValueError(f"y_pred must be batch-first (B, C, spatial...), got shape {tuple(y_pred.shape)}.")
        s, labels, m = _scores_labels_mask(y_pred, y, None if mask is None else _as_tensor(mask).detach())
        if bool(torch.isnan(s[m]).any()):
            raise ValueError("scores inside the mask must not be NaN.")
        lengths = m.flatten(1).sum(1)
        return s[m], labels[m], lengths

    def extend(self, *data: Any) -> None:
        """Add one batch from ``_compute_tensor``: ``(scores, labels, lengths)``, split into per-item vectors."""
        scores, labels, lengths = data
        sizes = [int(n) for n in lengths]
        for s, y, n in zip(torch.split(scores, sizes), torch.split(labels, sizes), sizes):
            self.append(s, y, torch.tensor([n], dtype=torch.long))

    def _sync(self) -> None:
        """Concatenate the per-item vectors (not stack: their lengths differ) and gather across ranks."""
        if self._synced or self._buffers is None:
            return
        self._synced_tensors = [evenly_divisible_all_gather(torch.cat(b, dim=0), concat=True) for b in self._buffers]
        self._synced = True

    def _voxels(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """All accumulated masked voxels ``(scores, labels)`` and the number of voxels of each item."""
        self._sync()
        if self._synced_tensors is None:
            raise ValueError(f"{self.__class__.__name__} has no data: call it on at least one batch first.")
        scores, labels, lengths = self._synced_tensors
        return scores, labels, [int(n) for n in lengths]

    def _per_item(self, scores: torch.Tensor, labels: torch.Tensor, lengths: list[int]) -> list[float]:
        raise NotImplementedError

    def get_buffer(self) -> torch.Tensor | None:  # type: ignore[override]
        """Per-item values ``(N, 1)`` (float64, NaN where undefined), or ``None`` before the first call."""
        self._sync()
        if self._synced_tensors is None:
            return None
        values = self._per_item(*self._voxels())
        return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)


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


class MaskedROCAUCMetric(_MaskedVoxelMetric):
    """Voxel-wise AUROC inside the mask, pooled over every iteration (see :func:`compute_masked_roc_auc`).

    ``metric(y_pred=scores, y=labels, mask=brain_mask)`` on each batch, then ``aggregate()``; ``get_buffer()``
    gives each item's own AUROC (NaN for lesion-free items).
    """

    def aggregate(self) -> float:  # type: ignore[override]
        """The AUROC of all accumulated masked voxels."""
        scores, labels, _ = self._voxels()
        return compute_masked_roc_auc(scores, labels)

    def _per_item(self, scores: torch.Tensor, labels: torch.Tensor, lengths: list[int]) -> list[float]:
        return [
            compute_masked_roc_auc(s, y) for s, y in zip(torch.split(scores, lengths), torch.split(labels, lengths))
        ]


class MaskedAveragePrecisionMetric(_MaskedVoxelMetric):
    """Voxel-wise average precision (AUPRC) inside the mask, pooled over every iteration.

    See :func:`compute_masked_average_precision`. ``metric(y_pred=scores, y=labels, mask=brain_mask)`` on each
    batch, then ``aggregate()``; ``get_buffer()`` gives each item's own value (NaN for lesion-free items).
    """

    def aggregate(self) -> float:  # type: ignore[override]
        """The average precision of all accumulated masked voxels."""
        scores, labels, _ = self._voxels()
        return compute_masked_average_precision(scores, labels)

    def _per_item(self, scores: torch.Tensor, labels: torch.Tensor, lengths: list[int]) -> list[float]:
        return [
            compute_masked_average_precision(s, y)
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
        p = _as_tensor(y_pred)
        if p.ndim < 2:
            raise ValueError(f"y_pred must be batch-first (B, C, spatial...), got shape {tuple(p.shape)}.")
        p = p if p.dtype == torch.bool else p != 0
        labels = _broadcast_mask(y, p.shape, p.device, name="labels")
        m = (
            torch.ones(p.shape, dtype=torch.bool, device=p.device)
            if mask is None
            else _broadcast_mask(_as_tensor(mask).detach(), p.shape, p.device)
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


class QuantileCoverageMetric(_PerItemMaskMixin, CumulativeIterationMetric):
    """Calibration of predicted quantiles: fraction of masked target voxels below each predicted quantile.

    ``metric(y_pred=quantile_prediction, y=image, mask=brain_mask)`` with the quantile-major
    ``(B, Q*C, spatial...)`` prediction and the ``(B, C, spatial...)`` target; ``aggregate()`` is the pooled
    coverage ``(Q, C)``, which should be close to the quantile levels on healthy data, and ``get_buffer()`` the
    per-item coverage ``(N, Q, C)``. Only per-item counts are accumulated.

    Args:
        quantiles: the quantile levels of the prediction, strictly increasing in (0, 1).
    """

    def __init__(self, quantiles: Sequence[float] = (0.15, 0.5)) -> None:
        super().__init__()
        self.quantiles = check_quantiles(quantiles)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item counts ``(B, Q, C)`` below each quantile and totals ``(B, C)``."""
        if y is None:
            raise ValueError("y (the target image) is required, got None.")
        return _coverage_counts(y_pred, y, self.quantiles, None if mask is None else _as_tensor(mask).detach())

    def _counts(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        buffers = super().get_buffer()
        return None if buffers is None else (buffers[0], buffers[1])

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Coverage ``(Q, C)`` pooled over all accumulated voxels (float64; NaN for a channel with no voxel)."""
        counts = self._counts()
        if counts is None:
            raise ValueError(f"{self.__class__.__name__} has no data: call it on at least one batch first.")
        below, totals = counts
        return below.sum(0) / totals.sum(0).unsqueeze(-2)

    def get_buffer(self) -> torch.Tensor | None:  # type: ignore[override]
        """Per-item coverage ``(N, Q, C)`` (float64), or ``None`` before the first call."""
        counts = self._counts()
        return None if counts is None else counts[0] / counts[1].unsqueeze(-2)
