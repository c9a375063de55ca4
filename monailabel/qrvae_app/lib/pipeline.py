"""The QR-VAE lesion-detection pipeline behind the MONAI Label app, free of MONAI Label imports.

Everything here needs only ``monai`` and ``monai_qrvae``, so it runs (and is tested) in the project's main
environment as well as in the MONAI Label server's. The infer task in ``lib/infers/qrvae.py`` is a thin
``BasicInferTask`` around it.

One study = one 4D NIfTI ``(X, Y, Z, 3)`` holding the contrasts T1, T2, FLAIR (in that order) of one
skull-stripped, co-registered subject, as ``qrvae make-data`` writes them (``sub-XXX/image.nii.gz``).
``make_studies.py`` lays out a MONAI Label studies folder from a datalist (and stacks per-contrast files).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, MapTransform
from torch import nn

from monai_qrvae.checkpoints import load_state_dict_file
from monai_qrvae.postprocessing import AnomalyMapsd, FDRMaskd, LesionFilterd
from monai_qrvae.preprocessing import volume_transforms

__all__ = [
    "CONTRASTS",
    "ZMAP_BANDS",
    "StudyError",
    "LoadedModel",
    "resolve_model_source",
    "load_model_source",
    "CheckContrastsd",
    "build_pre_transforms",
    "build_inferer",
    "PostOptions",
    "postprocess",
    "run_study",
]

#: the channels of a study, in order (channel 2 is the FLAIR the anomaly map is computed on).
CONTRASTS = ("T1", "T2", "FLAIR")

#: z thresholds of the banded z-map model: label value k means ``ZMAP_BANDS[k-1] <= z`` (< the next band).
ZMAP_BANDS = (2.0, 3.0, 4.0)

#: keys of the request that the preprocessing must not load (MONAI Label may pass a user label file).
_DROP_KEYS = ("label", "brain_mask")


class StudyError(ValueError):
    """The study cannot be analysed (wrong number of contrasts, empty image); the message says what to do."""


@dataclass
class LoadedModel:
    """A loaded anomaly network and what the app needs to run it.

    Attributes:
        network: the anomaly network (one output ``[mu, sigma, z]`` per channel), in eval mode on the CPU.
        image_size: in-plane size of the network's input.
        num_slices: number of central axial slices analysed.
        in_channels: number of input contrasts (3).
        source: human-readable description of where the weights came from.
        weights: the weights file.
        defaults: post-processing defaults (``alpha``, ``fdr_per``, ``median_size``, ``min_size``).
    """

    network: nn.Module
    image_size: int
    num_slices: int
    in_channels: int
    source: str
    weights: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    _by_device: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def on(self, device: str | torch.device) -> nn.Module:
        """The network on ``device`` (copied once per device and cached)."""
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = self.network if key == "cpu" else _copy_to(self.network, device)
        return self._by_device[key]


def _copy_to(network: nn.Module, device: str | torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(network).to(device).eval()


_DEFAULT_POST = {"alpha": 0.05, "fdr_per": "volume", "score_median": 3, "median_size": 1, "min_size": 0}


def resolve_model_source(conf: Mapping[str, str], app_dir: str | os.PathLike) -> tuple[str, Path]:
    """Where the weights come from: ``("model_dir", path)`` or ``("bundle", path)``.

    Order: ``--conf model_dir PATH`` (a ``qrvae train`` folder: ``model.pt`` + ``model_config.json``), then
    ``--conf bundle PATH`` (a MONAI bundle: ``configs/inference.json`` + ``models/model.pt``), then the app's own
    ``model/`` folder holding a ``qrvae train`` model, then the repository's ``bundle/`` (two levels above the app).

    Raises:
        FileNotFoundError: the configured folder lacks its files, or no default location has a model.
    """
    app_dir = Path(app_dir)
    if conf.get("model_dir"):
        path = Path(conf["model_dir"]).expanduser().resolve()
        _require(path, ("model.pt", "model_config.json"), "--conf model_dir", "a `qrvae train --out` folder")
        return "model_dir", path
    if conf.get("bundle"):
        path = Path(conf["bundle"]).expanduser().resolve()
        _require(path, ("configs/inference.json", "models/model.pt"), "--conf bundle", "a monai-qrvae MONAI bundle")
        return "bundle", path
    own = app_dir / "model"
    if (own / "model.pt").is_file() and (own / "model_config.json").is_file():
        return "model_dir", own.resolve()
    repo_bundle = (app_dir / ".." / ".." / "bundle").resolve()
    if (repo_bundle / "configs" / "inference.json").is_file() and (repo_bundle / "models" / "model.pt").is_file():
        return "bundle", repo_bundle
    raise FileNotFoundError(
        "no QR-VAE weights found. Pass `--conf model_dir PATH` (a folder written by `qrvae train`, with model.pt "
        "and model_config.json) or `--conf bundle PATH` (a MONAI bundle with configs/inference.json and "
        f"models/model.pt), or put a `qrvae train` model into {own}, or a trained bundle at {repo_bundle}."
    )


def _require(path: Path, files: tuple[str, ...], option: str, what: str) -> None:
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{option} {path}: missing {', '.join(missing)}; expected {what}.")


def load_model_source(kind: str, path: str | os.PathLike) -> LoadedModel:
    """Load the network of a ``qrvae train`` folder (``kind="model_dir"``) or of a bundle (``kind="bundle"``)."""
    path = Path(path)
    if kind == "model_dir":
        from monai_qrvae.workflows import load_model

        config, network = load_model(path)
        return LoadedModel(
            network=network,
            image_size=config.image_size,
            num_slices=config.num_slices,
            in_channels=config.in_channels,
            source=f"model folder {path} ({config.method}, preset {config.preset})",
            weights=path / "model.pt",
            defaults=dict(_DEFAULT_POST),
        )
    if kind == "bundle":
        return _load_bundle(path)
    raise ValueError(f"kind must be 'model_dir' or 'bundle', got {kind!r}.")


def _load_bundle(path: Path) -> LoadedModel:
    from monai.bundle import ConfigParser

    import monai_qrvae  # noqa: F401  (registers the package's classes for the config's short `_target_` names)

    parser = ConfigParser()
    parser.read_config(str(path / "configs" / "inference.json"))
    parser["bundle_root"] = str(path)
    network = parser.get_parsed_content("network_def", instantiate=True)
    weights = path / "models" / "model.pt"
    state = load_state_dict_file(weights)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights {weights} do not fit the bundle's network_def: {e}") from e
    defaults = {key: _parsed(parser, key, value) for key, value in _DEFAULT_POST.items()}
    in_shape = _parsed(parser, "network_def#network#in_shape", [3])
    return LoadedModel(
        network=network.eval(),
        image_size=int(_parsed(parser, "image_size", 64)),
        num_slices=int(_parsed(parser, "num_slices", 20)),
        in_channels=int(in_shape[0]),
        source=f"bundle {path}",
        weights=weights,
        defaults=defaults,
    )


def _parsed(parser: Any, key: str, default: Any) -> Any:
    """A config value (expressions evaluated), or ``default`` when the config does not have it."""
    try:
        return parser.get_parsed_content(key, instantiate=True)
    except KeyError:
        return default


class CheckContrastsd(MapTransform):
    """Refuse a study that is not one multi-contrast volume ``(C, X, Y, Z)`` with ``C = len(contrasts)``.

    Runs right after ``LoadImaged`` + ``EnsureChannelFirstd`` and raises :class:`StudyError` with a message meant for
    the person at the viewer (no stack trace needed to understand it).
    """

    def __init__(self, keys: str = "image", contrasts: tuple[str, ...] = CONTRASTS) -> None:
        super().__init__(keys)
        self.contrasts = tuple(contrasts)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            name = _study_name(image)
            shape = tuple(image.shape)
            need = len(self.contrasts)
            order = ", ".join(self.contrasts)
            if len(shape) != 4 or shape[0] != need:
                found = (
                    f"a {len(shape) - 1}D image"
                    if len(shape) != 4
                    else f"{shape[0]} volume{'s' if shape[0] != 1 else ''} of {shape[1]} x {shape[2]} x {shape[3]}"
                )
                raise StudyError(
                    f"study {name!r} has {found} (array shape {shape}); this model needs the {need} contrasts "
                    f"{order} of one subject in ONE 4D NIfTI of shape (X, Y, Z, {need}), volumes in that order, "
                    "skull-stripped and co-registered. Stack per-contrast files with the app's make_studies.py "
                    "(see monailabel/qrvae_app/README.md)."
                )
            if not bool(torch.as_tensor(image).ne(0).any()):
                raise StudyError(f"study {name!r} is empty (all voxels are 0); expected a skull-stripped brain MRI.")
        return d


def _study_name(image: Any) -> str:
    meta = getattr(image, "meta", {}) or {}
    name = meta.get("filename_or_obj", "")
    return os.path.basename(str(name)) if name else "<in memory>"


class _DropKeysd(MapTransform):
    """Remove keys that would otherwise be loaded by the package chain (a user label, a stray mask path)."""

    def __init__(self, keys: tuple[str, ...] = _DROP_KEYS) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return {k: v for k, v in data.items() if k not in self.keys}


def build_pre_transforms(model: LoadedModel) -> Compose:
    """Load, check the contrasts, then the package's standard chain (``monai_qrvae.preprocessing``).

    The chain is built once per task: :func:`postprocess` inverts through these very instances.
    """
    return Compose(
        [
            _DropKeysd(),
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            CheckContrastsd(keys="image", contrasts=CONTRASTS[: model.in_channels]),
            *volume_transforms(image_size=model.image_size, num_slices=model.num_slices, load=False).transforms,
        ]
    )


def build_inferer(model: LoadedModel) -> SliceInferer:
    """The 2D network over the stack of selected slices (last axis), all slices in one batch."""
    return SliceInferer(
        roi_size=(model.image_size, model.image_size),
        sw_batch_size=model.num_slices,
        spatial_dim=2,
        progress=False,
    )


@dataclass
class PostOptions:
    """Per-request post-processing options (strings from a client are converted and checked).

    Attributes:
        output: ``"lesion"`` (binary mask), ``"zmap_bands"`` (labels 1..3 for z >= 2, 3, 4) or ``"zmap"`` (float z).
        alpha: Benjamini-Hochberg false discovery rate.
        fdr_per: ``"volume"`` or ``"slice"``.
        score_median: in-plane median filter of the z-map before p-values (3, as the CLI and bundle; 1 = off).
        median_size: in-plane median filter of the mask (1 = off).
        min_size: smallest connected component kept, in voxels (0 = off).
    """

    output: str = "lesion"
    alpha: float = 0.05
    fdr_per: str = "volume"
    score_median: int = 3
    median_size: int = 1
    min_size: int = 0

    @classmethod
    def from_request(cls, request: Mapping[str, Any], output: str, defaults: Mapping[str, Any]) -> PostOptions:
        merged = {**_DEFAULT_POST, **dict(defaults)}
        merged.update({k: request[k] for k in _DEFAULT_POST if request.get(k) not in (None, "")})
        try:
            options = cls(
                output=str(request.get("zmap_output") or output) if output != "lesion" else "lesion",
                alpha=float(merged["alpha"]),
                fdr_per=str(merged["fdr_per"]),
                score_median=int(merged["score_median"]),
                median_size=int(merged["median_size"]),
                min_size=int(merged["min_size"]),
            )
        except (TypeError, ValueError) as e:
            raise StudyError(f"invalid option in the request: {e}") from e
        if not 0.0 < options.alpha < 1.0:
            raise StudyError(f"alpha must be in (0, 1), got {options.alpha}.")
        if options.fdr_per not in ("volume", "slice"):
            raise StudyError(f"fdr_per must be 'volume' or 'slice', got {options.fdr_per!r}.")
        if options.output not in ("lesion", "zmap_bands", "zmap"):
            raise StudyError(f"zmap_output must be 'zmap_bands' or 'zmap', got {options.output!r}.")
        if options.median_size < 1 or options.score_median < 1 or options.min_size < 0:
            raise StudyError("score_median and median_size must be >= 1 and min_size >= 0.")
        return options


def postprocess(
    data: dict[str, Any], pre: Compose, options: PostOptions, pred_key: str = "pred"
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps -> FDR mask -> filter -> back onto the input grid; return ``(array (X, Y, Z), affine 4x4)``.

    ``data`` holds the preprocessed ``image`` (with its transform history), ``brain_mask`` and the network's
    ``pred`` ``(3C, S, S, N)``. The lesion mask is inverted with nearest-neighbour interpolation; the z-map with
    the forward interpolation, then banded (``zmap_bands``) or kept as float (``zmap``).
    """
    d = AnomalyMapsd(keys=pred_key, mask_key="brain_mask", median_size=options.score_median)(data)
    if options.output == "lesion":
        d = FDRMaskd(keys="p", mask_key="brain_mask", alpha=options.alpha, per=options.fdr_per)(d)
        d = LesionFilterd(keys="lesion", median_size=options.median_size, min_size=options.min_size)(d)
        key, nearest = "lesion", True
    else:
        key, nearest = "z", False
    image = d["image"]
    result = {
        "image": image,
        key: MetaTensor(torch.as_tensor(d[key]).float().cpu(), meta=dict(image.meta)),
    }
    inverted = Invertd(keys=key, transform=pre, orig_keys="image", nearest_interp=nearest, to_tensor=True)(result)
    value = inverted[key]
    # the inverted map carries the input's affine (Orientationd undone); the loaded file's affine otherwise
    affine_src = value.affine if isinstance(value, MetaTensor) else image.meta["original_affine"]
    affine = torch.as_tensor(affine_src).double().cpu().numpy()
    array = torch.as_tensor(value).detach().cpu().float().numpy()[0]
    if options.output == "lesion":
        array = (array > 0.5).astype(np.uint8)
    elif options.output == "zmap_bands":
        array = np.digitize(array, ZMAP_BANDS).astype(np.uint8)
    else:
        array = array.astype(np.float32)
    return array, affine


def run_study(
    model: LoadedModel,
    image_path: str | os.PathLike,
    output: str = "lesion",
    device: str = "cpu",
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole pipeline on one study file, in-process (what the infer task does, without the server)."""
    pre = build_pre_transforms(model)
    data: dict[str, Any] = {"image": str(image_path)}
    for transform in pre.transforms:  # one by one, as MONAI Label does: a StudyError is not wrapped
        data = transform(data)
    network = model.on(device)
    with torch.no_grad():
        pred = build_inferer(model)(data["image"][None].to(device), network)[0]
    data["pred"] = pred
    return postprocess(data, pre, PostOptions.from_request(options, output, model.defaults))
