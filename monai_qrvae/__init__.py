"""monai-qrvae: unsupervised lesion detection in brain MRI with quantile-regression VAEs, on MONAI.

Importing the package registers its losses, networks, transforms and handlers with MONAI's config parser,
so bundle configs can name them by short ``_target_`` (e.g. ``"QRVAELoss"``) after ``"$import monai_qrvae"``.
"""

from __future__ import annotations

import sys as _sys

from monai_qrvae.threads import apply_thread_defaults as _apply_thread_defaults
from monai_qrvae.version import __version__ as __version__  # imports nothing

if "torch" not in _sys.modules:  # OMP_WAIT_POLICY=PASSIVE unless the user set it, before torch loads (threads.py)
    _apply_thread_defaults()

from monai_qrvae.anomaly import (
    FLAIR_CHANNEL,
    PPF_085,
    anomaly_maps,
    benjamini_hochberg,
    median_filter,
    p_value,
    quantiles_to_mu_sigma,
    remove_small_components,
    z_score,
)
from monai_qrvae.baselines import IntensityBaseline
from monai_qrvae.calibration import Calibration, conformal_bh, conformal_p_values, volume_threshold
from monai_qrvae.engines import (
    VAELossAdapter,
    VAEPrepareBatch,
    create_anomaly_evaluator,
    create_loss_evaluator,
    create_trainer,
)
from monai_qrvae.evaluation import InputGridCollector, lesion_wise_counts, summarise
from monai_qrvae.handlers import (
    AnomalyMapHandler,
    AnomalyMapSaver,
    BestDice,
    FDRHandler,
    LesionDice,
    LesionFilterHandler,
    MaskedAveragePrecision,
    MaskedROCAUC,
    OverlaySaver,
)
from monai_qrvae.handlers.checkpoint import AtomicCheckpointSaver, ResumeFromCheckpoint, load_state_dict_file
from monai_qrvae.handlers.training import EpochSeedHandler, LossHistory, LossPartsHandler
from monai_qrvae.losses import GaussianVAELoss, QRVAELoss, QuantileLoss, kl_divergence, pinball_loss
from monai_qrvae.metrics import (
    BestDiceMetric,
    DiceScoreMetric,
    MaskedAveragePrecisionMetric,
    MaskedROCAUCMetric,
    QuantileCoverageMetric,
    compute_best_dice,
    compute_dice_score,
    compute_masked_average_precision,
    compute_masked_roc_auc,
    compute_quantile_coverage,
)
from monai_qrvae.networks import ANOMALY_MAP_LAYOUT, QRVAE, AnomalyMapNet, GaussianVAE
from monai_qrvae.preprocessing import SliceDataset, volume_transforms
from monai_qrvae.transforms import (
    AnomalyMapsd,
    BrainMask,
    BrainMaskd,
    ClusterThresholdd,
    ConformalPValued,
    FDRMaskd,
    HistogramStandardize,
    HistogramStandardized,
    LesionFilterd,
    MaskedScaleIntensityPercentiles,
    MaskedScaleIntensityPercentilesd,
    MaskedZScore,
    MaskedZScored,
    SelectSlices,
    SelectSlicesd,
    VolumeThresholdd,
    slices_to_items,
)

__all__ = [
    "InputGridCollector",
    "lesion_wise_counts",
    "summarise",
    "ANOMALY_MAP_LAYOUT",
    "AnomalyMapHandler",
    "AnomalyMapNet",
    "AnomalyMapSaver",
    "AnomalyMapsd",
    "AtomicCheckpointSaver",
    "BestDice",
    "BestDiceMetric",
    "BrainMask",
    "BrainMaskd",
    "Calibration",
    "ClusterThresholdd",
    "ConformalPValued",
    "DiceScoreMetric",
    "EpochSeedHandler",
    "FDRHandler",
    "FDRMaskd",
    "FLAIR_CHANNEL",
    "GaussianVAE",
    "GaussianVAELoss",
    "HistogramStandardize",
    "HistogramStandardized",
    "IntensityBaseline",
    "LesionDice",
    "LesionFilterHandler",
    "LesionFilterd",
    "LossHistory",
    "LossPartsHandler",
    "MaskedAveragePrecision",
    "MaskedAveragePrecisionMetric",
    "MaskedROCAUC",
    "MaskedROCAUCMetric",
    "MaskedScaleIntensityPercentiles",
    "MaskedScaleIntensityPercentilesd",
    "MaskedZScore",
    "MaskedZScored",
    "OverlaySaver",
    "PPF_085",
    "QRVAE",
    "QRVAELoss",
    "QuantileCoverageMetric",
    "QuantileLoss",
    "ResumeFromCheckpoint",
    "SelectSlices",
    "SelectSlicesd",
    "SliceDataset",
    "VAELossAdapter",
    "VAEPrepareBatch",
    "VolumeThresholdd",
    "anomaly_maps",
    "benjamini_hochberg",
    "compute_best_dice",
    "compute_dice_score",
    "compute_masked_average_precision",
    "compute_masked_roc_auc",
    "compute_quantile_coverage",
    "conformal_bh",
    "conformal_p_values",
    "create_anomaly_evaluator",
    "create_loss_evaluator",
    "create_trainer",
    "kl_divergence",
    "load_state_dict_file",
    "median_filter",
    "p_value",
    "pinball_loss",
    "quantiles_to_mu_sigma",
    "remove_small_components",
    "slices_to_items",
    "volume_threshold",
    "volume_transforms",
    "z_score",
]
