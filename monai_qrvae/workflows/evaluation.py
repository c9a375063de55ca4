"""The evaluation job: :func:`evaluate` scores a labelled section on the input grid; :func:`write_table` compares.

The figures (pooled over the section, per stratum and per volume) are computed by :mod:`monai_qrvae.evaluation`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_qrvae.evaluation import InputGridCollector, summarise
from monai_qrvae.handlers import AnomalyMapSaver, OverlaySaver
from monai_qrvae.tables import HEADLINE_COLUMNS, format_headline
from monai_qrvae.utils import write_csv, write_text
from monai_qrvae.workflows.datasets import checked_section
from monai_qrvae.workflows.pipeline import Pipeline

__all__ = ["evaluate", "write_table"]


def evaluate(
    model_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    section: str = "test",
    alpha: float = 0.05,
    per: str = "volume",
    median_size: int = 1,
    min_size: int = 0,
    save_maps: bool = True,
    save_png: bool = True,
    device: str = "cpu",
    score_median: int | None = None,
    threshold: str = "conformal",
) -> dict[str, Any]:
    """Score a labelled ``section`` with a trained model on every brain voxel of every volume, on its input grid.

    The z-map and the label-free lesion mask (Benjamini-Hochberg at ``alpha``) are put back on each input's grid;
    brain voxels the model did not analyse (outside its slices) get the no-detection score and are never detected,
    so lesions there count as missed (see :mod:`monai_qrvae.evaluation`). Figures, pooled over the section:
    ``dice_fdr`` (label-free), ``best_dice`` (best threshold chosen with the labels: an upper bound), ``auroc``,
    ``auprc``, ``coverage`` (share of lesion voxels analysed), ``lesion_recall`` and ``fp_per_volume``
    (lesion-wise, label-free mask), ``healthy_any_detection`` (volumes without lesions), per stratum in
    ``strata`` and per volume in ``per_volume``.

    Args:
        score_median: in-plane median filter of the z-map before p-values (1 = off); ``None`` takes the method's
            default from :mod:`monai_qrvae.defaults` (chosen on the ``tuning`` split).
        threshold: the label-free threshold of the lesion mask (see :func:`~monai_qrvae.workflows.infer`).
    """
    pipeline = Pipeline.from_model_dir(model_dir, device).load()
    pipeline.calibration_for(threshold)  # a missing calibration is refused before anything is written
    config = pipeline.config
    score_median = pipeline.score_median(score_median)
    items = checked_section(datalist, section, read_data=True)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pre = pipeline.pre_transforms()
    post = pipeline.anomaly_handlers(threshold, alpha, per, median_size, min_size, score_median)
    collector = InputGridCollector(pre)
    handlers: list[Any] = [*post, collector]
    if save_maps:
        handlers.append(AnomalyMapSaver(output_dir / "maps", preprocessing=pre))
    if save_png:
        handlers.append(OverlaySaver(output_dir / "overlays"))
    evaluator = pipeline.evaluator(items, handlers, pre)
    start = time.perf_counter()
    evaluator.run()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "method": config.method,
        "section": section,
        "alpha": alpha,
        "per": per,
        "score_median": score_median,
        "score": config.score,
        "threshold": threshold,
    }
    result.update(summarise(collector.records))
    result["seconds"] = seconds
    write_text(output_dir / "metrics.json", json.dumps(result, indent=2))
    return result


def write_table(results: Sequence[dict[str, Any]], output_dir: str | os.PathLike) -> tuple[Path, Path, str]:
    """Write a metrics table (CSV and Markdown) comparing methods; return the paths and the Markdown text.

    The columns are :data:`monai_qrvae.tables.HEADLINE_COLUMNS` (whole brain, input grid) plus training seconds;
    one row per result, strata rows under each method when the results have them.
    """
    output_dir = Path(output_dir)
    columns = ["method", *(k for k, _ in HEADLINE_COLUMNS), "train_seconds"]
    rows = [{c: r.get(c) for c in columns} for r in results]
    csv_path = write_csv(output_dir / "metrics.csv", rows, columns)
    text = format_headline({r["method"]: [r] for r in results})
    times = ", ".join(
        f"{r['method']} {r['train_seconds']:.0f} s" for r in results if r.get("train_seconds") is not None
    )
    if times:
        text += f"\nTraining time: {times}.\n"
    md_path = write_text(output_dir / "metrics.md", text)
    return csv_path, md_path, text
