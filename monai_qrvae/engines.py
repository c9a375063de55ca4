"""Label-free training and evaluation on ``monai.engines``.

MONAI's ``SupervisedTrainer`` is used as it is: the only customisation is through its documented hooks.
:class:`VAEPrepareBatch` makes the image its own target (and carries the brain mask along), and
:class:`VAELossAdapter` unpacks the network's extra outputs (``mu``, ``logvar``) for the VAE losses.
The builders below wire the trainer, a validation-loss evaluator and the anomaly evaluator for the command line;
the bundle configs wire the same classes by ``_target_``. The training handlers live in
:mod:`monai_qrvae.handlers.training`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from ignite.metrics import Loss
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import PrepareBatch
from monai.inferers import SimpleInferer, SliceInferer
from monai.utils import CommonKeys
from torch import nn

from monai_qrvae.handlers.training import LossPartsHandler

__all__ = [
    "VAEPrepareBatch",
    "VAELossAdapter",
    "lower_is_better",
    "create_trainer",
    "create_loss_evaluator",
    "create_anomaly_evaluator",
]


class VAEPrepareBatch(PrepareBatch):
    """Prepare a label-free batch: the image is both the network input and the reconstruction target.

    Returns ``(image, (image, mask))`` so that ``SupervisedTrainer`` passes the image to the network and the
    ``(target, mask)`` pair to the loss function (see :class:`VAELossAdapter`).

    Args:
        image_key: key of the image in the batch dictionary.
        mask_key: key of the brain mask; ``None`` or a missing key trains on every pixel.
        target_channels: the target is the first ``target_channels`` image channels (``None``: all); the others
            are context for the network only (e.g. neighbouring slices).
    """

    def __init__(
        self, image_key: str = CommonKeys.IMAGE, mask_key: str | None = "brain_mask", target_channels: int | None = None
    ) -> None:
        self.image_key = str(image_key)
        self.mask_key = mask_key
        self.target_channels = target_channels

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]:
        if not isinstance(batchdata, dict) or self.image_key not in batchdata:
            keys = list(batchdata) if isinstance(batchdata, dict) else type(batchdata).__name__
            raise ValueError(f"expected a batch dictionary with key {self.image_key!r}, got {keys}.")
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        mask = None
        if self.mask_key is not None and self.mask_key in batchdata:
            mask = batchdata[self.mask_key].to(device=device, non_blocking=non_blocking, **kwargs)
        target = image if self.target_channels is None else image[:, : self.target_channels]
        return image, (target, mask)


class VAELossAdapter(nn.Module):
    """Call a VAE loss with what ``SupervisedTrainer`` hands to ``loss_function(pred, target)``.

    ``pred`` is the network's tuple ``(out, mu, logvar, z)`` and ``target`` the ``(image, mask)`` pair made by
    :class:`VAEPrepareBatch`; the wrapped loss is called as ``loss(out, image, mu, logvar, mask)``.

    Args:
        loss: a :class:`~monai_qrvae.losses.QRVAELoss` or :class:`~monai_qrvae.losses.GaussianVAELoss`.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    @property
    def parts(self) -> dict[str, torch.Tensor]:
        """The loss parts of the last call (``recon``, ``kl``, one per quantile), for logging."""
        return dict(getattr(self.loss, "parts", {}))

    def forward(self, pred: Sequence[torch.Tensor], target: Sequence[torch.Tensor | None]) -> torch.Tensor:
        if not isinstance(pred, (tuple, list)) or len(pred) < 3:
            raise ValueError(
                "expected the network to return (out, mu, logvar, ...) as a VAE does, "
                f"got {type(pred).__name__}{'' if not isinstance(pred, (tuple, list)) else f' of {len(pred)}'}."
            )
        if isinstance(target, torch.Tensor):
            image, mask = target, None
        else:
            image, mask = target[0], target[1] if len(target) > 1 else None
        return self.loss(pred[0], image, pred[1], pred[2], mask=mask)


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for a loss-like key metric (smaller is better)."""
    return current < best


def create_trainer(
    network: nn.Module,
    loss_function: nn.Module,
    train_loader: Any,
    max_epochs: int,
    device: str | torch.device = "cpu",
    lr: float = 3e-4,
    image_key: str = CommonKeys.IMAGE,
    mask_key: str | None = "brain_mask",
    train_handlers: Sequence[Any] = (),
    amp: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    target_channels: int | None = None,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` for label-free VAE training (Adam, the paper's lr 3e-4 by default).

    Args:
        network: a :class:`~monai_qrvae.networks.QRVAE` or :class:`~monai_qrvae.networks.GaussianVAE`.
        loss_function: the matching VAE loss (wrapped in :class:`VAELossAdapter` here if it is not already).
        train_loader: a loader of 2D slice dictionaries.
        max_epochs: number of epochs.
        device: torch device.
        lr: Adam learning rate.
        image_key: image key in the batch.
        mask_key: brain-mask key in the batch, or ``None``.
        train_handlers: extra handlers (stats, checkpoints, validation, ...).
        amp: automatic mixed precision (a no-op on CPU).
        optimizer: an optimizer to use instead of Adam.
        target_channels: reconstruct only the first image channels (the others are context), see
            :class:`VAEPrepareBatch`.
    """
    network = network.to(device)
    if not isinstance(loss_function, VAELossAdapter):
        loss_function = VAELossAdapter(loss_function)
    optimizer = optimizer or torch.optim.Adam(network.parameters(), lr=lr)
    handlers = [LossPartsHandler(loss_function), *train_handlers]
    return SupervisedTrainer(
        device=torch.device(device),
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        prepare_batch=VAEPrepareBatch(image_key, mask_key, target_channels),
        inferer=SimpleInferer(),
        train_handlers=handlers,
        amp=amp and torch.device(device).type == "cuda",
        decollate=False,
    )


