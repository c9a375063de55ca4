"""Volume-level (max-statistic) thresholds and cluster sizes calibrated on healthy volumes.

With ``M_1..M_n`` the maximum score of each of ``n`` healthy calibration volumes, the threshold is the ``k``-th
smallest ``M_i``, ``k = ceil((n + 1)(1 - alpha))``; it needs ``n + 1 >= 1 / alpha`` volumes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from scipy import ndimage

from monai_qrvae.calibration.conformal import _flat

__all__ = ["order_statistic_index", "min_volumes", "volume_threshold", "max_cluster_size"]


def order_statistic_index(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``: the rank (1-based) of the calibration maximum used as threshold.

    Raises:
        ValueError: when ``alpha`` is not in (0, 1) or ``n < 0``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    return int(math.ceil((n + 1) * (1.0 - alpha) - 1e-9))  # 1e-9: (n + 1) * 0.95 must not round up past an integer


def min_volumes(alpha: float) -> int:
    """The fewest healthy calibration volumes for a volume-level threshold at ``alpha`` (``n + 1 >= 1 / alpha``)."""
    n = 0
    while order_statistic_index(n, alpha) > n:
        n += 1
    return n


def volume_threshold(maxima: Any, alpha: float) -> float:
    """Volume-level threshold: the ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` healthy per-volume maxima.

    A new healthy volume exchangeable with the calibration volumes has any score ``> threshold`` with probability
    at most ``alpha``.

    Args:
        maxima: the per-volume maximum score of each calibration volume (1-D).
        alpha: the tolerated fraction of healthy volumes with any detection, in (0, 1).

    Returns:
        The threshold (detect ``score > threshold``).

    Raises:
        ValueError: when ``n + 1 < 1 / alpha`` (too few volumes for ``alpha``).
    """
    m = torch.sort(_flat(maxima).flatten().double()).values
    n = m.numel()
    k = order_statistic_index(n, alpha)
    if k > n:
        raise ValueError(
            f"a volume-level threshold needs at least {min_volumes(alpha)} healthy calibration volumes for alpha "
            f"{alpha:g} (n + 1 >= 1 / alpha), got {n}; add healthy volumes to the calibration section or use a "
            f"larger alpha (the smallest possible with {n} is {1.0 / (n + 1):.3g})."
        )
    return float(m[k - 1])


def max_cluster_size(mask: Any, connectivity: int = 1) -> int:
    """Size in voxels of the largest connected component of a binary map (0 when empty).

    Args:
        mask: binary map (non-zero = foreground), any number of spatial axes, no channel axis.
        connectivity: 1 = faces, up to the number of axes (see ``scipy.ndimage.generate_binary_structure``).
    """
    arr = np.asarray(convert_to_tensor(mask, track_meta=False).cpu()) != 0
    if not arr.any():
        return 0
    labels, _ = ndimage.label(arr, structure=ndimage.generate_binary_structure(arr.ndim, connectivity))
    return int(np.bincount(labels.ravel())[1:].max())
