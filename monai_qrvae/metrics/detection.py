"""Every voxel-wise detection metric of a score map at once, pooled or per volume."""

from __future__ import annotations

from typing import Any

from monai_qrvae.metrics.average_precision import compute_masked_average_precision
from monai_qrvae.metrics.dice import compute_best_dice, compute_dice_score
from monai_qrvae.metrics.rocauc import compute_masked_roc_auc
from monai_qrvae.metrics.utils import _scores_labels_mask


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
