"""Losses for quantile-regression and Gaussian variational autoencoders.

The quantile-regression VAE (QR-VAE) replaces the Gaussian likelihood of the decoder by the pinball (check)
loss of a few conditional quantiles, which avoids the variance shrinkage of Gaussian VAEs that learn a
per-pixel variance. The Gaussian VAE loss is kept as the baseline the paper compares against.

Reference:
    Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
    Quantile Regression", arXiv:2010.09042 (2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_qrvae.anomaly import check_quantiles, split_quantiles
from monai_qrvae.utils import check_finite

__all__ = ["pinball_loss", "kl_divergence", "QuantileLoss", "QRVAELoss", "GaussianVAELoss"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_pair(input: torch.Tensor, target: torch.Tensor, channels_per_target: int, what: str) -> None:
    """Check ``input (B, K*C, ...)`` against ``target (B, C, ...)`` with ``K = channels_per_target``."""
    if target.ndim < 3:
        raise ValueError(
            f"target must be batched and channel-first (B, C, spatial...), got shape {tuple(target.shape)}."
        )
    expected = (target.shape[0], channels_per_target * target.shape[1], *target.shape[2:])
    if tuple(input.shape) != expected:
        raise ValueError(
            f"input has shape {tuple(input.shape)} but target has shape {tuple(target.shape)}: expected input shape "
            f"{expected} ({what})."
        )


def prepare_mask(mask: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor | None:
    """Validate a ``(B, 1 or C, ...)`` mask against ``target (B, C, ...)`` and return it as a bool tensor."""
    if mask is None:
        return None
    ok = (
        mask.ndim == target.ndim
        and mask.shape[0] == target.shape[0]
        and mask.shape[1] in (1, target.shape[1])
        and mask.shape[2:] == target.shape[2:]
    )
    if not ok:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but target has shape {tuple(target.shape)}: expected "
            f"({target.shape[0]}, 1 or {target.shape[1]}, {', '.join(str(s) for s in target.shape[2:])})."
        )
    mask = mask != 0
    if not mask.any():
        raise ValueError(f"empty brain mask: the mask of shape {tuple(mask.shape)} is all zero, expected some voxels.")
    return mask


def _reduce_batch(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a per-sample ``(B,)`` tensor over the batch."""
    if reduction == LossReduction.MEAN.value:
        return x.mean()
    if reduction == LossReduction.SUM.value:
        return x.sum()
    return x


def _log_part(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Detached batch-reduced value for ``parts`` (``"none"`` logs the batch mean)."""
    x = x.detach()
    return x.sum() if reduction == LossReduction.SUM.value else x.mean()


def pinball_loss(input: torch.Tensor, target: torch.Tensor, quantiles: Sequence[float]) -> torch.Tensor:
    """Elementwise pinball (check) loss of predicted quantiles.

    ``rho_tau(u) = max(tau * u, (tau - 1) * u)`` with ``u = target - q_tau``: its expectation over the target is
    minimised by the true ``tau``-quantile. The gradient with respect to ``q_tau`` is ``-tau`` where ``u > 0``
    and ``1 - tau`` where ``u < 0``.

    Args:
        input: predicted quantiles ``(B, Q*C, spatial...)``, quantile-major (``input.view(B, Q, C, ...)[:, k]`` is
            quantile ``quantiles[k]`` of every channel).
        target: observed values ``(B, C, spatial...)``.
        quantiles: the ``Q`` quantile levels, strictly increasing in (0, 1).

    Returns:
        The elementwise loss, shape of ``input``.

    Raises:
        ValueError: bad quantiles, mismatched shapes (``input`` must have ``Q * C`` channels) or NaN values.
    """
    q = check_quantiles(quantiles)
    _check_pair(input, target, len(q), _quantile_channels(q))
    check_finite(input, "input", nan_only=True)
    check_finite(target, "target", nan_only=True)
    return _pinball(input, target, q)


def _quantile_channels(q: tuple[float, ...]) -> str:
    return f"Q * C channels for {len(q)} quantiles {q}"


def _pinball(input: torch.Tensor, target: torch.Tensor, q: tuple[float, ...]) -> torch.Tensor:
    """:func:`pinball_loss` without the checks (``input`` and ``target`` already validated)."""
    groups = split_quantiles(input, len(q))
    tau = torch.tensor(q, dtype=groups.dtype, device=groups.device).view(1, len(q), *([1] * (groups.ndim - 2)))
    u = target.unsqueeze(1).to(groups.dtype) - groups
    loss = torch.maximum(tau * u, (tau - 1.0) * u)
    return loss.reshape(input.shape)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per sample, summed over the latent dimensions.

    Args:
        mu: posterior means ``(B, latent...)``.
        logvar: posterior log-variances, shape of ``mu``.

    Returns:
        ``(B,)`` tensor, ``-0.5 * sum(1 + logvar - mu^2 - exp(logvar))``.
    """
    if mu.shape != logvar.shape or mu.ndim < 1:
        raise ValueError(
            f"mu and logvar must have the same batched shape (B, latent...), got {tuple(mu.shape)} and "
            f"{tuple(logvar.shape)}."
        )
    check_finite(mu, "mu", nan_only=True)
    check_finite(logvar, "logvar", nan_only=True)
    kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())
    return kl.reshape(kl.shape[0], -1).sum(1)


