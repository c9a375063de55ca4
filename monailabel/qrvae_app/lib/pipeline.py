"""The QR-VAE lesion-detection pipeline behind the MONAI Label app, free of MONAI Label imports.

Everything here needs only ``monai`` and ``monai_qrvae``, so it runs (and is tested) in the project's main
environment as well as in the MONAI Label server's. The infer task in ``lib/infers/qrvae.py`` is a thin
``BasicInferTask`` around it.

The app runs a model folder through the same :class:`monai_qrvae.workflows.Pipeline` as ``qrvae infer``: a model
folder with ``model.pt``, ``model_config.json`` and (for the default, calibrated threshold) ``calibration.pt``; the
shipped model is the bundle's ``models/`` folder. The preprocessing is the pipeline's (the model's in-plane size,
slices and context channels), the score is the model's, and the lesion mask uses the pipeline's label-free threshold
(conformal Benjamini-Hochberg on the model's healthy calibration by default).

Outside the brain (the input's all-zero voxels) every returned map follows the convention of the CLI and the bundle:
``z = 0``, ``p = 1``, ``lesion = 0``.

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
from monai.inferers import SliceInferer
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapTransform
from torch import nn

from monai_qrvae.calibration import CALIBRATION_FILE, Calibration
from monai_qrvae.transforms import LesionFilterd
from monai_qrvae.transforms.anomaly.thresholds import LESION_STATS_KEY, SITE_KEY
from monai_qrvae.workflows import CONFIG_FILE, THRESHOLD_CHOICES, WEIGHTS_FILE, ModelConfig, Pipeline

__all__ = [
    "CONTRASTS",
    "ZMAP_BANDS",
    "THRESHOLDS",
    "OUTPUTS",
    "StudyError",
    "NotCalibratedError",
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

#: the channels of a study, in order.
CONTRASTS = ("T1", "T2", "FLAIR")

#: z thresholds of the banded z-map model: label value k means ``ZMAP_BANDS[k-1] <= z`` (< the next band).
ZMAP_BANDS = (2.0, 3.0, 4.0)

#: label-free thresholds a request may ask for (``threshold``), as ``qrvae infer --threshold``: ``"conformal"``
#: (default; needs the model's calibration.pt), ``"volume"``, ``"lesion"`` and ``"lesion-volume"`` (need it too)
#: and ``"gaussian"`` (the paper's N(0, 1) p-values, no calibration).
THRESHOLDS = THRESHOLD_CHOICES

#: what an infer task returns: the lesion mask, the score's z-map in bands or as floats, or the p-map.
OUTPUTS = ("lesion", "zmap_bands", "zmap", "pmap")

#: keys of the request that the preprocessing must not load (MONAI Label may pass a user label file).
_DROP_KEYS = ("label", "brain_mask")

#: key of the input-grid brain mask kept beside the preprocessed image (the outside-brain convention).
INPUT_BRAIN_KEY = "input_brain"

#: slices per forward pass of the slice inferer (the whole brain is ~30-90 slices).
SW_BATCH_SIZE = 32


class StudyError(ValueError):
    """The study cannot be analysed (wrong number of contrasts, empty image); the message says what to do."""


class NotCalibratedError(StudyError):
    """The request asks for a calibrated threshold, but the model folder has no ``calibration.pt``."""


@dataclass
class LoadedModel:
    """A loaded anomaly network and what the app needs to run it.

    Attributes:
        config: the model's configuration (``model_config.json``): preprocessing, score, quantiles.
        network: the anomaly network (one output ``[mu, sigma, z]`` per channel), in eval mode on the CPU.
        model_dir: the model folder (``model.pt``, ``model_config.json``, ``calibration.pt``).
        calibration: the model's healthy calibration (``calibration.pt``), or ``None`` when the folder has none.
        source: human-readable description of where the weights came from.
        defaults: post-processing defaults (``threshold``, ``alpha``, ``fdr_per``, ``score_median``,
            ``median_size``, ``min_size``).
        pipeline: the model folder's pipeline (pre-transforms, score, thresholds, inversion), as ``qrvae infer``'s.
    """

    config: ModelConfig
    network: nn.Module
    model_dir: Path
    calibration: Calibration | None
    source: str
    defaults: dict[str, Any] = field(default_factory=dict)
    pipeline: Pipeline | None = None
    _by_device: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    @property
    def weights(self) -> Path:
        """The weights file."""
        return self.model_dir / WEIGHTS_FILE

    @property
    def image_size(self) -> int | None:
        """In-plane size of the network's input (``None``: the input's own grid)."""
        return self.config.image_size

    @property
    def num_slices(self) -> int | None:
        """Central axial slices analysed (``None``: every slice with brain)."""
        return self.config.num_slices

    @property
    def in_channels(self) -> int:
        """Number of input contrasts."""
        return self.config.in_channels

    @property
    def slices_text(self) -> str:
        """The analysed slices, in words."""
        return "every axial slice with brain" if self.num_slices is None else f"{self.num_slices} central axial slices"

    def on(self, device: str | torch.device) -> nn.Module:
        """The network on ``device`` (copied once per device and cached)."""
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = self.network if key == "cpu" else _copy_to(self.network, device)
        return self._by_device[key]


def _copy_to(network: nn.Module, device: str | torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(network).to(device).eval()


#: post-processing options a request may set (their defaults come from the model's method, as in ``qrvae infer``).
_POST_KEYS = ("threshold", "alpha", "fdr_per", "score_median", "median_size", "min_size")


def _post_defaults(pipeline: Pipeline, threshold: str = "conformal") -> dict[str, Any]:
    """The defaults of ``qrvae infer`` for this model (:mod:`monai_qrvae.defaults`)."""
    method = pipeline.defaults
    return {
        "threshold": threshold,
        "alpha": method.alpha,
        "fdr_per": "volume",
        "score_median": method.score_median,
        "median_size": 1,
        "min_size": 0,
    }


def resolve_model_source(conf: Mapping[str, str], app_dir: str | os.PathLike) -> tuple[str, Path]:
    """Where the weights come from: ``("model_dir", path)`` or ``("bundle", path)``.

    Order: ``--conf model_dir PATH`` (a ``qrvae train`` folder: ``model.pt`` + ``model_config.json``
    [+ ``calibration.pt``]), then ``--conf bundle PATH`` (a monai-qrvae MONAI bundle, whose ``models/`` folder is
    such a model folder: the files ``qrvae infer`` loads), then the app's own ``model/`` folder holding a
    ``qrvae train`` model, then the repository's ``bundle/`` (two levels above the app).

    Raises:
        FileNotFoundError: the configured folder lacks its files, or no default location has a model.
    """
    app_dir = Path(app_dir)
    needed = (WEIGHTS_FILE, CONFIG_FILE)
    if conf.get("model_dir"):
        path = Path(conf["model_dir"]).expanduser().resolve()
        _require(path, needed, "--conf model_dir", "a `qrvae train --out` folder")
        return "model_dir", path
    if conf.get("bundle"):
        path = Path(conf["bundle"]).expanduser().resolve()
        _require(path, tuple(f"models/{f}" for f in needed), "--conf bundle", "a monai-qrvae MONAI bundle")
        return "bundle", path
    own = app_dir / "model"
    if all((own / f).is_file() for f in needed):
        return "model_dir", own.resolve()
    repo_bundle = (app_dir / ".." / ".." / "bundle").resolve()
    if all((repo_bundle / "models" / f).is_file() for f in needed):
        return "bundle", repo_bundle
    raise FileNotFoundError(
        f"no QR-VAE model found. Pass `--conf model_dir PATH` (a folder written by `qrvae train`, with {WEIGHTS_FILE}, "
        f"{CONFIG_FILE} and {CALIBRATION_FILE}) or `--conf bundle PATH` (a monai-qrvae MONAI bundle with those files "
        f"in models/), or put a `qrvae train` model into {own}, or the shipped model at {repo_bundle / 'models'}."
    )


def _require(path: Path, files: tuple[str, ...], option: str, what: str) -> None:
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{option} {path}: missing {', '.join(missing)}; expected {what}.")


def load_model_source(kind: str, path: str | os.PathLike, threshold: str = "conformal") -> LoadedModel:
    """Load the model of a ``qrvae train`` folder (``kind="model_dir"``) or of a bundle's ``models/`` folder
    (``kind="bundle"``), with its calibration when the folder has one; ``threshold`` is the app's default."""
    if kind not in ("model_dir", "bundle"):
        raise ValueError(f"kind must be 'model_dir' or 'bundle', got {kind!r}.")
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}.")
    path = Path(path)
    model_dir = path / "models" if kind == "bundle" else path
    pipeline = Pipeline.from_model_dir(model_dir).load()
    config, network, calibration = pipeline.config, pipeline.network, pipeline.calibration
    what = "bundle" if kind == "bundle" else "model folder"
    return LoadedModel(
        config=config,
        network=network,
        model_dir=model_dir,
        calibration=calibration,
        source=(
            f"{what} {path} ({config.method}, preset {config.preset}, {config.image_size} px, score {config.score}, "
            f"{'calibrated' if calibration is not None else f'no {CALIBRATION_FILE}'})"
        ),
        defaults=_post_defaults(pipeline, threshold),
        pipeline=pipeline,
    )


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


