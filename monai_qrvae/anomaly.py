"""Pure tensor functions that turn predicted quantiles into anomaly maps.

Quantiles -> (mu, sigma) under a Gaussian model of x given z, z-scores, p-values, Benjamini-Hochberg
false-discovery-rate masks, and the usual post-processing filters. No engine or file handling lives here.

Reference:
    Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
    Quantile Regression", arXiv:2010.09042 (2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.stats import norm

__all__ = [
    "FLAIR_CHANNEL",
    "PPF_085",
    "check_quantiles",
    "split_quantiles",
    "quantiles_to_mu_sigma",
    "z_score",
    "p_value",
]

#: Index of the FLAIR channel in the (T1, T2, FLAIR) channel order used throughout the package.
FLAIR_CHANNEL = 2

#: ``Phi^-1(0.85)``: the number of standard deviations between the 0.15 and 0.5 quantiles of a Gaussian.
#: The authors' reference code omits this factor when it turns quantiles into sigma; we do not.
PPF_085 = float(norm.ppf(0.85))


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Validate a quantile tuple: non-empty, strictly increasing, each in the open interval (0, 1).

    Raises:
        ValueError: when the quantiles are empty, unsorted, repeated or outside (0, 1).
    """
    q = tuple(float(t) for t in quantiles)
    if len(q) == 0:
        raise ValueError("quantiles must contain at least one value in (0, 1), got an empty sequence.")
    if any(not 0.0 < t < 1.0 for t in q):
        raise ValueError(f"quantiles must lie in the open interval (0, 1), got {q}.")
    if any(b <= a for a, b in zip(q[:-1], q[1:])):
        raise ValueError(f"quantiles must be strictly increasing, got {q}.")
    return q


def split_quantiles(pred: torch.Tensor, num_quantiles: int) -> torch.Tensor:
    """View a quantile-major prediction ``(B, Q*C, ...)`` as ``(B, Q, C, ...)``.

    Raises:
        ValueError: when the channel count is not a multiple of ``num_quantiles``.
    """
    if pred.ndim < 3:
        raise ValueError(f"expected a batched prediction (B, Q*C, spatial...), got shape {tuple(pred.shape)}.")
    if pred.shape[1] % num_quantiles != 0:
        raise ValueError(
            f"prediction has {pred.shape[1]} channels, expected a multiple of the {num_quantiles} quantiles "
            "(quantile-major layout Q*C)."
        )
    return pred.reshape(pred.shape[0], num_quantiles, pred.shape[1] // num_quantiles, *pred.shape[2:])


def quantiles_to_mu_sigma(
    pred: torch.Tensor, quantiles: Sequence[float], sigma_floor: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian mean and standard deviation from predicted conditional quantiles.

    ``mu`` is the 0.5 quantile when it is predicted, otherwise the least-squares intercept of ``q_tau`` against
    ``Phi^-1(tau)``; ``sigma`` is the least-squares slope about ``mu``. For the paper's ``(0.15, 0.5)`` this is
    exactly ``(q_0.5 - q_0.15) / Phi^-1(0.85)``. Crossing quantiles give a negative slope, which the floor
    clamps, so sigma is always ``>= sigma_floor`` and never zero.

    Args:
        pred: quantile-major prediction ``(B, Q*C, spatial...)``.
        quantiles: the ``Q`` quantile levels, strictly increasing.
        sigma_floor: smallest sigma returned.

    Returns:
        ``(mu, sigma)``, each ``(B, C, spatial...)``.
    """
    q = check_quantiles(quantiles)
    if len(q) < 2:
        raise ValueError(f"at least two quantiles are needed to estimate sigma, got {q}.")
    groups = split_quantiles(pred, len(q)).float()
    ppf = torch.as_tensor(norm.ppf(q), dtype=groups.dtype, device=groups.device)
    ppf = ppf.view(1, len(q), *([1] * (groups.ndim - 2)))
    if 0.5 in q:
        mu = groups[:, q.index(0.5)]
        centred_ppf = ppf
    else:
        centred_ppf = ppf - ppf.mean(dim=1, keepdim=True)
        slope = (centred_ppf * groups).sum(1) / centred_ppf.pow(2).sum(1)
        mu = groups.mean(1) - slope * ppf.mean(dim=1)
    sigma = (centred_ppf * (groups - mu.unsqueeze(1))).sum(1) / centred_ppf.pow(2).sum(1)
    sigma = torch.nan_to_num(sigma, nan=sigma_floor).clamp_min(sigma_floor)
    return mu, sigma


def z_score(
    x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, sigma_floor: float = 1e-3
) -> torch.Tensor:
    """``(x - mu) / max(sigma, sigma_floor)``, computed in float32 so reduced precision cannot overflow."""
    if x.shape != mu.shape or mu.shape != sigma.shape:
        raise ValueError(
            f"x, mu and sigma must have the same shape, got {tuple(x.shape)}, {tuple(mu.shape)}, {tuple(sigma.shape)}."
        )
    z = (x.float() - mu.float()) / sigma.float().clamp_min(sigma_floor)
    return torch.nan_to_num(z, nan=0.0, posinf=1e6, neginf=-1e6)


def p_value(z: torch.Tensor, alternative: str = "greater") -> torch.Tensor:
    """p-value of a standard-normal z-score.

    Args:
        z: z-scores.
        alternative: ``"greater"`` (hyperintense anomalies, ``1 - Phi(z)``), ``"less"`` (``Phi(z)``) or
            ``"two-sided"`` (``2 * (1 - Phi(|z|))``).
    """
    z = z.float()
    if alternative == "greater":
        return torch.special.ndtr(-z)
    if alternative == "less":
        return torch.special.ndtr(z)
    if alternative == "two-sided":
        return (2.0 * torch.special.ndtr(-z.abs())).clamp_max(1.0)
    raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}.")
