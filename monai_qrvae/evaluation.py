"""Whole-volume scoring on the input grid: every brain voxel of every volume counts.

A method that analyses only part of a volume (for example 20 central axial slices) is scored on the whole brain
of the input scan all the same: the voxels it did not look at get its no-detection value (score
:data:`NO_DETECTION_SCORE`, never in the lesion mask), so lesions there count as missed. This is how the field
should compare methods (``../shared/DESIGN.md``, evaluation protocol), and what a user of the maps gets.

- :func:`lesion_wise_counts` is the pure lesion-wise scoring of one volume (connected lesions detected when the
  prediction overlaps at least ``min_overlap`` of their voxels; false-positive components);
- :class:`InputGridCollector` is the Ignite glue: after the anomaly handlers, it puts the score and the lesion mask
  of each item back on the input grid (:func:`~monai_qrvae.handlers.invert_to_input`), reads the label and brain
  mask from their files and keeps one :class:`VolumeRecord` per volume;
- :func:`summarise` pools the records into the reported figures, overall and per stratum.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from monai.utils import ImageMetaKey
from scipy import ndimage

from monai_qrvae.metrics import compute_best_dice, compute_masked_average_precision, compute_masked_roc_auc
from monai_qrvae.utils import identity

__all__ = [
    "NO_DETECTION_SCORE",
    "LESION_OVERLAP",
    "LESION_MARGIN",
    "VolumeRecord",
    "lesion_wise_counts",
    "InputGridCollector",
    "summarise",
]

#: score given to brain voxels a method did not analyse (below any z a method produces): never detected.
NO_DETECTION_SCORE = -1.0e4
#: a ground-truth lesion (connected component) is detected when the prediction covers this share of its voxels.
LESION_OVERLAP = 0.1
#: false voxels within this many voxels (26-neighbourhood steps) of a true lesion are boundary spill: the voxel FDR
#: is also reported without them (``voxel_fdr_margin``).
LESION_MARGIN = 2
_STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity, as lesion counts in 3D usually use


def lesion_wise_counts(pred: np.ndarray, label: np.ndarray, min_overlap: float = LESION_OVERLAP) -> dict[str, int]:
    """Lesion-wise detection counts of one volume.

    Args:
        pred: binary prediction ``(X, Y, Z)`` (non-zero = lesion).
        label: binary ground truth of the same shape.
        min_overlap: a ground-truth lesion (26-connected component) counts as detected when at least this share of
            its voxels is predicted.

    Returns:
        ``{"lesions", "detected", "pred_components", "false_positive_components"}``; a predicted component is a
        false positive when it touches no lesion voxel.

    Raises:
        ValueError: when the shapes differ.
    """
    pred = np.asarray(pred) != 0
    label = np.asarray(label) != 0
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} must have the same shape.")
    lesions, n_lesions = ndimage.label(label, structure=_STRUCTURE)
    detected = 0
    if n_lesions:
        size = np.bincount(lesions.ravel(), minlength=n_lesions + 1)[1:]
        hit = np.bincount(lesions[pred].ravel(), minlength=n_lesions + 1)[1:]
        detected = int((hit >= min_overlap * size).sum())
    components, n_pred = ndimage.label(pred, structure=_STRUCTURE)
    touching = np.unique(components[label & pred])
    n_fp = n_pred - int((touching > 0).sum())
    return {
        "lesions": int(n_lesions),
        "detected": detected,
        "pred_components": int(n_pred),
        "false_positive_components": n_fp,
    }


@dataclass
class VolumeRecord:
    """One scored volume, on its input grid, restricted to its brain mask (1-D arrays over brain voxels).

    Attributes:
        name: the volume's name (file stem).
        stratum: its stratum from the datalist (``"healthy"``, ``"typical"``, ``"subtle"``) or ``""``.
        score: the score of every brain voxel (:data:`NO_DETECTION_SCORE` where the method did not look).
        label: ground truth of every brain voxel.
        pred: the label-free lesion mask of every brain voxel.
        analysed: whether the method analysed each brain voxel.
        counts: :func:`lesion_wise_counts` of the label-free mask.
        near_lesion: whether each brain voxel lies within :data:`LESION_MARGIN` voxels of a true lesion (``None``:
            not recorded).
    """

    name: str
    stratum: str
    score: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    analysed: np.ndarray
    counts: dict[str, int]
    near_lesion: np.ndarray | None = field(default=None)


def _path_of(value: Any) -> str | None:
    meta = value.meta if isinstance(value, MetaTensor) else {}
    name = meta.get(ImageMetaKey.FILENAME_OR_OBJ)
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else None


class InputGridCollector:
    """Collect each volume's score and lesion mask on its input grid, with its label and brain mask from file.

    Attach after the anomaly handlers (:class:`~monai_qrvae.handlers.AnomalyMapHandler` and the FDR handler): at
    ``ITERATION_COMPLETED`` each decollated item's ``score_key`` and ``lesion_key`` maps are inverted through
    ``preprocessing`` to the input grid; the label and brain mask are read from the files their metadata names
    (the brain mask falls back to the image's non-zero voxels). ``records`` then holds one :class:`VolumeRecord`
    per volume, for :func:`summarise`.

    Args:
        preprocessing: the invertible chain applied to the inputs
            (e.g. :func:`~monai_qrvae.preprocessing.volume_transforms`).
        score_key: the score map on the preprocessed grid.
        lesion_key: the label-free lesion mask on the preprocessed grid.
        image_key: the preprocessed image (its transform history is inverted).
        label_key: the label (its file is read); a volume without one raises ``ValueError``.
        mask_key: the brain mask (its file is read, if it came from one).
        stratum_key: datalist field naming the volume's stratum.
        min_overlap: lesion-wise detection rule, see :func:`lesion_wise_counts`.
        summary_file: if given, :func:`summarise` of the records is written there as JSON (atomically) when the
            run completes, and kept in ``summary`` (what the bundle's ``evaluate.json`` reports).
        output_transform: picks the list of output items from ``engine.state.output``.
        batch_transform: picks the list of batch items from ``engine.state.batch``.
    """

    def __init__(
        self,
        preprocessing: Callable,
        score_key: str = "z",
        lesion_key: str = "lesion",
        image_key: str = "image",
        label_key: str = "label",
        mask_key: str = "brain_mask",
        stratum_key: str = "stratum",
        min_overlap: float = LESION_OVERLAP,
        summary_file: str | os.PathLike | None = None,
        output_transform: Callable = identity,
        batch_transform: Callable = identity,
    ) -> None:
        self.preprocessing = preprocessing
        self.score_key = score_key
        self.lesion_key = lesion_key
        self.image_key = image_key
        self.label_key = label_key
        self.mask_key = mask_key
        self.stratum_key = stratum_key
        self.min_overlap = min_overlap
        self.output_transform = output_transform
        self.batch_transform = batch_transform
        self.summary_file = summary_file
        self.summary: dict[str, Any] | None = None
        self.records: list[VolumeRecord] = []
        self._loader = LoadImage(image_only=True, ensure_channel_first=True)

    def attach(self, engine: Any) -> None:
        """Collect at the end of every iteration (after the post-processing of ``MODEL_COMPLETED``)."""
        from ignite.engine import Events

        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        if self.summary_file is not None and not engine.has_event_handler(self.write_summary, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write_summary)

    def write_summary(self, engine: Any = None) -> dict[str, Any]:
        """Summarise the collected volumes; write them to ``summary_file`` when one was given."""
        import json

        from monai_qrvae.utils import atomic_write

        self.summary = summarise(self.records)
        if self.summary_file is not None:
            text = json.dumps(self.summary, indent=2)
            atomic_write(self.summary_file, lambda tmp: Path(tmp).write_text(text))
        return self.summary

    def reset(self, engine: Any = None) -> None:
        """Forget the collected volumes (at the start of every evaluation run)."""
        self.records = []

    def __call__(self, engine: Any) -> None:
        outputs = self.output_transform(engine.state.output)
        batches = self.batch_transform(engine.state.batch)
        if isinstance(outputs, dict):
            outputs, batches = [outputs], [batches]
        for out, batch in zip(outputs, batches):
            self.records.append(self.record(out, batch))

    def _read(self, path: str, what: str, shape: Sequence[int]) -> np.ndarray:
        array = np.asarray(self._loader(path))
        if array.ndim == 4 and what == "image":
            return (array != 0).any(0)
        array = array.reshape(array.shape[-3:]) if array.ndim == 4 and array.shape[0] == 1 else array
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{what} {path} has shape {tuple(array.shape)}; expected the image's grid {tuple(shape)}.")
        return array

    def record(self, out: dict, batch: dict) -> VolumeRecord:
        """Score one item on its input grid."""
        orig = batch.get(self.image_key, out.get(self.image_key))
        missing = [k for k in (self.score_key, self.lesion_key) if k not in out]
        if missing:
            raise KeyError(
                f"InputGridCollector: output is missing {missing}; attach the anomaly and FDR handlers first."
            )
        score = torch.as_tensor(out[self.score_key]).float()
        maps = {
            "score": score,
            "lesion": torch.as_tensor(out[self.lesion_key]).float(),
            "analysed": torch.ones_like(score),
        }
        inv = {k: np.asarray(torch.as_tensor(v).cpu())[0] for k, v in _invert(maps, orig, self.preprocessing).items()}
        shape = inv["score"].shape
        name = _path_of(orig) or f"volume_{len(self.records):04d}"
        label_path = _path_of(batch.get(self.label_key))
        if label_path is None:
            raise ValueError(
                f"volume {name} has no label file; expected every evaluated entry to have a 'label' "
                "(an all-zero label for a healthy subject)."
            )
        label = self._read(label_path, "label", shape) > 0
        mask_path = _path_of(batch.get(self.mask_key))
        brain = self._read(mask_path, "brain mask", shape) > 0 if mask_path else self._read(name, "image", shape)
        analysed = inv["analysed"] > 0.5
        score_in = np.where(analysed, inv["score"], NO_DETECTION_SCORE).astype(np.float32)
        pred = (inv["lesion"] > 0.5) & analysed & brain
        label = label & brain
        near = ndimage.binary_dilation(label, _STRUCTURE, iterations=LESION_MARGIN) if label.any() else label
        stratum = batch.get(self.stratum_key, out.get(self.stratum_key, ""))
        return VolumeRecord(
            name=_short_name(name),
            stratum=str(stratum or ("healthy" if not label.any() else "")),
            score=score_in[brain],
            label=label[brain],
            pred=pred[brain],
            analysed=analysed[brain],
            counts=lesion_wise_counts(pred, label, self.min_overlap),
            near_lesion=near[brain],
        )


def _invert(maps: dict[str, torch.Tensor], orig: Any, preprocessing: Callable) -> dict[str, Any]:
    from monai_qrvae.handlers import invert_to_input  # handlers import metrics; keep this module import-light

    return invert_to_input(maps, orig, preprocessing, nearest_interp={k: True for k in maps})


def _short_name(path: str) -> str:
    p = Path(path)
    stem = p.name.split(".")[0]
    return p.parent.name if stem in ("image", "flair", "t1", "t2") and p.parent.name else stem


def _pooled(records: Sequence[VolumeRecord]) -> dict[str, float]:
    score = torch.from_numpy(np.concatenate([r.score for r in records]))
    label = torch.from_numpy(np.concatenate([r.label for r in records]))
    pred = np.concatenate([r.pred for r in records])
    lab = label.numpy()
    n_lesion_voxels = int(lab.sum())
    best_dice, best_threshold = compute_best_dice(score, label)
    denominator = int(pred.sum()) + n_lesion_voxels
    lesions = sum(r.counts["lesions"] for r in records)
    detected = sum(r.counts["detected"] for r in records)
    seen = int(sum((r.label & r.analysed).sum() for r in records))
    return {
        "volumes": len(records),
        "dice_fdr": 2.0 * int((pred & lab).sum()) / denominator if denominator else math.nan,
        "best_dice": best_dice,
        "best_threshold": best_threshold,
        "auroc": compute_masked_roc_auc(score, label),
        "auprc": compute_masked_average_precision(score, label),
        "coverage": seen / n_lesion_voxels if n_lesion_voxels else math.nan,
        "lesions": lesions,
        "lesion_recall": detected / lesions if lesions else math.nan,
        "fp_per_volume": float(np.mean([r.counts["false_positive_components"] for r in records])),
        **_lesion_fdr(records),
        **_voxel_fdr(records),
        "lesion_voxels": n_lesion_voxels,
    }


def _lesion_fdr(records: Sequence[VolumeRecord]) -> dict[str, float]:
    """Realised lesion-level FDR: the mean over volumes of the share of predicted components touching no lesion
    (0 for a volume without any), and its standard error across volumes."""
    fdp = [
        r.counts["false_positive_components"] / r.counts["pred_components"] if r.counts["pred_components"] else 0.0
        for r in records
    ]
    se = float(np.std(fdp, ddof=1) / math.sqrt(len(fdp))) if len(fdp) > 1 else math.nan
    return {"lesion_fdr": float(np.mean(fdp)), "lesion_fdr_se": se}


def _voxel_fdr(records: Sequence[VolumeRecord]) -> dict[str, float]:
    """Pooled voxel FDR (false detected voxels / detected voxels), also ignoring the false voxels within
    :data:`LESION_MARGIN` voxels of a true lesion (``voxel_fdr_margin``; NaN when not recorded)."""
    detected = sum(int(r.pred.sum()) for r in records)
    false = sum(int((r.pred & ~r.label).sum()) for r in records)
    out = {"voxel_fdr": false / detected if detected else 0.0, "voxel_fdr_margin": math.nan}
    if all(r.near_lesion is not None for r in records):
        spill = sum(int((r.pred & ~r.label & r.near_lesion).sum()) for r in records)  # type: ignore[operator]
        kept = detected - spill
        out["voxel_fdr_margin"] = (false - spill) / kept if kept else 0.0
    return out


def summarise(records: Sequence[VolumeRecord]) -> dict[str, Any]:
    """The reported figures of a scored section, pooled over all its brain voxels and per stratum.

    Voxel-wise (inside each brain mask, pooled over volumes): ``dice_fdr`` (label-free mask), ``best_dice`` (best
    single threshold, chosen with the labels: an upper bound), ``auroc``, ``auprc``; ``coverage`` is the share of
    lesion voxels the method analysed. Lesion-wise (label-free mask): ``lesion_recall`` and ``fp_per_volume``
    (false-positive components per volume), ``lesion_fdr`` (realised lesion-level FDR: mean share of predicted
    components touching no lesion, with its s.e. ``lesion_fdr_se`` across volumes), ``voxel_fdr`` (pooled share of
    detected voxels outside the lesions) and ``voxel_fdr_margin`` (the same ignoring false voxels within
    :data:`LESION_MARGIN` voxels of a lesion). On volumes without lesions: ``healthy_any_detection``, the fraction
    with any detected voxel. ``strata`` repeats the voxel- and lesion-wise figures for each stratum of volumes
    with lesions (e.g. ``typical`` and ``subtle``).

    Raises:
        ValueError: when there is no record.
    """
    if not records:
        raise ValueError("summarise needs at least one scored volume, got none.")
    result: dict[str, Any] = _pooled(records)
    healthy = [r for r in records if not r.label.any()]
    result["healthy_volumes"] = len(healthy)
    result["healthy_any_detection"] = float(np.mean([r.pred.any() for r in healthy])) if healthy else math.nan
    strata: dict[str, Any] = {}
    for name in sorted({r.stratum for r in records if r.label.any() and r.stratum}):
        strata[name] = _pooled([r for r in records if r.stratum == name])
    result["strata"] = strata
    result["per_volume"] = [
        {
            "name": r.name,
            "stratum": r.stratum,
            "lesion_voxels": int(r.label.sum()),
            "detected_voxels": int(r.pred.sum()),
            "dice_fdr": (
                2.0 * int((r.pred & r.label).sum()) / (int(r.pred.sum()) + int(r.label.sum()))
                if r.pred.any() or r.label.any()
                else math.nan
            ),
            **r.counts,
        }
        for r in records
    ]
    return result
