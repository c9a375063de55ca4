"""Per-volume empirical null of an anomaly score: its centre and width estimated from the volume's own brain.

A scan from a site the calibration never saw shifts and stretches the whole score distribution (on a real 1 mm
glioma the tumour-free brain scored a median z of -2.4). Most of a brain is healthy, so the bulk of its own score
distribution estimates the null there (Efron 2004). :func:`empirical_null` gives ``(centre, width)`` and
:func:`standardise` ``(s - centre) / width``; calibration volumes are standardised the same way, so conformal
p-values compare like with like whatever the site's intensity scale. What it assumes: a site changes the score's
location and scale, not its shape, and lesions are a minority of the brain (they sit in the upper tail).

Methods (:data:`NULL_METHODS`):

- ``"none"``: no standardisation (centre 0, width 1).
- ``"median"``: the location only: centre the median, width 1 (a site shifts the score, it does not stretch it).
- ``"upper"``: median, and the width of the upper half below the 90th percentile, ``(q90 - q50) / Phi^-1(0.9)``
  (the side the lesions are detected on, short of where they sit).
- ``"robust"``: median and interquartile range / 1.349 (the normal's IQR).
- ``"central"``: Efron's central matching (locfdr's default): a parabola fitted to the log histogram of the
  central half of the scores gives the mode ``-b / 2c`` and width ``sqrt(-1 / 2c)`` of the null's Gaussian core;
  a lesion that fills a tail does not move it. Falls back to ``"robust"`` when the fit is not concave or its vertex
  lies outside the scores' range (an almost flat centre, where the parabola's vertex is no mode of the scores; a
  skewed null may have its mode outside the central half, so that alone is no reason).

Reference:
    Efron, B. "Large-scale simultaneous hypothesis testing: the choice of a null hypothesis", JASA 99 (2004).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from monai_qrvae.anomaly.utils import as_tensor

__all__ = ["NULL_METHODS", "IQR_NORMAL", "empirical_null", "standardise"]

NULL_METHODS = ("none", "median", "upper", "robust", "central")
#: interquartile range of the standard normal, ``2 * Phi^-1(0.75)``.
IQR_NORMAL = 1.3489795003921634
#: ``Phi^-1(0.9)``.
PPF_090 = 1.2815515655446004
#: bins of the central-matching histogram over the central half of the scores, and that half's quantiles.
_CENTRAL_BINS = 60
_CENTRAL_QUANTILES = (0.25, 0.75)


def _values(scores: Any, mask: Any) -> np.ndarray:
    s = as_tensor(scores).detach().float().cpu()
    if mask is not None:
        m = as_tensor(mask).detach().cpu() > 0
        if m.shape != s.shape:
            raise ValueError(f"mask shape {tuple(m.shape)} does not match the scores {tuple(s.shape)}.")
        s = s[m]
    values = s.flatten().numpy().astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size < 10:
        raise ValueError(f"an empirical null needs at least 10 finite brain scores, got {values.size}.")
    return values


def _robust(values: np.ndarray) -> tuple[float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q50), float(max((q75 - q25) / IQR_NORMAL, 1e-6))


def _central(values: np.ndarray) -> tuple[float, float]:
    centre, width = _robust(values)
    lo, hi = np.quantile(values, _CENTRAL_QUANTILES)
    if not hi > lo:
        return centre, width
    counts, edges = np.histogram(values[(values >= lo) & (values <= hi)], bins=_CENTRAL_BINS, range=(lo, hi))
    keep = counts > 0
    if keep.sum() < 3:
        return centre, width
    mids = 0.5 * (edges[1:] + edges[:-1])
    x = (mids[keep] - centre) / width  # centred and scaled for a well-conditioned fit
    c2, c1, _ = np.polyfit(x, np.log(counts[keep]), 2, w=np.sqrt(counts[keep]))
    if c2 >= 0:  # flat or convex centre: no Gaussian core to match
        return centre, width
    mode = centre + width * (-c1 / (2 * c2))
    if not values.min() <= mode <= values.max():  # a barely concave, almost flat centre: no mode of these scores
        return centre, width
    return float(mode), float(width * np.sqrt(-1.0 / (2 * c2)))


def empirical_null(scores: Any, mask: Any = None, method: str = "central") -> tuple[float, float]:
    """``(centre, width)`` of the null distribution of ``scores`` inside ``mask`` (see the module docstring).

    Args:
        scores: a score map (any shape).
        mask: brain mask of the same shape (``None``: every voxel).
        method: one of :data:`NULL_METHODS`.

    Raises:
        ValueError: for an unknown method, a mask of another shape or fewer than 10 brain scores.
    """
    if method not in NULL_METHODS:
        raise ValueError(f"method must be one of {NULL_METHODS}, got {method!r}.")
    if method == "none":
        return 0.0, 1.0
    values = _values(scores, mask)
    if method == "median":
        return float(np.median(values)), 1.0
    if method == "upper":
        q50, q90 = np.percentile(values, [50, 90])
        return float(q50), float(max((q90 - q50) / PPF_090, 1e-6))
    return _robust(values) if method == "robust" else _central(values)


def standardise(scores: Any, mask: Any = None, method: str = "central") -> tuple[torch.Tensor, tuple[float, float]]:
    """``((scores - centre) / width, (centre, width))`` with the volume's :func:`empirical_null`."""
    centre, width = empirical_null(scores, mask, method)
    s = as_tensor(scores)
    return (s - centre) / width, (centre, width)
