"""Transforms for QR-VAE brain MRI, laid out as ``monai.transforms`` is: one folder per family, array classes in
``array.py``, their dictionary (``...d``, with ``...D`` / ``...Dict`` aliases) forms in ``dictionary.py``.

Volumes are channel-first ``(C, H, W, D)`` with the axial slices along the last axis (after
``Orientationd(axcodes="RAS")``).

- ``slices``: :class:`SelectSlices` / :class:`SelectSlicesd` keep ``N`` contiguous axial slices (invertible, also
  with ``monai.transforms.Invertd``); :func:`slices_to_items` splits ``(C, H, W, N)`` volumes into 2D items.
- ``mask``: :class:`BrainMask` / :class:`BrainMaskd`, the foreground (non-zero in any channel), optionally eroded.
- ``intensity``: :class:`MaskedScaleIntensityPercentiles`, :class:`MaskedZScore`, :class:`HistogramStandardize`
  and their ``...d`` forms: per-channel normalisation with statistics taken inside the brain mask only.
- ``anomaly``: dictionary transforms on the anomaly network's output (:class:`AnomalyMapsd`, :class:`FDRMaskd`,
  :class:`LesionFilterd`) and the calibrated label-free thresholds (:func:`label_free_transforms`); also
  importable from :mod:`monai_qrvae.postprocessing`.
- ``utils``: private helpers shared by the families.
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
from monai_qrvae.transforms.intensity.array import (
    DEFAULT_LANDMARK_PERCENTILES,
    HistogramStandardize,
    MaskedScaleIntensityPercentiles,
    MaskedZScore,
)
from monai_qrvae.transforms.intensity.dictionary import (
    HistogramStandardizeD,
    HistogramStandardized,
    HistogramStandardizeDict,
    MaskedScaleIntensityPercentilesD,
    MaskedScaleIntensityPercentilesd,
    MaskedScaleIntensityPercentilesDict,
    MaskedZScoreD,
    MaskedZScored,
    MaskedZScoreDict,
)
from monai_qrvae.transforms.mask.array import BrainMask
from monai_qrvae.transforms.mask.dictionary import BrainMaskD, BrainMaskd, BrainMaskDict
from monai_qrvae.transforms.slices.array import SLICE_INDEX_KEY, SLICE_INDICES_KEY, SelectSlices
from monai_qrvae.transforms.slices.dictionary import SelectSlicesD, SelectSlicesd, SelectSlicesDict, slices_to_items

# private helpers importable from here before the split (benchmarks/bench_speedups.py uses them)
from monai_qrvae.transforms.utils import (  # noqa: F401
    _as_float,
    _channel_mask,
    _check_finite,
    _check_volume,
    _percentiles,
    _prepare_mask,
)

__all__ = [
    "SLICE_INDEX_KEY",
    "SLICE_INDICES_KEY",
    "DEFAULT_LANDMARK_PERCENTILES",
    "THRESHOLDS",
    "SelectSlices",
    "SelectSlicesd",
    "SelectSlicesD",
    "SelectSlicesDict",
    "BrainMask",
    "BrainMaskd",
    "BrainMaskD",
    "BrainMaskDict",
    "MaskedScaleIntensityPercentiles",
    "MaskedScaleIntensityPercentilesd",
    "MaskedScaleIntensityPercentilesD",
    "MaskedScaleIntensityPercentilesDict",
    "MaskedZScore",
    "MaskedZScored",
    "MaskedZScoreD",
    "MaskedZScoreDict",
    "HistogramStandardize",
    "HistogramStandardized",
    "HistogramStandardizeD",
    "HistogramStandardizeDict",
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
    "label_free_transforms",
    "slices_to_items",
]
