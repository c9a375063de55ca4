"""Model building and model folders: the methods, network presets, :class:`ModelConfig`, networks, losses, loading.

A model folder (written by :func:`monai_qrvae.workflows.train`) holds ``model_config.json`` (:class:`ModelConfig`)
and ``model.pt`` (the anomaly network's plain state dict); the shipped model is the bundle's ``models/`` folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_qrvae.anomaly import SCORES
from monai_qrvae.baselines import IntensityBaseline
from monai_qrvae.context import CONTEXTS, context_channels
from monai_qrvae.defaults import method_defaults
from monai_qrvae.handlers.checkpoint import load_state_dict_file
from monai_qrvae.losses import GaussianVAELoss, QRVAELoss
from monai_qrvae.networks import QRVAE, AnomalyMapNet, GaussianVAE
from monai_qrvae.preprocessing import volume_transforms
from monai_qrvae.utils import atomic_write

__all__ = [
    "METHODS",
    "MODEL_PRESETS",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "SHIPPED_MODEL_DIR",
    "shipped_model_dir",
    "ModelConfig",
    "build_networks",
    "build_loss",
    "load_model",
]

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
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[2] / "bundle" / "models"


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
    """Everything needed to rebuild a trained model and its preprocessing.

    ``spacing`` is the voxel size (mm, RAS axes) of the grid the model was trained on: inputs are resampled to it
    before analysis (and the maps written back on the input grid), so that the analysis does not depend on the
    scanner's voxel size; ``None`` (models trained before it was recorded) analyses each input on its own grid.
    """

    method: str = "qrvae"
    preset: str = "small"
    in_channels: int = 3
    image_size: int | None = 64
    num_slices: int | None = 20
    quantiles: tuple[float, ...] = (0.15, 0.5)
    beta: float = 1.0
    kernel_size: int = 5
    residual_sigma: float = 1.0
    context: str = "none"
    score: str = "flair"
    quantile_score: bool = False
    spacing: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.preset not in MODEL_PRESETS:
            raise ValueError(f"preset must be one of {tuple(MODEL_PRESETS)}, got {self.preset!r}.")
        self.quantiles = tuple(float(q) for q in self.quantiles)
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {self.context!r}.")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {tuple(SCORES)}, got {self.score!r}.")
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or min(spacing) <= 0:
                raise ValueError(f"spacing must be three positive voxel sizes in mm (RAS axes), got {self.spacing!r}.")
            self.spacing = spacing  # type: ignore[assignment]

    @classmethod
    def from_defaults(cls, method: str = "qrvae", **overrides: Any) -> ModelConfig:
        """The configuration ``qrvae train --method method`` gives without options (:mod:`monai_qrvae.defaults`)."""
        defaults = method_defaults(method)
        keys = ("image_size", "num_slices", "quantiles", "context", "score", "quantile_score")
        return cls(method=method, **{**{k: getattr(defaults, k) for k in keys}, **overrides})

    @property
    def network_channels(self) -> int:
        """Input channels of the network: the contrasts plus the through-plane context channels."""
        return context_channels(self.context, self.in_channels)

    def transforms(self, load: bool = True) -> Any:
        """The volume chain of this model (:func:`~monai_qrvae.preprocessing.volume_transforms`)."""
        return volume_transforms(
            image_size=self.image_size,
            num_slices=self.num_slices,
            context=self.context,
            load=load,
            spacing=self.spacing,
        )

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
    in_shape = (config.network_channels, config.image_size, config.image_size)
    arch = dict(MODEL_PRESETS[config.preset])
    arch.update(config.extra.get("arch", {}))
    common = dict(spatial_dims=2, in_shape=in_shape, kernel_size=config.kernel_size, up_kernel_size=config.kernel_size)
    if config.method == "qrvae":
        vae: nn.Module = QRVAE(quantiles=config.quantiles, target_channels=config.in_channels, **common, **arch)
    else:
        vae = GaussianVAE(
            learn_variance=config.method == "gaussian", target_channels=config.in_channels, **common, **arch
        )
    return vae, AnomalyMapNet(vae, residual_sigma=config.residual_sigma, quantile_score=config.quantile_score)


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
    check_weights_fit(state, net, model_dir / WEIGHTS_FILE, config)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"weights {model_dir / WEIGHTS_FILE} do not fit the network described by {CONFIG_FILE}: {e}"
        ) from e
    return config, net.to(device).eval()


def check_weights_fit(state: dict[str, Any], net: nn.Module, path: Path, config: ModelConfig) -> None:
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
