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
from monai_qrvae.handlers import AnomalyMapHandler, AnomalyMapSaver, FDRHandler, LesionFilterHandler, OverlaySaver
from monai_qrvae.preprocessing import volume_transforms
from monai_qrvae.workflows.models import ModelConfig, load_model

__all__ = ["infer"]


def _anomaly_handlers(alpha: float, per: str, median_size: int, min_size: int, score_median: int) -> list[Any]:
    """The label-free post-processing every method shares: z/p maps, Benjamini-Hochberg mask, lesion filters."""
    return [
        AnomalyMapHandler(median_size=score_median),
        FDRHandler(alpha=alpha, per=per),
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
) -> list[Path]:
    """Find lesions in new volumes (no labels): write z-map, p-map and lesion mask NIfTI (input grid) per image.

    Args:
        images: paths of 4D (T1, T2, FLAIR) images, or datalist entries (``{"image": ..., "brain_mask": ...}``).
    """
    from monai_qrvae.data.datalist import check_item

    config, net = load_model(model_dir, device)
    if score_median is None:
        score_median = method_defaults(config.method).score_median
    items = []
    for entry in images:
        item = dict(entry) if isinstance(entry, dict) else {"image": os.fspath(entry)}
        item.pop("label", None)
        check_item(item, num_channels=config.in_channels, read_data=True)  # every input is checked before writing
        items.append(item)
    pre = volume_transforms(image_size=config.image_size, num_slices=config.num_slices)
    loader = DataLoader(Dataset(items, pre), batch_size=1, num_workers=0)
    post = _anomaly_handlers(alpha, per, median_size, min_size, score_median)
    saver = AnomalyMapSaver(output_dir, preprocessing=pre)
    handlers: list[Any] = [*post, saver]
    if save_png:
        handlers.append(OverlaySaver(output_dir, label_key="__none__"))
    evaluator = create_anomaly_evaluator(net, loader, device=device, roi_size=_roi_size(config), val_handlers=handlers)
    evaluator.run()
    return list(saver.saved)
