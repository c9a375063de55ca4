"""One model folder, run the same way by every entry point: :class:`Pipeline`.

``qrvae infer``/``evaluate``/``calibrate``, the bundle's configs (through :mod:`monai_qrvae.bundle_inputs`), the
MONAI Label app, the raw-series path and the experiments take everything they need to run a model folder from one
:class:`Pipeline`: the pre-transforms, the network, the slice window (ROI size), the score definition, the healthy
calibration and the label-free threshold transforms, the inversion to the input grid, and the evaluator. A new
anomaly score is added in :mod:`monai_qrvae.anomaly.scores` (its registration in ``SCORES``) and read here, once.

Errors a user can cause while the pre-transforms read an input (an unreadable file, a wrong number of contrasts,
NaN voxels...) leave :meth:`Pipeline.run` as one :class:`InputError` line naming the file and what was expected,
not as the MONAI transform's ``applying transform <... object at 0x...>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import PostProcessing
from monai.transforms import Compose
from torch import nn

from monai_qrvae.anomaly import FLAIR_CHANNEL
from monai_qrvae.calibration import CALIBRATION_FILE, Calibration, load_calibration
from monai_qrvae.data import check_item
from monai_qrvae.defaults import THRESHOLD_CHOICES, MethodDefaults, method_defaults
from monai_qrvae.engines import create_anomaly_evaluator
from monai_qrvae.handlers import AnomalyMapHandler, invert_to_input
from monai_qrvae.transforms import AnomalyMapsd, LesionFilterd, label_free_transforms
from monai_qrvae.utils import CONTRAST_NAMES
from monai_qrvae.workflows.models import CONFIG_FILE, ModelConfig, load_model

__all__ = ["THRESHOLD_CHOICES", "CHECKED_SCORE_KEYS", "EXPECTED_INPUT", "CheckedDataset", "InputError", "Pipeline"]

#: the entries of the score definition that a calibrated threshold checks against the calibration's.
CHECKED_SCORE_KEYS = ("method", "score_median", "score")

_MONAI_WRAPPER = "applying transform"


class InputError(ValueError):
    """An input the pipeline cannot analyse; the message is one line naming the file and what was expected."""


def _innermost(err: BaseException) -> BaseException:
    """The error below MONAI's ``applying transform ...`` wrappers (``RuntimeError`` raised ``from`` the cause)."""
    while str(err).startswith(_MONAI_WRAPPER) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _input_name(item: Any) -> str:
    if isinstance(item, Mapping):
        item = item.get("image", item)
    if isinstance(item, (list, tuple)) and item:
        item = item[0]
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else "<in memory>"


def input_error(item: Any, err: BaseException, expected: str) -> InputError:
    """One line for an error raised while preparing ``item``: its file, the cause, and ``expected`` unless the
    cause's own message already says what was expected."""
    cause = _innermost(err)
    message = " ".join(str(cause).split()) or type(cause).__name__
    name = _input_name(item)
    if name not in message and os.path.basename(name) not in message:
        message = f"{name}: {message}"
    if "expected" not in message:
        message = f"{message.rstrip('.')}; expected {expected}."
    return InputError(message)


#: what an input must be, in words, where the model is not known (the bundle's datasets)
EXPECTED_INPUT = (
    "a readable 3D brain MRI with the model's contrasts as channels (NIfTI or another ITK format), finite voxels, and "
    "a brain mask of its grid when one is given"
)


class CheckedDataset(Dataset):
    """``monai.data.Dataset`` whose pre-transform errors are one :class:`InputError` line naming the item's file and
    what was expected (see :func:`input_error`); the bundle's inference configs use it as their ``dataset``.

    Args:
        data: the items (``{"image": path or [paths], "brain_mask"?: path, ...}`` or in-memory data).
        transform: the pre-transforms.
        expected: what an input must be, in words, for the error messages.
        num_channels: when given, the files of each item are checked first (header only: a 3D volume with this many
            channels, a brain mask and label on its grid, :func:`monai_qrvae.data.check_item`), so that a 2D slice or
            a scan with other contrasts is refused even when the datalist was not checked up front.
    """

    def __init__(
        self, data: Sequence[Any], transform: Callable, expected: str = EXPECTED_INPUT, num_channels: int | None = None
    ) -> None:
        super().__init__(data, transform)
        self.expected = expected
        self.num_channels = num_channels

    def _check_files(self, item: Any) -> None:
        image = item.get("image") if isinstance(item, Mapping) else None
        paths = [image] if isinstance(image, (str, os.PathLike)) else image
        if not isinstance(paths, Sequence) or not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
            return  # in-memory data: nothing to read ahead
        check_item(dict(item), num_channels=self.num_channels)

    def _transform(self, index: int) -> Any:
        try:
            if self.num_channels is not None:
                self._check_files(self.data[index])
            return super()._transform(index)
        except InputError:
            raise
        except (ValueError, RuntimeError, OSError, KeyError, IndexError, TypeError) as e:
            raise input_error(self.data[index], e, self.expected) from e


