"""Post-processing filters of score maps and lesion masks: median filter and removal of small components."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.networks.layers import median_filter as _monai_median_filter
from monai.utils import convert_to_dst_type
from scipy import ndimage

from monai_qrvae.anomaly.utils import _float_dtype, as_tensor

__all__ = ["median_filter", "remove_small_components"]


def median_filter(x: Any, size: int | Sequence[int] = 3) -> Any:
    """Median filter over the spatial axes of ``(B, C, spatial...)`` data, with MONAI's ``median_filter``.

    The window is ``size`` voxels along every spatial axis (3 x 3 for slices, 3 x 3 x 3 for volumes), or one odd
    size per spatial axis (e.g. ``(3, 3, 1)`` filters each axial slice of a volume); borders are
    replicate-padded. Reduced-precision and boolean inputs are filtered in float32 and cast back.

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, H, W, D)`` tensor, MetaTensor or numpy array.
        size: odd window size ``>= 1``, or one per spatial axis.

    Returns:
        The filtered data, same shape, type and dtype as ``x``.

    Raises:
        ValueError: for an even or non-positive ``size`` or input without 1-3 spatial axes.
    """
    xt = as_tensor(x)
    spatial_dims = xt.ndim - 2
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"x must be (B, C, spatial...) with 1-3 spatial axes, got shape {tuple(xt.shape)}.")
    sizes = [size] * spatial_dims if isinstance(size, (int, float)) else list(size)
    if len(sizes) != spatial_dims or any(int(k) != k or k < 1 or k % 2 == 0 for k in sizes):
        raise ValueError(f"size must be an odd integer >= 1 or {spatial_dims} of them, got {size}.")
    if all(k == 1 for k in sizes):
        return x
    work = xt.to(_float_dtype(xt))
    out = _monai_median_filter(work, kernel_size=[int(k) for k in sizes], spatial_dims=spatial_dims)
    if xt.dtype == torch.bool:
        out = out > 0.5
    return convert_to_dst_type(out, x)[0]


def remove_small_components(mask: Any, min_size: int, connectivity: int = 1) -> Any:
    """Remove connected components smaller than ``min_size`` voxels, per batch item and channel.

    Components are labelled with ``scipy.ndimage.label``; a component of exactly ``min_size`` voxels is kept.

    Args:
        mask: ``(B, C, spatial...)`` binary mask (non-zero = foreground), torch, MetaTensor or numpy.
        min_size: smallest component size kept, in voxels.
        connectivity: neighbourhood of ``scipy.ndimage.generate_binary_structure``: 1 = faces (4/6-connected),
            up to the number of spatial axes (8/26-connected).

    Returns:
        ``mask`` with the small components set to zero, same type, dtype and device.

    Raises:
        ValueError: for an unbatched mask, a negative ``min_size`` or a bad ``connectivity``.
    """
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim < 3:
        raise ValueError(f"mask must be batched (B, C, spatial...), got shape {tuple(arr.shape)}.")
    spatial = arr.ndim - 2
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}.")
    if not 1 <= connectivity <= spatial:
        raise ValueError(f"connectivity must be in [1, {spatial}] for {spatial} spatial axes, got {connectivity}.")
    structure = ndimage.generate_binary_structure(spatial, connectivity)
    foreground = arr != 0
    keep = np.zeros_like(foreground)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            labels, _ = ndimage.label(foreground[b, c], structure=structure)
            sizes = np.bincount(labels.ravel())
            large = sizes >= min_size
            large[0] = False  # background
            keep[b, c] = large[labels]
    out = np.where(keep, arr, np.zeros((), dtype=arr.dtype)).astype(arr.dtype, copy=False)
    return convert_to_dst_type(out, mask)[0]
