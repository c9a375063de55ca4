"""Step 2 of :func:`~monai_qrvae.raw.preprocess.preprocess`: N4 bias-field correction fitted on coarse copies."""

from __future__ import annotations

import numpy as np

from monai_qrvae.raw.geometry import resample_to_grid
from monai_qrvae.raw.registration import _ants, _to_ants
from monai_qrvae.raw.series import _head_mask


def _work_grid(affine: np.ndarray, shape: tuple[int, ...], work_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """An isotropic ``work_mm`` grid over the same field of view (same axes and corner)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_shape = tuple(max(int(np.ceil(n * s / work_mm)), 2) for n, s in zip(shape, spacing))
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] / spacing * work_mm
    # keep the field of view's corner: voxel -0.5 of both grids coincide
    out[:3, 3] = (affine @ np.r_[-0.5, -0.5, -0.5, 1.0])[:3] - out[:3, :3] @ np.full(3, -0.5)
    return new_shape, out  # type: ignore[return-value]


def _downsample(data: np.ndarray, affine: np.ndarray, work_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased copy on the isotropic ``work_mm`` grid."""
    from scipy import ndimage

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    sigma = [max(0.0, (work_mm / s - 1.0) / 2.0) for s in spacing]
    smooth = ndimage.gaussian_filter(data, sigma) if any(s > 0 for s in sigma) else data
    shape, work_affine = _work_grid(affine, data.shape, work_mm)
    return resample_to_grid(smooth, affine, shape, work_affine, order=1), work_affine


def _n4(
    data: np.ndarray, affine: np.ndarray, work_mm: float, n4_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N4 fitted on an ``n4_mm`` copy inside the head (the field is smooth), divided out of the full-resolution
    series and of its ``work_mm`` copy; return ``(corrected full-res, corrected work copy, work affine)``."""
    ants = _ants()
    work, work_affine = _downsample(data, affine, work_mm)
    coarse, coarse_affine = _downsample(work, work_affine, n4_mm)
    head = _head_mask(coarse)
    scale = float(np.percentile(coarse[head], 99.0)) if head.any() else 1.0
    bias = ants.n4_bias_field_correction(
        _to_ants(coarse / max(scale, 1e-6), coarse_affine),
        mask=_to_ants(head.astype(np.float32), coarse_affine),
        shrink_factor=1,
        convergence={"iters": [30, 20], "tol": 1e-4},
        return_bias_field=True,
    ).numpy()
    bias = np.where(bias > 1e-3, bias, 1.0).astype(np.float32)
    if head.any():
        bias /= float(np.median(bias[head]))  # keep the intensity scale

    def _divide(x: np.ndarray, x_affine: np.ndarray) -> np.ndarray:
        field = resample_to_grid(bias, coarse_affine, x.shape, x_affine, order=1, mode="nearest")
        return x / np.where(field > 1e-3, field, 1.0)

    return _divide(data, affine), _divide(work, work_affine), work_affine
