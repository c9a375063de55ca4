"""High-level jobs behind the ``qrvae`` command: train, evaluate, infer and the demo.

Each job wires the package's pieces (transforms, networks, losses, engines, handlers) the same way the bundle
configs do, and writes everything atomically into one output folder. One module per concern:

- :mod:`~monai_qrvae.workflows.models`: methods, presets, :class:`ModelConfig`, networks, losses, model folders;
- :mod:`~monai_qrvae.workflows.datasets`: checked datalist sections and the training slices (in memory, or
  :class:`PersistentSliceDataset`: bounded memory, for large cohorts);
- :mod:`~monai_qrvae.workflows.training`: :func:`train`;
- :mod:`~monai_qrvae.workflows.evaluation`: :func:`evaluate` and :func:`write_table`;
- :mod:`~monai_qrvae.workflows.inference`: :func:`infer`;
- :mod:`~monai_qrvae.workflows.comparison`: :func:`demo` and :data:`PINNED_DEMO`.
"""

from __future__ import annotations

import logging

from monai_qrvae.workflows import datasets, inference, models, training
from monai_qrvae.workflows.comparison import DEMO_METHODS, PINNED_DEMO, demo
from monai_qrvae.workflows.datasets import PersistentSliceDataset
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
from monai_qrvae.workflows.training import plot_history, train

# private names that other modules, benchmarks and tests import from here
_datalist, _slice_dataset = datasets._datalist, datasets._slice_dataset
_SLICE_CACHE, _SLICE_CACHE_SIZE = datasets._SLICE_CACHE, datasets._SLICE_CACHE_SIZE
_anomaly_handlers, _roi_size = inference._anomaly_handlers, inference._roi_size
THRESHOLD_CHOICES = inference.THRESHOLD_CHOICES
_check_weights_fit, _residual_sigma = models._check_weights_fit, training._residual_sigma

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
    "PersistentSliceDataset",
]

logger = logging.getLogger("monai_qrvae")
