"""Step 1 of :func:`~monai_qrvae.raw.preprocess.preprocess`: read and check a raw series; head masks and the
normalised mutual information the registration checks use."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_qrvae.raw.errors import MissingSeriesError, RawInputError
from monai_qrvae.raw.geometry import affine_to_ants_geometry

__all__ = ["load_series", "normalised_mutual_information", "alignment_sharpness", "outline_sharpness"]

_MIN_FOV_MM = 80.0


def load_series(path: str | os.PathLike, name: str) -> nib.Nifti1Image:
    """Read one raw series (NIfTI file or DICOM series folder, :mod:`monai_qrvae.io.dicom`) and check it: exists,
    readable, 3D, finite, not constant, field of view >= 80 mm.

    Raises:
        MissingSeriesError: the file does not exist.
        RawInputError: anything else, naming the file and what was expected.
    """
    path = Path(path)
    if path.is_dir():  # a DICOM series folder (monai_qrvae.io.dicom: one MR series, complete, exact geometry)
        from monai_qrvae.io.dicom import DicomSeriesError, read_series

        try:
            img = read_series(path, name)[0]
        except DicomSeriesError as e:
            raise RawInputError(str(e)) from e
        data = np.asarray(img.dataobj, dtype=np.float32)
    elif not path.is_file():
        raise MissingSeriesError(
            f"{name} series {path} does not exist; expected a NIfTI file or DICOM series folder of the {name} scan."
        )
    else:
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:  # nibabel raises many types for corrupt files
            raise RawInputError(f"{name} series {path} cannot be read as NIfTI: {e}") from e
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise RawInputError(f"{name} series {path} has shape {data.shape}; expected one 3D volume.")
    if min(data.shape) < 8:
        raise RawInputError(f"{name} series {path} has shape {data.shape}; expected at least 8 voxels per axis.")
    if not np.all(np.isfinite(data)):
        raise RawInputError(f"{name} series {path} has {int((~np.isfinite(data)).sum())} NaN/Inf voxels.")
    if float(data.max()) <= float(data.min()):
        raise RawInputError(f"{name} series {path} is constant ({float(data.min())}); expected an MR image.")
    affine = np.asarray(img.affine, dtype=np.float64)
    try:
        affine_to_ants_geometry(affine)
    except ValueError as e:
        raise RawInputError(f"{name} series {path}: {e}") from e
    fov = np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(data.shape)
    if np.any(fov < _MIN_FOV_MM):
        raise RawInputError(
            f"{name} series {path} covers {np.round(fov, 1).tolist()} mm; expected a head (>= {_MIN_FOV_MM:.0f} mm "
            "along every axis)."
        )
    return nib.Nifti1Image(data, affine)


def _head_mask(data: np.ndarray) -> np.ndarray:
    """Foreground (head) mask: above a fraction of the robust maximum, largest component, holes filled."""
    from scipy import ndimage

    high = float(np.percentile(data, 99.5))
    mask = data > 0.08 * high
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def normalised_mutual_information(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 32
) -> float:
    """Studholme's normalised mutual information ``(H(A) + H(B)) / H(A, B)`` (1 = independent, 2 = identical)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if mask is not None:
        a, b = a[mask > 0], b[mask > 0]
    a, b = a.ravel(), b.ravel()
    if a.size < 100:
        return 1.0
    ranges = [np.percentile(x, [0.5, 99.5]) for x in (a, b)]
    if any(r[1] <= r[0] for r in ranges):
        return 1.0
    joint, _, _ = np.histogram2d(a, b, bins=bins, range=ranges)
    joint /= max(joint.sum(), 1.0)
    pa, pb = joint.sum(1), joint.sum(0)

    def _h(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (_h(pa) + _h(pb)) / max(_h(joint.ravel()), 1e-12)


def alignment_sharpness(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed_to_moving: np.ndarray,
    mask: np.ndarray,
    shift_mm: float = 4.0,
    angle_deg: float = 4.0,
) -> tuple[float, float, float]:
    """How sharp the similarity peak at a found alignment is: ``(nmi, perturbed_nmi, sharpness)``.

    ``nmi`` is the normalised mutual information of ``fixed`` and ``moving`` (sampled through the world point map
    ``fixed_to_moving``) inside ``mask``; ``perturbed_nmi`` its mean over 12 deliberately misaligned poses (the found
    pose followed by a shift of +-``shift_mm`` along each world axis or a rotation of +-``angle_deg`` about each axis
    through the mask's centre); ``sharpness = 1 - (perturbed_nmi - 1) / (nmi - 1)``, the share of the similarity
    above independence that a few millimetres of misalignment lose (scale-free: 1 = all, 0 = none, < 0 = the found
    pose is not a peak). Same-patient series share fine anatomy, so their peak is sharp; another patient's peak is
    broad.
    """
    mask = np.asarray(mask) > 0
    values = _nmi_at_poses(
        fixed, fixed_affine, [(moving, moving_affine, 32)], fixed_to_moving, mask, mask, shift_mm, angle_deg
    )[0]
    return values[0], float(np.mean(values[1:])), _sharpness(values)


def outline_sharpness(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed_to_moving: np.ndarray,
    fixed_mask: np.ndarray,
    moving_mask: np.ndarray,
    margin_mm: float = 10.0,
    shift_mm: float = 4.0,
    angle_deg: float = 4.0,
) -> tuple[float, float]:
    """Peak sharpness of the images and of their outlines alone: ``(image_sharpness, outline_sharpness)``.

    Both are the sharpness of :func:`alignment_sharpness` (same found pose, same 12 perturbations) in the same
    region: ``fixed_mask`` (the fixed series' foreground) grown by ``margin_mm``, so that it holds both sides of
    both outlines. ``image_sharpness`` uses the two images; ``outline_sharpness`` their binary foreground masks
    (``fixed_mask`` and ``moving_mask``, on the moving grid; NMI with 2 bins). Null: when only the outlines align
    (another patient), the images' peak is no sharper than the outlines' (``image_sharpness <= outline_sharpness``).
    """
    from scipy import ndimage

    fixed_mask = np.asarray(fixed_mask) > 0
    zooms = np.sqrt((np.asarray(fixed_affine)[:3, :3] ** 2).sum(0))
    region = ndimage.distance_transform_edt(~fixed_mask, sampling=zooms) <= margin_mm
    moving_mask = (np.asarray(moving_mask) > 0).astype(np.float32)
    images, outlines = _nmi_at_poses(
        fixed,
        fixed_affine,
        [(moving, moving_affine, 32), (moving_mask, moving_affine, 2)],
        fixed_to_moving,
        fixed_mask,
        region,
        shift_mm,
        angle_deg,
        fixed_extra=fixed_mask.astype(np.float32),
    )
    return _sharpness(images), _sharpness(outlines)


def _sharpness(values: list[float]) -> float:
    """``1 - (mean of values[1:] - 1) / (values[0] - 1)``; 0 when ``values[0]`` is at independence."""
    nmi, perturbed = values[0], float(np.mean(values[1:]))
    return float(1.0 - (perturbed - 1.0) / (nmi - 1.0)) if nmi > 1.0 + 1e-9 else 0.0


def _nmi_at_poses(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    movings: list[tuple[np.ndarray, np.ndarray, int]],
    fixed_to_moving: np.ndarray,
    centre_mask: np.ndarray,
    region: np.ndarray,
    shift_mm: float,
    angle_deg: float,
    fixed_extra: np.ndarray | None = None,
) -> list[list[float]]:
    """NMI of ``fixed`` with each ``(moving, affine, bins)`` inside ``region`` at the found pose (first) and the 12
    perturbed poses (rotations about ``centre_mask``'s centre). The last moving is compared with ``fixed_extra``
    instead of ``fixed`` when that is given (the outline of the fixed series)."""
    from monai_qrvae.raw.geometry import resample_to_grid, rigid_matrix

    region = np.asarray(region) > 0
    centre_mask = np.asarray(centre_mask) > 0
    centre = (np.asarray(fixed_affine) @ np.r_[np.argwhere(centre_mask).mean(0), 1.0])[:3] if centre_mask.any() else 0
    idx = np.argwhere(region)
    lo, hi = (idx.min(0), idx.max(0) + 1) if region.any() else (np.zeros(3, int), np.asarray(region.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # sample only the region's bounding box
    box_affine = np.asarray(fixed_affine, dtype=np.float64).copy()
    box_affine[:3, 3] = (box_affine @ np.r_[lo, 1.0])[:3]
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    poses = [np.eye(4)]
    for axis in range(3):
        for sign in (-1.0, 1.0):
            step = np.zeros(3)
            step[axis] = sign
            poses.append(rigid_matrix((0.0, 0.0, 0.0), step * shift_mm))
            poses.append(rigid_matrix(step * angle_deg, (0.0, 0.0, 0.0), centre + np.zeros(3)))
    out: list[list[float]] = []
    for i, (moving, moving_affine, bins) in enumerate(movings):
        reference = fixed_extra if fixed_extra is not None and i == len(movings) - 1 else fixed
        values = []
        for pose in poses:
            warped = resample_to_grid(moving, moving_affine, shape, box_affine, fixed_to_moving @ pose, order=1)
            if bins == 2:
                warped = (warped > 0.5).astype(np.float32)
            values.append(normalised_mutual_information(reference[box], warped, region[box], bins=bins))
        out.append(values)
    return out
