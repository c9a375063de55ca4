"""Fitting a :class:`~monai_qrvae.calibration.Calibration` with a model's shipped score on a datalist section.

The model's :class:`~monai_qrvae.workflows.pipeline.Pipeline` runs the preprocessing, network and score of
``qrvae evaluate``/``infer``; :class:`CalibrationCollector` keeps the score maps; :func:`fit_calibration` ties them
together (``qrvae calibrate``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.transforms import LoadImage
from monai.utils import convert_to_tensor

from monai_qrvae.calibration import CALIBRATION_FILE, LESION_P, MAX_VOXELS, Calibration, min_volumes, voxel_ml_of
from monai_qrvae.utils import identity
from monai_qrvae.workflows.datasets import checked_section
from monai_qrvae.workflows.pipeline import Pipeline

__all__ = ["CalibrationCollector", "fit_calibration"]


def _plain(x: Any) -> torch.Tensor:
    return convert_to_tensor(x, track_meta=False)


class CalibrationCollector:
    """Ignite handler that keeps each item's score map and brain (analysis) mask, for :class:`Calibration`.

    Attach after :class:`~monai_qrvae.handlers.AnomalyMapHandler`: at ``ITERATION_COMPLETED`` the decollated
    output items' ``score_key`` map and ``mask_key`` mask (the ``roi`` the anomaly handler writes) are stored on
    the CPU, on the analysed grid, with the voxel volume of that grid (``voxel_ml``, from the score's affine);
    ``calibration(...)`` then builds the :class:`Calibration`.

    Args:
        score_key: the score map key.
        mask_key: the analysis mask key.
        label_key: also keep this label (bool; all ``False`` when an item has none) in ``labels``; ``None``: don't.
        output_transform: picks the list of output items from ``engine.state.output``.
    """

    def __init__(
        self,
        score_key: str = "z",
        mask_key: str = "roi",
        label_key: str | None = None,
        output_transform: Callable = identity,
    ) -> None:
        self.score_key, self.mask_key, self.label_key = score_key, mask_key, label_key
        self.output_transform = output_transform
        self.scores: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.names: list[str] = []
        self.voxel_ml: list[float] = []

    def attach(self, engine: Any) -> None:
        """Collect at the end of every iteration; forget previous runs at the start of each."""
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)

    def reset(self, engine: Any = None) -> None:
        """Forget the collected volumes."""
        self.scores, self.masks, self.labels, self.names, self.voxel_ml = [], [], [], [], []

    def __call__(self, engine: Any) -> None:
        outputs = self.output_transform(engine.state.output)
        for out in [outputs] if isinstance(outputs, dict) else outputs:
            missing = [k for k in (self.score_key, self.mask_key) if k not in out]
            if missing:
                raise KeyError(
                    f"CalibrationCollector: output is missing {missing}; attach the AnomalyMapHandler first."
                )
            score = out[self.score_key]
            self.scores.append(_plain(score).detach().cpu()[0])
            self.voxel_ml.append(voxel_ml_of(score))
            self.masks.append(_plain(out[self.mask_key]).detach().cpu()[0] > 0)
            if self.label_key is not None:
                label = out.get(self.label_key)
                self.labels.append(
                    _plain(label).detach().cpu()[0] > 0 if label is not None else torch.zeros_like(self.masks[-1])
                )
            meta = getattr(score, "meta", {}) or {}
            name = meta.get("filename_or_obj", f"volume_{len(self.names):04d}")
            self.names.append(str(name[0] if isinstance(name, (list, tuple)) and name else name))

    def calibration(self, **kwargs: Any) -> Calibration:
        """:meth:`Calibration.from_scores` of the collected maps (keyword arguments passed on)."""
        kwargs.setdefault("voxel_ml", self.voxel_ml)
        return Calibration.from_scores(self.scores, self.masks, names=self.names, **kwargs)


def _check_healthy(items: Sequence[dict], section: str, label_key: str = "label") -> None:
    """Raise ``ValueError`` when an entry of the calibration section has a non-empty lesion label."""
    loader = LoadImage(image_only=True)
    lesional = []
    for item in items:
        path = item.get(label_key)
        if path and bool(np.asarray(loader(path)).any()):
            lesional.append(Path(str(path)).name)
    if lesional:
        raise ValueError(
            f"section {section!r} must hold healthy subjects only (all-zero or no labels), but {len(lesional)} "
            f"have lesions: {lesional[:5]}{' ...' if len(lesional) > 5 else ''}."
        )


def fit_calibration(
    model_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    section: str = "calibration",
    alpha: float | None = None,
    score_median: int | None = None,
    stratify: str = "none",
    num_strata: int = 4,
    max_voxels: int = MAX_VOXELS,
    cluster_p: float | None = None,
    device: str = "cpu",
    save: bool = True,
    model: tuple[Any, Any] | None = None,
    null: str | None = None,
    lesion_p: float | None = LESION_P,
) -> Calibration:
    """Calibrate a trained model's shipped score on the healthy volumes of a datalist section.

    Runs the model's :class:`~monai_qrvae.workflows.pipeline.Pipeline` (the preprocessing, network and score of
    ``qrvae evaluate``/``infer``, with the method's ``score_median``) and collects the z-map inside the brain on the
    analysed grid with a :class:`CalibrationCollector`.

    Args:
        model_dir: model folder written by ``qrvae train``; ``calibration.pt`` is written there when ``save``.
        datalist: datalist JSON.
        section: the healthy section (``calibration``).
        alpha: the volume-level alpha the calibration must support (``n + 1 >= 1 / alpha``); ``None`` takes the
            method's default alpha from :mod:`monai_qrvae.defaults`.
        score_median: in-plane median filter of the z-map; ``None``: the method's default.
        stratify: ``"none"`` or ``"slice"``.
        num_strata: slice-position bins for ``stratify="slice"``.
        max_voxels: most voxel scores kept.
        cluster_p: also calibrate the largest cluster above the voxel-level ``cluster_p`` (``None``: skip).
        device: torch device.
        save: write ``model_dir/calibration.pt``.
        model: an already loaded ``(config, network)`` of ``model_dir`` (e.g. with
            ``AnomalyMapNet.quantile_score`` switched on); ``None`` loads it.
        null: per-volume empirical null the scores are standardised with (:mod:`monai_qrvae.anomaly.null`);
            ``None``: the method's default.
        lesion_p: conformal voxel p-value of the primary threshold of lesion-level inference, whose healthy
            cluster statistics are calibrated (:meth:`Calibration.fit_lesions`); ``None``: skip.

    Raises:
        ValueError: no such or an empty section, entries with lesion labels, too few volumes for ``alpha``.
    """
    pipeline = Pipeline.from_model_dir(model_dir, device, model=model).load()
    defaults = pipeline.defaults
    alpha = defaults.alpha if alpha is None else alpha
    score_median = pipeline.score_median(score_median)
    null = defaults.null if null is None else null
    items = checked_section(datalist, section)
    needed = min_volumes(alpha)
    if len(items) < needed:
        raise ValueError(
            f"datalist {datalist}, section {section!r}: a volume-level threshold needs at least {needed} healthy "
            f"calibration volumes for alpha {alpha:g} (n + 1 >= 1 / alpha), got {len(items)}; add healthy volumes to "
            f"the section or pass a larger alpha (the smallest possible with {len(items)} is "
            f"{1.0 / (len(items) + 1):.3g})."
        )
    _check_healthy(items, section)
    items = [{k: v for k, v in item.items() if k != "label"} for item in items]
    collector = CalibrationCollector(score_key="z", mask_key="roi")
    pipeline.run(items, [pipeline.score_handler(score_median), collector])
    score = pipeline.score_definition(score_median)
    cal = collector.calibration(
        score=score,
        stratify=stratify,
        num_strata=num_strata,
        max_voxels=max_voxels,
        cluster_p=cluster_p,
        null=null,
        lesion_p=lesion_p,
    )
    cal.names = [_short(n) for n in cal.names]
    if save:
        cal.save(Path(model_dir) / CALIBRATION_FILE)
    return cal


def _short(path: str) -> str:
    p = Path(path)
    stem = p.name.split(".")[0]
    return p.parent.name if stem in ("image", "flair", "t1", "t2") and p.parent.name else stem
