"""Dictionary transforms that turn the anomaly network's output into z/p maps and a lesion mask.

They live in :mod:`monai_qrvae.transforms.anomaly` (``dictionary``: maps, Benjamini-Hochberg mask, filters;
``thresholds``: calibrated label-free thresholds); this module keeps the import path that the handlers, the
bundle configs, the MONAI Label app and the docs use.
"""

from __future__ import annotations

from monai_qrvae.transforms.anomaly.dictionary import (
    AnomalyMapsD,
    AnomalyMapsd,
    AnomalyMapsDict,
    FDRMaskD,
    FDRMaskd,
    FDRMaskDict,
    LesionFilterD,
    LesionFilterd,
    LesionFilterDict,
)
from monai_qrvae.transforms.anomaly.thresholds import (
    THRESHOLDS,
    ClusterThresholdD,
    ClusterThresholdd,
    ClusterThresholdDict,
    ConformalPValueD,
    ConformalPValued,
    ConformalPValueDict,
    VolumeThresholdD,
    VolumeThresholdd,
    VolumeThresholdDict,
    label_free_transforms,
)

__all__ = [
    "AnomalyMapsd",
    "AnomalyMapsD",
    "AnomalyMapsDict",
    "FDRMaskd",
    "FDRMaskD",
    "FDRMaskDict",
    "LesionFilterd",
    "LesionFilterD",
    "LesionFilterDict",
    "ConformalPValued",
    "ConformalPValueD",
    "ConformalPValueDict",
    "VolumeThresholdd",
    "VolumeThresholdD",
    "VolumeThresholdDict",
    "ClusterThresholdd",
    "ClusterThresholdD",
    "ClusterThresholdDict",
    "THRESHOLDS",
    "label_free_transforms",
]
