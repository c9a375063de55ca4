"""Shared pieces of the experiments: quick mode, the cohort and trained models they need, slice-wise prediction,
figure writing.

The brain experiments (:mod:`~monai_qrvae.experiments.calibration`, :mod:`~monai_qrvae.experiments.fdr`) need the
embedded synthetic cohort and a trained QR-VAE and Gaussian VAE. :func:`prepare_models` reuses what it is given
(a datalist, model folders written by ``qrvae train``) and makes or trains only what is missing, in a work folder,
so that running an experiment twice does not train twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_qrvae.utils import atomic_write, write_json

__all__ = [
    "QUICK_ENV",
    "CohortSettings",
    "DEFAULT_COHORT",
    "QUICK_COHORT",
    "DEFAULT_EPOCHS",
    "QUICK_EPOCHS",
    "quick_from_env",
    "ensure_cohort",
    "ensure_model",
    "prepare_models",
    "experiment_models",
    "load_volumes",
    "predict_slices",
    "VolumePrediction",
    "predict_volumes",
    "finish_result",
    "new_figure",
    "save_figure",
]

#: environment variable that switches notebooks (and tests) to their small settings: ``QRVAE_NOTEBOOK_QUICK=1``.
QUICK_ENV = "QRVAE_NOTEBOOK_QUICK"

#: epochs used to train each brain model when no trained model is given.
DEFAULT_EPOCHS = 20
QUICK_EPOCHS = 1


@dataclass(frozen=True)
class CohortSettings:
    """Size of the synthetic cohort an experiment makes when no datalist is given."""

    n_healthy: int = 51  # make_cohort's default cohort: the same data as `qrvae make-data` and the demo
    n_lesion: int = 20
    seed: int = 0
    spacing: float = 2.0


DEFAULT_COHORT = CohortSettings()
QUICK_COHORT = CohortSettings(n_healthy=4, n_lesion=2, seed=0, spacing=3.0)


def quick_from_env(default: bool = False) -> bool:
    """``True`` when ``QRVAE_NOTEBOOK_QUICK`` is set to a true value (``1``, ``true``, ``yes``, ``on``)."""
    value = os.environ.get(QUICK_ENV)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def ensure_cohort(data_dir: str | os.PathLike, settings: CohortSettings = DEFAULT_COHORT) -> Path:
    """The datalist of a synthetic cohort in ``data_dir``, made with :func:`monai_qrvae.data.make_cohort` unless a
    cohort with the same settings is already there."""
    from monai_qrvae.data import make_cohort
    from monai_qrvae.data.synthetic import GENERATOR_VERSION

    data_dir = Path(data_dir)
    datalist = data_dir / "datalist.json"
    if datalist.is_file():
        try:
            meta = json.loads(datalist.read_text()).get("metadata", {})
        except json.JSONDecodeError:
            meta = {}
        same = (
            meta.get("n_healthy") == settings.n_healthy
            and meta.get("n_lesion") == settings.n_lesion
            and meta.get("seed") == settings.seed
            and meta.get("spacing_mm") == float(settings.spacing)
            and meta.get("generator_version") == GENERATOR_VERSION
        )
        if same:
            return datalist
    return Path(
        make_cohort(
            data_dir,
            n_healthy=settings.n_healthy,
            n_lesion=settings.n_lesion,
            seed=settings.seed,
            spacing=settings.spacing,
        )
    )


def ensure_model(
    datalist: str | os.PathLike,
    model_dir: str | os.PathLike,
    method: str,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    progress: bool = False,
    **train_kwargs: Any,
) -> Path:
    """A model trained with :func:`monai_qrvae.workflows.train` in ``model_dir``; trained only when the folder does
    not already hold one made from the same datalist, method, epochs, seed and options (``experiment.json``)."""
    from monai_qrvae.workflows import CONFIG_FILE, WEIGHTS_FILE, train

    model_dir = Path(model_dir)
    recipe = {
        "datalist": str(Path(datalist).resolve()),
        "method": method,
        "epochs": int(epochs),
        "seed": int(seed),
        **{k: list(v) if isinstance(v, tuple) else v for k, v in sorted(train_kwargs.items())},
    }
    marker = model_dir / "experiment.json"
    if (model_dir / WEIGHTS_FILE).is_file() and (model_dir / CONFIG_FILE).is_file() and marker.is_file():
        try:
            if json.loads(marker.read_text()) == recipe:
                return model_dir
        except json.JSONDecodeError:
            pass
    if model_dir.exists():
        shutil.rmtree(model_dir)  # a different recipe: start afresh rather than resume someone else's checkpoints
    train(datalist, model_dir, method=method, epochs=epochs, seed=seed, progress=progress, **train_kwargs)
    write_json(marker, recipe)
    return model_dir


def prepare_models(
    work_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    models: dict[str, str | os.PathLike | None] | None = None,
    methods: Sequence[str] = ("qrvae", "gaussian"),
    quick: bool = False,
    epochs: int | None = None,
    cohort: CohortSettings | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Path, dict[str, Path]]:
    """The datalist and one trained model folder per method, making and training only what is missing.

    Args:
        work_dir: folder for a cohort (``work_dir/data``) and models (``work_dir/<method>/model``) made here.
        datalist: an existing datalist; ``None`` makes the synthetic cohort.
        models: existing model folders by method (``{"qrvae": "runs/qrvae"}``); missing methods are trained.
        methods: the methods needed.
        quick: small cohort and one epoch (for tests and ``QRVAE_NOTEBOOK_QUICK=1``).
        epochs: epochs of the models trained here (default 20, quick 1).
        cohort: cohort settings (default 40 healthy + 10 lesion subjects at 2 mm; quick 4 + 2 at 3 mm).
        seed: training seed.
        progress: show training progress bars.

    Returns:
        ``(datalist, {method: model_dir})``.

    Raises:
        FileNotFoundError: when a given datalist or model folder does not exist.
    """
    work_dir = Path(work_dir)
    models = dict(models or {})
    if datalist is None:
        datalist = ensure_cohort(work_dir / "data", cohort or (QUICK_COHORT if quick else DEFAULT_COHORT))
    datalist = Path(datalist)
    if not datalist.is_file():
        raise FileNotFoundError(f"datalist {datalist} does not exist; expected a JSON written by 'qrvae make-data'.")
    n_epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else DEFAULT_EPOCHS)
    out: dict[str, Path] = {}
    for method in methods:
        given = models.get(method)
        if given is not None:
            path = Path(given)
            if not (path / "model_config.json").is_file():
                raise FileNotFoundError(
                    f"{method} model folder {path} has no model_config.json; "
                    "expected a folder written by 'qrvae train'."
                )
            out[method] = path
        else:
            out[method] = ensure_model(
                datalist, work_dir / method / "model", method, epochs=n_epochs, seed=seed, progress=progress
            )
    return datalist, out


def experiment_models(
    out_dir: str | os.PathLike | None,
    work_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    models: dict[str, str | os.PathLike | None] | None = None,
    methods: Sequence[str] = ("qrvae", "gaussian"),
    quick: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Path, dict[str, Path]]:
    """The cohort and models of a brain experiment writing to ``out_dir`` (:func:`prepare_models`).

    Args:
        out_dir: the experiment's output folder (``None``: nothing saved).
        work_dir: where a cohort and models are made when not given (default: ``out_dir/work``, or a folder
            ``qrvae-experiments`` in the current directory).
        datalist: an existing datalist (default: the embedded synthetic cohort, made in ``work_dir/data``).
        models: trained model folders by method, e.g. ``{"qrvae": "runs/qrvae", "gaussian": "runs/gaussian"}``;
            missing ones are trained in ``work_dir`` (20 epochs; quick: 1 epoch on a tiny cohort).
        methods: methods compared.
        quick: tiny cohort and one epoch (tests, ``QRVAE_NOTEBOOK_QUICK=1``).
        epochs: epochs of models trained here.
        seed: training seed.
        progress: show training progress bars.
    """
    work = (
        Path(work_dir) if work_dir is not None else (Path(out_dir) / "work" if out_dir else Path("qrvae-experiments"))
    )
    return prepare_models(
        work,
        datalist=datalist,
        models=models,
        methods=methods,
        quick=quick,
        epochs=epochs,
        seed=seed,
        progress=progress,
    )


def load_volumes(
    datalist: str | os.PathLike, section: str, image_size: int = 64, num_slices: int = 20
) -> list[dict[str, Any]]:
    """Preprocess every subject of a datalist section with :func:`monai_qrvae.preprocessing.volume_transforms`.

    Returns:
        one dict per subject with ``name`` and plain tensors in slice-batch layout: ``image`` ``(N, C, H, W)``,
        ``brain_mask`` ``(N, 1, H, W)`` (bool) and ``label`` ``(N, 1, H, W)`` (bool) where the datalist has one.
    """
    from monai_qrvae.data import load_datalist
    from monai_qrvae.preprocessing import volume_transforms

    items = load_datalist(datalist, section, check=False)
    if not items:
        raise ValueError(f"datalist {datalist}: section {section!r} is empty; expected at least one subject.")
    transform = volume_transforms(image_size=image_size, num_slices=num_slices)
    volumes = []
    for item in items:
        data = transform(dict(item))
        first = Path(item["image"] if isinstance(item["image"], (str, os.PathLike)) else item["image"][0])
        name = first.parent.name if first.name.startswith("image.") else first.name.split(".")[0]
        vol: dict[str, Any] = {"name": name}
        for key in ("image", "brain_mask", "label"):
            if key in data:
                t = torch.as_tensor(data[key]).as_subclass(torch.Tensor).permute(3, 0, 1, 2).contiguous()
                vol[key] = t.float() if key == "image" else t > 0.5
        volumes.append(vol)
    return volumes


@torch.no_grad()
def predict_slices(
    net: nn.Module, image: torch.Tensor, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run an :class:`~monai_qrvae.networks.AnomalyMapNet` on a stack of slices ``(N, C, H, W)``.

    Returns:
        ``(mu, sigma, z, quantiles)``: each ``(N, C, H, W)``, and the raw quantile-major prediction
        ``(N, Q*C, H, W)`` when the wrapped network is a :class:`~monai_qrvae.networks.QRVAE` (else ``None``).
    """
    from monai_qrvae.networks import QRVAE

    net = net.eval()
    is_qr = isinstance(getattr(net, "network", None), QRVAE)
    c = image.shape[1]
    outs, quantiles = [], []
    for start in range(0, image.shape[0], batch_size):
        x = image[start : start + batch_size]
        outs.append(net(x))
        if is_qr:
            quantiles.append(net.network(x)[0].float())
    out = torch.cat(outs)
    return out[:, :c], out[:, c : 2 * c], out[:, 2 * c :], torch.cat(quantiles) if is_qr else None


