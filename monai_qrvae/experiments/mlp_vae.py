"""The small fully connected VAEs of the variance-shrinkage simulation (Gaussian or quantile decoder), their
training loop and their posterior-mean (mu, sigma) prediction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monai_qrvae.anomaly import check_quantiles, quantiles_to_mu_sigma

__all__ = ["MLPVAE", "train_mlp_vae", "predict_mu_sigma"]


class MLPVAE(nn.Module):
    """A small fully connected VAE for vectors, with a Gaussian or a quantile decoder.

    ``forward(x)`` takes ``(B, D)`` and returns ``(out, mu, logvar, z)`` like :class:`~monai_qrvae.networks.QRVAE`,
    with ``out`` shaped ``(B, K*D, 1)`` (one dummy spatial axis, so the package's losses apply unchanged):
    ``[mean (D), logvar (D)]`` for the Gaussian decoder (``quantiles=None``), or ``Q`` non-crossing quantiles
    (quantile-major; the head nearest 0.5 is the anchor, the others cumulative softplus offsets from it).
    In ``eval()`` mode the latent is the posterior mean.

    Args:
        in_features: ``D``.
        latent_size: latent dimension.
        hidden_size: width of the two hidden layers of the encoder and of the decoder.
        quantiles: quantile levels of a QR-VAE decoder, or ``None`` for the Gaussian decoder.
    """

    def __init__(
        self,
        in_features: int = 4,
        latent_size: int = 2,
        hidden_size: int = 64,
        quantiles: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.quantiles = None if quantiles is None else check_quantiles(quantiles)
        n_out = 2 if self.quantiles is None else len(self.quantiles)
        self.encoder = nn.Sequential(
            nn.Linear(in_features, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size), nn.ReLU()
        )
        self.mu = nn.Linear(hidden_size, latent_size)
        self.logvar = nn.Linear(hidden_size, latent_size)
        self.decoder = nn.Sequential(
            nn.Linear(latent_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, n_out * in_features),
        )
        self.anchor = 0 if self.quantiles is None else int(np.argmin([abs(t - 0.5) for t in self.quantiles]))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, K*D, 1)`` decoder output for latent codes ``(B, latent)``."""
        raw = self.decoder(z)
        if self.quantiles is not None:
            groups = raw.reshape(raw.shape[0], len(self.quantiles), self.in_features)
            out = [groups[:, self.anchor]]
            for k in range(self.anchor - 1, -1, -1):
                out.insert(0, out[0] - F.softplus(groups[:, k]))
            for k in range(self.anchor + 1, len(self.quantiles)):
                out.append(out[-1] + F.softplus(groups[:, k]))
            raw = torch.stack(out, dim=1).reshape(raw.shape)
        return raw.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected x of shape (B, {self.in_features}), got {tuple(x.shape)}.")
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar, z


def train_mlp_vae(
    model: MLPVAE,
    loss: nn.Module,
    x: torch.Tensor,
    epochs: int = 150,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train with Adam on the rows of ``x`` ``(n, D)``; ``loss(out, target, mu, logvar)`` as the package's VAE losses.

    Returns:
        the mean training loss of each epoch.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    target_all = x.unsqueeze(-1)
    history = []
    model.train()
    for _ in range(int(epochs)):
        order = torch.randperm(x.shape[0], generator=generator)
        total, count = 0.0, 0
        for start in range(0, x.shape[0], batch_size):
            index = order[start : start + batch_size]
            out, mu, logvar, _ = model(x[index])
            value = loss(out, target_all[index], mu, logvar)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(index)
            count += len(index)
        history.append(total / count)
    model.eval()
    return history


@torch.no_grad()
def predict_mu_sigma(model: MLPVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior-mean reconstruction of ``x`` ``(n, D)``: the predicted mean and standard deviation, each ``(n, D)``."""
    model.eval()
    out = model(x)[0]
    if model.quantiles is None:
        d = model.in_features
        return out[:, :d, 0], torch.exp(0.5 * out[:, d:, 0])
    mu, sigma = quantiles_to_mu_sigma(out, model.quantiles, sigma_floor=1e-6)
    return mu[..., 0], sigma[..., 0]
