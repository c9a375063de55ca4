"""Pure tensor functions that turn predicted quantiles into anomaly maps.

Quantiles -> (mu, sigma) under a Gaussian model of x given z, z-scores, p-values (:mod:`.gaussian`), the
quantile-function score (:mod:`.quantile_score`), multi-contrast scores
(:mod:`.scores`), Benjamini-Hochberg false-discovery-rate masks (:mod:`.fdr`), lesion-level inference
(:mod:`.lesions`), and the usual post-processing filters (:mod:`.filters`); shared helpers in :mod:`.utils`. No
engine or file handling lives here.

Reference:
    Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
    Quantile Regression", arXiv:2010.09042 (2020).
"""

from __future__ import annotations

from monai_qrvae.anomaly.fdr import benjamini_hochberg
from monai_qrvae.anomaly.filters import median_filter, remove_small_components
from monai_qrvae.anomaly.gaussian import PPF_085, anomaly_maps, p_value, quantiles_to_mu_sigma, z_score
from monai_qrvae.anomaly.lesions import (
    LESION_STATISTICS,
    LesionTail,
    bh_q_values,
    bh_reject,
    cluster_statistics,
    fit_lesion_tail,
    lesion_candidates,
    lesion_p_values,
    voxel_volume_ml,
)
from monai_qrvae.anomaly.quantile_score import interpolate_normal_score, quantile_function_score
from monai_qrvae.anomaly.scores import LESION_DIRECTION, SCORES, combine_z, score_weights, signed_z
from monai_qrvae.anomaly.utils import FLAIR_CHANNEL, check_quantiles, split_quantiles

__all__ = [
    "FLAIR_CHANNEL",
    "SCORES",
    "LESION_DIRECTION",
    "score_weights",
    "combine_z",
    "signed_z",
    "PPF_085",
    "check_quantiles",
    "split_quantiles",
    "quantiles_to_mu_sigma",
    "z_score",
    "quantile_function_score",
    "interpolate_normal_score",
    "p_value",
    "benjamini_hochberg",
    "median_filter",
    "remove_small_components",
    "anomaly_maps",
    "LESION_STATISTICS",
    "lesion_candidates",
    "cluster_statistics",
    "lesion_p_values",
    "LesionTail",
    "fit_lesion_tail",
    "bh_q_values",
    "bh_reject",
    "voxel_volume_ml",
]
