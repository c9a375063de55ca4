"""The inference job: :func:`infer` writes z-map, p-map and lesion mask (input grid) for new, unlabelled volumes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_qrvae.data.datalist import check_item
from monai_qrvae.handlers import AnomalyMapSaver, OverlaySaver
from monai_qrvae.workflows.pipeline import Pipeline

__all__ = ["infer"]


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
        threshold: the label-free threshold, one of :data:`~monai_qrvae.workflows.THRESHOLD_CHOICES` (all but
            ``"gaussian"`` need the model's ``calibration.pt``; ``"lesion"`` and ``"lesion-volume"`` one with the
            healthy cluster statistics, and the report then gives each lesion's statistic, p-value and q-value or
            volume-level flag).
    """
    pipeline = Pipeline.from_model_dir(model_dir, device).load()
    pipeline.calibration_for(threshold)  # a missing calibration is refused before anything is read or written
    config = pipeline.config
    items = []
    for entry in images:
        item = dict(entry) if isinstance(entry, dict) else {"image": os.fspath(entry)}
        item.pop("label", None)
        check_item(item, num_channels=config.in_channels, read_data=True)  # every input is checked before writing
        items.append(item)
    pre = pipeline.pre_transforms()
    post = pipeline.anomaly_handlers(threshold, alpha, per, median_size, min_size, score_median)
    saver = AnomalyMapSaver(output_dir, preprocessing=pre, report=True)
    handlers: list[Any] = [*post, saver]
    if save_png:
        handlers.append(OverlaySaver(output_dir, label_key="__none__"))
    pipeline.run(items, handlers, pre)
    return list(saver.saved)
