"""Does Benjamini-Hochberg control the false discovery rate of the voxel-wise lesion test?

For every subject with lesions (the ``test`` section) the FLAIR z-map of each method gives one-sided p-values
``1 - Phi(z)`` inside the brain; Benjamini-Hochberg at level ``alpha`` is applied per slice (each axial slice a
separate family) or per volume, and the detections are compared with the ground-truth lesion labels:

- ``fdr``: the mean over families (slices or volumes) of the false discovery proportion ``V / max(R, 1)``
  (``V`` detections outside the label, ``R`` all detections). This estimates ``E[FDP]``, the quantity BH promises
  to keep at or below ``alpha`` (below ``alpha m0 / m``) when the null p-values are uniform and independent or
  positively dependent (PRDS). Slices without lesion are families where every detection is false.
- ``fdp_pooled``: all false detections over all detections (one pooled proportion).
- ``sensitivity``: lesion voxels detected over lesion voxels; ``dice`` of detections and labels.
- ``border_fp``: the share of false detections lying within one voxel (in plane) of a labelled lesion, and
  ``fdr_no_border``, the FDR when those are counted as neither true nor false (label edges are not exact after
  resampling).
- On healthy held-out subjects (``validation``), every detection is false: ``null_any`` is the fraction of
  families with at least one detection. Under the complete null BH's FDR equals this family-wise rate, so it too
  should stay at or below ``alpha``; ``null_voxel_rate`` is the fraction of healthy voxels detected.

The voxels of an image are correlated (smooth anatomy, a decoder with a receptive field, resampling), and
``fdr`` is estimated from a few subjects: its standard error across families is reported as ``fdr_sem`` but
understates the uncertainty, since families of one subject are not independent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monai_qrvae.anomaly import FLAIR_CHANNEL, anomaly_maps, benjamini_hochberg
from monai_qrvae.experiments import common
from monai_qrvae.experiments.common import VolumePrediction, experiment_models, finish_result, predict_volumes
from monai_qrvae.tables import markdown_table
from monai_qrvae.utils import write_text

__all__ = ["ALPHAS", "FAMILIES", "bh_detections", "fdr_stats", "run_fdr", "fdr_table", "bh_verdict", "plot_fdr"]

#: the FDR levels tested.
ALPHAS = (0.01, 0.05, 0.1)
#: the BH families: each axial slice, or each volume.
FAMILIES = ("slice", "volume")
_LABELS = {"qrvae": "QR-VAE", "gaussian": "Gaussian VAE", "mse": "MSE VAE"}
_COLOURS = {"qrvae": "tab:blue", "gaussian": "tab:red", "mse": "tab:green"}


def _volume_layout(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` slices -> ``(1, 1, H, W, N)`` volume."""
    return x.permute(1, 2, 3, 0).unsqueeze(0)


