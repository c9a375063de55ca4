"""Voxel-wise AUROC inside a mask."""

from __future__ import annotations

from typing import Any

import torch
from monai.metrics import compute_roc_auc

from monai_qrvae.metrics.utils import _binary_auc, _MaskedVoxelMetric


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
