"""The quantile-function score: where an intensity lies in the predicted conditional quantiles, on the normal scale."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from scipy.stats import norm

from monai_qrvae.anomaly.utils import _float_dtype, _select_channel, as_tensor, check_quantiles, split_quantiles

__all__ = ["quantile_function_score", "interpolate_normal_score"]


def quantile_function_score(
    x: Any, pred: Any, quantiles: Sequence[float], sigma_floor: float = 1e-3, channel: int | None = None
) -> torch.Tensor:
    """Score read from the predicted quantile function: where ``x`` lies between the predicted quantiles.

    The predicted quantiles ``q_1 <= ... <= q_Q`` at levels ``tau_1 < ... < tau_Q`` give the points
    ``(q_k, Phi^-1(tau_k))`` of the conditional distribution on the normal-score scale; the score is their piecewise
    linear interpolant at ``x``, continued linearly beyond ``q_1`` and ``q_Q`` with the slope of the outer segments
    (a Gaussian tail matched to the two outer quantiles). So ``Phi(score)`` is the predicted CDF at ``x`` between the
    outer quantiles, and ``p_value(score)`` its upper tail. For two quantiles it equals the Gaussian z-score
    ``(x - mu) / sigma`` of :func:`quantiles_to_mu_sigma` when one of them is 0.5; with tail quantiles (e.g. 0.025,
    0.15, 0.5, 0.85, 0.975) skewed or heavy tails are followed instead of extrapolated from the centre.

    Args:
        x: observed intensities ``(B, C, spatial...)`` (or ``(B, 1, ...)`` with ``channel``).
        pred: quantile-major prediction ``(B, Q*C, spatial...)``.
        quantiles: the ``Q >= 2`` levels, strictly increasing.
        sigma_floor: smallest quantile spacing per unit of normal score (as the sigma floor of the z-score): keeps
            the score finite where predicted quantiles coincide.
        channel: score only this input channel (``x`` may then have one channel); ``None``: every channel.

    Returns:
        Finite scores ``(B, C, spatial...)`` (``(B, 1, ...)`` with ``channel``), float32 (float64 for float64 input).
        Crossing predictions are sorted first.

    Raises:
        ValueError: for fewer than two quantiles, mismatched shapes or a non-positive ``sigma_floor``.
    """
    q = check_quantiles(quantiles)
    if len(q) < 2:
        raise ValueError(f"at least two quantiles are needed for a quantile-function score, got {q}.")
    if not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}.")
    groups = split_quantiles(as_tensor(pred), len(q))
    groups = groups.to(_float_dtype(groups))
    if channel is not None:
        groups = _select_channel(groups.movedim(1, -1), channel, "pred").movedim(-1, 1)
    xt = as_tensor(x).to(device=groups.device)
    if channel is not None and xt.shape[1] != 1:
        xt = _select_channel(xt, channel, "x")
    if tuple(xt.shape) != tuple(groups[:, 0].shape):
        raise ValueError(
            f"x of shape {tuple(xt.shape)} does not match the {len(q)} predicted quantiles "
            f"{tuple(groups[:, 0].shape)}."
        )
    nscore = torch.as_tensor(norm.ppf(q), dtype=groups.dtype, device=groups.device)
    return interpolate_normal_score(xt.to(groups.dtype), groups, nscore, sigma_floor)


def interpolate_normal_score(
    x: torch.Tensor, groups: torch.Tensor, normal_scores: torch.Tensor, sigma_floor: float
) -> torch.Tensor:
    """The core of :func:`quantile_function_score` (plain torch, TorchScript-compatible, no checks).

    Args:
        x: ``(B, C, spatial...)`` intensities.
        groups: ``(B, Q, C, spatial...)`` predicted quantiles (sorted here).
        normal_scores: ``(Q,)`` ``Phi^-1(tau_k)``, increasing.
        sigma_floor: smallest quantile spacing per unit of normal score.
    """
    num_q = groups.shape[1]
    groups = torch.sort(groups, dim=1).values
    shape = [1, num_q] + [1] * (groups.dim() - 2)
    nscore = normal_scores.to(groups.dtype).reshape(shape).expand_as(groups)
    xt = x.unsqueeze(1)
    # segment j joins quantiles j and j + 1: the last quantile <= x, clamped to the outer segments for extrapolation
    below = (groups <= xt).sum(dim=1, keepdim=True)
    j = (below - 1).clamp(0, num_q - 2)
    q_lo = groups.gather(1, j)
    q_hi = groups.gather(1, j + 1)
    n_lo = nscore.gather(1, j)
    n_hi = nscore.gather(1, j + 1)
    width = torch.maximum(q_hi - q_lo, sigma_floor * (n_hi - n_lo))
    score = (n_lo + (xt - q_lo) * (n_hi - n_lo) / width).squeeze(1)
    return torch.nan_to_num(score, nan=0.0, posinf=1e6, neginf=-1e6)
