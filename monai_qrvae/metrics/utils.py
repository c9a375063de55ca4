"""Shared pieces of the metrics: input normalisation, masked voxels and the per-item cumulative metric bases."""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import evenly_divisible_all_gather

from monai_qrvae.anomaly.utils import as_tensor, broadcast_mask


def _scores_labels_mask(scores: Any, labels: Any, mask: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores (float), labels (bool) and mask (bool), all of the scores' shape.

    Raises:
        ValueError: when labels or mask do not broadcast to the scores' shape.
    """
    s = as_tensor(scores)
    s = s.to(torch.float64 if s.dtype == torch.float64 else torch.float32)
    y = broadcast_mask(labels, s.shape, s.device, name="labels")
    m = (
        torch.ones(s.shape, dtype=torch.bool, device=s.device)
        if mask is None
        else broadcast_mask(mask, s.shape, s.device)
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


def _binary_auc(fn: Any, scores: Any, labels: Any, mask: Any) -> float:
    s, y = _masked_voxels(scores, labels, mask)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.numel():
        return float("nan")
    # float64 labels make MONAI's accumulation run in float64 (float32 loses precision over millions of voxels)
    return float(fn(y_pred=s, y=y.to(torch.float64)))


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
                as_tensor(p).detach().unsqueeze(0),
                None if t is None else as_tensor(t).detach().unsqueeze(0),
                mask=None if m is None else as_tensor(m).detach().unsqueeze(0),
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
        s, labels, m = _scores_labels_mask(y_pred, y, None if mask is None else as_tensor(mask).detach())
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
