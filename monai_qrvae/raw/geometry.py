"""World-space geometry for raw series: rigid matrices, resampling between grids, ANTs <-> RAS conversion.

Pure ``numpy``/``scipy``/``nibabel`` (no ANTs import): everything here works without the ``raw`` extra, so maps
can be put back on a series' grid from the stored JSON transforms alone.

Conventions: all matrices are ``4 x 4`` homogeneous maps between **world RAS millimetres** (nibabel's convention).
A *point map* ``T_a_to_b`` takes the world coordinate of an anatomical point as seen in space ``a`` to its
coordinate in space ``b``. ANTs/ITK work in LPS and store the *fixed -> moving* point map of a registration;
:func:`ants_params_to_ras` converts such a transform to RAS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "LPS_FLIP",
    "rigid_matrix",
    "rotation_angle_deg",
    "ants_params_to_ras",
    "ras_to_ants_params",
    "affine_to_ants_geometry",
    "resample_to_grid",
    "mean_displacement",
    "dice",
]

#: ``diag(-1, -1, 1, 1)``: RAS <-> LPS (its own inverse).
LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def rigid_matrix(
    angles_deg: Sequence[float], shift_mm: Sequence[float], centre_mm: Sequence[float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """``4 x 4`` rotation (about x, then y, then z, by ``angles_deg``) about ``centre_mm`` followed by a shift."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    centre = np.asarray(centre_mm, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = centre - rot @ centre + np.asarray(shift_mm, dtype=np.float64)
    return out


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Rotation angle (degrees) of the linear part of a rigid ``4 x 4`` (or ``3 x 3``) matrix."""
    rot = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return float(np.rad2deg(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))


def ants_params_to_ras(parameters: Sequence[float], fixed_parameters: Sequence[float]) -> np.ndarray:
    """RAS ``4 x 4`` point map of an ITK ``AffineTransform``/``Euler3DTransform``-as-affine (12 + 3 parameters).

    ITK maps a point ``x`` (LPS) to ``M (x - c) + t + c`` with ``M`` the first 9 parameters (row major), ``t`` the
    last 3 and ``c`` the fixed parameters (centre).
    """
    p = np.asarray(parameters, dtype=np.float64)
    if p.size != 12:
        raise ValueError(f"expected 12 affine parameters (3x3 matrix + translation), got {p.size}.")
    c = np.asarray(fixed_parameters, dtype=np.float64)[:3]
    lps = np.eye(4)
    lps[:3, :3] = p[:9].reshape(3, 3)
    lps[:3, 3] = p[9:] + c - lps[:3, :3] @ c
    return LPS_FLIP @ lps @ LPS_FLIP


def ras_to_ants_params(matrix: np.ndarray) -> tuple[list[float], list[float]]:
    """Inverse of :func:`ants_params_to_ras`: ``(parameters, fixed_parameters)`` with centre 0."""
    lps = LPS_FLIP @ np.asarray(matrix, dtype=np.float64) @ LPS_FLIP
    return [*lps[:3, :3].reshape(-1).tolist(), *lps[:3, 3].tolist()], [0.0, 0.0, 0.0]


def affine_to_ants_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """``(origin, spacing, direction)`` of an ANTs (LPS) image with the given RAS voxel-to-world ``affine``.

    Raises:
        ValueError: the affine has a shear (its columns are not orthogonal), which ITK images cannot represent.
    """
    lps = LPS_FLIP @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"voxel-to-world affine has a zero or non-finite voxel size: {spacing.tolist()}.")
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError(f"voxel-to-world affine is sheared (axes not orthogonal); expected a scanner grid:\n{affine}")
    return tuple(lps[:3, 3].tolist()), tuple(spacing.tolist()), direction


def resample_to_grid(
    data: np.ndarray,
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    dst_to_src_world: np.ndarray | None = None,
    order: int = 1,
    cval: float = 0.0,
    mode: str = "constant",
) -> np.ndarray:
    """Resample a 3D (or 4D, channels last) array onto another grid through an optional world point map.

    Args:
        data: array on the source grid.
        src_affine: source voxel-to-world (RAS) matrix.
        dst_shape: spatial shape of the output grid.
        dst_affine: output voxel-to-world (RAS) matrix.
        dst_to_src_world: point map from the output's world to the source's world (identity if ``None``).
        order: 0 nearest (masks), 1 trilinear.
        cval: value outside the source (``mode="constant"``).
        mode: :func:`scipy.ndimage.affine_transform` boundary mode (``"nearest"`` extends the edge values).

    Returns:
        ``float32`` array of shape ``dst_shape`` (+ channels).
    """
    world = np.eye(4) if dst_to_src_world is None else np.asarray(dst_to_src_world, dtype=np.float64)
    vox = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ world @ np.asarray(dst_affine, dtype=np.float64)
    arr = np.asarray(data, dtype=np.float32)
    shape = tuple(int(s) for s in dst_shape)
    if arr.ndim == 3:
        return ndimage.affine_transform(
            arr, vox[:3, :3], vox[:3, 3], output_shape=shape, order=order, mode=mode, cval=cval, prefilter=False
        )
    if arr.ndim == 4:
        channels = [
            resample_to_grid(arr[..., c], src_affine, shape, dst_affine, world, order, cval, mode)
            for c in range(arr.shape[-1])
        ]
        return np.stack(channels, -1)
    raise ValueError(f"expected a 3D or 4D (channels last) array, got shape {arr.shape}.")


def mean_displacement(a: np.ndarray, b: np.ndarray, points_mm: np.ndarray) -> float:
    """Mean distance (mm) between where two ``4 x 4`` point maps send the ``(N, 3)`` world points."""
    pts = np.c_[np.asarray(points_mm, dtype=np.float64), np.ones(len(points_mm))]
    diff = pts @ (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).T
    return float(np.linalg.norm(diff[:, :3], axis=1).mean())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary arrays (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total