class InputBraind(MapTransform):
    """Keep the study's brain mask on its own grid (voxels non-zero in any contrast) under ``output_key``.

    Runs right after :class:`CheckContrastsd`, before any resampling: the post-processing sets ``z = 0``,
    ``p = 1`` and ``lesion = 0`` outside it on the returned grid (the convention of the CLI and the bundle).
    """

    def __init__(self, keys: str = "image", output_key: str = INPUT_BRAIN_KEY) -> None:
        super().__init__(keys)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = torch.as_tensor(d[key]).detach().ne(0).any(0).cpu().numpy()
        return d


def build_pre_transforms(model: LoadedModel) -> Compose:
    """Load, check the contrasts, keep the input-grid brain mask, then the model's own volume chain
    (:meth:`ModelConfig.transforms`: its in-plane size, slices and context channels, as ``qrvae infer``).

    The chain is built once per task: :func:`postprocess` inverts through these very instances.
    """
    return Compose(
        [
            _DropKeysd(),
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            CheckContrastsd(keys="image", contrasts=CONTRASTS[: model.in_channels]),
            InputBraind(keys="image"),
            *_pipeline(model).pre_transforms(load=False).transforms,
        ]
    )


def build_inferer(model: LoadedModel) -> SliceInferer:
    """The 2D network over the stack of selected slices (last axis), as ``qrvae infer`` runs it."""
    roi_size = _pipeline(model).roi_size  # pointwise methods (FLAIR thresholding) take any in-plane size
    return SliceInferer(roi_size=roi_size, sw_batch_size=SW_BATCH_SIZE, spatial_dim=2, progress=False)


