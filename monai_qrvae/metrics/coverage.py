"""Calibration of predicted quantiles: the fraction of masked voxels below each predicted quantile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric

from monai_qrvae.anomaly.utils import as_tensor, broadcast_mask, check_quantiles, split_quantiles
from monai_qrvae.metrics.utils import _PerItemMaskMixin


def _coverage_counts(
    y_pred: Any, y: Any, quantiles: Sequence[float], mask: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: voxels of ``y`` strictly below each predicted quantile ``(B, Q, C)`` and voxels counted ``(B, C)``."""
    q = check_quantiles(quantiles)
    pred = as_tensor(y_pred)
    target = as_tensor(y).to(pred.device)
    groups = split_quantiles(pred, len(q))  # (B, Q, C, spatial...)
    if tuple(target.shape) != (groups.shape[0], *groups.shape[2:]):
        raise ValueError(
            f"y must be (B, C, spatial...) = {(groups.shape[0], *groups.shape[2:])} to match the prediction "
            f"{tuple(pred.shape)} with {len(q)} quantiles, got {tuple(target.shape)}."
        )
    inside = (
        torch.ones(target.shape, dtype=torch.bool, device=target.device)
        if mask is None
        else broadcast_mask(mask, target.shape, target.device)
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
        return _coverage_counts(y_pred, y, self.quantiles, None if mask is None else as_tensor(mask).detach())

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
