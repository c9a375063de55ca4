"""High-level jobs behind the ``qrvae`` command: train, evaluate, infer and the demo.

Each job wires the package's pieces (transforms, networks, losses, engines, handlers) the same way the bundle
configs do, and writes everything atomically into one output folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.handlers import StatsHandler, TensorBoardStatsHandler, ValidationHandler
from monai.utils import set_determinism
from torch import nn
from torch.utils.data import DistributedSampler

from monai_qrvae.baselines import IntensityBaseline
from monai_qrvae.checkpoints import AtomicCheckpointSaver, ResumeFromCheckpoint, load_state_dict_file
from monai_qrvae.defaults import method_defaults
from monai_qrvae.engines import (
    EpochSeedHandler,
    LossHistory,
    create_anomaly_evaluator,
    create_loss_evaluator,
    create_trainer,
)
from monai_qrvae.handlers import (
    AnomalyMapHandler,
    AnomalyMapSaver,
    FDRHandler,
    LesionFilterHandler,
    OverlaySaver,
    atomic_write,
)
from monai_qrvae.logging_utils import progress_enabled
from monai_qrvae.losses import GaussianVAELoss, QRVAELoss
from monai_qrvae.networks import QRVAE, AnomalyMapNet, GaussianVAE
from monai_qrvae.preprocessing import SliceDataset, volume_transforms

__all__ = [
    "METHODS",
    "MODEL_PRESETS",
    "ModelConfig",
    "build_networks",
    "load_model",
    "train",
    "evaluate",
    "infer",
    "demo",
]

logger = logging.getLogger("monai_qrvae")

#: the methods compared: QR-VAE, Gaussian VAE (learned variance), MSE VAE (residual), FLAIR thresholding.
METHODS = ("qrvae", "gaussian", "mse", "flair")

#: network sizes: ``small`` is the shipped default; ``paper`` is the paper's brain model (69.6 M parameters).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"channels": (32, 64, 128), "strides": (2, 2, 2), "latent_size": 128, "hidden_size": None},
    "paper": {"channels": (64, 128, 256), "strides": (2, 2, 2), "latent_size": 128, "hidden_size": 2048},
}

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.pt"
#: the shipped model (the bundle's weights, with the configuration ``qrvae`` needs): the default of ``qrvae infer``.
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[1] / "bundle" / "models"


def shipped_model_dir() -> Path:
    """The folder of the shipped model (``bundle/models`` of this checkout: ``model.pt`` + ``model_config.json``).

    Raises:
        FileNotFoundError: when this installation has no bundle folder (e.g. a wheel without the repository).
    """
    if not (SHIPPED_MODEL_DIR / WEIGHTS_FILE).is_file() or not (SHIPPED_MODEL_DIR / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"no shipped model at {SHIPPED_MODEL_DIR} (expected {WEIGHTS_FILE} and {CONFIG_FILE} of the repository's "
            "bundle/models); give --model with a folder written by 'qrvae train'."
        )
    return SHIPPED_MODEL_DIR


@dataclass
class ModelConfig:
    """Everything needed to rebuild a trained model and its preprocessing."""

    method: str = "qrvae"
    preset: str = "small"
    in_channels: int = 3
    image_size: int | None = 64
    num_slices: int | None = 20
    quantiles: tuple[float, ...] = (0.15, 0.5)
    beta: float = 1.0
    kernel_size: int = 5
    residual_sigma: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"preset must be one of {tuple(MODEL_PRESETS)}, got {self.preset!r}.")
        self.quantiles = tuple(float(q) for q in self.quantiles)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the configuration as JSON (atomically)."""
        text = json.dumps(asdict(self), indent=2)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        """Read a configuration written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"model configuration {path} does not exist; expected {CONFIG_FILE} beside {WEIGHTS_FILE} in a model "
                "folder written by 'qrvae train' (or the bundle's models/ folder)."
            )
        try:
            content = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"cannot read model configuration {path}: {type(e).__name__}: {e}; expected the JSON object that "
                "'qrvae train' writes."
            ) from e
        known = {f.name for f in fields(cls)}
        if not isinstance(content, dict) or not set(content) <= known:
            got = f"unknown entries {sorted(set(content) - known)}" if isinstance(content, dict) else "no JSON object"
            raise ValueError(f"model configuration {path}: got {got}; expected keys among {sorted(known)}.")
        return cls(**content)


def build_networks(config: ModelConfig) -> tuple[nn.Module | None, nn.Module]:
    """Build ``(trainable VAE or None, anomaly network with one output)`` for a configuration."""
    if config.method == "flair":
        return None, IntensityBaseline(config.in_channels)
    if config.image_size is None:
        raise ValueError(f"method {config.method!r} needs an image_size (the network's input size), got None.")
    in_shape = (config.in_channels, config.image_size, config.image_size)
    arch = dict(MODEL_PRESETS[config.preset])
    arch.update(config.extra.get("arch", {}))
    common = dict(spatial_dims=2, in_shape=in_shape, kernel_size=config.kernel_size, up_kernel_size=config.kernel_size)
    if config.method == "qrvae":
        vae: nn.Module = QRVAE(quantiles=config.quantiles, **common, **arch)
    else:
        vae = GaussianVAE(learn_variance=config.method == "gaussian", **common, **arch)
    return vae, AnomalyMapNet(vae, residual_sigma=config.residual_sigma)


def build_loss(config: ModelConfig) -> nn.Module:
    """The training loss of a method."""
    if config.method == "qrvae":
        return QRVAELoss(quantiles=config.quantiles, beta=config.beta)
    return GaussianVAELoss(beta=config.beta, learn_variance=config.method == "gaussian")


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ModelConfig, nn.Module]:
    """Load ``(config, anomaly network in eval mode)`` from a folder written by :func:`train`."""
    model_dir = Path(model_dir)
    config = ModelConfig.load(model_dir / CONFIG_FILE)
    _, net = build_networks(config)
    state = load_state_dict_file(model_dir / WEIGHTS_FILE, map_location=device)
    _check_weights_fit(state, net, model_dir / WEIGHTS_FILE, config)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"weights {model_dir / WEIGHTS_FILE} do not fit the network described by {CONFIG_FILE}: {e}"
        ) from e
    return config, net.to(device).eval()


def _check_weights_fit(state: dict[str, Any], net: nn.Module, path: Path, config: ModelConfig) -> None:
    """Compare a state dict with the network of ``config``; a clear error names the first differences."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: got {tuple(state[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    details = "; ".join(
        part
        for part in (
            f"{len(shapes)} tensor(s) of another shape (first {shapes[0]})" if shapes else "",
            f"{len(missing)} missing (first {missing[0]!r})" if missing else "",
            f"{len(unexpected)} unexpected (first {unexpected[0]!r})" if unexpected else "",
        )
        if part
    )
    raise ValueError(
        f"weights {path} do not fit the network of {path.parent / CONFIG_FILE} (method {config.method!r}, preset "
        f"{config.preset!r}, {len(config.quantiles)} quantile(s) {list(config.quantiles)}, image_size "
        f"{config.image_size}): {details}; expected the model.pt written with that configuration (another preset "
        "or number of quantiles?)."
    )


