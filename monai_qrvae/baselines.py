"""The no-training baseline: FLAIR intensity thresholding, scored through the same anomaly pipeline.

:class:`IntensityBaseline` behaves like :class:`~monai_qrvae.networks.AnomalyMapNet`: it returns one tensor
``[mu, sigma, z]`` per channel, with ``mu``/``sigma`` the healthy brain's mean and standard deviation of each
channel (fitted on the training slices). Its z-map is a linear rescaling of the intensity, so thresholding it
(by BH-FDR or by the best-Dice sweep) is exactly FLAIR intensity thresholding (Meissen et al. 2021).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["IntensityBaseline"]


class IntensityBaseline(nn.Module):
    """Per-channel healthy intensity statistics as a "network" with the ``[mu, sigma, z]`` output layout.

    Args:
        in_channels: number of input channels.
        spatial_dims: 2 (slices) or 3 (volumes).
    """

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))

    @torch.no_grad()
    def fit(self, batches: Iterable[dict[str, torch.Tensor]], image_key: str = "image", mask_key: str = "brain_mask"):
        """Fit the brain's mean and standard deviation per channel from batches of healthy slices."""
        total = torch.zeros_like(self.mean, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = torch.zeros((), dtype=torch.float64)
        for batch in batches:
            image = torch.as_tensor(batch[image_key]).double()
            mask = torch.as_tensor(batch[mask_key]).double() if mask_key in batch else torch.ones_like(image[:, :1])
            mask = mask.expand_as(image)
            dims = [0, *range(2, image.ndim)]
            total += (image * mask).sum(dims)
            total_sq += (image.pow(2) * mask).sum(dims)
            count += mask[:, 0].sum()
        if count == 0:
            raise ValueError("IntensityBaseline.fit saw no brain voxels; expected healthy slices with a brain mask.")
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, 3C, ...)``: ``[mu, sigma, z]`` with ``z = (x - mean) / std`` per channel."""
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"expected {self.mean.shape[0]} input channels, got {x.shape[1]} (shape {tuple(x.shape)})."
            )
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mu = self.mean.view(shape).expand_as(x)
        sigma = self.std.view(shape).expand_as(x)
        return torch.cat([mu, sigma, (x - mu) / sigma], dim=1)