def create_loss_evaluator(
    network: nn.Module,
    loss_function: nn.Module,
    val_loader: Any,
    device: str | torch.device = "cpu",
    image_key: str = CommonKeys.IMAGE,
    mask_key: str | None = "brain_mask",
    val_handlers: Sequence[Any] = (),
    target_channels: int | None = None,
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` whose key metric ``val_loss`` is the training loss on healthy validation slices."""
    if not isinstance(loss_function, VAELossAdapter):
        loss_function = VAELossAdapter(loss_function)
    metric = Loss(
        loss_function,
        output_transform=lambda out: (out[CommonKeys.PRED], out[CommonKeys.LABEL]),
        batch_size=lambda target: target[0].shape[0],
        skip_unrolling=True,
    )
    return SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=val_loader,
        network=network,
        prepare_batch=VAEPrepareBatch(image_key, mask_key, target_channels),
        inferer=SimpleInferer(),
        key_val_metric={"val_loss": metric},
        metric_cmp_fn=lower_is_better,
        val_handlers=list(val_handlers),
        decollate=False,
    )


def create_anomaly_evaluator(
    network: nn.Module,
    loader: Any,
    device: str | torch.device = "cpu",
    roi_size: Sequence[int] = (64, 64),
    sw_batch_size: int = 32,
    postprocessing: Any = None,
    key_val_metric: dict[str, Any] | None = None,
    additional_metrics: dict[str, Any] | None = None,
    val_handlers: Sequence[Any] = (),
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` that runs a 2D anomaly network slice by slice over preprocessed volumes.

    Args:
        network: an :class:`~monai_qrvae.networks.AnomalyMapNet` (one output tensor ``[mu, sigma, z]``).
        loader: loader of volume dictionaries ``(C, H, W, N)`` (the selected axial slices).
        device: torch device.
        roi_size: the in-plane size the network was trained on.
        sw_batch_size: slices per forward pass.
        postprocessing: dictionary transforms applied to each decollated output (e.g. anomaly maps, FDR).
        key_val_metric: the key metric (for example ``{"best_dice": BestDice(...)}``).
        additional_metrics: further metrics.
        val_handlers: handlers (savers, overlays, metrics savers).
    """
    return SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=loader,
        network=network.to(device),
        inferer=SliceInferer(roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, spatial_dim=2, progress=False),
        postprocessing=postprocessing,
        key_val_metric=key_val_metric,
        additional_metrics=additional_metrics,
        val_handlers=list(val_handlers),
    )


def default_num_threads() -> int:
    """Number of intra-op threads to use on CPU: the usable cores (respecting affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