def _check_latent(mu: torch.Tensor, input: torch.Tensor) -> None:
    if mu.shape[0] != input.shape[0]:
        raise ValueError(
            f"mu has shape {tuple(mu.shape)} but input has shape {tuple(input.shape)}: expected the same batch size."
        )


class QuantileLoss(_Loss):
    """Pinball loss of ``Q`` predicted quantiles against a target, optionally inside a mask.

    ``input`` is ``BNHW[D]`` with ``N = Q * C`` channels in quantile-major order, ``target`` is ``BCHW[D]`` and
    ``mask`` (optional) is ``B1HW[D]`` or ``BCHW[D]``, bool or 0/1.

    Reference:
        Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
        Quantile Regression", arXiv:2010.09042 (2020).
    """

    def __init__(
        self, quantiles: Sequence[float] = (0.15, 0.5), reduction: LossReduction | str = LossReduction.MEAN
    ) -> None:
        """
        Args:
            quantiles: quantile levels, strictly increasing in (0, 1). Defaults to the paper's ``(0.15, 0.5)``.
            reduction: {``"none"``, ``"mean"``, ``"sum"``}. ``"mean"``: sum over quantiles of the mean over the
                (masked) elements; ``"sum"``: the total sum; ``"none"``: the elementwise ``(B, Q*C, ...)``
                loss with zeros outside the mask.
        """
        super().__init__(reduction=LossReduction(reduction).value)
        self.quantiles = check_quantiles(quantiles)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: predicted quantiles ``(B, Q*C, spatial...)``.
            target: ``(B, C, spatial...)``.
            mask: ``(B, 1 or C, spatial...)`` or None (every element counts).

        Raises:
            ValueError: mismatched shapes, NaN values, or an all-zero mask ("empty brain mask").
        """
        loss = pinball_loss(input, target, self.quantiles)
        m = prepare_mask(mask, target)
        num_q = len(self.quantiles)
        if m is not None:
            m = m.expand_as(target).repeat(1, num_q, *([1] * (target.ndim - 2)))
            loss = torch.where(m, loss, torch.zeros_like(loss))
        if self.reduction == LossReduction.NONE.value:
            return loss
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        count = target.numel() * num_q if m is None else m.sum()
        # the sum over quantiles of each quantile's mean over the same (masked) elements
        return loss.sum() * num_q / count


class _VAELoss(_Loss):
    """Negative ELBO of a VAE: a per-sample reconstruction term (set by the subclass) plus ``beta`` times the KL term.

    Subclasses give :meth:`_input_channels` (``input`` has ``K * C`` channels for a ``C``-channel target) and
    :meth:`_reconstruction` (the per-sample ``(B,)`` term and extra ``parts`` for logging).
    """

    def __init__(self, beta: float, reduction: LossReduction | str) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.beta = float(beta)
        self.parts: dict[str, torch.Tensor] = {}

    def _input_channels(self) -> tuple[int, str]:
        """``(K, what)``: ``input`` has ``K`` channels per target channel; ``what`` describes them for errors."""
        raise NotImplementedError

    def _reconstruction(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            input: the decoder output (see the class: quantiles ``(B, Q*C, spatial...)``, ``[mean, logvar]``
                ``(B, 2C, spatial...)`` or the mean ``(B, C, spatial...)``).
            target: ``(B, C, spatial...)``.
            mu: posterior means ``(B, latent)``.
            logvar: posterior log-variances ``(B, latent)``.
            mask: ``(B, 1 or C, spatial...)`` brain mask or None.

        Raises:
            ValueError: mismatched shapes, NaN values, or an all-zero mask ("empty brain mask").
        """
        _check_pair(input, target, *self._input_channels())
        check_finite(input, "input", nan_only=True)
        check_finite(target, "target", nan_only=True)
        _check_latent(mu, input)
        recon, parts = self._reconstruction(input, target, prepare_mask(mask, target))
        kl = kl_divergence(mu, logvar)
        total = recon + self.beta * kl
        self.parts = {"recon": _log_part(recon, self.reduction), "kl": _log_part(kl, self.reduction), **parts}
        return _reduce_batch(total, self.reduction)


