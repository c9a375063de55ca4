"""Read a DICOM series folder as one 3D volume with its exact scanner geometry.

Reader: MONAI's :class:`monai.data.ITKReader` (ITK's GDCM series reader): already a dependency of the package
(``monai[itk]``), maintained with MONAI, reads every transfer syntax GDCM knows, and its geometry (direction
cosines, slice positions, LPS to RAS) is the one MONAI's ``LoadImage`` gives everywhere else; nothing is written to
disk. Before ITK reads the pixels, the headers are checked with pydicom (``stop_before_pixels``), so that a folder of
several series, a missing slice or a non-MR series is refused with one line naming the folder and the problem
(ITK would silently pick one series or interpolate over a gap).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DicomSeriesError", "DicomSeries", "is_dicom_folder", "scan_series", "read_series", "series_uids"]

#: the MR storage classes accepted as input: MR Image Storage and Enhanced MR Image Storage (single-frame only).
MR_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.4",)


class DicomSeriesError(ValueError):
    """A DICOM folder that is not one complete MR series; the message names the folder and the problem."""


@dataclass
class DicomSeries:
    """Header facts of one checked series: its files in slice order and the UIDs results refer to."""

    folder: Path
    files: list[Path]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: list[str]
    positions_lps: np.ndarray
    orientation: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as e:  # pragma: no cover - the dicom extra is part of `make install`
        raise ImportError("DICOM series need pydicom: pip install 'monai-qrvae[dicom]'.") from e
    return pydicom


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True for a folder (a series is given as its folder; files are NIfTI/NRRD/MHA)."""
    return Path(path).is_dir()


def _headers(folder: Path) -> list[tuple[Path, Any]]:
    pydicom = _pydicom()
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM (README, thumbnails...): skipped
            continue
        if "SOPClassUID" in ds:
            found.append((path, ds))
    return found


def scan_series(folder: str | os.PathLike, name: str = "") -> DicomSeries:
    """Check that ``folder`` holds exactly one complete single-frame MR series and list its slices in order.

    Raises:
        DicomSeriesError: no DICOM file, several series, a non-MR series, mixed orientations or sizes, a repeated
            or missing slice (a gap larger than 1.5 times the usual slice step).
    """
    folder = Path(folder)
    what = f"{name} series folder {folder}" if name else f"DICOM folder {folder}"
    if not folder.is_dir():
        raise DicomSeriesError(f"{what} does not exist; expected a folder of DICOM files of one series.")
    headers = _headers(folder)
    if not headers:
        raise DicomSeriesError(f"{what} holds no DICOM file; expected the files of one MR series.")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in headers})
    if len(series) > 1:
        descriptions = sorted({str(ds.get("SeriesDescription", "?")) for _, ds in headers})
        raise DicomSeriesError(
            f"{what} holds {len(series)} series ({', '.join(descriptions)}); expected one series per folder."
        )
    modalities = sorted({str(ds.get("Modality", "")) for _, ds in headers})
    if modalities != ["MR"]:
        raise DicomSeriesError(f"{what} is a {'/'.join(modalities) or 'modality-less'} series; expected MR.")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in headers):
        raise DicomSeriesError(f"{what} holds multi-frame (enhanced) files; expected one file per slice.")
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in headers[0][1]]
    if missing:
        raise DicomSeriesError(f"{what} lacks {', '.join(missing)}; expected an image series with its geometry.")
    orientations = np.asarray([[float(v) for v in ds.ImageOrientationPatient] for _, ds in headers])
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if np.abs(orientations - orientations[0]).max() > 1e-4 or len(sizes) > 1:
        raise DicomSeriesError(f"{what} mixes slice orientations or sizes; expected one stack of parallel slices.")
    row, col = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, col)
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers])
    order = np.argsort(positions @ normal, kind="stable")
    depth = (positions @ normal)[order]
    if len(headers) < 2:
        raise DicomSeriesError(f"{what} holds {len(headers)} slice; expected a 3D series.")
    steps = np.diff(depth)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise DicomSeriesError(f"{what} has two slices at the same position ({depth[i]:.2f} mm); expected one each.")
    usual = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * usual)
    if gaps.size:
        i = int(gaps[0])
        n = int(round(steps[i] / usual)) - 1
        raise DicomSeriesError(
            f"{what} misses {n} slice(s) between {depth[i]:.2f} and {depth[i + 1]:.2f} mm along the slice normal "
            f"(step {usual:.2f} mm); expected a complete series."
        )
    ordered = [headers[i] for i in order]
    first = ordered[0][1]
    return DicomSeries(
        folder=folder,
        files=[p for p, _ in ordered],
        study_uid=str(first.get("StudyInstanceUID", "")),
        series_uid=series[0],
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        sop_instance_uids=[str(ds.SOPInstanceUID) for _, ds in ordered],
        positions_lps=positions[order],
        orientation=orientations[0],
        meta={"SeriesDescription": str(first.get("SeriesDescription", "")), "Modality": "MR"},
    )


def _affine_from_headers(series: DicomSeries, pixel_spacing: tuple[float, float]) -> np.ndarray:
    """RAS voxel-to-world affine of the array ``(column, row, slice)`` from the headers (the reader's cross-check)."""
    row, col = series.orientation[:3], series.orientation[3:]
    step = (series.positions_lps[-1] - series.positions_lps[0]) / max(len(series.files) - 1, 1)
    affine = np.eye(4)
    affine[:3, 0] = row * pixel_spacing[1]
    affine[:3, 1] = col * pixel_spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = series.positions_lps[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def read_series(folder: str | os.PathLike, name: str = "") -> tuple[Any, DicomSeries]:
    """Read a checked DICOM series with MONAI's ITK reader: ``(nibabel image, series facts)``.

    The array is ``(columns, rows, slices)`` with the slices in :func:`scan_series`'s order, and the affine is the
    reader's (RAS). The header geometry is recomputed from the slice positions and must agree within 1e-3 mm.

    Raises:
        DicomSeriesError: see :func:`scan_series`; also a reader failure or a disagreement of the geometries.
    """
    import nibabel as nib
    from monai.data import ITKReader

    series = scan_series(folder, name)
    what = f"{name} series folder {series.folder}" if name else f"DICOM folder {series.folder}"
    try:
        reader = ITKReader(affine_lps_to_ras=True)
        image = reader.read(str(series.folder))  # GDCM lists and sorts the (one, checked) series
        data, meta = reader.get_data(image)
    except Exception as e:
        raise DicomSeriesError(f"{what} cannot be read by ITK: {e}") from e
    data = np.asarray(data, dtype=np.float32)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if data.ndim != 3 or data.shape[2] != len(series.files):
        raise DicomSeriesError(f"{what}: ITK read shape {data.shape} for {len(series.files)} slices.")
    first = _pydicom().dcmread(series.files[0], stop_before_pixels=True)
    expected = _affine_from_headers(series, tuple(float(v) for v in first.PixelSpacing))
    if not np.allclose(affine, expected, atol=1e-3):
        raise DicomSeriesError(f"{what}: the reader's geometry disagrees with the slice positions; not read.")
    return nib.Nifti1Image(data, affine), series


def series_uids(series: DicomSeries) -> dict[str, str]:
    """The UIDs a result refers to: ``StudyInstanceUID``, ``SeriesInstanceUID``, ``FrameOfReferenceUID``."""
    return {
        "StudyInstanceUID": series.study_uid,
        "SeriesInstanceUID": series.series_uid,
        "FrameOfReferenceUID": series.frame_of_reference_uid,
    }
