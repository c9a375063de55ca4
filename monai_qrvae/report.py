"""Per-subject lesion report: the connected lesions of a label-free mask, in scanner (world) millimetres.

For each lesion (26-connected component of the mask): its volume in mL, its centroid in world mm (the NIfTI affine
of the grid the mask is on), its peak anomaly score and, when the per-contrast z-maps are given, the mean
direction-signed z of each contrast inside it (FLAIR and T2 brighter, T1 darker count as positive) and the
contrasts that drive it (mean signed z at least ``driver_z``). With a lesion-level threshold
(:class:`~monai_qrvae.transforms.LesionThresholdd`) each lesion also carries its evidence: the cluster statistic,
its conformal p-value and BH q-value (``"lesion"``) or its flag against the volume-level threshold
(``"lesion-volume"``), and the report the threshold, alpha and the calibration used. Written as JSON and CSV beside
the maps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_qrvae.utils import write_csv, write_text

__all__ = ["DRIVER_Z", "REPORT_COLUMNS", "lesion_report", "write_lesion_report"]

#: a contrast "drives" a lesion when its mean direction-signed z inside the lesion is at least this.
DRIVER_Z = 2.0

#: the CSV columns (one row per lesion).
REPORT_COLUMNS = ("id", "voxels", "volume_ml", "x_mm", "y_mm", "z_mm", "max_z", "drivers", "statistic", "p", "q")


def lesion_report(
    lesion: np.ndarray,
    affine: np.ndarray,
    zmap: np.ndarray | None = None,
    contrast_z: np.ndarray | None = None,
    contrast_names: Sequence[str] = ("T1", "T2", "FLAIR"),
    driver_z: float = DRIVER_Z,
    lesion_labels: np.ndarray | None = None,
    lesion_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Describe the connected lesions of a binary mask.

    Args:
        lesion: ``(H, W, D)`` mask (non-zero = lesion).
        affine: the ``4 x 4`` voxel-to-world affine of the mask's grid (mm).
        zmap: ``(H, W, D)`` anomaly score on the same grid (adds ``max_z``).
        contrast_z: ``(C, H, W, D)`` direction-signed z-map of each contrast (adds ``contrast_z`` and ``drivers``).
        contrast_names: names of the ``C`` contrasts.
        driver_z: smallest mean signed z of a driving contrast.
        lesion_labels: ``(H, W, D)`` labels of the lesion-level threshold's kept candidates on the same grid
            (inverted with nearest neighbour); each lesion takes the evidence of the label covering most of it.
        lesion_stats: the lesion-level threshold's evidence (``LesionThresholdd``'s ``lesion_stats``): adds
            ``inference`` (threshold, alpha, statistic, calibration) and, per lesion, ``statistic``, ``value``,
            ``p`` and ``q`` (or ``above_volume_threshold``), and ``p_from_tail`` when ``p`` comes from the fitted
            tail beyond the largest healthy cluster.

    Returns:
        ``{"n_lesions", "total_volume_ml", "voxel_ml", "grid": {"shape", "affine"}, "lesions": [...]}``, lesions
        sorted by volume (largest first), each ``{"id", "voxels", "volume_ml", "centroid_mm", ...}``.
    """
    from scipy import ndimage

    mask = np.asarray(lesion) > 0
    if mask.ndim != 3:
        raise ValueError(f"lesion_report: expected a 3D mask (H, W, D), got shape {mask.shape}.")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"lesion_report: expected a 4 x 4 affine, got shape {affine.shape}.")
    for name, array in (("zmap", zmap), ("contrast_z", contrast_z), ("lesion_labels", lesion_labels)):
        if array is not None and np.asarray(array).shape[-3:] != mask.shape:
            shape = np.asarray(array).shape
            raise ValueError(f"lesion_report: {name} of shape {shape} does not match the mask {mask.shape}.")
    if contrast_z is not None and len(contrast_names) != np.asarray(contrast_z).shape[0]:
        raise ValueError(
            f"lesion_report: {np.asarray(contrast_z).shape[0]} contrast z-maps for {len(contrast_names)} names."
        )
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    evidence = {int(e["label"]): e for e in (lesion_stats or {}).get("lesions", [])}
    lesions = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        part = labels[box] == i
        idx = np.argwhere(part) + np.array([s.start for s in box])
        centre = affine[:3, :3] @ idx.mean(0) + affine[:3, 3]
        entry: dict[str, Any] = {
            "id": i,
            "voxels": int(part.sum()),
            "volume_ml": round(float(part.sum()) * voxel_ml, 4),
            "centroid_mm": [round(float(c), 2) for c in centre],
        }
        if zmap is not None:
            entry["max_z"] = round(float(np.asarray(zmap)[box][part].max()), 3)
        if contrast_z is not None:
            means = [float(np.asarray(c)[box][part].mean()) for c in contrast_z]
            entry["contrast_z"] = {name: round(m, 3) for name, m in zip(contrast_names, means)}
            entry["drivers"] = [
                name for name, m in sorted(zip(contrast_names, means), key=lambda t: -t[1]) if m >= driver_z
            ]
        if lesion_stats is not None and lesion_labels is not None:
            entry.update(_evidence(np.asarray(lesion_labels)[box][part], evidence, lesion_stats))
        lesions.append(entry)
    lesions.sort(key=lambda e: (-e["voxels"], e["id"]))
    for new_id, entry in enumerate(lesions, start=1):
        entry["id"] = new_id
    report: dict[str, Any] = {
        "n_lesions": int(n),
        "total_volume_ml": round(float(mask.sum()) * voxel_ml, 4),
        "voxel_ml": voxel_ml,
        "grid": {"shape": list(mask.shape), "affine": affine.tolist()},
        "lesions": lesions,
    }
    if lesion_stats is not None:
        report["inference"] = {k: v for k, v in lesion_stats.items() if k != "lesions"}
    return report


