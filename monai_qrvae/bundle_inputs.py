"""Glue of the MONAI bundle's configs: inference inputs, the label-free threshold, the trained model folder.

``bundle/configs/inference.json`` builds its datalist with :func:`folder_datalist` when ``--input_dir`` is given, and
its ``initialize`` step calls :func:`check_input_dir`: a missing or empty folder is then one line on stderr and exit
status 2 before anything is loaded or written (instead of a traceback, or, for an empty folder, a run on nothing that
exits 0). Its post-processing takes the label-free threshold from :func:`threshold_transforms` (the same choices and
errors as ``qrvae infer --threshold``); ``train.json`` ends with :func:`save_model_folder`, which writes
``model_config.json`` beside the trained ``model.pt`` and the healthy calibration ``calibration.pt``, as
``qrvae train`` does.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.config import PathLike

from monai_qrvae.workflows import CONFIG_FILE, ModelConfig, Pipeline, calibrate_model, load_model

__all__ = ["folder_datalist", "check_input_dir", "threshold_transforms", "model_spacing", "save_model_folder"]

logger = logging.getLogger("monai_qrvae")


def folder_datalist(input_dir: PathLike, pattern: str = "*.nii.gz") -> list[dict[str, str]]:
    """One ``{"image": path}`` entry per file of ``input_dir`` matching ``pattern``, sorted by path.

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder, or no file in it matches ``pattern``.
    """
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(
            f"input_dir {input_dir}: no such folder (expected a folder of NIfTI images matching '{pattern}')."
        )
    files = sorted(glob.glob(os.path.join(input_dir, pattern)))
    if not files:
        raise FileNotFoundError(
            f"input_dir {input_dir} has no file matching '{pattern}' (expected NIfTI images, e.g. sub-001.nii.gz)."
        )
    return [{"image": f} for f in files]


def check_input_dir(input_dir: PathLike | None, pattern: str = "*.nii.gz", prog: str = "monai.bundle run") -> None:
    """The bundle's ``initialize`` check: with ``input_dir`` set, exit with status 2 and a one-line message on stderr
    when :func:`folder_datalist` refuses it; nothing to check without ``input_dir`` (the datalist is used)."""
    if not input_dir:
        return
    try:
        folder_datalist(input_dir, pattern)
    except FileNotFoundError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def threshold_transforms(
    threshold: str,
    ckpt_dir: PathLike,
    alpha: float = 0.05,
    per: str = "volume",
    score_median: int = 1,
    score: str = "flair_t2",
    method: str = "qrvae",
) -> list[Any]:
    """The label-free threshold of the bundle's post-processing, as ``qrvae infer``/``evaluate`` apply it.

    ``"conformal"`` gives :class:`~monai_qrvae.transforms.ConformalPValued` (the healthy calibration
    ``ckpt_dir/calibration.pt``, checked against ``method``, ``score_median`` and ``score``) then
    :class:`~monai_qrvae.transforms.FDRMaskd`; ``"volume"`` the volume-level threshold; ``"lesion"`` and
    ``"lesion-volume"`` the lesion-level thresholds (:class:`~monai_qrvae.transforms.LesionThresholdd`);
    ``"gaussian"`` the paper's Benjamini-Hochberg on N(0, 1) p-values (no calibration): the model folder's
    :meth:`Pipeline.threshold_transforms <monai_qrvae.workflows.Pipeline.threshold_transforms>` for the bundle's
    ``method`` and ``score``.

    Raises:
        ValueError: ``threshold`` is not one of :data:`~monai_qrvae.workflows.THRESHOLD_CHOICES`.
        FileNotFoundError: a calibrated threshold and no ``calibration.pt`` in ``ckpt_dir`` (the CLI's message).
    """
    pipeline = Pipeline.from_model_dir(ckpt_dir, config=ModelConfig(method=method, score=score))
    return pipeline.threshold_transforms(threshold, alpha, per, score_median)


def model_spacing(ckpt_dir: PathLike, default: Sequence[float]) -> list[float]:
    """The analysis grid of the model in ``ckpt_dir`` (``spacing`` of its ``model_config.json``), else ``default``
    (the bundle's own, for the shipped weights or a folder without a configuration)."""
    path = Path(ckpt_dir) / CONFIG_FILE
    spacing = ModelConfig.load(path).spacing if path.is_file() else None
    return [float(s) for s in (default if spacing is None else spacing)]


def save_model_folder(
    ckpt_dir: PathLike,
    data_list_file_path: PathLike,
    image_size: int = 96,
    num_slices: int | None = None,
    quantiles: Sequence[float] = (0.025, 0.15, 0.5, 0.85, 0.975),
    beta: float = 1.0,
    context: str = "none",
    score: str = "flair_t2",
    quantile_score: bool = True,
    calibrate: bool = True,
    device: Any = "cpu",
    spacing: Sequence[float] | None = None,
) -> Path:
    """Finish the bundle's training like ``qrvae train``: ``model_config.json`` beside ``model.pt``, then the
    calibration on the datalist's healthy ``calibration`` section (``calibration.pt``), when it has one.

    The arguments are the bundle's settings of the trained network (``network_def``, preset ``small``); the weights
    are read back through :func:`~monai_qrvae.workflows.load_model`, so a configuration that does not describe them
    is an error here, not at inference.

    Returns:
        the model folder ``ckpt_dir``.
    """
    ckpt_dir = Path(ckpt_dir)
    grid = {"image_size": image_size, "num_slices": num_slices, "spacing": None if spacing is None else tuple(spacing)}
    scoring = {"quantiles": tuple(quantiles), "beta": beta, "context": context, "score": score}
    config = ModelConfig(method="qrvae", preset="small", quantile_score=quantile_score, **grid, **scoring)
    config.save(ckpt_dir / CONFIG_FILE)
    config, net = load_model(ckpt_dir, device)
    if calibrate:
        count = calibrate_model(ckpt_dir, data_list_file_path, config, net, str(device))
        if count:
            logger.info("calibrated %s on %d healthy volumes: %s", ckpt_dir, count, ckpt_dir / "calibration.pt")
    return ckpt_dir
