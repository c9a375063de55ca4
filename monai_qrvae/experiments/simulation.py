"""The variance-shrinkage simulation of the QR-VAE paper: a 2-D manifold in 4-D with known heteroscedastic noise.

Data: manifold coordinates ``t ~ U[-1, 1]^2`` are mapped into 4-D by the smooth embedding

``f(t) = (t1, t2, 0.5 sin(pi t1) + 0.5 t2^2, 0.5 cos(pi t2) + 0.5 t1 t2)``

and observed with Gaussian noise whose standard deviation grows linearly along the first coordinate,
``sigma(t) = sigma_min + (sigma_max - sigma_min) (1 + t1) / 2`` (0.05 to 0.30 by default), the same in all four
dimensions. Two small MLP VAEs with the same encoder, decoder and latent size are trained on the noisy points:

- a Gaussian VAE whose decoder predicts a mean and a log-variance per dimension, trained with
  :class:`~monai_qrvae.losses.GaussianVAELoss` (Gaussian negative log-likelihood + KL);
- a QR-VAE whose decoder predicts the 0.15 and 0.5 quantiles (non-crossing, as :class:`~monai_qrvae.networks.QRVAE`),
  trained with :class:`~monai_qrvae.losses.QRVAELoss` (pinball loss + KL); its sigma is
  ``(q_0.5 - q_0.15) / Phi^-1(0.85)`` (:func:`~monai_qrvae.anomaly.quantiles_to_mu_sigma`).

On fresh test points each model encodes ``x`` (posterior mean) and decodes a sigma, which is compared with the
true ``sigma(t)``. The KL weight ``beta`` decides how much of the noise the encoder may copy into the latent code
(which is what shrinks the decoder's variance), so the experiment is run for several ``beta``.

Reference:
    Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
    Quantile Regression", arXiv:2010.09042 (2020).
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
from torch import nn

from monai_qrvae.anomaly import check_quantiles
from monai_qrvae.experiments.common import new_figure, save_figure
from monai_qrvae.experiments.manifold import make_manifold_data, sigma_summary
from monai_qrvae.experiments.mlp_vae import MLPVAE, predict_mu_sigma, train_mlp_vae
from monai_qrvae.losses import GaussianVAELoss, QRVAELoss
from monai_qrvae.tables import markdown_table
from monai_qrvae.utils import write_json, write_text

__all__ = [
    "make_manifold_data",
    "MLPVAE",
    "train_mlp_vae",
    "predict_mu_sigma",
    "sigma_summary",
    "run_simulation",
    "simulation_table",
    "plot_simulation",
    "SIMULATION_DEFAULTS",
    "SIMULATION_QUICK",
]
# make_manifold_data, sigma_summary (.manifold) and MLPVAE, train_mlp_vae, predict_mu_sigma (.mlp_vae) are
# re-exported here, where they were first defined.

#: default settings of :func:`run_simulation` (about 1-2 minutes on 2 CPU cores).
SIMULATION_DEFAULTS: dict[str, Any] = {
    "n_train": 4000,
    "n_test": 2000,
    "epochs": 150,
    "betas": (1.0, 0.1, 0.01),
    "main_beta": 0.1,
    "batch_size": 128,
    "lr": 1e-3,
}
#: quick settings (a few seconds), for tests and ``QRVAE_NOTEBOOK_QUICK=1``.
SIMULATION_QUICK: dict[str, Any] = {
    "n_train": 1500,
    "n_test": 1000,
    "epochs": 40,
    "betas": (0.1,),
    "main_beta": 0.1,
    "batch_size": 64,
    "lr": 3e-3,
}

_MODELS = ("gaussian", "qrvae")
_LABELS = {"gaussian": "Gaussian VAE", "qrvae": "QR-VAE"}
_COLOURS = {"gaussian": "tab:red", "qrvae": "tab:blue"}
#: columns of :func:`simulation_table` and their headers.
_TABLE_COLUMNS = {
    "model": "model",
    "beta": "beta",
    "sigma_ratio_median": "median sigma/true",
    "sigma_ratio_geomean": "geo-mean sigma/true",
    "sigma_ratio_of_means": "mean sigma / mean true",
    "sigma_corr": "corr(sigma, true)",
    "residual_ratio": "RMS residual / true",
    "z_std": "std z",
    "coverage_15": "P(x < q0.15)",
    "at_clamp": "at logvar clamp",
}


def _fit_one(
    kind: str,
    beta: float,
    train: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    latent_size: int,
    hidden_size: int,
    epochs: int,
    batch_size: int,
    lr: float,
    quantiles: Sequence[float],
    seed: int,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    if kind == "gaussian":
        model = MLPVAE(4, latent_size, hidden_size, quantiles=None)
        loss: nn.Module = GaussianVAELoss(beta=beta, learn_variance=True)
    else:
        model = MLPVAE(4, latent_size, hidden_size, quantiles=quantiles)
        loss = QRVAELoss(quantiles=quantiles, beta=beta)
    start = time.perf_counter()
    history = train_mlp_vae(model, loss, train["x"], epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    seconds = time.perf_counter() - start
    mu, sigma = predict_mu_sigma(model, test["x"])
    row: dict[str, Any] = {"model": kind, "beta": float(beta)}
    row.update(sigma_summary(test["x"], mu, sigma, test["sigma"]))
    if kind == "gaussian":  # share of sigmas held up only by the loss's clamp of the log-variance
        floor = math.exp(0.5 * loss.min_logvar)
        row["at_clamp"] = float((sigma <= floor * 1.05).double().mean())
    else:
        row["at_clamp"] = 0.0
    row["final_loss"] = history[-1]
    row["train_seconds"] = seconds
    return row, {"mu": mu, "sigma": sigma}


def simulation_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run_simulation` rows."""
    return markdown_table(
        rows,
        list(_TABLE_COLUMNS),
        headers=list(_TABLE_COLUMNS.values()),
        formats={"model": lambda m: _LABELS.get(m, str(m)), "beta": lambda b: f"{b:g}"},
    )