def _datalist(datalist: str | os.PathLike, section: str, read_data: bool = False) -> list[dict]:
    """One checked section of a datalist: files exist, contrasts agree in shape and affine, 3 channels.

    With ``read_data`` every voxel is read too (corrupt data, NaN/Inf voxels, all-zero images).
    """
    from monai_qrvae.data.datalist import load_datalist

    items = load_datalist(datalist, section=section, check=True, num_channels=3, read_data=read_data)
    if not items:
        raise ValueError(f"datalist {datalist}: section {section!r} is empty; expected at least one subject.")
    return items


_SLICE_CACHE: dict[tuple[str, int | None, int | None], SliceDataset] = {}
_SLICE_CACHE_SIZE = 4


def _slice_dataset(items: list[dict], image_size: int | None, num_slices: int | None, progress: bool) -> SliceDataset:
    """The slices of ``items``, prepared once per process: the demo, the sweep and the benchmark train several
    methods and seeds on the same volumes (a small in-memory cache of the last few datasets, keyed by the entries,
    their files' modification times and the slice settings)."""

    def stamp(value: Any) -> Any:
        paths = value if isinstance(value, list) else [value]
        return [(str(p), os.stat(p).st_mtime_ns) if isinstance(p, str) and os.path.exists(p) else str(p) for p in paths]

    key = (
        json.dumps([{k: stamp(v) for k, v in sorted(item.items())} for item in items], default=str),
        image_size,
        num_slices,
    )
    if key not in _SLICE_CACHE:
        if len(_SLICE_CACHE) >= _SLICE_CACHE_SIZE:
            _SLICE_CACHE.pop(next(iter(_SLICE_CACHE)))
        vt = volume_transforms(image_size=image_size, num_slices=num_slices)
        _SLICE_CACHE[key] = SliceDataset(items, vt, progress=progress)
    return _SLICE_CACHE[key]


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
    quantiles: Sequence[float] = (0.15, 0.5),
    beta: float = 1.0,
    val_interval: int = 1,
    resume: bool = True,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Train one method on the healthy ``training`` section, validating on ``validation``.

    ``epochs``, ``batch_size`` and ``lr`` left as ``None`` (``num_slices`` and ``image_size`` left as
    ``"default"``; ``None`` means every slice / the input's own grid) take the method's defaults from
    :mod:`monai_qrvae.defaults`, chosen on the ``tuning`` split (the paper used lr 3e-4 and batch 8: pass them to
    reproduce its setting).

    Writes ``model_config.json``, ``model.pt`` (the anomaly network's plain state dict), ``history.json``,
    ``training_curve.png``, TensorBoard logs and resumable checkpoints (``checkpoints/``) into ``output_dir``.
    Running the same command again after an interruption resumes from the last checkpoint.

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
        quantiles=tuple(quantiles),
        beta=beta,
    )
    train_items = _datalist(datalist, "training")
    val_items = _datalist(datalist, "validation")
    vae, net = build_networks(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    if vae is None:  # FLAIR thresholding: fit the healthy intensity statistics on whole volumes, no training
        vt = volume_transforms(image_size=image_size, num_slices=num_slices)
        net.fit(DataLoader(Dataset(train_items, vt), batch_size=1))
        config.save(output_dir / CONFIG_FILE)
        atomic_write(output_dir / WEIGHTS_FILE, lambda tmp: torch.save(net.state_dict(), tmp))
        return {"method": method, "model_dir": str(output_dir), "epochs": 0, "seconds": time.perf_counter() - start}

    train_ds = _slice_dataset(train_items, image_size, num_slices, progress)
    val_ds = _slice_dataset(val_items, image_size, num_slices, progress)

    sampler = DistributedSampler(train_ds, num_replicas=1, rank=0, shuffle=True, seed=seed)
    train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    loss = build_loss(config)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    validator = create_loss_evaluator(vae, loss, val_loader, device=device)
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
        vae, loss, train_loader, max_epochs=epochs, device=device, optimizer=optimizer, train_handlers=handlers
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
        config.residual_sigma = _residual_sigma(net, val_loader, device)
        net.residual_sigma = config.residual_sigma
    net = net.cpu().eval()
    config.save(output_dir / CONFIG_FILE)
    atomic_write(output_dir / WEIGHTS_FILE, lambda tmp: torch.save(net.state_dict(), tmp))
    rows = history.rows
    atomic_write(output_dir / "history.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))
    if rows:
        plot_history(rows, output_dir / "training_curve.png", title=f"{method} ({preset})")
    return {
        "method": method,
        "model_dir": str(output_dir),
        "epochs": trainer.state.epoch,
        "train_slices": len(train_ds),
        "final_loss": rows[-1].get("loss") if rows else None,
        "final_val_loss": rows[-1].get("val_loss") if rows else None,
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def _residual_sigma(net: nn.Module, loader: Any, device: str) -> float:
    """Standard deviation of the FLAIR residual inside the brain on healthy slices (MSE-VAE's sigma)."""
    from monai_qrvae.anomaly import FLAIR_CHANNEL

    net = net.to(device).eval()
    net.residual_sigma = 1.0
    total, total_sq, count = 0.0, 0.0, 0.0
    for batch in loader:
        image = batch["image"].to(device)
        mask = batch["brain_mask"].to(device) > 0
        out = net(image)
        c = image.shape[1]
        residual = (image - out[:, :c])[:, FLAIR_CHANNEL : FLAIR_CHANNEL + 1][mask]
        total += residual.sum().item()
        total_sq += residual.pow(2).sum().item()
        count += residual.numel()
    mean = total / max(count, 1)
    return float(max(total_sq / max(count, 1) - mean**2, 1e-8) ** 0.5)


def _anomaly_handlers(alpha: float, per: str, median_size: int, min_size: int, score_median: int) -> list[Any]:
    """The label-free post-processing every method shares: z/p maps, Benjamini-Hochberg mask, lesion filters."""
    return [
        AnomalyMapHandler(median_size=score_median),
        FDRHandler(alpha=alpha, per=per),
        LesionFilterHandler(median_size=median_size, min_size=min_size),
    ]


def _roi_size(config: ModelConfig) -> tuple[int, int]:
    """The in-plane window of the slice inferer: the network's input size (pointwise methods: any, padded)."""
    size = config.image_size or 256
    return (size, size)


def evaluate(
    model_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    section: str = "test",
    alpha: float = 0.05,
    per: str = "volume",
    median_size: int = 1,
    min_size: int = 0,
    save_maps: bool = True,
    save_png: bool = True,
    device: str = "cpu",
    score_median: int | None = None,
) -> dict[str, Any]:
    """Score a labelled ``section`` with a trained model on every brain voxel of every volume, on its input grid.

    The z-map and the label-free lesion mask (Benjamini-Hochberg at ``alpha``) are put back on each input's grid;
    brain voxels the model did not analyse (outside its slices) get the no-detection score and are never detected,
    so lesions there count as missed (see :mod:`monai_qrvae.evaluation`). Figures, pooled over the section:
    ``dice_fdr`` (label-free), ``best_dice`` (best threshold chosen with the labels: an upper bound), ``auroc``,
    ``auprc``, ``coverage`` (share of lesion voxels analysed), ``lesion_recall`` and ``fp_per_volume``
    (lesion-wise, label-free mask), ``healthy_any_detection`` (volumes without lesions), per stratum in
    ``strata`` and per volume in ``per_volume``.

    Args:
        score_median: in-plane median filter of the z-map before p-values (1 = off); ``None`` takes the method's
            default from :mod:`monai_qrvae.defaults` (chosen on the ``tuning`` split).
    """
    from monai_qrvae.evaluation import InputGridCollector, summarise

    config, net = load_model(model_dir, device)
    if score_median is None:
        score_median = method_defaults(config.method).score_median
    items = _datalist(datalist, section, read_data=True)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pre = volume_transforms(image_size=config.image_size, num_slices=config.num_slices)
    loader = DataLoader(Dataset(items, pre), batch_size=1, num_workers=0)
    post = _anomaly_handlers(alpha, per, median_size, min_size, score_median)
    collector = InputGridCollector(pre)
    handlers: list[Any] = [*post, collector]
    if save_maps:
        handlers.append(AnomalyMapSaver(output_dir / "maps", preprocessing=pre))
    if save_png:
        handlers.append(OverlaySaver(output_dir / "overlays"))
    evaluator = create_anomaly_evaluator(net, loader, device=device, roi_size=_roi_size(config), val_handlers=handlers)
    start = time.perf_counter()
    evaluator.run()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "method": config.method,
        "section": section,
        "alpha": alpha,
        "per": per,
        "score_median": score_median,
    }
    result.update(summarise(collector.records))
    result["seconds"] = seconds
    text = json.dumps(result, indent=2)
    atomic_write(output_dir / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    return result


def infer(
    model_dir: str | os.PathLike,
    images: Sequence[str | os.PathLike | dict[str, Any]],
    output_dir: str | os.PathLike,
    alpha: float = 0.05,
    per: str = "volume",
    median_size: int = 1,
    min_size: int = 0,
    save_png: bool = True,
    device: str = "cpu",
    score_median: int | None = None,
) -> list[Path]:
    """Find lesions in new volumes (no labels): write z-map, p-map and lesion mask NIfTI (input grid) per image.

    Args:
        images: paths of 4D (T1, T2, FLAIR) images, or datalist entries (``{"image": ..., "brain_mask": ...}``).
    """
    from monai_qrvae.data.datalist import check_item

    config, net = load_model(model_dir, device)
    if score_median is None:
        score_median = method_defaults(config.method).score_median
    items = []
    for entry in images:
        item = dict(entry) if isinstance(entry, dict) else {"image": os.fspath(entry)}
        item.pop("label", None)
        check_item(item, num_channels=config.in_channels, read_data=True)  # every input is checked before writing
        items.append(item)
    pre = volume_transforms(image_size=config.image_size, num_slices=config.num_slices)
    loader = DataLoader(Dataset(items, pre), batch_size=1, num_workers=0)
    post = _anomaly_handlers(alpha, per, median_size, min_size, score_median)
    saver = AnomalyMapSaver(output_dir, preprocessing=pre)
    handlers: list[Any] = [*post, saver]
    if save_png:
        handlers.append(OverlaySaver(output_dir, label_key="__none__"))
    evaluator = create_anomaly_evaluator(net, loader, device=device, roi_size=_roi_size(config), val_handlers=handlers)
    evaluator.run()
    return list(saver.saved)


def write_table(results: Sequence[dict[str, Any]], output_dir: str | os.PathLike) -> tuple[Path, Path, str]:
    """Write a metrics table (CSV and Markdown) comparing methods; return the paths and the Markdown text.

    The columns are :data:`monai_qrvae.study.HEADLINE_COLUMNS` (whole brain, input grid) plus training seconds;
    one row per result, strata rows under each method when the results have them.
    """
    from monai_qrvae.study import HEADLINE_COLUMNS, format_headline

    output_dir = Path(output_dir)
    columns = ["method", *(k for k, _ in HEADLINE_COLUMNS), "train_seconds"]
    rows = [{c: r.get(c) for c in columns} for r in results]

    def _csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    csv_path = atomic_write(output_dir / "metrics.csv", _csv)
    text = format_headline({r["method"]: [r] for r in results})
    times = ", ".join(
        f"{r['method']} {r['train_seconds']:.0f} s" for r in results if r.get("train_seconds") is not None
    )
    if times:
        text += f"\nTraining time: {times}.\n"
    md_path = atomic_write(output_dir / "metrics.md", lambda tmp: Path(tmp).write_text(text))
    return csv_path, md_path, text


#: the small fixed demo setting whose table docs/benchmarks.md shows and a test recomputes (figures within 0.01).
PINNED_DEMO: dict[str, Any] = {"n_healthy": 14, "n_lesion": 6, "spacing": 3.0, "epochs": 2, "seed": 0}


def demo(
    output_dir: str | os.PathLike = "outputs/demo",
    epochs: int | None = None,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    n_healthy: int | None = None,
    n_lesion: int | None = None,
    alpha: float = 0.05,
    progress: bool = True,
    preset: str = "small",
    spacing: float = 2.0,
    update_docs: Sequence[str | os.PathLike] = (),
    block: str = "demo",
) -> dict[str, Any]:
    """The main job: make the embedded data (if missing), train every method, evaluate on ``test``, compare.

    Every method uses its defaults (:mod:`monai_qrvae.defaults`, chosen on ``tuning``) unless ``epochs`` is given.
    Writes under ``output_dir``: ``data/`` (the synthetic cohort), ``<method>/model`` (weights, curves),
    ``<method>/eval`` (metrics, PNG overlays; NIfTI maps for QR-VAE) and ``metrics.csv``/``metrics.md`` (the
    comparison, whole brain on the input grid). ``update_docs`` rewrites the marked ``block`` of those Markdown
    files with the table (see :func:`monai_qrvae.study.update_doc_block`).
    """
    from monai_qrvae.data import make_cohort
    from monai_qrvae.study import update_doc_block

    start = time.perf_counter()
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    datalist = data_dir / "datalist.json"
    if not datalist.is_file():
        sizes = {k: v for k, v in (("n_healthy", n_healthy), ("n_lesion", n_lesion)) if v is not None}
        print(f"[demo] making the synthetic cohort in {data_dir}")
        datalist = Path(make_cohort(data_dir, seed=seed, spacing=spacing, **sizes))
    results = []
    for method in methods:
        print(f"[demo] training {method} ...")
        summary = train(
            datalist,
            output_dir / method / "model",
            method=method,
            epochs=epochs if method != "flair" else None,
            seed=seed,
            progress=progress,
            preset=preset,
        )
        print(f"[demo] evaluating {method} on the test subjects (whole brain, input grid) ...")
        metrics = evaluate(
            output_dir / method / "model",
            datalist,
            output_dir / method / "eval",
            alpha=alpha,
            save_maps=method == "qrvae",
            save_png=True,
        )
        metrics["train_seconds"] = summary["seconds"]
        results.append(metrics)
    csv_path, md_path, table = write_table(results, output_dir)
    for doc in update_docs:  # the figures only: training times are not reproducible to the second
        update_doc_block(doc, block, table.split("\nTraining time")[0])
    total = time.perf_counter() - start
    print("\n" + table)
    print(f"[demo] done in {total:.0f} s. Metrics: {csv_path} and {md_path}")
    print(f"[demo] QR-VAE maps (NIfTI): {output_dir / 'qrvae' / 'eval' / 'maps'}")
    print(f"[demo] overlays (PNG): {output_dir / 'qrvae' / 'eval' / 'overlays'}")
    print(f"[demo] training curves: {output_dir}/<method>/model/training_curve.png")
    return {"results": results, "table": table, "seconds": total, "output_dir": str(output_dir)}
