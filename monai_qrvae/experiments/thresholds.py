"""Do the label-free thresholds keep their promise? N(0, 1) + BH against healthy-calibrated thresholds.

The shipped score (the z-map after its filter, exactly as ``qrvae evaluate`` computes it, on the analysed grid) of
a trained model is thresholded four ways (:data:`monai_qrvae.transforms.THRESHOLDS`):

- ``gaussian``: Benjamini-Hochberg on ``1 - Phi(z)`` (the paper's);
- ``conformal``: Benjamini-Hochberg on conformal p-values from the healthy ``calibration`` volumes;
- ``volume``: the volume-level (max-statistic) threshold;
- ``cluster``: the volume-level cluster-size threshold (clusters above the voxel-level ``cluster_p``).

On the scored section (``test``): ``fdr`` is the realised voxel FDR, the mean over volumes of the false discovery
proportion ``V / max(R, 1)`` (a healthy volume with any detection has FDP 1), with its standard error ``fdr_sem``;
``fdr_lesion`` the same over the volumes with lesions; ``sensitivity`` the detected share of lesion voxels (pooled);
``healthy_any`` the fraction of healthy volumes with any detection. Because few healthy test volumes make a coarse
estimate, ``loo_any`` repeats the healthy check leave-one-out over every healthy volume not used for training
(calibration + healthy test): each is tested against a calibration fitted on all the others.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_qrvae.anomaly import p_value
from monai_qrvae.calibration import Calibration
from monai_qrvae.tables import markdown_table
from monai_qrvae.transforms import THRESHOLDS, label_free_transforms
from monai_qrvae.utils import write_json, write_text
from monai_qrvae.workflows import CalibrationCollector, Pipeline, checked_section, fit_calibration, load_model

__all__ = ["THRESHOLD_LABELS", "collect_scores", "detect", "threshold_stats", "healthy_loo", "run_thresholds"]

THRESHOLD_LABELS = {
    "gaussian": "N(0,1) + BH",
    "conformal": "conformal BH",
    "volume": "volume-level (max)",
    "cluster": "cluster size",
}


def collect_scores(
    model_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    section: str,
    score_median: int | None = None,
    device: str = "cpu",
    model: tuple[Any, Any] | None = None,
) -> CalibrationCollector:
    """The shipped score, brain mask and label of every volume of a section (analysed grid), in a collector."""
    pipeline = Pipeline.from_model_dir(model_dir, device, model=model)
    collector = CalibrationCollector(score_key="z", mask_key="roi", label_key="label")
    pipeline.run(checked_section(datalist, section), [pipeline.score_handler(score_median), collector])
    return collector


def detect(
    score: torch.Tensor,
    brain: torch.Tensor,
    threshold: str,
    calibration: Calibration | None,
    alpha: float,
    per: str = "volume",
) -> torch.Tensor:
    """The label-free lesion mask of one volume ``(H, W, N)`` with the shipped transforms (bool, same shape)."""
    z = score.float()[None]
    mask = brain[None].float()
    p = torch.where(mask > 0, p_value(z), torch.ones_like(z))
    data: dict[str, Any] = {"z": z, "p": p, "brain_mask": mask}
    for t in label_free_transforms(threshold, calibration, alpha=alpha, per=per):
        data = t(data)
    return torch.as_tensor(data["lesion"])[0] > 0


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else math.nan


def threshold_stats(
    scores: Sequence[torch.Tensor],
    brains: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    threshold: str,
    calibration: Calibration | None,
    alpha: float,
    per: str = "volume",
    healthy: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Realised FDR, sensitivity and healthy any-detection rate of one threshold on scored volumes.

    ``healthy`` flags the subjects without any lesion in their whole label (default: no lesion voxel in the
    analysed grid); a lesion subject whose lesions all lie outside the analysed slices is not healthy.
    """
    fdp, fdp_lesion, any_healthy = [], [], []
    hit, total, detections = 0, 0, 0
    if healthy is None:
        healthy = [not bool((label & brain).any()) for label, brain in zip(labels, brains)]
    for score, brain, label, is_healthy in zip(scores, brains, labels, healthy):
        detected = detect(score, brain, threshold, calibration, alpha, per) & brain
        lesion = label & brain
        r, v = int(detected.sum()), int((detected & ~lesion).sum())
        detections += r
        fdp.append(v / max(r, 1))
        hit += int((detected & lesion).sum())
        total += int(lesion.sum())
        if is_healthy:
            any_healthy.append(float(r > 0))
        else:
            fdp_lesion.append(v / max(r, 1))
    fdr, fdr_sem = _mean_sem(fdp)
    fdr_l, fdr_l_sem = _mean_sem(fdp_lesion)
    h, h_sem = _mean_sem(any_healthy)
    return {
        "threshold": threshold,
        "alpha": float(alpha),
        "volumes": len(fdp),
        "fdr": fdr,
        "fdr_sem": fdr_sem,
        "fdr_lesion": fdr_l,
        "fdr_lesion_sem": fdr_l_sem,
        "sensitivity": hit / total if total else math.nan,
        "detections": detections,
        "healthy_volumes": len(any_healthy),
        "healthy_any": h,
        "healthy_any_sem": h_sem,
    }