def plot_simulation(
    result: dict[str, Any], path: str | os.PathLike, test: dict[str, torch.Tensor], preds: dict[str, Any]
) -> Path:
    """Three panels: predicted vs true sigma (main beta), sigma along the noise gradient, median ratio vs beta."""
    fig, axes = new_figure(1, 3, figsize=(15.0, 4.3))
    beta = result["config"]["main_beta"]
    true = test["sigma"][:, 0].numpy()
    t1 = test["t"][:, 0].numpy()
    rng = np.random.default_rng(0)
    show = rng.choice(len(true), size=min(1500, len(true)), replace=False)
    ax = axes[0, 0]
    lo = max(1e-3, min(float(np.min(preds[k]["sigma"].numpy())) for k in _MODELS) * 0.8)
    hi = max(float(np.max(preds[k]["sigma"].numpy())) for k in _MODELS) * 1.2
    for kind in _MODELS:
        s = preds[kind]["sigma"].numpy()
        for d, marker in enumerate(("o", "s", "^", "v")):
            ax.scatter(
                true[show],
                s[show, d],
                s=4,
                alpha=0.25,
                color=_COLOURS[kind],
                marker=marker,
                label=_LABELS[kind] if d == 0 else None,
            )
    t_lo, t_hi = float(true.min()), float(true.max())
    ax.plot([t_lo, t_hi], [t_lo, t_hi], "k--", lw=1.5, label="predicted = true")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xlabel("true noise sigma")
    ax.set_ylabel("predicted sigma (all 4 dimensions)")
    ax.set_title(f"predicted vs true sigma (beta = {beta:g})")
    ax.legend(fontsize=8, markerscale=3)

    ax = axes[0, 1]
    bins = np.linspace(-1, 1, 11)
    centres = 0.5 * (bins[1:] + bins[:-1])
    which = np.digitize(t1, bins[1:-1])
    ax.plot(centres, [true[which == b].mean() for b in range(10)], "k-", lw=2, label="true sigma")
    for kind in _MODELS:
        s = preds[kind]["sigma"].numpy()
        for d, style in enumerate(("-", "--", ":", "-.")):
            ax.plot(
                centres,
                [s[which == b, d].mean() for b in range(10)],
                style,
                color=_COLOURS[kind],
                label=f"{_LABELS[kind]}, dim {d + 1}",
            )
    ax.set_yscale("log")
    ax.set_xlabel("manifold coordinate t1 (noise grows to the right)")
    ax.set_ylabel("mean sigma in bin")
    ax.set_title("heteroscedasticity")
    ax.legend(fontsize=6, ncol=2)

    ax = axes[0, 2]
    for kind in _MODELS:
        rows = sorted((r for r in result["rows"] if r["model"] == kind), key=lambda r: r["beta"])
        betas = [r["beta"] for r in rows]
        ax.plot(betas, [r["sigma_ratio_median"] for r in rows], "o-", color=_COLOURS[kind], label=f"{_LABELS[kind]}")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KL weight beta")
    ax.set_ylabel("median predicted / true sigma")
    ax.set_title("variance shrinkage vs beta")
    ax.legend(fontsize=8)
    out = save_figure(fig, path)
    return out


