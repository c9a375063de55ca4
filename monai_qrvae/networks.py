"""Quantile-regression and Gaussian variational autoencoders, and a single-output anomaly-map wrapper.

Both networks are :py:class:`monai.networks.nets.VarAutoEncoder` subclasses: the encoder and decoder are MONAI's
(strided convolutions, mirrored transposed convolutions, the last decoder layer convolution-only, so there is no
output activation) and only the fully connected latent layers and the output parameterisation differ.

Reference:
    Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
    Quantile Regression", arXiv:2010.09042 (2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import VarAutoEncoder

from monai_qrvae.anomaly import check_quantiles, interpolate_normal_score, quantiles_to_mu_sigma

__all__ = ["QRVAE", "GaussianVAE", "AnomalyMapNet", "ANOMALY_MAP_LAYOUT"]

#: Channel blocks of the :py:class:`AnomalyMapNet` output: ``out.view(B, 3, C, ...)[:, i]`` is
#: ``ANOMALY_MAP_LAYOUT[i]``.
ANOMALY_MAP_LAYOUT = ("mu", "sigma", "z")


class _LatentVAE(VarAutoEncoder):
    """VarAutoEncoder with the posterior mean at inference, no output activation and an optional wide FC layer.

    With ``hidden_size`` the encoder gets one shared ``Linear(features, hidden) -> ReLU`` before the ``mu`` and
    ``logvar`` heads and ``decodeL`` becomes ``Linear(latent, hidden) -> ReLU -> Linear(hidden, features)``, as in
    the paper's brain model (16384 -> 2048 -> 128 and back).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_shape: Sequence[int],
        out_channels: int,
        latent_size: int,
        channels: Sequence[int],
        strides: Sequence[int],
        kernel_size: Sequence[int] | int,
        up_kernel_size: Sequence[int] | int,
        hidden_size: int | None,
        norm: tuple | str,
        act: tuple | str | None,
        dropout: tuple | str | float | None,
    ) -> None:
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != spatial_dims + 1:
            raise ValueError(
                f"in_shape must be (channels, {spatial_dims} spatial sizes) for spatial_dims={spatial_dims}, "
                f"got {in_shape}."
            )
        if len(channels) != len(strides):
            raise ValueError(
                f"channels and strides must have the same length, got {tuple(channels)} and {tuple(strides)}."
            )
        factor = int(np.prod(strides))
        if any(s % factor for s in in_shape[1:]):
            raise ValueError(
                f"spatial sizes {in_shape[1:]} must be divisible by the product of strides {tuple(strides)} "
                f"(= {factor}) so that the decoder restores the input size."
            )
        if hidden_size is not None and hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive integer or None, got {hidden_size}.")
        super().__init__(
            spatial_dims=spatial_dims,
            in_shape=in_shape,
            out_channels=out_channels,
            latent_size=latent_size,
            channels=channels,
            strides=strides,
            kernel_size=kernel_size,
            up_kernel_size=up_kernel_size,
            act=act,
            norm=norm,
            dropout=dropout,
            use_sigmoid=False,
            use_mean_at_inference=True,
        )
        self.hidden_size = hidden_size
        self.feature_shape: list[int] = [int(self.encoded_channels)] + [int(s) for s in self.final_size]
        linear_size = int(np.prod(self.feature_shape))
        self.hidden: nn.Module = nn.Identity()
        if hidden_size is not None:
            self.hidden = nn.Sequential(nn.Linear(linear_size, hidden_size), nn.ReLU())
            self.mu = nn.Linear(hidden_size, latent_size)
            self.logvar = nn.Linear(hidden_size, latent_size)
            self.decodeL = nn.Sequential(
                nn.Linear(latent_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, linear_size)
            )

    def encode_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mu, logvar)``, each ``(B, latent_size)``; ``x`` is cast to the parameters' dtype."""
        x = self.encode(x.to(self.mu.weight.dtype))
        x = self.intermediate(x)
        x = self.hidden(x.reshape(x.shape[0], -1))
        return self.mu(x), self.logvar(x)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output before any output parameterisation, ``(B, out_channels, spatial...)``."""
        x = F.relu(self.decodeL(z))
        x = x.reshape([x.shape[0]] + self.feature_shape)
        return self.decode(x)

    def decode_forward(self, z: torch.Tensor, use_sigmoid: bool = False) -> torch.Tensor:
        """Decode a latent code; ``use_sigmoid`` is kept for VarAutoEncoder compatibility (off by default)."""
        x = self.decode_raw(z)
        if use_sigmoid:
            x = torch.sigmoid(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: ``(B, C, spatial...)`` matching ``in_shape``.

        Returns:
            ``(out, mu, logvar, z)``: decoder output, posterior mean and log-variance ``(B, latent_size)``, and the
            latent code (a sample in ``train()`` mode, the posterior mean ``mu`` in ``eval()`` mode).
        """
        mu, logvar = self.encode_forward(x)
        z = self.reparameterize(mu, logvar)
        return self.decode_forward(z, self.use_sigmoid), mu, logvar, z