def _pipeline(model: LoadedModel) -> Pipeline:
    """The model's pipeline (built from its folder and configuration when the model was made by hand)."""
    if model.pipeline is None:
        model.pipeline = Pipeline.from_model_dir(model.model_dir, model=(model.config, model.network))
    return model.pipeline


@dataclass
class PostOptions:
    """Per-request post-processing options (strings from a client are converted and checked).

    Attributes:
        output: one of :data:`OUTPUTS`: ``"lesion"`` (binary mask), ``"zmap_bands"`` (labels 1..3 for z >= 2, 3,
            4), ``"zmap"`` (float z) or ``"pmap"`` (float p of the threshold: conformal or N(0, 1)).
        threshold: the label-free threshold, one of :data:`THRESHOLDS` (default ``"conformal"``).
        alpha: false discovery rate (BH thresholds) or tolerated fraction of healthy volumes with any detection
            (``"volume"``).
        fdr_per: ``"volume"`` or ``"slice"``.
        score_median: in-plane median filter of the z-map before p-values (the method's default, as the CLI;
            1 = off). A calibrated threshold needs the value the model was calibrated with.
        median_size: in-plane median filter of the mask (1 = off).
        min_size: smallest connected component kept, in voxels (0 = off).
    """

    output: str = "lesion"
    threshold: str = "conformal"
    alpha: float = 0.05
    fdr_per: str = "volume"
    score_median: int = 1
    median_size: int = 1
    min_size: int = 0

    @classmethod
    def from_request(cls, request: Mapping[str, Any], output: str, defaults: Mapping[str, Any]) -> PostOptions:
        """The options of one request: the model's ``defaults`` overridden by the request's non-empty values."""
        merged = {**{k: getattr(cls, k) for k in _POST_KEYS}, **dict(defaults)}
        merged.update({k: request[k] for k in _POST_KEYS if request.get(k) not in (None, "")})
        try:
            options = cls(
                output=str(request.get("zmap_output") or output) if output != "lesion" else "lesion",
                threshold=str(merged["threshold"]).lower(),
                alpha=float(merged["alpha"]),
                fdr_per=str(merged["fdr_per"]),
                score_median=int(merged["score_median"]),
                median_size=int(merged["median_size"]),
                min_size=int(merged["min_size"]),
            )
        except (TypeError, ValueError) as e:
            raise StudyError(f"invalid option in the request: {e}") from e
        if options.threshold not in THRESHOLDS:
            raise StudyError(f"threshold must be one of {list(THRESHOLDS)}, got {options.threshold!r}.")
        if not 0.0 < options.alpha < 1.0:
            raise StudyError(f"alpha must be in (0, 1), got {options.alpha}.")
        if options.fdr_per not in ("volume", "slice"):
            raise StudyError(f"fdr_per must be 'volume' or 'slice', got {options.fdr_per!r}.")
        if options.output not in OUTPUTS:
            raise StudyError(f"zmap_output must be 'zmap_bands', 'zmap' or 'pmap', got {options.output!r}.")
        if options.median_size < 1 or options.score_median < 1 or options.min_size < 0:
            raise StudyError("score_median and median_size must be >= 1 and min_size >= 0.")
        return options

    @property
    def needs_threshold(self) -> bool:
        """Whether the output depends on the label-free threshold (the lesion mask and the p-map)."""
        return self.output in ("lesion", "pmap")


