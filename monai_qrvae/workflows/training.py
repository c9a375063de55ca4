"""The training job: :func:`train` (one method on the healthy ``training`` section) and its curves.

The trainer, handlers, checkpoints and outputs are wired as the bundle's ``train.json`` wires them; every file is
written atomically into the model folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.handlers import StatsHandler, TensorBoardStatsHandler, ValidationHandler
from monai.utils import set_determinism
from torch import nn
from torch.utils.data import DistributedSampler

from monai_qrvae.data.io import common_spacing
from monai_qrvae.defaults import method_defaults
from monai_qrvae.engines import create_loss_evaluator, create_trainer
from monai_qrvae.handlers.checkpoint import AtomicCheckpointSaver, ResumeFromCheckpoint
from monai_qrvae.handlers.training import EpochSeedHandler, LossHistory
from monai_qrvae.logging_utils import progress_enabled
from monai_qrvae.utils import atomic_write
from monai_qrvae.workflows.calibration import fit_calibration
from monai_qrvae.workflows.datasets import checked_section, persistent_slice_dataset, slice_dataset
from monai_qrvae.workflows.models import CONFIG_FILE, WEIGHTS_FILE, ModelConfig, build_loss, build_networks

logger = logging.getLogger("monai_qrvae")

__all__ = ["plot_history", "train", "calibrate_model"]


def plot_history(rows: Sequence[dict[str, float]], path: str | os.PathLike, title: str = "training") -> Path:
    """Save the training and validation loss curves as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend (e.g. notebooks) alone

    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    epochs = [r["epoch"] for r in rows]
    for key, style in (("loss", "-"), ("val_loss", "--")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(epochs, values, style, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per slice")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def train(
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    method: str = "qrvae",
    preset: str = "small",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    num_slices: int | None | str = "default",
    image_size: int | None | str = "default",
    quantiles: Sequence[float] | None = None,
    beta: float = 1.0,
    val_interval: int = 1,
    resume: bool = True,
    progress: bool = True,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    context: str | None = None,
    score: str | None = None,
    quantile_score: bool | None = None,
    calibrate: bool = True,
    spacing: Sequence[float] | str | None = "auto",
) -> dict[str, Any]:
    """Train one method on the healthy ``training`` section, validating on ``validation``.

    ``epochs``, ``batch_size`` and ``lr`` left as ``None`` (``num_slices`` and ``image_size`` left as
    ``"default"``; ``None`` means every slice / the input's own grid) take the method's defaults from
    :mod:`monai_qrvae.defaults`, chosen on the ``tuning`` split (the paper used lr 3e-4 and batch 8: pass them to
    reproduce its setting). ``quantiles``, ``context`` (through-plane context channels, :mod:`monai_qrvae.context`),
    ``score`` (how the contrasts' z-maps are combined, :data:`monai_qrvae.anomaly.SCORES`) and ``quantile_score``
    left as ``None`` take the method's defaults too; all are stored in the model's configuration.

    With ``calibrate`` and a non-empty healthy ``calibration`` section in the datalist, the model's score is
    calibrated on it after training (``calibration.pt`` beside the weights, :func:`~monai_qrvae.calibration.
    fit_calibration`): the label-free thresholds of ``qrvae evaluate``/``infer`` use it by default.

    ``spacing``: the voxel size (mm) the model analyses: ``"auto"`` takes the training images' median grid (headers
    only); volumes are resampled to it in training and at inference (``None``: each volume on its own grid). It is
    stored in the model's configuration.

    Writes ``model_config.json``, ``model.pt`` (the anomaly network's plain state dict), ``history.json``,
    ``training_curve.png``, TensorBoard logs and resumable checkpoints (``checkpoints/``) into ``output_dir``.
    Running the same command again after an interruption resumes from the last checkpoint.

    The training and validation slices are held in memory (prepared once per process) unless ``cache_dir`` is
    given: then each volume's slices are prepared once into that folder (MONAI's ``PersistentDataset``, one
    subfolder per ``image_size``/``num_slices``) and read back through a small LRU of volumes
    (:class:`~monai_qrvae.workflows.datasets.PersistentSliceDataset`), so memory does not grow with the number of
    subjects; the slices, their order and so the trained weights are the same.

    Returns:
        a summary with paths, final losses and timings.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    set_determinism(seed=seed)
    defaults = method_defaults(method)
    epochs = defaults.epochs if epochs is None else epochs
    batch_size = defaults.batch_size if batch_size is None else batch_size
    lr = defaults.lr if lr is None else lr
    num_slices = defaults.num_slices if num_slices == "default" else num_slices
    image_size = defaults.image_size if image_size == "default" else image_size
    config = ModelConfig(
        method=method,
        preset=preset,
        image_size=image_size,
        num_slices=num_slices,
        quantiles=tuple(defaults.quantiles if quantiles is None else quantiles),
        beta=beta,
        context=defaults.context if context is None else context,
        score=defaults.score if score is None else score,
        quantile_score=defaults.quantile_score if quantile_score is None else quantile_score,
    )
    train_items = checked_section(datalist, "training")
    val_items = checked_section(datalist, "validation")
    config.spacing = common_spacing(train_items) if spacing == "auto" else spacing  # type: ignore[assignment]
    config.__post_init__()  # checks the spacing
    vae, net = build_networks(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    if vae is None:  # FLAIR thresholding: fit the healthy intensity statistics on whole volumes, no training
        vt = config.transforms()
        net.fit(DataLoader(Dataset(train_items, vt), batch_size=1))
        config.save(output_dir / CONFIG_FILE)
        atomic_write(output_dir / WEIGHTS_FILE, lambda tmp: torch.save(net.state_dict(), tmp))
        seconds = time.perf_counter() - start
        calibration = calibrate_model(output_dir, datalist, config, net, device) if calibrate else None
        return {
            "method": method,
            "model_dir": str(output_dir),
            "epochs": 0,
            "seconds": seconds,
            "calibration_volumes": calibration,
        }

    if cache_dir is None:
        train_ds = slice_dataset(train_items, image_size, num_slices, progress, config.context, config.spacing)
        val_ds = slice_dataset(val_items, image_size, num_slices, progress, config.context, config.spacing)
    else:  # bounded memory: slices read from the on-disk cache of prepared volumes
        train_ds = persistent_slice_dataset(
            train_items, image_size, num_slices, cache_dir, progress, config.context, config.spacing
        )
        val_ds = persistent_slice_dataset(
            val_items, image_size, num_slices, cache_dir, progress, config.context, config.spacing
        )

    sampler = DistributedSampler(train_ds, num_replicas=1, rank=0, shuffle=True, seed=seed)
    train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    loss = build_loss(config)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    validator = create_loss_evaluator(vae, loss, val_loader, device=device, target_channels=config.in_channels)
    history = LossHistory(validator)
    ckpt_dir = output_dir / "checkpoints"
    save_dict = {"network": vae, "optimizer": optimizer}
    handlers: list[Any] = [EpochSeedHandler(seed)]
    handlers.append(ValidationHandler(validator=validator, interval=val_interval, epoch_level=True))
    handlers.append(history)
    handlers.append(
        StatsHandler(name="monai_qrvae.train", iteration_log=False, tag_name="loss", output_transform=lambda o: None)
    )
    handlers.append(
        TensorBoardStatsHandler(log_dir=str(output_dir / "tensorboard"), output_transform=lambda o: o["loss"].item())
    )
    trainer = create_trainer(
        vae,
        loss,
        train_loader,
        max_epochs=epochs,
        device=device,
        optimizer=optimizer,
        train_handlers=handlers,
        target_channels=config.in_channels,
    )
    save_dict["trainer"] = trainer
    if resume:
        ResumeFromCheckpoint(ckpt_dir, save_dict).attach(trainer)
    AtomicCheckpointSaver(ckpt_dir, save_dict, save_interval=1, n_saved=2).attach(trainer)
    if progress_enabled(progress):  # a bar only on a terminal; logs get one line per epoch (StatsHandler)
        from ignite.handlers import ProgressBar

        ProgressBar(desc=f"train {method}", persist=False).attach(
            trainer, output_transform=lambda o: {"loss": o["loss"]}
        )
    trainer.run()

    if method == "mse":  # calibrate the residual sigma on healthy validation slices
        config.residual_sigma = estimate_residual_sigma(net, val_loader, device)
        net.residual_sigma = config.residual_sigma
    net = net.cpu().eval()
    config.save(output_dir / CONFIG_FILE)
    atomic_write(output_dir / WEIGHTS_FILE, lambda tmp: torch.save(net.state_dict(), tmp))
    rows = history.rows
    atomic_write(output_dir / "history.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))
    if rows:
        plot_history(rows, output_dir / "training_curve.png", title=f"{method} ({preset})")
    seconds = time.perf_counter() - start
    calibration = calibrate_model(output_dir, datalist, config, net, device) if calibrate else None
    return {
        "method": method,
        "model_dir": str(output_dir),
        "epochs": trainer.state.epoch,
        "train_slices": len(train_ds),
        "final_loss": rows[-1].get("loss") if rows else None,
        "final_val_loss": rows[-1].get("val_loss") if rows else None,
        "seconds": seconds,
        "calibration_volumes": calibration,
    }


def calibrate_model(
    output_dir: Path,
    datalist: str | os.PathLike,
    config: ModelConfig,
    net: nn.Module,
    device: str,
    score_median: int | None = None,
) -> int | None:
    """Calibrate the trained model's score on the datalist's healthy ``calibration`` section, when it has one.

    The volume-level threshold needs ``n + 1 >= 1 / alpha`` volumes: with fewer than the default alpha needs, the
    calibration is fitted for the smallest alpha ``n`` volumes support (the voxel-level conformal p-values are valid
    for any ``n``). ``score_median``: the z-map filter calibrated (``None``: the method's default). Returns the
    number of calibration volumes, or ``None`` when there is no such section.
    """
    from monai_qrvae.data.datalist import load_datalist

    try:
        items = load_datalist(datalist, section="calibration", check=False)
    except (KeyError, ValueError):
        items = []
    if not items:
        logger.info("no 'calibration' section in %s: the model is not calibrated (run 'qrvae calibrate')", datalist)
        return None
    alpha = max(method_defaults(config.method).alpha, 1.0 / (len(items) + 1))
    model = (config, net.to(device).eval())
    fit_calibration(output_dir, datalist, alpha=alpha, score_median=score_median, device=device, model=model)
    net.cpu()
    return len(items)


@torch.no_grad()
def estimate_residual_sigma(net: nn.Module, loader: Any, device: str) -> float:
    """Standard deviation of the FLAIR residual inside the brain on healthy slices (MSE-VAE's sigma)."""
    from monai_qrvae.anomaly import FLAIR_CHANNEL

    net = net.to(device).eval()
    net.residual_sigma = 1.0
    total, total_sq, count = 0.0, 0.0, 0.0
    for batch in loader:
        image = batch["image"].to(device)
        mask = batch["brain_mask"].to(device) > 0
        out = net(image)
        c = out.shape[1] // 3
        residual = (image[:, :c] - out[:, :c])[:, FLAIR_CHANNEL : FLAIR_CHANNEL + 1][mask]
        total += residual.sum().item()
        total_sq += residual.pow(2).sum().item()
        count += residual.numel()
    mean = total / max(count, 1)
    return float(max(total_sq / max(count, 1) - mean**2, 1e-8) ** 0.5)
