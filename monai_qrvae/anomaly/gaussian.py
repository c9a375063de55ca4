"""The Gaussian model of x given z: quantiles -> (mu, sigma), z-scores, p-values and the z/p anomaly maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.utils import convert_to_dst_type
from scipy.stats import norm

from monai_qrvae.anomaly.utils import (
    FLAIR_CHANNEL,
    _float_dtype,
    _select_channel,
    as_tensor,
    broadcast_mask,
    check_quantiles,
    split_quantiles,
)

__all__ = ["PPF_085", "quantiles_to_mu_sigma", "z_score", "p_value", "anomaly_maps"]

#: ``Phi^-1(0.85)``: the number of standard deviations between the 0.15 and 0.5 quantiles of a Gaussian.
#: The authors' reference code omits this factor when it turns quantiles into sigma; we do not.
PPF_085 = float(norm.ppf(0.85))

_SQRT1_2 = 0.7071067811865476  # 1 / sqrt(2)


def quantiles_to_mu_sigma(
    pred: torch.Tensor, quantiles: Sequence[float], sigma_floor: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian mean and standard deviation from predicted conditional quantiles.

    ``mu`` is the 0.5 quantile when it is predicted, otherwise the least-squares intercept of ``q_tau`` against
    ``Phi^-1(tau)``; ``sigma`` is the least-squares slope about ``mu``. For the paper's ``(0.15, 0.5)`` this is
    exactly ``(q_0.5 - q_0.15) / Phi^-1(0.85)`` (the authors' code drops the ``Phi^-1(0.85)`` factor; we keep it).
    Crossing quantiles give a negative slope, which the floor clamps, so sigma is always ``>= sigma_floor`` and
    never zero or NaN.

    Args:
        pred: quantile-major prediction ``(B, Q*C, spatial...)``.
        quantiles: the ``Q`` quantile levels, strictly increasing, at least two.
        sigma_floor: smallest sigma returned, ``> 0``.

    Returns:
        ``(mu, sigma)``, each ``(B, C, spatial...)``, float32 (float64 when ``pred`` is float64).

    Raises:
        ValueError: for fewer than two quantiles, a bad layout or a non-positive ``sigma_floor``.
    """
    q = check_quantiles(quantiles)
    if len(q) < 2:
        raise ValueError(f"at least two quantiles are needed to estimate sigma, got {q}.")
    if not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}.")
    pred = as_tensor(pred)
    groups = split_quantiles(pred, len(q))
    groups = groups.to(_float_dtype(groups))
    ppf = torch.as_tensor(norm.ppf(q), dtype=groups.dtype, device=groups.device)
    ppf = ppf.view(1, len(q), *([1] * (groups.ndim - 2)))
    if 0.5 in q:
        mu = groups[:, q.index(0.5)]
        centred_ppf = ppf  # Phi^-1(0.5) = 0: the regression line goes through (0, mu)
    else:
        centred_ppf = ppf - ppf.mean(dim=1, keepdim=True)
        slope = (centred_ppf * groups).sum(1) / centred_ppf.pow(2).sum(1)
        mu = groups.mean(1) - slope * ppf.mean(dim=1)
    sigma = (centred_ppf * (groups - mu.unsqueeze(1))).sum(1) / centred_ppf.pow(2).sum(1)
    sigma = torch.nan_to_num(sigma, nan=sigma_floor).clamp_min(sigma_floor)
    return mu, sigma