def threshold_transforms(model: LoadedModel, options: PostOptions) -> list[Any]:
    """The label-free threshold of ``qrvae infer`` for this model and request (after :class:`AnomalyMapsd`).

    Raises:
        NotCalibratedError: a calibrated threshold is asked and the model folder has no ``calibration.pt``.
    """
    if options.threshold != "gaussian" and model.calibration is None:
        raise NotCalibratedError(
            f"the model {model.model_dir} has no {CALIBRATION_FILE}, so the {options.threshold!r} threshold "
            "(healthy-calibrated, the default) cannot be used: calibrate the model with 'qrvae calibrate "
            f"--model {model.model_dir} --datalist D' (D with a healthy 'calibration' section) and restart the "
            "server, or send the request option {'threshold': 'gaussian'} for the paper's N(0, 1) p-values."
        )
    try:
        return _pipeline(model).threshold_transforms(
            options.threshold, options.alpha, options.fdr_per, options.score_median
        )
    except ValueError as e:  # the request's score definition differs from the calibrated one (e.g. score_median)
        raise StudyError(f"the request cannot use the model's calibration: {e}") from e


def postprocess(
    data: dict[str, Any], pre: Compose, options: PostOptions, model: LoadedModel, pred_key: str = "pred"
) -> tuple[np.ndarray, np.ndarray]:
    """Score maps -> label-free threshold -> filter -> back onto the input grid; return ``(array (X, Y, Z),
    affine 4x4)``.

    ``data`` holds the preprocessed ``image`` (with its transform history), ``brain_mask``, the input-grid brain
    mask (:class:`InputBraind`) and the network's ``pred`` ``(3C, S, S, N)``. The score is the model's
    (``config.score``); the lesion mask is inverted with nearest-neighbour interpolation, z and p with the forward
    interpolation (p = 1 where nothing was analysed). Outside the input's brain: ``z = 0``, ``p = 1``,
    ``lesion = 0``. A calibrated threshold also leaves its site check (shift of the study's scores from the healthy
    calibration, and a warning when it is off) in ``data["site"]``; the lesion-level thresholds leave their
    per-lesion evidence (analysed grid) in ``data["lesion_stats"]``.
    """
    pipeline = _pipeline(model)
    transforms: list[Any] = [pipeline.score_transform(options.score_median, pred_key=pred_key)]
    if options.needs_threshold:
        transforms += threshold_transforms(model, options)
    if options.output == "lesion":
        transforms.append(LesionFilterd(keys="lesion", median_size=options.median_size, min_size=options.min_size))
    d = dict(data)
    for transform in transforms:
        d = transform(d)
    if SITE_KEY in d:  # the calibrated threshold's comparison of the study with the calibration, for the result
        data[SITE_KEY] = d[SITE_KEY]
    if LESION_STATS_KEY in d:  # the lesion-level thresholds' evidence (statistic, p, q per lesion), for the result
        data[LESION_STATS_KEY] = d[LESION_STATS_KEY]
    key = {"lesion": "lesion", "pmap": "p"}.get(options.output, "z")
    image = d["image"]
    inverted = pipeline.invert({key: d[key]}, image, pre, one_outside=("p",))[key]
    affine_src = inverted.affine if hasattr(inverted, "affine") else image.meta["original_affine"]
    affine = torch.as_tensor(affine_src).double().cpu().numpy()
    array = torch.as_tensor(inverted).detach().cpu().float().numpy()[0]
    brain = data.get(INPUT_BRAIN_KEY)
    if brain is not None:
        brain = np.asarray(brain, dtype=bool)
        if brain.shape != array.shape:
            raise ValueError(f"input brain mask {brain.shape} does not match the inverted map {array.shape}.")
        array = np.where(brain, array, 1.0 if key == "p" else 0.0)
    if options.output == "lesion":
        return (array > 0.5).astype(np.uint8), affine
    if options.output == "zmap_bands":
        return np.digitize(array, ZMAP_BANDS).astype(np.uint8), affine
    return array.astype(np.float32), affine


def run_study(
    model: LoadedModel,
    image_path: str | os.PathLike,
    output: str = "lesion",
    device: str = "cpu",
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole pipeline on one study file, in-process (what the infer task does, without the server)."""
    post = PostOptions.from_request(options, output, model.defaults)
    if post.needs_threshold:
        threshold_transforms(model, post)  # refused before the volume is read
    pre = build_pre_transforms(model)
    data: dict[str, Any] = {"image": str(image_path)}
    for transform in pre.transforms:  # one by one, as MONAI Label does: a StudyError is not wrapped
        data = transform(data)
    network = model.on(device)
    with torch.no_grad():
        pred = build_inferer(model)(data["image"][None].to(device), network)[0]
    data["pred"] = pred
    return postprocess(data, pre, post, model)