def run_simulation(
    out_dir: str | os.PathLike | None = None,
    quick: bool = False,
    n_train: int | None = None,
    n_test: int | None = None,
    epochs: int | None = None,
    betas: Sequence[float] | None = None,
    main_beta: float | None = None,
    latent_size: int = 2,
    hidden_size: int = 64,
    batch_size: int | None = None,
    lr: float | None = None,
    quantiles: Sequence[float] = (0.15, 0.5),
    sigma_min: float = 0.05,
    sigma_max: float = 0.30,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the variance-shrinkage simulation for every ``beta`` and both models; optionally save figure and tables.

    Args:
        out_dir: where ``simulation.png``, ``simulation.md`` and ``simulation.json`` go (``None``: nothing saved).
        quick: the small settings of :data:`SIMULATION_QUICK` (explicit arguments still win).
        n_train: training points (default 4000).
        n_test: test points (default 2000).
        epochs: training epochs of each model (default 150).
        betas: KL weights tried (default 1, 0.1, 0.01).
        main_beta: the ``beta`` of the headline numbers and the scatter plot (default 0.1; must be in ``betas``).
        latent_size: latent dimension of both VAEs (2: the manifold's dimension).
        hidden_size: width of the MLPs.
        batch_size: minibatch size (default 128, quick 64).
        lr: Adam learning rate (default 1e-3, quick 3e-3).
        quantiles: QR-VAE quantile levels.
        sigma_min: true noise sigma at one end of the manifold.
        sigma_max: true noise sigma at the other end.
        seed: seed of the data and of the training.

    Returns:
        ``{"config", "rows", "main", "table", "files", "seconds"}``: one row per ``(model, beta)`` with the numbers
        of :func:`sigma_summary`; ``main`` holds the ``gaussian`` and ``qrvae`` rows at ``main_beta``, and
        ``ratio_gaussian_over_true`` / ``ratio_qrvae_over_true`` (median ratios).
    """
    settings = dict(SIMULATION_QUICK if quick else SIMULATION_DEFAULTS)
    overrides = {
        "n_train": n_train,
        "n_test": n_test,
        "epochs": epochs,
        "betas": betas,
        "batch_size": batch_size,
        "lr": lr,
    }
    for key, value in overrides.items():
        if value is not None:
            settings[key] = value
    if main_beta is not None:
        settings["main_beta"] = main_beta
    settings["betas"] = tuple(float(b) for b in settings["betas"])
    if float(settings["main_beta"]) not in settings["betas"]:
        raise ValueError(f"main_beta {settings['main_beta']} must be one of betas {settings['betas']}.")
    quantiles = check_quantiles(quantiles)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny MLPs: extra threads only add overhead (and fight on a shared machine)
    try:
        return _run(out_dir, settings, quantiles, latent_size, hidden_size, sigma_min, sigma_max, seed, quick)
    finally:
        torch.set_num_threads(threads)


def _run(
    out_dir: str | os.PathLike | None,
    settings: dict[str, Any],
    quantiles: tuple[float, ...],
    latent_size: int,
    hidden_size: int,
    sigma_min: float,
    sigma_max: float,
    seed: int,
    quick: bool,
) -> dict[str, Any]:
    start = time.perf_counter()
    train = make_manifold_data(settings["n_train"], seed=seed, sigma_min=sigma_min, sigma_max=sigma_max)
    test = make_manifold_data(settings["n_test"], seed=seed + 1, sigma_min=sigma_min, sigma_max=sigma_max)
    rows: list[dict[str, Any]] = []
    main_preds: dict[str, Any] = {}
    for beta in settings["betas"]:
        for kind in _MODELS:
            row, pred = _fit_one(
                kind,
                beta,
                train,
                test,
                latent_size,
                hidden_size,
                settings["epochs"],
                settings["batch_size"],
                settings["lr"],
                quantiles,
                seed,
            )
            rows.append(row)
            if beta == float(settings["main_beta"]):
                main_preds[kind] = pred
    main = {r["model"]: r for r in rows if r["beta"] == float(settings["main_beta"])}
    main["ratio_gaussian_over_true"] = main["gaussian"]["sigma_ratio_median"]
    main["ratio_qrvae_over_true"] = main["qrvae"]["sigma_ratio_median"]
    config = {
        **settings,
        "latent_size": latent_size,
        "hidden_size": hidden_size,
        "quantiles": quantiles,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "seed": seed,
        "quick": quick,
    }
    result: dict[str, Any] = {"config": config, "rows": rows, "main": main, "table": simulation_table(rows)}
    result["files"] = {}
    if out_dir is not None:
        out = Path(out_dir)
        result["files"]["figure"] = str(plot_simulation(result, out / "simulation.png", test, main_preds))
        result["files"]["table"] = str(write_text(out / "simulation.md", result["table"]))
    result["seconds"] = time.perf_counter() - start
    if out_dir is not None:
        result["files"]["json"] = str(Path(out_dir) / "simulation.json")
        write_json(result["files"]["json"], {k: v for k, v in result.items() if k != "table"})
    return result
