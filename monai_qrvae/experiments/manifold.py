"""Data of the variance-shrinkage simulation: noisy points on a 2-D manifold in 4-D with known noise, and how a
predicted sigma compares with the true one.

``f(t) = (t1, t2, 0.5 sin(pi t1) + 0.5 t2^2, 0.5 cos(pi t2) + 0.5 t1 t2)`` for ``t ~ U[-1, 1]^2``, observed with
Gaussian noise of standard deviation ``sigma(t) = sigma_min + (sigma_max - sigma_min) (1 + t1) / 2`` in every
dimension (see :mod:`monai_qrvae.experiments.simulation`).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["make_manifold_data", "sigma_summary"]


def make_manifold_data(
    n: int, seed: int = 0, sigma_min: float = 0.05, sigma_max: float = 0.30
) -> dict[str, torch.Tensor]:
    """Noisy points on a 2-D manifold embedded in 4-D, with their known noise level.

    Args:
        n: number of points.
        seed: seed of the coordinates and the noise.
        sigma_min: noise standard deviation at ``t1 = -1``.
        sigma_max: noise standard deviation at ``t1 = +1``.

    Returns:
        ``{"x", "clean", "sigma", "t"}``: noisy points ``(n, 4)``, noise-free points ``f(t)`` ``(n, 4)``, the true
        noise standard deviation ``(n, 4)`` and the manifold coordinates ``(n, 2)``, float32.

    Raises:
        ValueError: for ``n < 1`` or noise levels that are not ``0 < sigma_min <= sigma_max``.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"expected 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1.0, 1.0, size=(int(n), 2))
    t1, t2 = t[:, 0], t[:, 1]
    clean = np.stack([t1, t2, 0.5 * np.sin(np.pi * t1) + 0.5 * t2**2, 0.5 * np.cos(np.pi * t2) + 0.5 * t1 * t2], axis=1)
    sigma = np.repeat((sigma_min + (sigma_max - sigma_min) * (1.0 + t1) / 2.0)[:, None], 4, axis=1)
    x = clean + sigma * rng.standard_normal(clean.shape)
    return {
        k: torch.as_tensor(v, dtype=torch.float32) for k, v in (("x", x), ("clean", clean), ("sigma", sigma), ("t", t))
    }


def sigma_summary(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, true_sigma: torch.Tensor) -> dict[str, float]:
    """How a predicted sigma compares with the true noise sigma (all ``(n, D)``).

    Returns:
        ``sigma_ratio_median`` (median of predicted / true over points and dimensions), ``sigma_ratio_geomean``
        (geometric mean of the ratio), ``sigma_ratio_of_means`` (mean predicted / mean true), ``sigma_corr``
        (Pearson correlation of predicted and true sigma: does it follow the heteroscedasticity?),
        ``residual_ratio`` (RMS of ``x - mu`` over the RMS true sigma: below 1 when the reconstruction has absorbed
        part of the noise), ``z_std`` (standard deviation of ``(x - mu) / sigma``), ``coverage_15`` and
        ``coverage_50`` (fraction of ``x`` below ``mu + sigma Phi^-1(tau)``: 0.15 and 0.5 when calibrated),
        ``mean_sigma`` and ``mean_true_sigma``.
    """
    ratio = (sigma / true_sigma).double().flatten()
    residual = (x - mu).double()
    z = residual / sigma.double()
    ppf_15 = float(torch.special.ndtri(torch.tensor(0.15, dtype=torch.float64)))
    s, t = sigma.double().flatten(), true_sigma.double().flatten()
    corr = float(torch.corrcoef(torch.stack([s, t]))[0, 1]) if float(s.std()) > 0 else float("nan")
    return {
        "sigma_ratio_median": float(ratio.median()),
        "sigma_ratio_geomean": float(ratio.log().mean().exp()),
        "sigma_ratio_of_means": float(s.mean() / t.mean()),
        "sigma_corr": corr,
        "residual_ratio": float(residual.pow(2).mean().sqrt() / t.pow(2).mean().sqrt()),
        "z_std": float(z.std()),
        "coverage_15": float((z < ppf_15).double().mean()),
        "coverage_50": float((z < 0).double().mean()),
        "mean_sigma": float(s.mean()),
        "mean_true_sigma": float(t.mean()),
    }
