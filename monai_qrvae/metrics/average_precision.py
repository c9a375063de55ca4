"""Voxel-wise average precision (AUPRC) inside a mask."""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics import compute_average_precision

from monai_qrvae.metrics.utils import _binary_auc, _MaskedVoxelMetric


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
