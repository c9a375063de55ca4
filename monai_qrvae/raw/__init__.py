"""Raw clinical series in and out: bias correction, co-registration, brain extraction, maps back on the scan.

- :func:`preprocess`: three raw series (T1, T2, FLAIR; skull, own grids, motion, bias) -> the analysis-ready 4D
  image, brain mask and transforms (ANTs + deepbet: ``pip install 'monai-qrvae[raw]'``).
- :func:`maps_to_series`: a map on the analysis grid -> the FLAIR (or T1/T2) series' own grid (no ANTs needed).
- :func:`infer_raw`: preprocess + :func:`monai_qrvae.workflows.infer` + maps and lesion report on the FLAIR grid.
- :func:`make_raw_subject` / :func:`make_raw_cohort`: raw-like series with known truth from the embedded generator.

ANTs and deepbet are imported only when preprocessing runs.
"""

from __future__ import annotations

from .errors import MissingSeriesError, RawInputError, RegistrationError
from .inverse import infer_raw, infer_raw_items, lesion_report, load_transforms, maps_to_series, series_to_analysis
from .preprocess import DEFAULT_THRESHOLDS, analysis_grid, preprocess
from .series import load_series, normalised_mutual_information
from .synthetic import DEFAULT_AXCODES, DEFAULT_SPACINGS, RAW_SERIES, make_raw_cohort, make_raw_subject

__all__ = [
    "MissingSeriesError",
    "RawInputError",
    "RegistrationError",
    "infer_raw",
    "infer_raw_items",
    "lesion_report",
    "load_transforms",
    "maps_to_series",
    "series_to_analysis",
    "DEFAULT_THRESHOLDS",
    "analysis_grid",
    "load_series",
    "normalised_mutual_information",
    "preprocess",
    "DEFAULT_AXCODES",
    "DEFAULT_SPACINGS",
    "RAW_SERIES",
    "make_raw_cohort",
    "make_raw_subject",
]
