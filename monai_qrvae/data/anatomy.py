"""Anatomy of the synthetic cohort: the MNI152 tissue template, tissue intensities and smooth random fields.

Used by :class:`monai_qrvae.data.generator.SyntheticBrainGenerator`; every number is documented in docs/data.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["CONTRASTS", "TISSUES", "GENERATOR_VERSION", "BASE_INTENSITIES", "BIAS_SD", "SNR"]

#: Channel order of every image: T1, T2, FLAIR (FLAIR is channel 2).
CONTRASTS: tuple[str, ...] = ("T1", "T2", "FLAIR")
#: Tissue order of :attr:`SyntheticSubject.tissues`.
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")
#: Bumped whenever the same seed would give different images.
GENERATOR_VERSION = "2"
#: Mean tissue intensities (arbitrary units, rows = contrasts, columns = CSF, GM, WM) before per-subject jitter.
#: FLAIR GM/WM = 1.07 (ISBI 2015: lesion/WM 1.25 and lesion/GM 1.19 give GM/WM about 1.05; 1.05-1.1 is typical).
BASE_INTENSITIES: dict[str, tuple[float, float, float]] = {
    "T1": (300.0, 600.0, 850.0),
    "T2": (1500.0, 750.0, 550.0),
    "FLAIR": (150.0, 600.0, 560.0),
}
#: Log-s.d. range of the smooth multiplicative bias field (control points every BIAS_CTRL_MM).
BIAS_SD: tuple[float, float] = (0.03, 0.1)
BIAS_CTRL_MM = 60.0
#: Signal-to-noise range (mean of GM and WM over the Rician sigma).
SNR: tuple[float, float] = (30.0, 50.0)


@dataclass(frozen=True)
class _Template:
    """Tissue maps on a cropped 1 mm grid, anti-aliased for the output spacing."""

    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    origin: np.ndarray  # world coordinate (mm) of voxel (0, 0, 0) of the cropped arrays
    brain_lo: np.ndarray  # world bounding box of the brain mask (mm)
    brain_hi: np.ndarray


@functools.lru_cache(maxsize=4)
def _load_template(spacing: float) -> _Template:
    """Load nilearn's MNI152 2009 GM/WM maps and brain mask (shipped with the package, 1 mm), crop and smooth."""
    from nilearn import datasets  # local import: nilearn is slow to import and only needed here

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError(f"expected nilearn's 1 mm MNI152 template to be axis aligned, got affine\n{affine}.")
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(wm_img.dataobj, dtype=np.float32)
    mask = np.asarray(mask_img.dataobj, dtype=np.float32)
    idx = np.argwhere(mask > 0)
    lo, hi = idx.min(0), idx.max(0)
    pad = 4
    start = np.maximum(lo - pad, 0)
    stop = np.minimum(hi + pad + 1, mask.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    sigma = max(0.0, (float(spacing) - 1.0) / 2.0)  # anti-aliasing before sampling on a coarser grid
    arrays = []
    for arr in (gm, wm, mask):
        arr = np.ascontiguousarray(arr[crop])
        if sigma > 0:
            arr = ndimage.gaussian_filter(arr, sigma, mode="constant")
        arrays.append(arr)
    origin = affine[:3, 3] + start
    return _Template(
        gm=arrays[0],
        wm=arrays[1],
        mask=arrays[2],
        origin=origin,
        brain_lo=affine[:3, 3] + lo,
        brain_hi=affine[:3, 3] + hi,
    )


def _bspline_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """``(n_out, n_ctrl)`` cubic B-spline weights that upsample ``n_ctrl`` control values to ``n_out`` points."""
    t = np.linspace(1.0, n_ctrl - 2.0, n_out)
    d = np.abs(t[:, None] - np.arange(n_ctrl)[None, :])
    return np.where(d < 1, 2.0 / 3.0 - d**2 + d**3 / 2.0, np.where(d < 2, (2.0 - d) ** 3 / 6.0, 0.0))


def _smooth_field(
    rng: np.random.Generator, shape: Sequence[int], spacing: float, ctrl_mm: float, scale: float, n: int = 1
) -> np.ndarray:
    """``n`` smooth random fields on ``shape``: random control values every ``ctrl_mm`` upsampled by B-splines.

    Returns ``(n, *shape)`` float32 fields whose control values are ``N(0, scale**2)``.
    """
    n_ctrl = [max(4, int(np.ceil(s * spacing / ctrl_mm)) + 3) for s in shape]
    mats = [_bspline_matrix(s, c) for s, c in zip(shape, n_ctrl)]
    coef = rng.standard_normal((n, *n_ctrl)) * scale
    out = np.einsum("nabc,xa,yb,zc->nxyz", coef, *mats, optimize=True)
    return out.astype(np.float32)


def _distance_to(region: np.ndarray, spacing: float, reach_mm: float) -> np.ndarray:
    """Euclidean distance (mm) to ``region``, exact within ``reach_mm`` of its bounding box, ``inf`` beyond."""
    out = np.full(region.shape, np.inf, dtype=np.float32)
    idx = np.argwhere(region)
    if idx.size == 0:
        return out
    pad = int(np.ceil(reach_mm / spacing))
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, region.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    out[box] = ndimage.distance_transform_edt(~region[box], sampling=spacing)
    return out


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three angles (radians) about x, y and z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx
