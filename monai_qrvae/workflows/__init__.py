"""High-level jobs behind the ``qrvae`` command: train, calibrate, evaluate, infer and the demo.

Each job runs a model folder through one :class:`~monai_qrvae.workflows.pipeline.Pipeline` (pre-transforms, network,
score, calibration and thresholds, inversion to the input grid), the same one the bundle configs, the MONAI Label app,
the raw-series path and the experiments use, and writes everything atomically into one output folder. One module per
concern:

- :mod:`~monai_qrvae.workflows.models`: methods, presets, :class:`ModelConfig`, networks, losses, model folders;
- :mod:`~monai_qrvae.workflows.pipeline`: :class:`Pipeline`, :data:`THRESHOLD_CHOICES`, :class:`InputError`;
- :mod:`~monai_qrvae.workflows.datasets`: checked datalist sections and the training slices (in memory, or
  :class:`PersistentSliceDataset`: bounded memory, for large cohorts);
- :mod:`~monai_qrvae.workflows.training`: :func:`train`;
- :mod:`~monai_qrvae.workflows.calibration`: :func:`fit_calibration` (``qrvae calibrate``) and
  :class:`CalibrationCollector`;
- :mod:`~monai_qrvae.workflows.evaluation`: :func:`evaluate` and :func:`write_table`;
- :mod:`~monai_qrvae.workflows.inference`: :func:`infer`;
- :mod:`~monai_qrvae.workflows.comparison`: :func:`demo` and :data:`PINNED_DEMO`.
"""

from __future__ import annotations

from monai_qrvae.workflows.calibration import CalibrationCollector, fit_calibration
from monai_qrvae.workflows.comparison import DEMO_METHODS, PINNED_DEMO, demo
from monai_qrvae.workflows.datasets import PersistentSliceDataset, checked_section
from monai_qrvae.workflows.evaluation import evaluate, write_table
from monai_qrvae.workflows.inference import infer
from monai_qrvae.workflows.models import (
    CONFIG_FILE,
    METHODS,
    MODEL_PRESETS,
    SHIPPED_MODEL_DIR,
    WEIGHTS_FILE,
    ModelConfig,
    build_loss,
    build_networks,
    load_model,
    shipped_model_dir,
)
from monai_qrvae.workflows.pipeline import (
    CHECKED_SCORE_KEYS,
    EXPECTED_INPUT,
    THRESHOLD_CHOICES,
    CheckedDataset,
    InputError,
    Pipeline,
)
from monai_qrvae.workflows.training import calibrate_model, plot_history, train

__all__ = [
    "METHODS",
    "MODEL_PRESETS",
    "ModelConfig",
    "Pipeline",
    "InputError",
    "CheckedDataset",
    "EXPECTED_INPUT",
    "build_networks",
    "load_model",
    "train",
    "fit_calibration",
    "calibrate_model",
    "CalibrationCollector",
    "evaluate",
    "infer",
    "demo",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "SHIPPED_MODEL_DIR",
    "shipped_model_dir",
    "build_loss",
    "plot_history",
    "write_table",
    "PINNED_DEMO",
    "DEMO_METHODS",
    "THRESHOLD_CHOICES",
    "CHECKED_SCORE_KEYS",
    "PersistentSliceDataset",
    "checked_section",
]
