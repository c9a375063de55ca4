"""Results as DICOM: the lesion mask as a Segmentation, the z-map as a Parametric Map, both referencing the FLAIR.

Written with highdicom from the source FLAIR series' own headers, so that PACS viewers, OHIF and Slicer's DICOM
module show them over the scan. The maps must be on the FLAIR series' grid as :func:`monai_qrvae.io.dicom.read_series`
reads it (``(columns, rows, slices)``, slices in :func:`~monai_qrvae.io.dicom.scan_series` order): frame ``k`` is
the source instance ``k``. :func:`read_seg` reads a Segmentation back onto that grid (the round trip).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_qrvae.io.dicom import DicomSeries, DicomSeriesError, scan_series, series_uids
from monai_qrvae.utils import atomic_write

__all__ = ["write_seg", "write_parametric_map", "read_seg", "read_parametric_map", "write_dicom_results"]

_SOFTWARE = "monai-qrvae"


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as e:  # pragma: no cover - the dicom extra is part of `make install`
        raise ImportError("DICOM results need highdicom: pip install 'monai-qrvae[dicom]'.") from e
    return highdicom


def _sources(series: DicomSeries) -> list[Any]:
    import pydicom

    return [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]


def _frames(volume: np.ndarray, series: DicomSeries, what: str) -> np.ndarray:
    """``(columns, rows, slices)`` -> highdicom's ``(frames, rows, columns)``, checking the shape against the series."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.shape[2] != len(series.files):
        raise ValueError(f"{what} has shape {volume.shape}; expected the FLAIR grid with {len(series.files)} slices.")
    return np.ascontiguousarray(volume.transpose(2, 1, 0))


def write_seg(mask: np.ndarray, series: DicomSeries, path: str | os.PathLike, label: str = "Lesion") -> Path:
    """Write a binary mask on the series' grid as a DICOM Segmentation (one segment) referencing every slice."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    sources = _sources(series)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="QR-VAE lesion detection", version="0.1.0", family=codes.DCM.ArtificialIntelligence
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=(_frames(mask, series, "lesion mask") > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        **_new_series(hd, 900),
        series_description="QR-VAE lesions",
        omit_empty_frames=False,
    )
    return atomic_write(path, lambda tmp: seg.save_as(tmp))


def _new_series(hd: Any, series_number: int) -> dict[str, Any]:
    """A new derived series' identity (fresh UIDs) and this software as the device that made it."""
    return {
        "series_instance_uid": hd.UID(),
        "series_number": series_number,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": _SOFTWARE,
        "manufacturer_model_name": "QR-VAE",
        "software_versions": "0.1.0",
        "device_serial_number": "none",
    }


def write_parametric_map(zmap: np.ndarray, series: DicomSeries, path: str | os.PathLike) -> Path:
    """Write a z-map on the series' grid as a DICOM Parametric Map (32-bit float frames, unit: z-score)."""
    hd = _highdicom()
    from pydicom.sr.coding import Code

    frames = _frames(zmap, series, "z-map").astype(np.float32)
    lo, hi = float(frames.min()), float(frames.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="zscore",
        lut_explanation="QR-VAE anomaly z-score",
        unit=Code("{z-score}", "UCUM", "z-score"),
        value_range=(lo, hi if hi > lo else lo + 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pmap = hd.pm.ParametricMap(
        source_images=_sources(series),
        pixel_array=frames,
        **_new_series(hd, 901),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=2.0, window_width=8.0)],
        series_description="QR-VAE z-map",
    )
    return atomic_write(path, lambda tmp: pmap.save_as(tmp))


def read_seg(path: str | os.PathLike, series: DicomSeries) -> np.ndarray:
    """Read segment 1 of a DICOM Segmentation back onto the series' grid ``(columns, rows, slices)`` (uint8)."""
    hd = _highdicom()
    seg = hd.seg.segread(str(path))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=series.sop_instance_uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    return np.ascontiguousarray(np.asarray(pixels)[..., 0].transpose(2, 1, 0)).astype(np.uint8)


