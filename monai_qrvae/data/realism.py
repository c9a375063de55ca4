"""How hard is a cohort for the trivial baseline? FLAIR thresholding over every brain voxel.

On real MS data, FLAIR thresholding ranks nearly every lesion voxel above healthy tissue but a global threshold
segments poorly (Meissen et al. 2021, table 1: MSLUB voxel AUROC 0.991, best Dice 0.374; MSSEG2015 AUROC 0.996,
best Dice 0.431). :func:`flair_threshold_check` measures the same figures on a datalist section, so the synthetic
generator can be held to that range (issue 15 acceptance: AUROC >= 0.95, best Dice between 0.30 and 0.80)::

    python -m monai_qrvae.data.realism data/synth/datalist.json --section test
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FLAIR_CHANNEL", "flair_threshold_check", "threshold_figures", "main"]

FLAIR_CHANNEL = 2


def threshold_figures(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Voxel AUROC, best Dice (with its threshold) and AUPRC of pooled ``scores`` against binary ``labels``."""
    from monai_qrvae.metrics import compute_best_dice, compute_masked_average_precision, compute_masked_roc_auc

    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    dice, threshold = compute_best_dice(s, y)
    return {
        "auroc": float(compute_masked_roc_auc(s, y)),
        "best_dice": float(dice),
        "best_threshold": float(threshold),
        "auprc": float(compute_masked_average_precision(s, y)),
        "n_voxels": int(s.numel()),
        "n_lesion_voxels": int(y.sum()),
    }


def _load_full(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FLAIR scaled like the pipeline (percentiles 1/99 inside the brain, no clipping), brain and label voxels."""
    from monai_qrvae.data.datalist import read_image
    from monai_qrvae.transforms import MaskedScaleIntensityPercentiles

    image, _ = read_image(item["image"])
    mask, _ = read_image(item["brain_mask"], num_channels=1)
    brain = mask[0] > 0
    label = read_image(item["label"], num_channels=1)[0][0] > 0 if item.get("label") else np.zeros_like(brain)
    flair = image[FLAIR_CHANNEL : FLAIR_CHANNEL + 1]
    scaled = MaskedScaleIntensityPercentiles(lower=1.0, upper=99.0, clip=False)(flair, mask=brain[None])
    scaled = np.asarray(scaled)[0]
    return scaled[brain], label[brain], brain


def _load_resized(item: dict[str, Any], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's volume chain (:func:`monai_qrvae.preprocessing.volume_transforms`) with every slice kept."""
    from monai_qrvae.preprocessing import volume_transforms

    data = dict(item)
    if not data.get("label"):
        data.pop("label", None)
    out = volume_transforms(image_size=image_size, num_slices=None, slice_mode="range")(data)
    brain = np.asarray(out["brain_mask"])[0] > 0
    flair = np.asarray(out["image"])[FLAIR_CHANNEL]
    label = np.asarray(out["label"])[0] > 0.5 if "label" in out else np.zeros_like(brain)
    return flair[brain], label[brain]


def flair_threshold_check(datalist: str | Path, section: str = "test", image_size: int | None = None) -> dict[str, Any]:
    """FLAIR-thresholding figures on one datalist section, all volumes pooled, every brain-mask voxel scored.

    Per volume, FLAIR is scaled by :class:`~monai_qrvae.transforms.MaskedScaleIntensityPercentiles` (1st / 99th
    percentile inside the brain, no clipping, as the pipeline does); the brain voxels of all volumes are pooled
    and scored with :func:`~monai_qrvae.metrics.compute_masked_roc_auc`,
    :func:`~monai_qrvae.metrics.compute_best_dice` and :func:`~monai_qrvae.metrics.compute_masked_average_precision`.

    Args:
        datalist: a datalist JSON file.
        section: the section to score (entries without ``label`` count as healthy, all-zero).
        image_size: ``None`` scores the files' own grid; an int runs the pipeline's volume chain first (crop to the
            brain, in-plane resize to ``image_size`` x ``image_size``, every slice kept), as the model sees it.

    Returns:
        ``{"all": figures, "strata": {stratum: figures}, "n_volumes": int, ...}`` where figures are those of
        :func:`threshold_figures`; a stratum with lesion volumes (``"typical"``, ``"subtle"``; entries without a
        ``stratum`` count as ``"lesion"`` or ``"healthy"`` by their label) is scored on its own volumes.
    """
    from monai_qrvae.data.datalist import load_datalist

    items = load_datalist(datalist, section=section, check=False)
    if not items:
        raise ValueError(f"datalist {datalist}: section {section!r} is empty; nothing to score.")
    per_stratum: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for item in items:
        if image_size is None:
            scores, labels, _ = _load_full(item)
        else:
            scores, labels = _load_resized(item, int(image_size))
        stratum = item.get("stratum") or ("lesion" if labels.any() else "healthy")
        per_stratum.setdefault(str(stratum), []).append((scores, labels))
    pooled = [v for values in per_stratum.values() for v in values]
    result: dict[str, Any] = {
        "datalist": str(datalist),
        "section": section,
        "image_size": image_size,
        "n_volumes": len(pooled),
        "all": threshold_figures(np.concatenate([s for s, _ in pooled]), np.concatenate([y for _, y in pooled])),
        "strata": {},
    }
    for stratum, values in per_stratum.items():
        labels = np.concatenate([y for _, y in values])
        if not labels.any():
            result["strata"][stratum] = {"n_volumes": len(values), "n_voxels": int(labels.size)}
            continue
        figures = threshold_figures(np.concatenate([s for s, _ in values]), labels)
        result["strata"][stratum] = {"n_volumes": len(values), **figures}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Print :func:`flair_threshold_check` as JSON (full resolution and, with ``--image-size``, resized)."""
    parser = argparse.ArgumentParser(prog="python -m monai_qrvae.data.realism", description=__doc__.splitlines()[0])
    parser.add_argument("datalist")
    parser.add_argument("--section", default="test")
    parser.add_argument("--image-size", type=int, nargs="*", default=[], help="also score at these in-plane sizes")
    args = parser.parse_args(argv)
    out = {"full": flair_threshold_check(args.datalist, args.section)}
    for size in args.image_size:
        out[str(size)] = flair_threshold_check(args.datalist, args.section, image_size=size)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