class Pipeline:
    """Everything needed to run a model folder (``model.pt``, ``model_config.json``, ``calibration.pt``).

    Build it with :meth:`from_model_dir`; the network is loaded on first use (:attr:`network`), so the score and
    threshold parts serve without it (the bundle's post-processing).

    Args:
        model_dir: the model folder.
        config: its configuration.
        network: the anomaly network in eval mode (``None``: loaded from ``model_dir`` when first needed).
        device: torch device of the network.
    """

    def __init__(
        self, model_dir: str | os.PathLike, config: ModelConfig, network: nn.Module | None = None, device: Any = "cpu"
    ) -> None:
        self.model_dir = Path(model_dir)
        self.config = config
        self.device = str(device)
        self._network = network
        self._calibration: Calibration | None = None
        self._calibration_read = False

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | os.PathLike,
        device: Any = "cpu",
        model: tuple[ModelConfig, nn.Module] | None = None,
        config: ModelConfig | None = None,
    ) -> Pipeline:
        """The pipeline of a folder written by ``qrvae train`` (or the bundle's ``models/``).

        Args:
            model_dir: the model folder.
            device: torch device.
            model: an already loaded ``(config, network)`` of ``model_dir``.
            config: use this configuration instead of the folder's ``model_config.json`` (the network is then
                loaded only when needed).
        """
        if model is not None:
            return cls(model_dir, model[0], model[1], device)
        if config is None:
            config = ModelConfig.load(Path(model_dir) / CONFIG_FILE)
        return cls(model_dir, config, None, device)

    # --- the model -------------------------------------------------------------------------------------------------
    @property
    def network(self) -> nn.Module:
        """The anomaly network in eval mode on :attr:`device` (loaded and checked against the config once)."""
        if self._network is None:
            _, self._network = load_model(self.model_dir, self.device)
        return self._network

    def load(self) -> Pipeline:
        """Load the network now (a folder whose weights do not fit is refused before any input is read)."""
        _ = self.network
        return self

    @property
    def defaults(self) -> MethodDefaults:
        """The method's defaults (:mod:`monai_qrvae.defaults`): score filter, alpha, empirical null."""
        return method_defaults(self.config.method)

    @property
    def roi_size(self) -> tuple[int, int]:
        """The in-plane window of the slice inferer: the network's input size (pointwise methods: any, padded)."""
        size = self.config.image_size or 256
        return (size, size)

    def pre_transforms(self, load: bool = True) -> Compose:
        """The model's volume chain (:meth:`ModelConfig.transforms`), invertible onto the input grid."""
        return self.config.transforms(load=load)

    # --- the score -------------------------------------------------------------------------------------------------
    def score_median(self, score_median: int | None = None) -> int:
        """``score_median``, or the method's default when ``None``."""
        return int(self.defaults.score_median if score_median is None else score_median)

    def score_definition(self, score_median: int | None = None) -> dict[str, Any]:
        """The score this pipeline computes, as a calibration records it (and a calibrated threshold checks the
        :data:`CHECKED_SCORE_KEYS` of it)."""
        net = self._network
        quantile_score = bool(getattr(net, "quantile_score", False) if net is not None else self.config.quantile_score)
        combination = self.config.score
        contrast = CONTRAST_NAMES[FLAIR_CHANNEL] if combination == "flair" else combination
        return {
            "method": self.config.method,
            "score_median": self.score_median(score_median),
            "channel": FLAIR_CHANNEL,
            "score": combination,
            "score_key": "z",
            "quantile_score": quantile_score,
            "score_name": f"{'qf' if quantile_score else 'z'}[{contrast}]",
        }

    def score_transform(
        self, score_median: int | None = None, contrast_key: str | None = None, pred_key: str = "pred"
    ) -> AnomalyMapsd:
        """The z/p maps of the model's score (``z``, ``p``, ``roi``) from the network's ``pred_key``."""
        return AnomalyMapsd(
            pred_key,
            "brain_mask",
            FLAIR_CHANNEL,
            median_size=self.score_median(score_median),
            score=self.config.score,
            contrast_key=contrast_key,
        )

    def score_handler(self, score_median: int | None = None, contrast_key: str | None = None) -> AnomalyMapHandler:
        """:meth:`score_transform` as an Ignite handler of the evaluator."""
        return AnomalyMapHandler(
            median_size=self.score_median(score_median),
            channel=FLAIR_CHANNEL,
            score=self.config.score,
            contrast_key=contrast_key,
        )

    # --- calibration and thresholds --------------------------------------------------------------------------------
    @property
    def calibration(self) -> Calibration | None:
        """The folder's healthy calibration (``calibration.pt``), or ``None`` when it has none."""
        if not self._calibration_read:
            self._calibration = load_calibration(self.model_dir)
            self._calibration_read = True
        return self._calibration

    def calibration_for(self, threshold: str) -> Calibration | None:
        """The calibration a ``threshold`` needs (``None`` for ``"gaussian"``).

        Raises:
            ValueError: ``threshold`` is not one of :data:`THRESHOLD_CHOICES`.
            FileNotFoundError: a calibrated threshold and no ``calibration.pt`` in the folder (what to run instead).
        """
        if threshold not in THRESHOLD_CHOICES:
            raise ValueError(f"threshold must be one of {THRESHOLD_CHOICES}, got {threshold!r}.")
        if threshold == "gaussian":
            return None
        if self.calibration is None:
            raise FileNotFoundError(
                f"model folder {self.model_dir} has no {CALIBRATION_FILE}; the {threshold!r} threshold needs the "
                f"model's score calibrated on healthy scans: run 'qrvae calibrate --model {self.model_dir} "
                "--datalist D' (D with a healthy 'calibration' section), or pass --threshold gaussian for the "
                "paper's N(0, 1) p-values."
            )
        return self.calibration

    def threshold_transforms(
        self, threshold: str = "conformal", alpha: float = 0.05, per: str = "volume", score_median: int | None = None
    ) -> list[Any]:
        """The label-free threshold (after the score transform), checked against the calibration's score.

        Raises:
            ValueError: an unknown threshold, or a calibration of another score definition.
            FileNotFoundError: a calibrated threshold without ``calibration.pt``.
        """
        calibration = self.calibration_for(threshold)
        score = self._checked_score(calibration, score_median)
        return label_free_transforms(threshold, calibration, alpha, per, score=score)

    def _checked_score(self, calibration: Calibration | None, score_median: int | None) -> dict[str, Any] | None:
        """What a calibrated threshold checks of the score definition (nothing without a calibration)."""
        if calibration is None:
            return None
        definition = self.score_definition(score_median)
        return {k: definition[k] for k in CHECKED_SCORE_KEYS}

    def post_transforms(
        self,
        threshold: str = "conformal",
        alpha: float = 0.05,
        per: str = "volume",
        median_size: int = 1,
        min_size: int = 0,
        score_median: int | None = None,
        contrast_key: str | None = None,
    ) -> list[Any]:
        """The label-free post-processing of one output item: score and p maps (``contrast_key``: also every
        contrast's z-map), the threshold (one ``Compose``) and the lesion filters."""
        return [
            self.score_transform(score_median, contrast_key),
            Compose(self.threshold_transforms(threshold, alpha, per, score_median)),
            LesionFilterd("lesion", median_size, min_size),
        ]

    def anomaly_handlers(self, *args: Any, contrast_key: str | None = "zc", **kwargs: Any) -> list[PostProcessing]:
        """:meth:`post_transforms` as evaluator handlers (at ``MODEL_COMPLETED``, before any metric), with every
        contrast's z-map for the lesion report: the post-processing of ``qrvae infer``/``evaluate``."""
        return [PostProcessing(t) for t in self.post_transforms(*args, contrast_key=contrast_key, **kwargs)]

    # --- running ---------------------------------------------------------------------------------------------------
    @property
    def expected_input(self) -> str:
        """What an input must be, in words (the end of every input error)."""
        contrasts = ", ".join(CONTRAST_NAMES[: self.config.in_channels])
        return (
            f"a readable 3D brain MRI with the {self.config.in_channels} contrasts {contrasts} as channels "
            "(NIfTI or another ITK format), finite voxels, and a brain mask of its grid when one is given"
        )

    def dataset(self, items: Sequence[Any], pre: Callable | None = None) -> Dataset:
        """The items through the pre-transforms; an item that cannot be prepared is an :class:`InputError`."""
        return CheckedDataset(list(items), pre if pre is not None else self.pre_transforms(), self.expected_input)

    def prepare(self, item: Any, pre: Callable) -> Any:
        """One item through ``pre`` (outside an evaluator), its errors as :class:`InputError`."""
        try:
            return pre(item)
        except InputError:
            raise
        except (ValueError, RuntimeError, OSError, KeyError, IndexError, TypeError) as e:
            raise input_error(item, e, self.expected_input) from e

    def evaluator(
        self, items: Sequence[Any], handlers: Sequence[Any], pre: Callable | None = None, **kwargs: Any
    ) -> SupervisedEvaluator:
        """The slice-wise anomaly evaluator over ``items`` with ``handlers`` (see
        :func:`~monai_qrvae.engines.create_anomaly_evaluator`; ``kwargs`` passed on)."""
        loader = DataLoader(self.dataset(items, pre), batch_size=1, num_workers=0)
        return create_anomaly_evaluator(
            self.network, loader, device=self.device, roi_size=self.roi_size, val_handlers=handlers, **kwargs
        )

    def run(self, items: Sequence[Any], handlers: Sequence[Any], pre: Callable | None = None) -> SupervisedEvaluator:
        """Run the evaluator over ``items``; returns it (its state, its handlers' results)."""
        evaluator = self.evaluator(items, handlers, pre)
        evaluator.run()
        return evaluator

    @staticmethod
    def invert(maps: dict[str, Any], image: Any, pre: Callable, one_outside: Sequence[str] = ("p",)) -> dict[str, Any]:
        """Maps of the analysed grid back onto the input grid through the pre-transforms
        (:func:`~monai_qrvae.handlers.invert_to_input`)."""
        return invert_to_input(maps, image, pre, one_outside=one_outside)
