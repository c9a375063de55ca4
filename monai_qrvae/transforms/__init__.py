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
  :class:`LesionFilterd`) and the calibrated label-free thresholds (:func:`label_free_transforms`).
- ``spatial``: :class:`ModelSpacingd`, MONAI's ``Spacingd`` onto the model's grid, leaving other entries alone.
- ``utils``: input checks and mask helpers shared by the families.
"""

from __future__ import annotations

from monai_qrvae.transforms.anomaly import dictionary as _anomaly_dictionary
from monai_qrvae.transforms.anomaly import thresholds as _anomaly_thresholds
from monai_qrvae.transforms.anomaly.dictionary import *  # noqa: F403
from monai_qrvae.transforms.anomaly.thresholds import *  # noqa: F403
from monai_qrvae.transforms.intensity import array as _intensity_array
from monai_qrvae.transforms.intensity import dictionary as _intensity_dictionary
from monai_qrvae.transforms.intensity.array import *  # noqa: F403
from monai_qrvae.transforms.intensity.dictionary import *  # noqa: F403
from monai_qrvae.transforms.mask import array as _mask_array
from monai_qrvae.transforms.mask import dictionary as _mask_dictionary
from monai_qrvae.transforms.mask.array import *  # noqa: F403
from monai_qrvae.transforms.mask.dictionary import *  # noqa: F403
from monai_qrvae.transforms.slices import array as _slices_array
from monai_qrvae.transforms.slices import dictionary as _slices_dictionary
from monai_qrvae.transforms.slices.array import *  # noqa: F403
from monai_qrvae.transforms.slices.dictionary import *  # noqa: F403
from monai_qrvae.transforms.spatial import dictionary as _spatial_dictionary
from monai_qrvae.transforms.spatial.dictionary import *  # noqa: F403

__all__ = [
    *_slices_array.__all__,
    *_slices_dictionary.__all__,
    *_mask_array.__all__,
    *_mask_dictionary.__all__,
    *_intensity_array.__all__,
    *_intensity_dictionary.__all__,
    *_anomaly_dictionary.__all__,
    *_anomaly_thresholds.__all__,
    *_spatial_dictionary.__all__,
]