def _target_channels(in_shape: Sequence[int], target_channels: int | None) -> int:
    """The number of predicted channels: the first ``target_channels`` of the input (all when ``None``)."""
    num_in = int(in_shape[0])
    if target_channels is None:
        return num_in
    if int(target_channels) != target_channels or not 1 <= target_channels <= num_in:
        raise ValueError(
            f"target_channels must be an int in [1, {num_in}] (the input has {num_in} channels), "
            f"got {target_channels!r}."
        )
    return int(target_channels)


class QRVAE(_LatentVAE):
    """Quantile-regression VAE: the decoder predicts ``Q`` conditional quantiles of every input channel.

    The output ``(B, Q*C, spatial...)`` is quantile-major (``out.view(B, Q, C, ...)[:, k]`` is quantile
    ``quantiles[k]``) and **non-crossing** by construction: the raw head closest to 0.5 (the lower one on a
    tie) is the anchor ``q_a``; lower quantiles are ``q_k = q_{k+1} - softplus(h_k)`` and upper quantiles
    ``q_k = q_{k-1} + softplus(h_k)`` (cumulative softplus offsets from the anchor), so
    ``q_0 <= q_1 <= ... <= q_{Q-1}`` for any input and any weights.

    Defaults are the paper's brain model: input ``3 x 64 x 64`` (T1, T2, FLAIR), three convolutions with 64, 128 and
    256 channels (kernel 5, stride 2, batch norm, ReLU), latent 128, mirrored decoder. ``hidden_size=2048`` adds
    the paper's wide FC layer (about 70 M parameters instead of 8.4 M).

    Args:
        spatial_dims: number of spatial dimensions (2 for slices, 3 for volumes).
        in_shape: input shape ``(C, spatial...)``; spatial sizes must be divisible by the product of ``strides``.
        quantiles: quantile levels, strictly increasing in (0, 1).
        latent_size: size of the latent variable.
        channels: encoder channels, top block first; the decoder mirrors them.
        strides: one convolution stride per entry of ``channels``.
        kernel_size: encoder convolution kernel size (odd).
        up_kernel_size: decoder transposed-convolution kernel size (odd).
        hidden_size: width of an extra FC layer between the flattened features and the latent (None: none).
        norm: feature normalisation type.
        act: activation type.
        dropout: dropout ratio.
        target_channels: number of leading input channels whose quantiles are predicted (``None``: all). The
            remaining input channels are context only (e.g. neighbouring slices, see
            :class:`~monai_qrvae.context.AdjacentSlices`).

    Reference:
        Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
        Quantile Regression", arXiv:2010.09042 (2020).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_shape: Sequence[int] = (3, 64, 64),
        quantiles: Sequence[float] = (0.15, 0.5),
        latent_size: int = 128,
        channels: Sequence[int] = (64, 128, 256),
        strides: Sequence[int] = (2, 2, 2),
        kernel_size: Sequence[int] | int = 5,
        up_kernel_size: Sequence[int] | int = 5,
        hidden_size: int | None = None,
        norm: tuple | str = "batch",
        act: tuple | str | None = "relu",
        dropout: tuple | str | float | None = None,
        target_channels: int | None = None,
    ) -> None:
        q = check_quantiles(quantiles)
        target = _target_channels(in_shape, target_channels)
        super().__init__(
            spatial_dims,
            in_shape,
            len(q) * target,
            latent_size,
            channels,
            strides,
            kernel_size,
            up_kernel_size,
            hidden_size,
            norm,
            act,
            dropout,
        )
        self.quantiles: tuple[float, ...] = q
        self.num_quantiles = len(q)
        self.target_channels = target
        self.anchor_index = int(np.argmin([abs(t - 0.5) for t in q]))

    def decode_forward(self, z: torch.Tensor, use_sigmoid: bool = False) -> torch.Tensor:
        """Decode a latent code into non-crossing quantiles ``(B, Q*C, spatial...)``."""
        raw = self.decode_raw(z)
        shape = raw.shape
        groups = raw.reshape([shape[0], self.num_quantiles, shape[1] // self.num_quantiles] + list(shape[2:]))
        a = self.anchor_index
        anchor = groups[:, a]
        out = [anchor]
        current = anchor
        for k in range(a - 1, -1, -1):  # lower quantiles: anchor minus cumulative softplus offsets
            current = current - F.softplus(groups[:, k])
            out.insert(0, current)
        current = anchor
        for k in range(a + 1, self.num_quantiles):  # upper quantiles: anchor plus cumulative softplus offsets
            current = current + F.softplus(groups[:, k])
            out.append(current)
        x = torch.stack(out, dim=1).reshape(shape)
        if use_sigmoid:
            x = torch.sigmoid(x)
        return x


class GaussianVAE(_LatentVAE):
    """Gaussian VAE baseline with the same encoder/decoder as :py:class:`QRVAE`.

    With ``learn_variance=True`` the output is ``(B, 2C, spatial...)`` = ``[mean (C), logvar (C)]`` (the VAE whose
    variance shrinks, as the paper shows); with ``learn_variance=False`` it is the mean ``(B, C, spatial...)``
    (the MSE-VAE). Other arguments as in :py:class:`QRVAE`.

    Reference:
        Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
        Quantile Regression", arXiv:2010.09042 (2020).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_shape: Sequence[int] = (3, 64, 64),
        latent_size: int = 128,
        channels: Sequence[int] = (64, 128, 256),
        strides: Sequence[int] = (2, 2, 2),
        kernel_size: Sequence[int] | int = 5,
        up_kernel_size: Sequence[int] | int = 5,
        hidden_size: int | None = None,
        norm: tuple | str = "batch",
        act: tuple | str | None = "relu",
        dropout: tuple | str | float | None = None,
        learn_variance: bool = True,
        target_channels: int | None = None,
    ) -> None:
        target = _target_channels(in_shape, target_channels)
        super().__init__(
            spatial_dims,
            in_shape,
            (2 if learn_variance else 1) * target,
            latent_size,
            channels,
            strides,
            kernel_size,
            up_kernel_size,
            hidden_size,
            norm,
            act,
            dropout,
        )
        self.learn_variance = bool(learn_variance)
        self.target_channels = target


