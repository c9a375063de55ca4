"""Metric handlers around the masked metrics of :mod:`monai_qrvae.metrics`.

They wrap the metrics as ``monai.handlers.ROCAUC`` wraps ``ROCAUCMetric``, and read the score (or lesion mask),
the label and the brain mask from each decollated output item; the brain mask is the key ``roi`` that
:class:`~monai_qrvae.handlers.AnomalyMapHandler` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.handlers import IgniteMetricHandler
from monai.handlers.utils import from_engine

from monai_qrvae.metrics import BestDiceMetric, DiceScoreMetric, MaskedAveragePrecisionMetric, MaskedROCAUCMetric

__all__ = ["BestDice", "LesionDice", "MaskedAveragePrecision", "MaskedROCAUC"]


def _from_items(keys: Sequence[str]) -> Callable:
    """``from_engine(keys)`` that also takes one output item (an evaluator run with ``decollate=False``)."""
    pick = from_engine(keys)
    return lambda output: pick(output if isinstance(output, list) else [output])


class _MaskedMetricHandler(IgniteMetricHandler):
    """``IgniteMetricHandler`` around a masked metric: ``output_transform`` returns ``(y_pred, y, mask)``.

    By default it reads ``score_key``, ``label_key`` and ``mask_key`` from each decollated output item.
    """

    metric_class: type = BestDiceMetric
    save_details_default: bool = True

    def __init__(
        self,
        score_key: str = "z",
        label_key: str = "label",
        mask_key: str | None = "roi",
        output_transform: Callable | None = None,
        save_details: bool | None = None,
    ) -> None:
        keys = [score_key, label_key] + ([] if mask_key is None else [mask_key])
        super().__init__(
            metric_fn=self.metric_class(),
            output_transform=output_transform or _from_items(keys),
            save_details=self.save_details_default if save_details is None else save_details,
        )
        self._skip_unrolling = True  # the transform returns lists of whole items, not a batch to unroll

    def update(self, output: Sequence[Any]) -> None:
        if len(output) == 3:
            y_pred, y, mask = output
            self.metric_fn(y_pred, y, mask=mask)
        else:
            super().update(output)


class BestDice(_MaskedMetricHandler):
    """Best Dice over all thresholds of a score map, pooled over the data (an upper bound: it uses the labels)."""

    metric_class = BestDiceMetric


class LesionDice(_MaskedMetricHandler):
    """Dice of the label-free lesion mask (e.g. the FDR mask), pooled over the data.

    Args:
        lesion_key: key of the binary lesion mask in each output item.
        args, kwargs: ``label_key``, ``mask_key``, ``output_transform`` and ``save_details`` as in :class:`BestDice`.
    """

    metric_class = DiceScoreMetric

    def __init__(self, lesion_key: str = "lesion", *args: Any, **kwargs: Any) -> None:
        super().__init__(lesion_key, *args, **kwargs)


class MaskedROCAUC(_MaskedMetricHandler):
    """Voxel-wise AUROC of a score map inside the brain mask, pooled over the data."""

    metric_class = MaskedROCAUCMetric
    save_details_default = False


class MaskedAveragePrecision(_MaskedMetricHandler):
    """Voxel-wise AUPRC (average precision) of a score map inside the brain mask, pooled over the data."""

    metric_class = MaskedAveragePrecisionMetric
    save_details_default = False
