"""Handlers for training: per-epoch loss parts and history, and per-epoch seeding for exact resumption."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Events
from monai.utils import CommonKeys

__all__ = ["EpochSeedHandler", "LossHistory", "LossPartsHandler"]


class LossPartsHandler:
    """Average the loss parts (``recon``, ``kl``, each quantile) over an epoch into ``engine.state.metrics``.

    ``StatsHandler`` and ``TensorBoardStatsHandler`` then log them at the end of each epoch as ``loss_<part>``.

    Args:
        loss_function: the engine's loss (anything with a ``parts`` dictionary).
        prefix: prefix of the metric names.
    """

    def __init__(self, loss_function: Any, prefix: str = "loss_") -> None:
        self.loss_function = loss_function
        self.prefix = prefix
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Any) -> None:
        """Register the epoch reset, the per-iteration accumulation and the epoch summary."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)

    def _reset(self, engine: Any) -> None:
        self._sums, self._count = {}, 0

    def _accumulate(self, engine: Any) -> None:
        output = engine.state.output
        if isinstance(output, dict) and CommonKeys.LOSS in output:
            self._sums[""] = self._sums.get("", 0.0) + float(torch.as_tensor(output[CommonKeys.LOSS]).detach())
        for name, value in getattr(self.loss_function, "parts", {}).items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._count += 1

    def _summarise(self, engine: Any) -> None:
        for name, total in self._sums.items():
            key = f"{self.prefix}{name}" if name else self.prefix.rstrip("_")
            engine.state.metrics[key] = total / max(self._count, 1)


class LossHistory:
    """Record one row per epoch: the trainer's epoch-mean losses and the validator's ``val_loss``.

    Args:
        validator: the validation engine (optional).
    """

    def __init__(self, validator: Any | None = None) -> None:
        self.validator = validator
        self.rows: list[dict[str, float]] = []

    def attach(self, engine: Any) -> None:
        """Record at ``EPOCH_COMPLETED`` (attach after the ``ValidationHandler``)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        row: dict[str, float] = {"epoch": engine.state.epoch}
        row.update({k: float(v) for k, v in engine.state.metrics.items() if k.startswith("loss")})
        if self.validator is not None and "val_loss" in self.validator.state.metrics:
            row["val_loss"] = float(self.validator.state.metrics["val_loss"])
        self.rows.append(row)


class EpochSeedHandler:
    """Seed torch at each epoch start with ``seed + epoch``: a resumed run draws the same latent noise.

    Use with a ``DistributedSampler`` (``num_replicas=1`` on one process), whose order depends only on the seed
    and the epoch, so a run resumed from an epoch checkpoint repeats the uninterrupted run exactly.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def attach(self, engine: Any) -> None:
        """Seed at ``EPOCH_STARTED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Any) -> None:
        torch.manual_seed(self.seed + engine.state.epoch)
