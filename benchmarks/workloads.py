"""Workloads several benchmarks time: the default QR-VAE with a seeded batch, and one training step."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["default_model_and_batch", "train_step"]


def default_model_and_batch(batch_size: int = 32) -> tuple[torch.nn.Module, torch.nn.Module, Any, torch.Tensor, Any]:
    """``(vae, net, loss, x, mask)``: the default :class:`~monai_qrvae.workflows.ModelConfig`'s networks (seed 0;
    ``net``, the anomaly-map network, in eval mode), its loss, a seeded random batch ``(batch_size, 3, 64, 64)`` and
    an all-ones mask."""
    from monai_qrvae.workflows import ModelConfig, build_loss, build_networks

    cfg = ModelConfig()
    torch.manual_seed(0)
    vae, net = build_networks(cfg)
    net.eval()
    loss = build_loss(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, 64, 64, generator=g)
    mask = torch.ones(batch_size, 1, 64, 64)
    return vae, net, loss, x, mask


def train_step(
    model: torch.nn.Module, loss: Any, x: torch.Tensor, mask: torch.Tensor, optimizer: torch.optim.Optimizer
) -> None:
    """One training step of a VAE on ``x``: forward, masked loss, ``zero_grad``, backward, optimizer step."""
    model.train()
    out, mu, logvar, _ = model(x)
    value = loss(out, x, mu, logvar, mask=mask)
    optimizer.zero_grad()
    value.backward()
    optimizer.step()