def read_parametric_map(path: str | os.PathLike, series: DicomSeries) -> np.ndarray:
    """Read a Parametric Map written by :func:`write_parametric_map` back onto the series' grid (float32)."""
    import pydicom

    ds = pydicom.dcmread(path)
    by_uid = {}
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        by_uid[str(uid)] = i
    frames = ds.pixel_array if ds.pixel_array.ndim == 3 else ds.pixel_array[None]
    stack = np.stack([frames[by_uid[uid]] for uid in series.sop_instance_uids])
    return np.ascontiguousarray(stack.transpose(2, 1, 0)).astype(np.float32)


def write_dicom_results(result: dict[str, Any], flair: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """DICOM outputs of a raw-series run (:func:`monai_qrvae.raw.inverse.infer_raw`'s ``result``).

    A FLAIR DICOM folder is referenced as it is; a FLAIR NIfTI file is first written as a DICOM series
    (``out_dir/dicom/FLAIR``) so the results have a series to refer to. Writes ``out_dir/dicom/lesion_seg.dcm``
    and ``zmap_pm.dcm`` and adds ``"dicom"`` (the FLAIR's Study/Series/FrameOfReference UIDs and the written
    objects' UIDs and paths relative to ``out_dir``) to the lesion report JSON (rewritten atomically).

    Returns:
        the ``"dicom"`` entry of the report.
    """
    import pydicom

    out_dir = Path(out_dir)
    out = out_dir / "dicom"
    flair = Path(flair)
    lesion_img = nib.load(result["maps"]["lesion"])
    if not flair.is_dir():
        from monai_qrvae.io.dicom_write import write_series

        source = nib.load(str(flair))
        if not np.allclose(source.affine, lesion_img.affine, atol=1e-4):
            raise ValueError(f"--dicom-out: the maps are not on the grid of {flair}; expected the FLAIR series' grid.")
        write_series(np.asarray(source.dataobj), source.affine, out / "FLAIR", contrast="FLAIR", shuffle_files=False)
        flair = out / "FLAIR"
    series = scan_series(flair, "FLAIR")
    lesion = np.asarray(lesion_img.dataobj)
    zmap = np.asarray(nib.load(result["maps"]["z"]).dataobj, dtype=np.float32)
    from monai_qrvae.io.dicom import read_series

    grid = read_series(flair, "FLAIR")[0]
    flipped = np.asarray(lesion_img.affine, dtype=np.float64).copy()  # a left-handed NIfTI grid: DICOM slices reversed
    flipped[:3, 3] += flipped[:3, 2] * (lesion.shape[2] - 1)
    flipped[:3, 2] *= -1
    if grid.shape == lesion.shape and not np.allclose(grid.affine, lesion_img.affine, atol=1e-3):
        if np.allclose(grid.affine, flipped, atol=1e-3):
            lesion, zmap = lesion[:, :, ::-1], zmap[:, :, ::-1]
    elif grid.shape != lesion.shape:
        raise DicomSeriesError(f"the maps in {out_dir} are not on the grid of the FLAIR series {flair}.")
    if not (np.allclose(grid.affine, lesion_img.affine, atol=1e-3) or np.allclose(grid.affine, flipped, atol=1e-3)):
        raise DicomSeriesError(f"the maps in {out_dir} are not on the grid of the FLAIR series {flair}.")
    seg_path = write_seg(lesion, series, out / "lesion_seg.dcm")
    pm_path = write_parametric_map(zmap, series, out / "zmap_pm.dcm")
    seg_ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    pm_ds = pydicom.dcmread(pm_path, stop_before_pixels=True)
    entry = {
        **series_uids(series),
        "source_folder": os.path.abspath(flair) if flair.parent != out else "dicom/FLAIR",
        "segmentation": {
            "path": str(seg_path.relative_to(out_dir)),
            "SeriesInstanceUID": str(seg_ds.SeriesInstanceUID),
            "SOPInstanceUID": str(seg_ds.SOPInstanceUID),
        },
        "parametric_map": {
            "path": str(pm_path.relative_to(out_dir)),
            "SeriesInstanceUID": str(pm_ds.SeriesInstanceUID),
            "SOPInstanceUID": str(pm_ds.SOPInstanceUID),
        },
    }
    report_path = Path(result["report"])
    report = json.loads(report_path.read_text())
    report["dicom"] = entry
    text = json.dumps(report, indent=2)
    atomic_write(report_path, lambda tmp: Path(tmp).write_text(text))
    result["dicom"] = entry
    return entry