def healthy_loo(
    scores: Sequence[torch.Tensor],
    brains: Sequence[torch.Tensor],
    thresholds: Sequence[str],
    alphas: Sequence[float],
    score: dict[str, Any] | None = None,
    cluster_p: float | None = 0.001,
    per: str = "volume",
    stratify: str = "none",
    num_strata: int = 4,
) -> dict[tuple[str, float], tuple[float, float, int]]:
    """Leave-one-out over healthy volumes: ``{(threshold, alpha): (any-detection rate, s.e., volumes)}``.

    Each volume is tested against a calibration fitted on all the others; a threshold that needs more calibration
    volumes than there are for an alpha is left out.
    """
    hits: dict[tuple[str, float], list[float]] = {}
    for j in range(len(scores)):
        others = [i for i in range(len(scores)) if i != j]
        cal = Calibration.from_scores(
            [scores[i] for i in others],
            [brains[i] for i in others],
            score=score,
            cluster_p=cluster_p,
            stratify=stratify,
            num_strata=num_strata,
        )
        for threshold in thresholds:
            if threshold == "cluster" and cluster_p is None:
                continue
            for alpha in alphas:
                if threshold in ("volume", "cluster") and len(others) + 1 < 1.0 / alpha - 1e-9:
                    continue
                detected = detect(scores[j], brains[j], threshold, cal, alpha, per) & brains[j]
                hits.setdefault((threshold, float(alpha)), []).append(float(detected.any()))
    return {k: (*_mean_sem(v), len(v)) for k, v in hits.items()}


def _healthy_flags(datalist: str | os.PathLike, section: str) -> list[bool]:
    """Per entry of a section: no label, or an all-zero label file (read whole, not only the analysed slices)."""
    from monai.transforms import LoadImage

    loader = LoadImage(image_only=True)
    return [
        not item.get("label") or not bool(np.asarray(loader(item["label"])).any())
        for item in checked_section(datalist, section)
    ]


def run_thresholds(
    model_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    section: str = "test",
    calibration_section: str = "calibration",
    alphas: Sequence[float] = (0.05, 0.1),
    thresholds: Sequence[str] = THRESHOLDS,
    cluster_p: float | None = 0.001,
    score_median: int | None = None,
    per: str = "volume",
    loo: bool = True,
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    stratify: str = "none",
    num_strata: int = 4,
    quantile_score: bool = False,
) -> dict[str, Any]:
    """Measure every label-free threshold of a trained model on a labelled section (see the module docstring).

    The calibration is fitted here on ``calibration_section`` (not saved) with the same score definition
    (``stratify``/``num_strata`` for the conformal p-values; the leave-one-out check pools them).
    ``quantile_score`` scores a QR-VAE with its quantile function (``AnomalyMapNet.quantile_score``).

    Returns:
        ``{"rows", "table", "calibration", "seconds"}``; with ``out_dir``, also ``thresholds.md``/``.json`` there.
    """
    start = time.perf_counter()
    model = load_model(model_dir, device)
    if quantile_score:
        if not hasattr(model[1], "quantile_score") or model[1].mode != 0:
            raise ValueError(f"quantile_score needs a QR-VAE model, got method {model[0].method!r}.")
        model[1].quantile_score = True
    cal = fit_calibration(
        model_dir,
        datalist,
        section=calibration_section,
        alpha=max(alphas),
        score_median=score_median,
        cluster_p=cluster_p,
        device=device,
        save=False,
        stratify=stratify,
        num_strata=num_strata,
        model=model,
    )
    median = cal.score["score_median"]
    scored = collect_scores(model_dir, datalist, section, score_median=median, device=device, model=model)
    healthy_flags = _healthy_flags(datalist, section)
    healthy = None
    if loo:
        cal_scores = collect_scores(
            model_dir, datalist, calibration_section, score_median=median, device=device, model=model
        )
        pool = [(s, b) for s, b in zip(cal_scores.scores, cal_scores.masks)]
        pool += [(s, b) for s, b, h in zip(scored.scores, scored.masks, healthy_flags) if h]
        healthy = healthy_loo(
            [s for s, _ in pool],
            [b for _, b in pool],
            thresholds,
            alphas,
            score=cal.score,
            cluster_p=cluster_p,
            stratify=stratify,
            num_strata=num_strata,
        )
    rows = []
    for threshold in thresholds:
        if threshold == "cluster" and cluster_p is None:
            continue
        for alpha in alphas:
            if threshold in ("volume", "cluster") and cal.n_volumes + 1 < 1.0 / alpha - 1e-9:
                continue
            row = threshold_stats(
                scored.scores, scored.masks, scored.labels, threshold, cal, alpha, per, healthy=healthy_flags
            )
            if healthy is not None and (threshold, float(alpha)) in healthy:
                row["loo_any"], row["loo_any_sem"], row["loo_volumes"] = healthy[(threshold, float(alpha))]
            rows.append(row)
    table = markdown_table(
        rows,
        [
            "threshold",
            "alpha",
            "fdr",
            "fdr_sem",
            "fdr_lesion",
            "sensitivity",
            "healthy_any",
            "loo_any",
            "loo_any_sem",
        ],
        headers=[
            "threshold",
            "alpha",
            "voxel FDR per volume",
            "s.e.",
            "FDR, lesion volumes",
            "sensitivity",
            "healthy test: any detection",
            "healthy LOO: any detection",
            "s.e.",
        ],
        formats={"threshold": lambda t: THRESHOLD_LABELS.get(t, t), "alpha": lambda a: f"{a:g}"},
    )
    result: dict[str, Any] = {
        "model_dir": str(model_dir),
        "datalist": str(datalist),
        "section": section,
        "calibration": {k: v for k, v in cal.summary().items() if k not in ("volume_maxima", "max_cluster_sizes")},
        "rows": rows,
        "table": table,
        "seconds": time.perf_counter() - start,
    }
    if out_dir is not None:
        out = Path(out_dir)
        result["files"] = {
            "table": str(write_text(out / "thresholds.md", table)),
            "json": str(out / "thresholds.json"),
        }
        write_json(out / "thresholds.json", result)
    return result
