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

from monai_qrvae.metrics.average_precision import MaskedAveragePrecisionMetric, compute_masked_average_precision
from monai_qrvae.metrics.coverage import QuantileCoverageMetric, compute_quantile_coverage
from monai_qrvae.metrics.detection import compute_detection_metrics, compute_per_volume_metrics
from monai_qrvae.metrics.dice import BestDiceMetric, DiceScoreMetric, compute_best_dice, compute_dice_score
from monai_qrvae.metrics.rocauc import MaskedROCAUCMetric, compute_masked_roc_auc

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
