"""Dictionary transforms that turn the anomaly network's output into z/p maps and a lesion mask.

They live in :mod:`monai_qrvae.transforms.anomaly` (``dictionary``: maps, Benjamini-Hochberg mask, filters;
``thresholds``: calibrated label-free thresholds); this module keeps the import path that the handlers, the
bundle configs, the MONAI Label app and the docs use.
"""

from __future__ import annotations

from monai_qrvae.transforms.anomaly import dictionary as _maps
from monai_qrvae.transforms.anomaly import thresholds as _thresholds
from monai_qrvae.transforms.anomaly.dictionary import *  # noqa: F401,F403
from monai_qrvae.transforms.anomaly.thresholds import *  # noqa: F401,F403

__all__ = [*_maps.__all__, *_thresholds.__all__]