def bh_detections(
    preds: Sequence[VolumePrediction], alpha: float, per: str, channel: int = FLAIR_CHANNEL
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """BH detections of every subject, stacked as volumes.

    Returns:
        ``(detected, brain, label)``, each bool ``(S, 1, H, W, N)`` for ``S`` subjects (``label`` None when the
        subjects have no labels).
    """
    p_all, brain_all, label_all = [], [], []
    for pred in preds:
        maps = anomaly_maps(pred.image, pred.mu, pred.sigma, channel=channel, mask=pred.brain_mask)
        p_all.append(_volume_layout(maps["p"]))
        brain_all.append(_volume_layout(pred.brain_mask))
        if pred.label is not None:
            label_all.append(_volume_layout(pred.label))
    p = torch.cat(p_all)
    brain = torch.cat(brain_all)
    detected = benjamini_hochberg(p, alpha=alpha, mask=brain, per=per)
    label = torch.cat(label_all) if len(label_all) == len(preds) else None
    return detected, brain, label


def _family_counts(x: torch.Tensor, per: str) -> torch.Tensor:
    """Sum a bool ``(S, 1, H, W, N)`` map per family: ``(S * N,)`` per slice, ``(S,)`` per volume."""
    x = x.double()
    return x.sum(dim=(1, 2, 3)).flatten() if per == "slice" else x.sum(dim=(1, 2, 3, 4))


def fdr_stats(detected: torch.Tensor, brain: torch.Tensor, label: torch.Tensor | None, per: str) -> dict[str, float]:
    """False discovery and detection statistics of BH detections (see the module docstring for the keys).

    Args:
        detected: bool ``(S, 1, H, W, N)`` detections.
        brain: bool brain masks, same shape (families without brain voxels are left out).
        label: bool lesion labels, same shape, or None (healthy subjects: every detection is false).
        per: ``"slice"`` or ``"volume"``: the families.
    """
    if label is None:
        label = torch.zeros_like(detected)
    detected = detected & brain
    lesion = label & brain
    false = detected & ~lesion
    # false detections touching a lesion (3 x 3 in-plane neighbourhood)
    near = F.max_pool3d(lesion.double(), kernel_size=(3, 3, 1), stride=1, padding=(1, 1, 0)) > 0
    border = false & near
    keep = _family_counts(brain, per) > 0
    r, v = _family_counts(detected, per)[keep], _family_counts(false, per)[keep]
    s, n_lesion = _family_counts(detected & lesion, per)[keep], _family_counts(lesion, per)[keep]
    b = _family_counts(border, per)[keep]
    fdp = v / r.clamp_min(1.0)
    fdp_nb = (v - b) / (r - b).clamp_min(1.0)
    total_r, total_v, total_s, total_l = float(r.sum()), float(v.sum()), float(s.sum()), float(n_lesion.sum())
    n_brain = float(brain.double().sum())
    return {
        "families": int(keep.sum()),
        "families_with_lesion": int((n_lesion > 0).sum()),
        "fdr": float(fdp.mean()),
        "fdr_sem": float(fdp.std() / np.sqrt(len(fdp))) if len(fdp) > 1 else float("nan"),
        "fdr_no_border": float(fdp_nb.mean()),
        "fdp_pooled": total_v / total_r if total_r > 0 else 0.0,
        "sensitivity": total_s / total_l if total_l > 0 else float("nan"),
        "dice": 2 * total_s / (total_r + total_l) if total_r + total_l > 0 else float("nan"),
        "detections": int(total_r),
        "false_detections": int(total_v),
        "border_fp": float(b.sum()) / total_v if total_v > 0 else 0.0,
        "any_detection": float((r > 0).double().mean()),
        "voxel_rate": total_r / n_brain if n_brain > 0 else 0.0,
    }


#: columns of :func:`fdr_table` and their headers.
_TABLE_COLUMNS = {
    "model": "model",
    "per": "BH per",
    "alpha": "alpha",
    "fdr": "FDR (mean FDP)",
    "fdr_sem": "s.e.",
    "fdr_no_border": "FDR, lesion borders excluded",
    "fdp_pooled": "pooled FDP",
    "sensitivity": "sensitivity",
    "dice": "Dice",
    "detections": "detections",
    "border_fp": "FP at lesion border",
    "null_any": "healthy: P(any detection)",
    "null_voxel_rate": "healthy: voxel FP rate",
}


def fdr_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run_fdr` rows."""
    return markdown_table(
        rows,
        list(_TABLE_COLUMNS),
        headers=list(_TABLE_COLUMNS.values()),
        formats={
            "model": lambda m: _LABELS.get(m, str(m)),
            "alpha": lambda a: f"{a:g}",
            "null_voxel_rate": ".5f",
        },
    )


def bh_verdict(rows: Sequence[dict[str, Any]], tolerance: float = 0.0) -> list[str]:
    """One line per model and family: at which ``alpha`` the measured FDR (and the healthy-subject rate) stayed
    at or below ``alpha``."""
    lines = []
    keys = sorted({(r["model"], r["per"]) for r in rows}, key=lambda k: (k[0], FAMILIES.index(k[1])))
    for model, per in keys:
        mine = sorted((r for r in rows if r["model"] == model and r["per"] == per), key=lambda r: r["alpha"])
        held = [r["alpha"] for r in mine if r["fdr"] <= r["alpha"] + tolerance]
        null_held = [r["alpha"] for r in mine if r.get("null_any", 0.0) <= r["alpha"] + tolerance]
        parts = ", ".join(f"alpha {r['alpha']:g}: FDR {r['fdr']:.3f}" for r in mine)
        verdict = (
            "no detections at any alpha (nothing found, so nothing to control)"
            if all(r["detections"] == 0 for r in mine)
            else (
                "controlled at every alpha"
                if len(held) == len(mine)
                else ("not controlled at any alpha" if not held else f"controlled only at alpha {held}")
            )
        )
        null = ""
        if all("null_any" in r for r in mine):
            null = f"; on healthy subjects P(any detection) <= alpha at {len(null_held)} of {len(mine)} levels"
        lines.append(f"{_LABELS.get(model, model)}, BH per {per}: {verdict} ({parts}){null}.")
    return lines


def plot_fdr(
    result: dict[str, Any],
    path: str | os.PathLike,
    example: dict[str, Any] | None = None,
) -> Path:
    """Top: realised FDR, sensitivity and healthy-subject P(any detection) against alpha; bottom: one example slice
    (FLAIR with the lesion outline, then each method's BH detections at alpha 0.05 per volume)."""
    from matplotlib.colors import ListedColormap

    n_bottom = 1 + (len(example["detections"]) if example else 0)
    ncols = max(3, n_bottom)
    fig, axes = common.new_figure(2 if example else 1, ncols, figsize=(4.8 * ncols, 8.8 if example else 4.4))
    rows = result["rows"]
    alphas = sorted({r["alpha"] for r in rows})
    for col, (key, title, ylabel) in enumerate(
        (
            ("fdr", "realised FDR vs nominal alpha (lesion subjects)", "FDR = mean false discovery proportion"),
            ("sensitivity", "sensitivity (lesion subjects)", "lesion voxels detected"),
            ("null_any", "healthy subjects: families with any detection", "P(any detection)"),
        )
    ):
        ax = axes[0, col]
        for model in result["models"]:
            for per, style in (("slice", "o-"), ("volume", "s--")):
                mine = sorted((r for r in rows if r["model"] == model and r["per"] == per), key=lambda r: r["alpha"])
                if mine and key in mine[0]:
                    ax.plot(
                        [r["alpha"] for r in mine],
                        [max(r[key], 1e-4) for r in mine],
                        style,
                        color=_COLOURS.get(model, "k"),
                        label=f"{_LABELS.get(model, model)}, per {per}",
                    )
        if key != "sensitivity":
            ax.plot(alphas, alphas, "k:", lw=1.5, label="y = alpha (the promise)")
            ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xticks(alphas)
        ax.set_xticklabels([f"{a:g}" for a in alphas])
        ax.set_xlabel("alpha")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    for col in range(3, ncols):
        axes[0, col].axis("off")
    if example:
        flair = np.rot90(example["flair"])
        label = np.rot90(example["label"])
        panels = [("FLAIR, lesion outline (green)", None)] + [
            (f"{_LABELS.get(m, m)}: BH alpha {example['alpha']:g} per {example['per']} (red)", d)
            for m, d in example["detections"].items()
        ]
        for col, (title, det) in enumerate(panels):
            ax = axes[1, col]
            ax.imshow(flair, cmap="gray", vmin=0, vmax=1)
            if det is not None:
                ax.imshow(
                    np.ma.masked_equal(np.rot90(det).astype(float), 0),
                    cmap=ListedColormap(["red"]),
                    alpha=0.8,
                    interpolation="nearest",
                    vmin=0,
                    vmax=1,
                )
            if label.any():
                ax.contour(label.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
            ax.set_title(f"{example['subject']} slice {example['slice']}\n{title}", fontsize=9)
            ax.axis("off")
        for col in range(n_bottom, ncols):
            axes[1, col].axis("off")
    return common.save_figure(fig, path)


def run_fdr(
    out_dir: str | os.PathLike | None = None,
    alphas: Sequence[float] = ALPHAS,
    families: Sequence[str] = FAMILIES,
    null_section: str | None = "validation",
    **setup: Any,
) -> dict[str, Any]:
    """Measure the FDR and sensitivity of BH on the lesion subjects for each method; optionally save figure/tables.

    Args:
        out_dir: where ``fdr.png``, ``fdr.md`` and ``fdr.json`` go (``None``: nothing saved).
        alphas: FDR levels.
        families: ``"slice"`` and/or ``"volume"``.
        null_section: healthy section for the complete-null check (``None``: skip it).

        setup: the cohort and models, keyword arguments of :func:`~monai_qrvae.experiments.common.experiment_models`
            (``work_dir``, ``datalist``, ``models``, ``methods``, ``quick``, ``epochs``, ``seed``, ``progress``).

    Returns:
        ``{"rows", "verdict", "table", "models", "model_dirs", "datalist", "files", "seconds"}``; one row per
        ``(model, per, alpha)`` with :func:`fdr_stats` on the lesion subjects plus ``null_any`` and
        ``null_voxel_rate`` from the healthy ones.
    """
    start = time.perf_counter()
    for per in families:
        if per not in FAMILIES:
            raise ValueError(f"families must be among {FAMILIES}, got {per!r}.")
    datalist, model_dirs = experiment_models(out_dir, **setup)
    rows: list[dict[str, Any]] = []
    example_preds: dict[str, list[VolumePrediction]] = {}
    for method, model_dir in model_dirs.items():
        lesion_preds = predict_volumes(model_dir, datalist, "test")
        if any(p.label is None for p in lesion_preds):
            raise ValueError(f"datalist {datalist}: every 'test' subject needs a 'label' for the FDR experiment.")
        null_preds = predict_volumes(model_dir, datalist, null_section) if null_section else []
        example_preds[method] = lesion_preds
        for per in families:
            for alpha in alphas:
                detected, brain, label = bh_detections(lesion_preds, alpha, per)
                row: dict[str, Any] = {"model": method, "per": per, "alpha": float(alpha)}
                row.update(fdr_stats(detected, brain, label, per))
                if null_preds:
                    d0, b0, _ = bh_detections(null_preds, alpha, per)
                    null = fdr_stats(d0, b0, None, per)
                    row["null_any"] = null["any_detection"]
                    row["null_voxel_rate"] = null["voxel_rate"]
                    row["null_families"] = null["families"]
                rows.append(row)
    result: dict[str, Any] = {
        "alphas": [float(a) for a in alphas],
        "families": list(families),
        "datalist": str(datalist),
        "model_dirs": {m: str(p) for m, p in model_dirs.items()},
        "models": list(model_dirs),
        "rows": rows,
        "verdict": bh_verdict(rows),
        "table": fdr_table(rows),
    }
    result["files"] = {}
    if out_dir is not None:
        out = Path(out_dir)
        example = _example(example_preds, alpha=0.05 if 0.05 in alphas else float(alphas[0]), per="volume")
        result["files"]["figure"] = str(plot_fdr(result, out / "fdr.png", example))
        text = result["table"] + "\n" + "\n".join(f"- {line}" for line in result["verdict"]) + "\n"
        result["files"]["table"] = str(write_text(out / "fdr.md", text))
    return finish_result(result, out_dir, "fdr", start)


def _example(preds: dict[str, list[VolumePrediction]], alpha: float, per: str) -> dict[str, Any] | None:
    """The slice with the most lesion voxels and each method's detections there."""
    first = next(iter(preds.values()), None)
    if not first:
        return None
    sizes = [(int(p.label[s].sum()), i, s) for i, p in enumerate(first) for s in range(p.label.shape[0])]
    _, i, s = max(sizes)
    detections = {}
    for method, method_preds in preds.items():
        detected, _, _ = bh_detections([method_preds[i]], alpha, per)
        detections[method] = detected[0, 0, :, :, s].numpy()
    return {
        "subject": first[i].name,
        "slice": s,
        "alpha": alpha,
        "per": per,
        "flair": first[i].image[s, FLAIR_CHANNEL].numpy(),
        "label": first[i].label[s, 0].numpy(),
        "detections": detections,
    }