@dataclass
class VolumePrediction:
    """One subject's inputs and predictions, in slice-batch layout ``(N, C, H, W)``."""

    name: str
    image: torch.Tensor
    brain_mask: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    z: torch.Tensor
    quantiles: torch.Tensor | None = None
    label: torch.Tensor | None = None


def predict_volumes(model_dir: str | os.PathLike, datalist: str | os.PathLike, section: str) -> list[VolumePrediction]:
    """Load a trained model and predict ``mu``, ``sigma``, ``z`` (and the quantiles of a QR-VAE) for every subject of
    a datalist section, preprocessed as the model was trained."""
    from monai_qrvae.workflows import Pipeline

    pipeline = Pipeline.from_model_dir(model_dir).load()
    config, net = pipeline.config, pipeline.network
    preds = []
    for vol in load_volumes(datalist, section, image_size=config.image_size, num_slices=config.num_slices):
        mu, sigma, z, quantiles = predict_slices(net, vol["image"])
        preds.append(
            VolumePrediction(
                name=vol["name"],
                image=vol["image"],
                brain_mask=vol["brain_mask"],
                mu=mu,
                sigma=sigma,
                z=z,
                quantiles=quantiles,
                label=vol.get("label"),
            )
        )
    return preds


def finish_result(result: dict[str, Any], out_dir: str | os.PathLike | None, name: str, start: float) -> dict[str, Any]:
    """An experiment's last step: its ``seconds`` since ``start`` and, with ``out_dir``, ``out_dir/<name>.json``
    (listed under ``result["files"]["json"]``)."""
    result["seconds"] = time.perf_counter() - start
    if out_dir is not None:
        result["files"]["json"] = str(Path(out_dir) / f"{name}.json")
        write_json(result["files"]["json"], result)
    return result


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.0, 4.0)) -> tuple[Any, Any]:
    """A bare matplotlib ``Figure`` with an Agg canvas and its axes (no pyplot state, no backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a figure to a PNG file atomically (folders are created) and return the path."""

    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": None}))
