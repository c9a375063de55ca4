"""Label-free thresholds calibrated on healthy scans: conformal p-values and volume-level (max-statistic) control.

The score that ships (for example the median-filtered FLAIR z-map) is not exactly N(0, 1) on healthy tissue, so
``1 - Phi(z)`` p-values do not mean what they say. Here the null distribution is taken from healthy
``calibration`` volumes, scored with exactly the post-processing that ships:

- **conformal p-values** (Bates et al. 2023, "Testing for outliers with conformal p-values"): for a score ``s``,
  ``p = (1 + #{calibration scores >= s}) / (n + 1)`` over the ``n`` calibration brain voxels, pooled or within a
  stratum (for example bins of slice position). Benjamini-Hochberg on them is *conformal BH*
  (:func:`conformal_bh`). The guarantee assumes healthy voxels exchangeable with the calibration voxels; BH's FDR
  control further assumes independence or positive dependence of the voxels, which spatially smooth maps only
  approximate.
- **volume-level control** (the max-statistic of permutation testing in SPM/FSL): with ``M_1..M_n`` the maximum
  score of each of ``n`` healthy calibration volumes, the threshold ``t`` is the ``k``-th smallest ``M_i``,
  ``k = ceil((n + 1)(1 - alpha))``; a new healthy volume exchangeable with them has a voxel above ``t`` with
  probability at most ``alpha`` (:func:`volume_threshold`). It needs ``n + 1 >= 1 / alpha`` volumes. The
  equivalent adjusted p-map is ``(1 + #{M_i >= s}) / (n + 1)`` (:func:`conformal_p_values` against the maxima).
- optionally a **minimum cluster size** calibrated the same way: the largest connected component above a
  cluster-forming threshold, per calibration volume (:func:`max_cluster_size`, :func:`volume_threshold`).

:class:`Calibration` keeps what is needed (sorted voxel scores, per-volume maxima, the score definition) and is
saved beside the model weights as ``calibration.pt``. This package is the calibration value and its maths only (no
model, no workflow): fitting it with a model's shipped score on a datalist section is the job of
:func:`monai_qrvae.workflows.fit_calibration`.

Modules: :mod:`.conformal` (conformal p-values, pooled or stratified), :mod:`.thresholds` (volume-level and cluster
thresholds), :mod:`.calibration` (the :class:`Calibration` object, its file, conformal BH).
"""

from __future__ import annotations

from monai_qrvae.calibration.calibration import (
    CALIBRATION_FILE,
    LESION_P,
    MAX_VOXELS,
    STRATIFY,
    Calibration,
    conformal_bh,
    load_calibration,
    voxel_ml_of,
)
from monai_qrvae.calibration.conformal import (
    conformal_p_values,
    slice_strata,
    stratified_p_values,
    subsample_sorted,
)
from monai_qrvae.calibration.thresholds import max_cluster_size, min_volumes, order_statistic_index, volume_threshold

__all__ = [
    "CALIBRATION_FILE",
    "MAX_VOXELS",
    "STRATIFY",
    "Calibration",
    "conformal_p_values",
    "stratified_p_values",
    "slice_strata",
    "conformal_bh",
    "order_statistic_index",
    "min_volumes",
    "volume_threshold",
    "max_cluster_size",
    "subsample_sorted",
    "LESION_P",
    "load_calibration",
    "voxel_ml_of",
]