class QRVAELoss(_VAELoss):
    """Negative ELBO of a quantile-regression VAE: pinball loss of every quantile plus ``beta`` times the KL term.

    Per sample, the pinball loss is **summed** over masked pixels, channels and quantiles and
    ``beta * KL(N(mu, exp(logvar)) || N(0, I))`` summed over the latent is added; ``reduction`` then acts over the
    batch. ``input`` is ``BNHW[D]`` with ``N = Q * C`` (quantile-major), ``target`` ``BCHW[D]``, ``mask``
    ``B1HW[D]`` / ``BCHW[D]`` or None, ``mu`` and ``logvar`` ``(B, latent)``.

    After each call ``self.parts`` holds detached batch-reduced values for logging: ``"recon"``, ``"kl"`` (without
    ``beta``) and one ``f"q{tau:g}"`` per quantile (e.g. ``"q0.15"``). With ``reduction="none"`` they are batch
    means.

    Reference:
        Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
        Quantile Regression", arXiv:2010.09042 (2020).
    """

    def __init__(
        self,
        quantiles: Sequence[float] = (0.15, 0.5),
        beta: float = 1.0,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        """
        Args:
            quantiles: quantile levels, strictly increasing in (0, 1). Defaults to the paper's ``(0.15, 0.5)``.
            beta: weight of the KL term.
            reduction: {``"none"``, ``"mean"``, ``"sum"``} over the batch; ``"none"`` returns ``(B,)``.
        """
        super().__init__(beta, reduction)
        self.quantiles = check_quantiles(quantiles)

    def _input_channels(self) -> tuple[int, str]:
        return len(self.quantiles), _quantile_channels(self.quantiles)

    def _reconstruction(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        num_q = len(self.quantiles)
        groups = split_quantiles(_pinball(input, target, self.quantiles), num_q)  # (B, Q, C, ...)
        if mask is not None:
            groups = torch.where(mask.unsqueeze(1), groups, torch.zeros_like(groups))
        per_quantile = groups.reshape(groups.shape[0], num_q, -1).sum(2)  # (B, Q)
        parts = {f"q{tau:g}": _log_part(per_quantile[:, k], self.reduction) for k, tau in enumerate(self.quantiles)}
        return per_quantile.sum(1), parts


class GaussianVAELoss(_VAELoss):
    """Negative ELBO of a Gaussian VAE (the baseline QR-VAE is compared with).

    With ``learn_variance=True`` ``input`` is ``BNHW[D]`` with ``N = 2C`` channels ``[mean (C), logvar (C)]`` and
    the reconstruction term is the Gaussian negative log-likelihood
    ``0.5 * (logvar + (x - mean)^2 / exp(logvar) + log(2 pi))`` with ``logvar`` clamped below at ``min_logvar``.
    With ``learn_variance=False`` (the MSE-VAE) ``input`` is ``BCHW[D]`` and the term is the squared error
    ``(x - mean)^2``. Either is summed per sample over masked pixels and channels, ``beta`` times the KL term is
    added and ``reduction`` acts over the batch. ``self.parts`` holds ``"recon"`` and ``"kl"`` like
    :py:class:`QRVAELoss`.

    Reference:
        Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
        Quantile Regression", arXiv:2010.09042 (2020).
    """

    def __init__(
        self,
        beta: float = 1.0,
        learn_variance: bool = True,
        reduction: LossReduction | str = LossReduction.MEAN,
        min_logvar: float = -10.0,
    ) -> None:
        """
        Args:
            beta: weight of the KL term.
            learn_variance: whether ``input`` carries a per-pixel log-variance (``2C`` channels) or only the mean.
            reduction: {``"none"``, ``"mean"``, ``"sum"``} over the batch; ``"none"`` returns ``(B,)``.
            min_logvar: lower clamp of the predicted log-variance, keeps the NLL bounded.
        """
        super().__init__(beta, reduction)
        self.learn_variance = bool(learn_variance)
        self.min_logvar = float(min_logvar)

    def _input_channels(self) -> tuple[int, str]:
        if self.learn_variance:
            return 2, "[mean, logvar] = 2C channels"
        return 1, "C mean channels, learn_variance=False"

    def _reconstruction(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = target.shape[1]
        mean = input[:, :c]
        sq = (target.to(mean.dtype) - mean).pow(2)
        if self.learn_variance:
            out_logvar = input[:, c:].clamp_min(self.min_logvar)
            err = 0.5 * (out_logvar + sq * torch.exp(-out_logvar)) + _HALF_LOG_2PI
        else:
            err = sq
        if mask is not None:
            err = torch.where(mask, err, torch.zeros_like(err))
        return err.reshape(err.shape[0], -1).sum(1), {}
