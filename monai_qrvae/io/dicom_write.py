"""Write a 3D volume as a DICOM MR series (MR Image Storage, one file per slice, realistic tags).

For tests, benchmarks and examples: the embedded synthetic subjects and NIfTI scans become what a scanner sends.
The array axes ``(i, j, k)`` of the NIfTI grid are the DICOM column, row and slice (so
``ImageOrientationPatient`` holds the LPS directions of axes ``i`` and ``j``); any orthonormal affine, oblique
included, is written exactly (positions and cosines as 16-character decimal strings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_series", "SEQUENCES"]

#: typical acquisition tags per contrast (TR, TE in ms; inversion time; scanning sequence).
SEQUENCES: dict[str, dict[str, Any]] = {
    "T1": {"RepetitionTime": 2300.0, "EchoTime": 2.98, "InversionTime": 900.0, "ScanningSequence": ["GR", "IR"]},
    "T2": {"RepetitionTime": 3200.0, "EchoTime": 409.0, "ScanningSequence": ["SE"]},
    "FLAIR": {"RepetitionTime": 9000.0, "EchoTime": 81.0, "InversionTime": 2500.0, "ScanningSequence": ["SE", "IR"]},
}


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters, as close to ``value`` as DICOM allows."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def write_series(
    data: np.ndarray,
    affine: np.ndarray,
    folder: str | os.PathLike,
    contrast: str = "FLAIR",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_id: str = "QRVAE^TEST",
    series_number: int = 1,
    modality: str = "MR",
    shuffle_files: bool = True,
) -> list[Path]:
    """Write ``data`` (3D) with RAS ``affine`` as one file per slice in ``folder``.

    Args:
        data: ``(i, j, k)`` volume; ``k`` is the slice axis. Integer values are stored as they are, real values as
            int16 with a ``RescaleSlope``.
        affine: ``4 x 4`` RAS voxel-to-world matrix (orthogonal columns).
        folder: output folder (created).
        contrast: ``T1``, ``T2`` or ``FLAIR`` (sequence tags and series description).
        study_uid, frame_of_reference_uid: shared by the series of one visit (new ones when ``None``).
        patient_id: PatientID and PatientName.
        series_number: SeriesNumber.
        modality: Modality (``MR``; anything else makes a series the reader refuses, for tests).
        shuffle_files: file names in an order unrelated to the slice order (as PACS exports do).

    Returns:
        the written file paths, in slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"write_series: expected a 3D volume, got shape {data.shape}.")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    zooms = np.linalg.norm(lps[:3, :3], axis=0)
    cosines = lps[:3, :3] / zooms
    if not np.allclose(cosines.T @ cosines, np.eye(3), atol=1e-6):
        raise ValueError("write_series: the affine's columns are not orthogonal; DICOM slices cannot hold a shear.")
    finite = np.nan_to_num(data.astype(np.float64))
    slope = 1.0
    if not np.allclose(finite, np.rint(finite)) or np.abs(finite).max() > 32767:  # real values: stored with a slope
        slope = float(np.abs(finite).max()) / 32000.0 or 1.0
    pixels = np.clip(np.rint(finite / slope), -32768, 32767).astype(np.int16)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    series_uid = generate_uid()
    seq = SEQUENCES.get(contrast, SEQUENCES["FLAIR"])
    n = data.shape[2]
    names = np.random.default_rng(series_number).permutation(n) if shuffle_files else np.arange(n)
    written = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = folder / f"IM{int(names[k]) + 1:05d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID = patient_id, patient_id.replace("^", "-")
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19700101", "O", "055Y"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20260101", "120000", "20260101", "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "QRVAE0001", "1", ""
        ds.StudyDescription = "Brain MRI"
        ds.SeriesDescription = f"{contrast} (synthetic)"
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.Manufacturer, ds.ManufacturerModelName = "monai-qrvae", "synthetic"
        ds.MagneticFieldStrength = 3
        ds.BodyPartExamined = "BRAIN"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SequenceVariant, ds.ScanOptions = ["SK"], ""
        ds.MRAcquisitionType = "3D" if np.ptp(zooms) < 1e-3 else "2D"
        ds.ScanningSequence = seq["ScanningSequence"]
        ds.RepetitionTime, ds.EchoTime = _ds(seq["RepetitionTime"]), _ds(seq["EchoTime"])
        if "InversionTime" in seq:
            ds.InversionTime = _ds(seq["InversionTime"])
        ds.PositionReferenceIndicator = ""
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*cosines[:, 0], *cosines[:, 1])]
        ds.PixelSpacing = [_ds(zooms[1]), _ds(zooms[0])]  # row spacing (axis j), column spacing (axis i)
        ds.SliceThickness = _ds(zooms[2])
        ds.SpacingBetweenSlices = _ds(zooms[2])
        ds.SliceLocation = _ds(float(position[:3] @ np.cross(cosines[:, 0], cosines[:, 1])))
        ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", _ds(slope), "US"
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
