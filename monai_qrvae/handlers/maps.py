"""Handlers that add anomaly maps and lesion masks to each output item of an evaluator.

Each one is a ``monai.handlers.PostProcessing`` around a dictionary transform of :mod:`monai_qrvae.transforms.anomaly`;
they run at ``MODEL_COMPLETED`` by default, so the metric handlers see ``z``, ``p``, ``roi`` and ``lesion``.
"""

from __future__ import annotations

from typing import Any

from monai.handlers import PostProcessing
from monai.transforms import Compose

from monai_qrvae.transforms import AnomalyMapsd, FDRMaskd, LesionFilterd, label_free_transforms

__all__ = ["AnomalyMapHandler", "FDRHandler", "LesionFilterHandler", "ThresholdHandler"]


class AnomalyMapHandler(PostProcessing):
    """Add the z-map and one-sided p-map of the model's score to each output item (``z``, ``p``, ``roi``):
    :class:`~monai_qrvae.transforms.AnomalyMapsd` at ``event``.

    Args:
        pred_key: key of the ``[mu, sigma, z]`` prediction.
        event: ``"MODEL_COMPLETED"`` (default, before metrics) or ``"ITERATION_COMPLETED"``.
        kwargs: the other arguments of :class:`~monai_qrvae.transforms.AnomalyMapsd` (``mask_key``, ``channel``,
            ``alternative``, ``keep_mu_sigma``, ``median_size``, ``score``, ``contrast_key``...).
    """

    def __init__(self, pred_key: str = "pred", event: str = "MODEL_COMPLETED", **kwargs: Any) -> None:
        super().__init__(AnomalyMapsd(pred_key, **kwargs), event=event)


class FDRHandler(PostProcessing):
    """Add the Benjamini-Hochberg lesion mask (``lesion``) inside the brain: :class:`~monai_qrvae.transforms.FDRMaskd`
    (``mask_key``, ``alpha``, ``per``, ``output_key`` as keyword arguments) at ``event``."""

    def __init__(self, p_key: str = "p", event: str = "MODEL_COMPLETED", **kwargs: Any) -> None:
        super().__init__(FDRMaskd(p_key, **kwargs), event=event)


class ThresholdHandler(PostProcessing):
    """Add the label-free lesion mask (``lesion``) with one of the thresholds of
    :func:`~monai_qrvae.transforms.label_free_transforms`: ``"gaussian"`` (BH on N(0, 1) p-values, as
    :class:`FDRHandler`), ``"conformal"`` (conformal BH; also replaces ``p`` by the conformal p-map), ``"volume"``
    (volume-level threshold), ``"cluster"`` (volume-level cluster size), ``"lesion"`` (BH over candidate lesions)
    or ``"lesion-volume"`` (volume-level threshold of a lesion statistic).

    Args:
        threshold: the threshold kind.
        calibration: a :class:`~monai_qrvae.calibration.Calibration` or the path of ``calibration.pt`` (or of its
            model folder); needed by every kind but ``"gaussian"``.
        alpha: the FDR (BH kinds) or the tolerated fraction of healthy volumes with any detection (volume kinds).
        per: BH family, ``"volume"`` or ``"slice"``.
        score: the score definition in use, checked against the calibration's (e.g. ``{"score_median": 3}``).
        statistic: the lesion-level thresholds' cluster statistic (``None``: the default).
    """

    def __init__(
        self,
        threshold: str = "gaussian",
        calibration: Any = None,
        alpha: float = 0.05,
        per: str = "volume",
        score: dict[str, Any] | None = None,
        score_key: str = "z",
        p_key: str = "p",
        mask_key: str | None = "brain_mask",
        output_key: str = "lesion",
        event: str = "MODEL_COMPLETED",
        statistic: str | None = None,
    ) -> None:
        extra = {} if statistic is None else {"statistic": statistic}
        transforms = label_free_transforms(
            threshold, calibration, alpha, per, score_key, p_key, mask_key, output_key, score=score, **extra
        )
        super().__init__(Compose(transforms), event=event)


class LesionFilterHandler(PostProcessing):
    """Median-filter the lesion mask in-plane and drop small connected components:
    :class:`~monai_qrvae.transforms.LesionFilterd` (``median_size``, ``min_size``, ``connectivity`` as keyword
    arguments) at ``event``."""

    def __init__(self, lesion_key: str = "lesion", event: str = "MODEL_COMPLETED", **kwargs: Any) -> None:
        super().__init__(LesionFilterd(lesion_key, **kwargs), event=event)
