"""Fitting a :class:`~monai_qrvae.calibration.Calibration` with a model's shipped score on a datalist section.

:func:`run_shipped_score` runs the preprocessing, network and z-map post-processing of ``qrvae evaluate``/``infer``
with extra Ignite handlers; :class:`CalibrationCollector` keeps the score maps; :func:`fit_calibration` ties them
together (``qrvae calibrate``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_qrvae.calibration.calibration import CALIBRATION_FILE, LESION_P, MAX_VOXELS, Calibration, _voxel_ml_of
from monai_qrvae.calibration.conformal import _flat
from monai_qrvae.calibration.thresholds import min_volumes
from monai_qrvae.utils import CONTRAST_NAMES

__all__ = ["CalibrationCollector", "run_shipped_score", "fit_calibration"]


def _identity(x: Any) -> Any:
    return x


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
        output_transform: Callable = _identity,
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
        from ignite.engine import Events

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
            self.scores.append(_flat(score).detach().cpu()[0])
            self.voxel_ml.append(_voxel_ml_of(score))
            self.masks.append(_flat(out[self.mask_key]).detach().cpu()[0] > 0)
            if self.label_key is not None:
                label = out.get(self.label_key)
                self.labels.append(
                    _flat(label).detach().cpu()[0] > 0 if label is not None else torch.zeros_like(self.masks[-1])
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
    from monai.transforms import LoadImage

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


def run_shipped_score(
    model_dir: str | os.PathLike,
    items: Sequence[dict],
    handlers: Sequence[Any],
    score_median: int | None = None,
    device: str = "cpu",
    model: tuple[Any, Any] | None = None,
) -> Any:
    """Run the shipped scoring of a model over datalist entries, with ``handlers`` attached after the z-map.

    The preprocessing (:func:`~monai_qrvae.preprocessing.volume_transforms`), the slice-wise network
    (:func:`~monai_qrvae.engines.create_anomaly_evaluator`) and :class:`~monai_qrvae.handlers.AnomalyMapHandler`
    with ``score_median`` (``None``: the method's default) are those of ``qrvae evaluate``/``infer``; each output
    item then holds ``z`` (the score), ``p`` (its N(0, 1) p-value) and ``roi`` (the brain on the analysed grid).

    Args:
        model_dir: model folder written by ``qrvae train``.
        items: datalist entries (``image``, ``brain_mask``, optionally ``label``).
        handlers: Ignite handlers with ``attach(engine)``, run after the z-map (e.g. a :class:`CalibrationCollector`).
        score_median: in-plane median filter of the z-map.
        device: torch device.
        model: an already loaded ``(config, network)`` of ``model_dir``.

    Returns:
        The model's :class:`~monai_qrvae.workflows.ModelConfig`.
    """
    from monai.data import DataLoader, Dataset

    from monai_qrvae.anomaly import FLAIR_CHANNEL
    from monai_qrvae.defaults import method_defaults
    from monai_qrvae.engines import create_anomaly_evaluator
    from monai_qrvae.handlers import AnomalyMapHandler
    from monai_qrvae.workflows import load_model
    from monai_qrvae.workflows.inference import _roi_size

    config, net = model if model is not None else load_model(model_dir, device)
    score_median = method_defaults(config.method).score_median if score_median is None else score_median
    pre = config.transforms()
    loader = DataLoader(Dataset(list(items), pre), batch_size=1, num_workers=0)
    evaluator = create_anomaly_evaluator(
        net,
        loader,
        device=device,
        roi_size=_roi_size(config),
        val_handlers=[
            AnomalyMapHandler(median_size=score_median, channel=FLAIR_CHANNEL, score=getattr(config, "score", None)),
            *handlers,
        ],
    )
    evaluator.run()
    return config


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

    Runs the same preprocessing, network and anomaly post-processing as ``qrvae evaluate``/``infer``
    (:func:`~monai_qrvae.workflows.load_model`, :func:`~monai_qrvae.preprocessing.volume_transforms`,
    :func:`~monai_qrvae.engines.create_anomaly_evaluator`, :class:`~monai_qrvae.handlers.AnomalyMapHandler` with the
    method's ``score_median``) and collects the z-map inside the brain on the analysed grid with a
    :class:`CalibrationCollector`.

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
    from monai_qrvae.anomaly import FLAIR_CHANNEL
    from monai_qrvae.defaults import method_defaults
    from monai_qrvae.workflows import _datalist, load_model

    config, net = model if model is not None else load_model(model_dir, device)
    defaults = method_defaults(config.method)
    alpha = defaults.alpha if alpha is None else alpha
    score_median = defaults.score_median if score_median is None else score_median
    null = defaults.null if null is None else null
    items = _datalist(datalist, section)
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
    run_shipped_score(model_dir, items, [collector], score_median=score_median, device=device, model=(config, net))
    quantile_score = bool(getattr(net, "quantile_score", False))
    combination = getattr(config, "score", "flair")
    contrast = CONTRAST_NAMES[FLAIR_CHANNEL] if combination == "flair" else combination
    score = {
        "method": config.method,
        "score_median": int(score_median),
        "channel": FLAIR_CHANNEL,
        "score": combination,
        "score_key": "z",
        "quantile_score": quantile_score,
        "score_name": f"{'qf' if quantile_score else 'z'}[{contrast}]",
    }
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
