"""Calibration on healthy brains: are the predicted quantiles and z-scores what they claim to be?

On healthy subjects that were not used for training (the ``validation`` section of the embedded cohort), for every
brain voxel and contrast:

- **coverage**: the fraction of voxels whose intensity lies below the predicted ``tau``-quantile. A calibrated model
  gives ``tau``. For the QR-VAE the levels it predicts (0.15 and 0.5 by default) are its own output heads; other
  levels, and every level of the Gaussian VAE, are ``mu + sigma Phi^-1(tau)`` under the Gaussian model both methods
  use to compute z-scores (so they also test whether the residuals are Gaussian).
- **z-scores** ``(x - mu) / sigma``: their mean and standard deviation (0 and 1 for N(0, 1)), the tail
  fractions above 1.645, 2.326, 3.090, 3.719 and 4.265 (nominal 5 %, 1 %, 0.1 %, 0.01 % and 0.001 %: the one-sided
  false-positive rates the anomaly test assumes; Benjamini-Hochberg over thousands of voxels works in the last two)
  and the Kolmogorov-Smirnov distance to N(0, 1).

Voxel statistics are pooled over subjects and slices; the voxels are spatially correlated, so no p-value is given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from monai_qrvae.anomaly import FLAIR_CHANNEL
from monai_qrvae.experiments.common import (
    VolumePrediction,
    experiment_models,
    finish_result,
    new_figure,
    predict_volumes,
    save_figure,
)
from monai_qrvae.metrics import compute_quantile_coverage
from monai_qrvae.tables import markdown_table
from monai_qrvae.utils import write_text

__all__ = [
    "CALIBRATION_LEVELS",
    "Z_TAILS",
    "gaussian_quantiles",
    "calibration_stats",
    "run_calibration",
    "coverage_table",
    "z_table",
    "plot_calibration",
]

#: quantile levels whose coverage is measured.
CALIBRATION_LEVELS = (0.01, 0.025, 0.05, 0.15, 0.25, 0.5, 0.75, 0.85, 0.95, 0.975, 0.99)
#: one-sided z thresholds and their nominal tail probabilities under N(0, 1). The far tail matters: BH's threshold on
#: a slice of about 3000 brain voxels at alpha 0.05 is about p < 0.05 / 3000, i.e. z > 4.1.
Z_TAILS = {1.645: 0.05, 2.326: 0.01, 3.090: 0.001, 3.719: 1e-4, 4.265: 1e-5}
CHANNELS = ("T1", "T2", "FLAIR")
_LABELS = {"qrvae": "QR-VAE", "gaussian": "Gaussian VAE", "mse": "MSE VAE"}
_COLOURS = {"qrvae": "tab:blue", "gaussian": "tab:red", "mse": "tab:green"}
_Z_BINS = np.linspace(-10.0, 10.0, 201)


def gaussian_quantiles(mu: torch.Tensor, sigma: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
    """Quantile-major ``(B, Q*C, ...)`` quantiles ``mu + sigma Phi^-1(tau)`` of ``(B, C, ...)`` mean and sigma."""
    ppf = torch.as_tensor(norm.ppf(levels), dtype=mu.dtype, device=mu.device)
    q = mu.unsqueeze(1) + sigma.unsqueeze(1) * ppf.view(1, -1, *([1] * (mu.ndim - 1)))
    return q.reshape(mu.shape[0], len(levels) * mu.shape[1], *mu.shape[2:])


def calibration_stats(
    preds: Sequence[VolumePrediction],
    levels: Sequence[float] = CALIBRATION_LEVELS,
    network_quantiles: Sequence[float] | None = None,
    ks_samples: int = 50000,
    seed: int = 0,
) -> dict[str, Any]:
    """Coverage and z-score statistics of one model's predictions on healthy subjects.

    Args:
        preds: predictions of :func:`~monai_qrvae.experiments.common.predict_volumes` (one per subject).
        levels: quantile levels of the coverage table.
        network_quantiles: the QR-VAE's own quantile levels: at these levels coverage uses the predicted quantiles
            themselves (``preds[i].quantiles``) instead of the Gaussian ``mu + sigma Phi^-1(tau)``.
        ks_samples: voxels drawn (per channel) for the Kolmogorov-Smirnov distance.
        seed: seed of that draw.

    Returns:
        ``coverage`` ``[Q][C]`` (pooled over every brain voxel), ``coverage_volume_std`` ``[Q][C]`` (spread across
        subjects), ``direct`` (per level: True when it comes from the network's own quantile head), and per channel
        name ``z`` statistics: ``mean``, ``std``, ``median``, ``tail_<t>`` (fraction above ``t``), ``ks`` and the
        FLAIR histogram (``hist``, ``bin_edges``) and z quantiles (``qq_theory``, ``qq_sample``) for plotting.
    """
    levels = tuple(float(t) for t in levels)
    direct = [network_quantiles is not None and t in tuple(network_quantiles) for t in levels]
    per_volume, voxels = [], []
    z_all: list[list[torch.Tensor]] = [[] for _ in range(preds[0].mu.shape[1])]
    for pred in preds:
        q = gaussian_quantiles(pred.mu, pred.sigma, levels)
        if network_quantiles is not None and pred.quantiles is not None and any(direct):
            c = pred.mu.shape[1]
            heads = pred.quantiles.reshape(q.shape[0], len(network_quantiles), c, *q.shape[2:])
            q = q.reshape(q.shape[0], len(levels), c, *q.shape[2:]).clone()
            for k, t in enumerate(levels):
                if direct[k]:
                    q[:, k] = heads[:, tuple(network_quantiles).index(t)]
            q = q.reshape(q.shape[0], -1, *q.shape[3:])
        cov = compute_quantile_coverage(q, pred.image, levels, mask=pred.brain_mask)  # (Q, C)
        per_volume.append(cov)
        voxels.append(float(pred.brain_mask.sum()))
        inside = pred.brain_mask[:, 0]
        for c in range(pred.z.shape[1]):
            z_all[c].append(pred.z[:, c][inside].double())
    cov_stack = torch.stack(per_volume).double()  # (V, Q, C)
    weights = torch.tensor(voxels, dtype=torch.float64).view(-1, 1, 1)
    pooled = (cov_stack * weights).sum(0) / weights.sum()
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "levels": list(levels),
        "direct": direct,
        "coverage": pooled.tolist(),
        "coverage_volume_std": cov_stack.std(0).tolist() if len(preds) > 1 else torch.zeros_like(pooled).tolist(),
        "subjects": len(preds),
        "voxels": int(sum(voxels)),
        "z": {},
    }
    theory = np.linspace(0.001, 0.999, 199)
    for c, chunks in enumerate(z_all):
        z = torch.cat(chunks).numpy()
        name = CHANNELS[c] if c < len(CHANNELS) else f"channel{c}"
        sample = rng.choice(z, size=min(ks_samples, z.size), replace=False) if z.size else z
        sample = np.sort(sample)
        ecdf_hi = np.arange(1, sample.size + 1) / max(sample.size, 1)
        ecdf_lo = np.arange(0, sample.size) / max(sample.size, 1)
        cdf = norm.cdf(sample)
        stats: dict[str, Any] = {
            "mean": float(z.mean()),
            "std": float(z.std()),
            "median": float(np.median(z)),
            "ks": float(max(np.max(ecdf_hi - cdf), np.max(cdf - ecdf_lo))) if sample.size else float("nan"),
            "below_-1.645": float((z < -1.645).mean()),
        }
        for threshold in Z_TAILS:
            stats[f"tail_{threshold:g}"] = float((z > threshold).mean())
        if c == FLAIR_CHANNEL:
            hist, _ = np.histogram(np.clip(z, _Z_BINS[0], _Z_BINS[-1]), bins=_Z_BINS)
            stats["hist"] = hist.tolist()
            stats["bin_edges"] = _Z_BINS.tolist()
            stats["qq_theory"] = norm.ppf(theory).tolist()
            stats["qq_sample"] = np.quantile(z, theory).tolist()
        out["z"][name] = stats
    return out


def coverage_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per level, coverage of every model and channel (``*``: the network's own head)."""
    models = list(result["models"])
    columns, headers = ["tau"], ["tau"]
    for m in models:
        for c in CHANNELS:
            columns.append(f"{m}:{c}")
            headers.append(f"{_LABELS.get(m, m)} {c}")
    rows = []
    for k, tau in enumerate(result["levels"]):
        row: dict[str, Any] = {"tau": f"{tau:g}"}
        for m in models:
            stats = result["models"][m]
            for ci, c in enumerate(CHANNELS):
                star = "*" if stats["direct"][k] else ""
                row[f"{m}:{c}"] = f"{stats['coverage'][k][ci]:.3f}{star}"
        rows.append(row)
    return markdown_table(rows, columns, headers)


def z_table(result: dict[str, Any]) -> str:
    """Markdown table: z-score statistics of every model and channel against N(0, 1)."""
    rows = []
    for m, stats in result["models"].items():
        for c in CHANNELS:
            z = stats["z"][c]
            row = {"model": _LABELS.get(m, m), "channel": c, **{k: v for k, v in z.items() if not isinstance(v, list)}}
            rows.append(row)
    rows.append(
        {
            "model": "N(0, 1)",
            "channel": "-",
            "mean": 0.0,
            "std": 1.0,
            "ks": 0.0,
            **{f"tail_{t:g}": p for t, p in Z_TAILS.items()},
        }
    )
    columns = ["model", "channel", "mean", "std", *[f"tail_{t:g}" for t in Z_TAILS], "ks"]
    headers = ["model", "channel", "mean z", "std z", *[f"P(z > {t:g})" for t in Z_TAILS], "KS distance"]
    return markdown_table(rows, columns, headers, formats={f"tail_{t:g}": ".2g" for t in Z_TAILS})


def plot_calibration(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Three panels: coverage vs tau (reliability), FLAIR z histogram vs N(0, 1), FLAIR z Q-Q plot."""
    fig, axes = new_figure(1, 3, figsize=(15.0, 4.4))
    levels = np.asarray(result["levels"])
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for m, stats in result["models"].items():
        cov = np.asarray(stats["coverage"])
        for ci, c in enumerate(CHANNELS):
            flair = ci == FLAIR_CHANNEL
            ax.plot(
                levels,
                cov[:, ci],
                "o-" if flair else ".:",
                color=_COLOURS.get(m, "k"),
                alpha=1.0 if flair else 0.45,
                label=f"{_LABELS.get(m, m)} {c}" if flair else (f"{_LABELS.get(m, m)} T1/T2" if ci == 0 else None),
            )
        direct = np.asarray(stats["direct"])
        if direct.any():
            ax.plot(
                levels[direct],
                cov[direct, FLAIR_CHANNEL],
                "s",
                ms=10,
                mfc="none",
                color=_COLOURS.get(m, "k"),
                label=f"{_LABELS.get(m, m)}: own quantile heads",
            )
    ax.set_xlabel("quantile level tau")
    ax.set_ylabel("fraction of healthy brain voxels below q_tau")
    ax.set_title("quantile coverage (healthy validation)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    edges = np.asarray(_Z_BINS)
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    for m, stats in result["models"].items():
        z = stats["z"][CHANNELS[FLAIR_CHANNEL]]
        hist = np.asarray(z["hist"], dtype=float)
        density = hist / max(hist.sum(), 1) / width
        ax.step(
            centres,
            np.where(density > 0, density, np.nan),
            where="mid",
            color=_COLOURS.get(m, "k"),
            label=f"{_LABELS.get(m, m)} (mean {z['mean']:.2f}, std {z['std']:.2f})",
        )
    ax.plot(centres, norm.pdf(centres), "k--", lw=1, label="N(0, 1)")
    ax.set_yscale("log")
    ax.set_ylim(1e-5, 1.5)
    ax.set_xlabel("FLAIR z-score (clipped to +-10)")
    ax.set_ylabel("density")
    ax.set_title("z on healthy brain voxels")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    for m, stats in result["models"].items():
        z = stats["z"][CHANNELS[FLAIR_CHANNEL]]
        ax.plot(z["qq_theory"], z["qq_sample"], ".-", ms=3, color=_COLOURS.get(m, "k"), label=_LABELS.get(m, m))
    lim = 3.2
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1, label="N(0, 1)")
    ax.set_xlabel("N(0, 1) quantile")
    ax.set_ylabel("FLAIR z quantile")
    ax.set_title("Q-Q plot (0.1 % to 99.9 %)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def run_calibration(
    out_dir: str | os.PathLike | None = None,
    section: str = "validation",
    levels: Sequence[float] = CALIBRATION_LEVELS,
    seed: int = 0,
    **setup: Any,
) -> dict[str, Any]:
    """Measure the calibration of each method on healthy held-out subjects; optionally save figure and tables.

    Args:
        out_dir: where ``calibration.png``, ``calibration.md`` and ``calibration.json`` go (``None``: nothing saved).
        section: datalist section of held-out subjects; only its healthy volumes (no label, or an all-zero one)
            are used, so ``test`` gives the healthy test subjects.
        levels: quantile levels of the coverage table.

        seed: training seed (models trained here) and the seed of the calibration statistics.
        setup: the cohort and models, keyword arguments of :func:`~monai_qrvae.experiments.common.experiment_models`
            (``work_dir``, ``datalist``, ``models``, ``methods``, ``quick``, ``epochs``, ``progress``).

    Returns:
        ``{"levels", "models": {method: calibration_stats}, "model_dirs", "datalist", "coverage_table", "z_table",
        "files", "seconds"}``.
    """
    start = time.perf_counter()
    datalist, model_dirs = experiment_models(out_dir, seed=seed, **setup)
    from monai_qrvae.workflows import ModelConfig

    result: dict[str, Any] = {
        "levels": [float(t) for t in levels],
        "section": section,
        "datalist": str(datalist),
        "model_dirs": {m: str(p) for m, p in model_dirs.items()},
        "models": {},
    }
    for method, model_dir in model_dirs.items():
        config = ModelConfig.load(Path(model_dir) / "model_config.json")
        preds = predict_volumes(model_dir, datalist, section)
        preds = [p for p in preds if p.label is None or not np.any(p.label)]  # healthy volumes only (e.g. of test)
        own = config.quantiles if config.method == "qrvae" else None
        result["models"][method] = calibration_stats(preds, levels, network_quantiles=own, seed=seed)
        result["models"][method]["method"] = config.method
    result["coverage_table"] = coverage_table(result)
    result["z_table"] = z_table(result)
    result["files"] = {}
    if out_dir is not None:
        out = Path(out_dir)
        result["files"]["figure"] = str(plot_calibration(result, out / "calibration.png"))
        text = (
            "Coverage: fraction of healthy brain voxels below each predicted quantile (* = the network's own "
            "quantile head; other values are mu + sigma Phi^-1(tau)).\n\n"
            + result["coverage_table"]
            + "\nz-scores on healthy brain voxels against N(0, 1).\n\n"
            + result["z_table"]
        )
        result["files"]["table"] = str(write_text(out / "calibration.md", text))
    return finish_result(result, out_dir, "calibration", start)