def _mu_sigma_weights(quantiles: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear weights with ``mu = sum_k w_mu[k] q_k`` and ``sigma = sum_k w_sigma[k] q_k`` (before the floor).

    Both estimators of :py:func:`monai_qrvae.anomaly.quantiles_to_mu_sigma` are linear in the quantiles, so the
    weights are read off that function itself (one source of truth): it is applied to an exact Gaussian reference
    ``q_k = s * Phi^-1(tau_k)`` (sigma ``s``, large enough that the floor never acts) and to the reference plus
    each unit vector. The wrapper then needs no SciPy at run time and can be scripted.
    """
    num_q = len(quantiles)
    scale = 100.0
    ref = scale * torch.special.ndtri(torch.tensor(quantiles, dtype=torch.float64))
    pred = torch.cat([ref.unsqueeze(0), ref.unsqueeze(0) + torch.eye(num_q, dtype=torch.float64)], dim=0)
    mu, sigma = quantiles_to_mu_sigma(pred.reshape(num_q + 1, num_q, 1), quantiles)
    mu, sigma = mu.reshape(-1).double(), sigma.reshape(-1).double()
    return (mu[1:] - mu[0]).float(), (sigma[1:] - sigma[0]).float()


class AnomalyMapNet(nn.Module):
    """Inference wrapper returning ONE tensor ``(B, 3C, spatial...)`` = ``[mu (C), sigma (C), z (C)]``.

    ``out.view(B, 3, C, ...)[:, i]`` is ``ANOMALY_MAP_LAYOUT[i]``: the predicted mean, standard deviation and
    z-score ``(x - mu) / sigma`` of every input channel. A single tensor is what ``verify_net_in_out``,
    :py:class:`monai.inferers.SliceInferer` and MONAI Label expect; the wrapper is TorchScript-scriptable and
    traceable. Put it in ``eval()`` mode so the latent is the posterior mean.

    - :py:class:`QRVAE`: mu and sigma from the quantiles as in :py:func:`monai_qrvae.anomaly.quantiles_to_mu_sigma`
      (for ``(0.15, 0.5)``: ``mu = q_0.5``, ``sigma = (q_0.5 - q_0.15) / Phi^-1(0.85)``); needs two quantiles or more.
    - :py:class:`GaussianVAE` with ``learn_variance``: the mean and ``exp(logvar / 2)``.
    - :py:class:`GaussianVAE` without it (MSE-VAE): the mean and the constant ``residual_sigma``.

    Args:
        network: a :py:class:`QRVAE` or :py:class:`GaussianVAE`.
        sigma_floor: smallest sigma returned (no division by zero).
        residual_sigma: sigma used for the MSE-VAE.
        quantile_score: for a :py:class:`QRVAE`, the ``z`` block is the score read from the predicted quantile
            function (:py:func:`monai_qrvae.anomaly.quantile_function_score`) instead of ``(x - mu) / sigma``;
            the two agree for two quantiles. Off by default.
    """

    def __init__(
        self, network: nn.Module, sigma_floor: float = 1e-3, residual_sigma: float = 1.0, quantile_score: bool = False
    ) -> None:
        super().__init__()
        if sigma_floor <= 0:
            raise ValueError(f"sigma_floor must be positive, got {sigma_floor}.")
        if residual_sigma <= 0:
            raise ValueError(f"residual_sigma must be positive, got {residual_sigma}.")
        num_q = 1
        normal_scores = torch.zeros(1)
        if isinstance(network, QRVAE):
            normal_scores = torch.special.ndtri(torch.tensor(network.quantiles, dtype=torch.float64)).float()
            if network.num_quantiles < 2:
                raise ValueError(f"at least two quantiles are needed to estimate sigma, got {network.quantiles}.")
            mode, num_q = 0, network.num_quantiles
            w_mu, w_sigma = _mu_sigma_weights(network.quantiles)
        elif isinstance(network, GaussianVAE):
            mode = 1 if network.learn_variance else 2
            w_mu, w_sigma = torch.ones(1), torch.zeros(1)
        else:
            raise ValueError(f"network must be a QRVAE or a GaussianVAE, got {type(network).__name__}.")
        self.network = network
        self.mode = mode
        self.num_quantiles = num_q
        self.sigma_floor = float(sigma_floor)
        self.residual_sigma = float(residual_sigma)
        self.register_buffer("mu_weights", w_mu, persistent=False)
        self.register_buffer("sigma_weights", w_sigma, persistent=False)
        self.register_buffer("normal_scores", normal_scores, persistent=False)
        self.quantile_score = bool(quantile_score) and mode == 0
        self.target_channels = int(network.target_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, spatial...)`` input of the wrapped network.

        Returns:
            ``(B, 3C, spatial...)`` float tensor ``[mu, sigma, z]``, ``sigma >= sigma_floor``.
        """
        out = self.network(x)[0].float()
        x = x[:, : self.target_channels]
        shape = out.shape
        if self.mode == 0:
            num_q = self.num_quantiles
            groups = out.reshape([shape[0], num_q, shape[1] // num_q] + list(shape[2:]))
            weight_shape = [1, num_q] + [1] * (groups.dim() - 2)
            mu = (groups * self.mu_weights.to(groups.dtype).reshape(weight_shape)).sum(1)
            sigma = (groups * self.sigma_weights.to(groups.dtype).reshape(weight_shape)).sum(1)
        elif self.mode == 1:
            c = shape[1] // 2
            mu = out[:, :c]
            sigma = torch.exp(0.5 * out[:, c:])
        else:
            mu = out
            sigma = torch.full_like(out, self.residual_sigma)
        sigma = torch.nan_to_num(sigma, nan=self.sigma_floor).clamp_min(self.sigma_floor)
        if self.quantile_score:
            groups = out.reshape([shape[0], self.num_quantiles, shape[1] // self.num_quantiles] + list(shape[2:]))
            z = interpolate_normal_score(x.float(), groups, self.normal_scores, self.sigma_floor)
        else:
            z = torch.nan_to_num((x.float() - mu) / sigma, nan=0.0, posinf=1e6, neginf=-1e6)
        return torch.cat([mu, sigma, z], dim=1)