def _evidence(labels: np.ndarray, evidence: dict[int, dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
    """The evidence of the candidate whose label covers most of a lesion's voxels (``{}`` when none does)."""
    ids = np.asarray(labels).round().astype(np.int64).ravel()
    ids = ids[ids > 0]
    if ids.size == 0:
        return {}
    candidate = int(np.bincount(ids).argmax())
    e = evidence.get(candidate)
    if e is None:
        return {}
    out: dict[str, Any] = {"statistic": stats.get("statistic"), "value": round(float(e["value"]), 5)}
    out["p"] = float(e["p"])
    if "q" in e:
        out["q"] = float(e["q"])
    if "p_from_tail" in e:
        out["p_from_tail"] = bool(e["p_from_tail"])
    if "above_volume_threshold" in e:
        out["above_volume_threshold"] = bool(e["above_volume_threshold"])
    return out


def write_lesion_report(report: dict[str, Any], output_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>_lesions.json`` and ``<stem>_lesions.csv`` (one row per lesion) atomically; return the paths."""
    out = Path(output_dir)
    json_path = write_text(out / f"{stem}_lesions.json", json.dumps(report, indent=2) + "\n")
    rows = []
    for e in report["lesions"]:
        x, y, z = e["centroid_mm"]
        rows.append(
            {
                "id": e["id"],
                "voxels": e["voxels"],
                "volume_ml": e["volume_ml"],
                "x_mm": x,
                "y_mm": y,
                "z_mm": z,
                "max_z": e.get("max_z", ""),
                "drivers": "+".join(e.get("drivers", [])),
                "statistic": e.get("value", ""),
                "p": e.get("p", ""),
                "q": e.get("q", ""),
            }
        )
    csv_path = write_csv(out / f"{stem}_lesions.csv", rows, REPORT_COLUMNS)
    return json_path, csv_path
