"""Ignite handlers, one file per family as in ``monai.handlers``.

- :mod:`.maps`: :class:`AnomalyMapHandler`, :class:`FDRHandler`, :class:`ThresholdHandler` and
  :class:`LesionFilterHandler` add ``z``/``p``/``roi``/``lesion`` to each output item at ``MODEL_COMPLETED``
  (before the metrics); the maths lives in :mod:`monai_qrvae.anomaly`, the transforms in
  :mod:`monai_qrvae.transforms.anomaly`;
- :mod:`.savers`: :class:`AnomalyMapSaver` (NIfTI on the input's grid, see :func:`invert_to_input`) and
  :class:`OverlaySaver` (PNG);
- :mod:`.metrics`: :class:`BestDice`, :class:`LesionDice`, :class:`MaskedROCAUC` and
  :class:`MaskedAveragePrecision` around :mod:`monai_qrvae.metrics`;
- :mod:`.training`: :class:`LossPartsHandler`, :class:`LossHistory` and :class:`EpochSeedHandler`;
- :mod:`.checkpoint`: :class:`AtomicCheckpointSaver` and :class:`ResumeFromCheckpoint` (atomic, resumable
  checkpoints) and the checkpoint file helpers.
"""

from __future__ import annotations

from monai_qrvae.handlers.checkpoint import (
    AtomicCheckpointSaver,
    ResumeFromCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    load_state_dict_file,
)
from monai_qrvae.handlers.maps import AnomalyMapHandler, FDRHandler, LesionFilterHandler, ThresholdHandler
from monai_qrvae.handlers.metrics import BestDice, LesionDice, MaskedAveragePrecision, MaskedROCAUC
from monai_qrvae.handlers.savers import AnomalyMapSaver, OverlaySaver, invert_to_input
from monai_qrvae.handlers.training import EpochSeedHandler, LossHistory, LossPartsHandler

__all__ = [
    "AnomalyMapHandler",
    "FDRHandler",
    "LesionFilterHandler",
    "ThresholdHandler",
    "AnomalyMapSaver",
    "OverlaySaver",
    "BestDice",
    "LesionDice",
    "MaskedROCAUC",
    "MaskedAveragePrecision",
    "invert_to_input",
    "AtomicCheckpointSaver",
    "ResumeFromCheckpoint",
    "EpochSeedHandler",
    "LossHistory",
    "LossPartsHandler",
    "latest_checkpoint",
    "list_checkpoints",
    "load_state_dict_file",
]