def z_score(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, sigma_floor: float = 1e-3) -> torch.Tensor:
    """``(x - mu) / max(sigma, sigma_floor)``, computed in float32 so reduced precision cannot overflow.

    Args:
        x: observed intensities.
        mu: predicted mean, same shape as ``x``.
        sigma: predicted standard deviation, same shape as ``x``.
        sigma_floor: smallest sigma used, ``> 0``.

    Returns:
        Finite z-scores (float32, float64 for float64 input): NaN becomes 0, infinities become ``+-1e6``.

    Raises:
        ValueError: when the shapes differ or ``sigma_floor <= 0``.
    """
    if x.shape != mu.shape or mu.shape != sigma.shape:
        raise ValueError(
            f"x, mu and sigma must have the same shape, got {tuple(x.shape)}, {tuple(mu.shape)}, "
            f"{tuple(sigma.shape)}."
        )
    if not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}.")
    dtype = torch.float64 if torch.float64 in (x.dtype, mu.dtype, sigma.dtype) else torch.float32
    sigma_ = torch.nan_to_num(sigma.to(dtype), nan=sigma_floor).clamp_min(sigma_floor)
    z = (x.to(dtype) - mu.to(dtype)) / sigma_
    return torch.nan_to_num(z, nan=0.0, posinf=1e6, neginf=-1e6)


def p_value(z: torch.Tensor, alternative: str = "greater") -> torch.Tensor:
    """p-value of a standard-normal z-score.

    Args:
        z: z-scores.
        alternative: ``"greater"`` (hyperintense anomalies, ``1 - Phi(z)``), ``"less"`` (``Phi(z)``) or
            ``"two-sided"`` (``2 * (1 - Phi(|z|))``).

    Returns:
        p-values in ``[0, 1]``, float32 (float64 for float64 input).

    Raises:
        ValueError: for an unknown ``alternative``.
    """
    # 0.5 * erfc(z / sqrt(2)) keeps full relative precision in the upper tail; torch.special.ndtr(-z) computes
    # 1 - Phi(z) there and returns 0 for z > 5.5 in float32 (and loses digits in float64).
    z = z.to(_float_dtype(z)) * _SQRT1_2
    if alternative == "greater":
        return 0.5 * torch.special.erfc(z)
    if alternative == "less":
        return 0.5 * torch.special.erfc(-z)
    if alternative == "two-sided":
        return torch.special.erfc(z.abs()).clamp_max(1.0)
    raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}.")


def anomaly_maps(
    image: Any,
    mu: Any,
    sigma: Any,
    channel: int | None = FLAIR_CHANNEL,
    mask: Any = None,
    alternative: str = "greater",
    sigma_floor: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """z-score and p-value maps of one contrast (FLAIR by default) under the predicted Gaussian.

    Args:
        image: observed intensities ``(B, C, spatial...)``.
        mu: predicted mean, ``(B, C, spatial...)`` or already one channel ``(B, 1, spatial...)``.
        sigma: predicted standard deviation, same layout as ``mu``.
        channel: the channel scored (``FLAIR_CHANNEL`` = 2). Inputs with one channel are used as they are;
            ``None`` scores every channel.
        mask: brain mask broadcastable to the selected ``(B, 1, spatial...)``; outside it ``z = 0`` and ``p = 1``.
        alternative: ``"greater"`` (hyperintense lesions), ``"less"`` or ``"two-sided"``, see :func:`p_value`.
        sigma_floor: smallest sigma used in the z-score.

    Returns:
        ``{"z": z, "p": p}``, each ``(B, 1, spatial...)`` (``(B, C, ...)`` for ``channel=None``), float32
        (float64 for float64 input), finite; a MetaTensor ``image`` passes its metadata on.

    Raises:
        ValueError: for mismatched shapes, a bad channel, mask or alternative.
    """
    x = _select_channel(as_tensor(image), channel, "image")
    m = _select_channel(as_tensor(mu), channel, "mu").to(x.device)
    s = _select_channel(as_tensor(sigma), channel, "sigma").to(x.device)
    z = z_score(x, m, s, sigma_floor=sigma_floor)
    p = p_value(z, alternative=alternative)
    if mask is not None:
        inside = broadcast_mask(mask, z.shape, z.device)
        z = torch.where(inside, z, torch.zeros((), dtype=z.dtype, device=z.device))
        p = torch.where(inside, p, torch.ones((), dtype=p.dtype, device=p.device))
    if isinstance(image, MetaTensor):  # keep the image's metadata (affine, filename) for saving
        z = convert_to_dst_type(z, image, dtype=z.dtype)[0]
        p = convert_to_dst_type(p, image, dtype=p.dtype)[0]
    return {"z": z, "p": p}
