"""The inference job: :func:`infer` writes z-map, p-map and lesion mask (input grid) for new, unlabelled volumes.

Also the post-processing handlers and the slice window that :func:`~monai_qrvae.workflows.evaluate` shares.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.data import DataLoader, Dataset

from monai_qrvae.defaults import method_defaults
from monai_qrvae.engines import create_anomaly_evaluator
from monai_qrvae.handlers import (
    AnomalyMapHandler,
    AnomalyMapSaver,
    LesionFilterHandler,
    OverlaySaver,
    ThresholdHandler,
)
from monai_qrvae.workflows.models import ModelConfig, load_model

__all__ = ["infer"]


#: label-free thresholds: ``"conformal"`` (default: Benjamini-Hochberg on p-values calibrated on healthy volumes),
#: ``"volume"`` (at most alpha of healthy volumes with any detection), ``"gaussian"`` (the paper's N(0, 1) p-values),
#: ``"lesion"`` (BH over candidate lesions: lesion-level FDR) and ``"lesion-volume"`` (at most alpha of healthy
#: volumes with any lesion).
THRESHOLD_CHOICES = ("conformal", "volume", "gaussian", "lesion", "lesion-volume")


def _calibration_for(model_dir: str | os.PathLike, threshold: str) -> Any:
    """The model's calibration for a calibrated ``threshold`` (a clear error when the folder has none)."""
    from monai_qrvae.calibration import CALIBRATION_FILE, load_calibration

    if threshold not in THRESHOLD_CHOICES:
        raise ValueError(f"threshold must be one of {THRESHOLD_CHOICES}, got {threshold!r}.")
    if threshold == "gaussian":
        return None
    calibration = load_calibration(model_dir)
    if calibration is None:
        raise FileNotFoundError(
            f"model folder {model_dir} has no {CALIBRATION_FILE}; the {threshold!r} threshold needs the model's score "
            f"calibrated on healthy scans: run 'qrvae calibrate --model {model_dir} --datalist D' (D with a healthy "
            "'calibration' section), or pass --threshold gaussian for the paper's N(0, 1) p-values."
        )
    return calibration


def _anomaly_handlers(
    config: ModelConfig,
    model_dir: str | os.PathLike,
    alpha: float,
    per: str,
    median_size: int,
    min_size: int,
    score_median: int,
    threshold: str = "conformal",
) -> list[Any]:
    """The label-free post-processing every method shares: the model's score and p maps, the label-free threshold
    (calibrated on healthy volumes by default) and the lesion filters."""
    calibration = _calibration_for(model_dir, threshold)
    score = {"method": config.method, "score_median": int(score_median), "score": config.score}
    return [
        AnomalyMapHandler(median_size=score_median, score=config.score, contrast_key="zc"),
        ThresholdHandler(threshold, calibration, alpha=alpha, per=per, score=score if calibration else None),
        LesionFilterHandler(median_size=median_size, min_size=min_size),
    ]


def _roi_size(config: ModelConfig) -> tuple[int, int]:
    """The in-plane window of the slice inferer: the network's input size (pointwise methods: any, padded)."""
    size = config.image_size or 256
    return (size, size)


def infer(
    model_dir: str | os.PathLike,
    images: Sequence[str | os.PathLike | dict[str, Any]],
    output_dir: str | os.PathLike,
    alpha: float = 0.05,
    per: str = "volume",
    median_size: int = 1,
    min_size: int = 0,
    save_png: bool = True,
    device: str = "cpu",
    score_median: int | None = None,
    threshold: str = "conformal",
) -> list[Path]:
    """Find lesions in new volumes (no labels): write z-map, p-map, lesion mask NIfTI (input grid) and the lesion
    report (``<name>_lesions.json``/``.csv``: count, volume, world-mm centroids, driving contrasts) per image.

    Outside the brain the maps are ``z = 0``, ``p = 1`` and ``lesion = 0``.

    Args:
        images: paths of 4D (T1, T2, FLAIR) images, or datalist entries (``{"image": ..., "brain_mask": ...}``).
        threshold: the label-free threshold, one of :data:`THRESHOLD_CHOICES` (all but ``"gaussian"`` need the
            model's ``calibration.pt``; ``"lesion"`` and ``"lesion-volume"`` one with the healthy cluster statistics,
            and the report then gives each lesion's statistic, p-value and q-value or volume-level flag).
    """
    from monai_qrvae.data.datalist import check_item

    config, net = load_model(model_dir, device)
    _calibration_for(model_dir, threshold)  # a missing calibration is refused before anything is read or written
    if score_median is None:
        score_median = method_defaults(config.method).score_median
    items = []
    for entry in images:
        item = dict(entry) if isinstance(entry, dict) else {"image": os.fspath(entry)}
        item.pop("label", None)
        check_item(item, num_channels=config.in_channels, read_data=True)  # every input is checked before writing
        items.append(item)
    pre = config.transforms()
    loader = DataLoader(Dataset(items, pre), batch_size=1, num_workers=0)
    post = _anomaly_handlers(config, model_dir, alpha, per, median_size, min_size, score_median, threshold)
    saver = AnomalyMapSaver(output_dir, preprocessing=pre, report=True)
    handlers: list[Any] = [*post, saver]
    if save_png:
        handlers.append(OverlaySaver(output_dir, label_key="__none__"))
    evaluator = create_anomaly_evaluator(net, loader, device=device, roi_size=_roi_size(config), val_handlers=handlers)
    evaluator.run()
    return list(saver.saved)
