"""Maps from the analysis grid back onto a raw series' own grid, and detection straight from raw series.

:func:`maps_to_series` needs only ``transforms.json`` written by :func:`monai_qrvae.raw.preprocess.preprocess`
(``numpy``/``scipy``/``nibabel``; ANTs is not needed), so maps can be put back on the scan later. The point map
from a voxel of series ``S`` to the analysis grid is ``inv(A_analysis) @ inv(mni_to_t1) @ inv(t1_to_series[S]) @
A_S`` (RAS world matrices); masks are sampled nearest-neighbour, z- and p-maps trilinearly.

:func:`infer_raw` runs :func:`~monai_qrvae.raw.preprocess.preprocess`, the package's own
:func:`monai_qrvae.workflows.infer` on the analysis-ready image, and writes the z, p and lesion maps and a lesion
report on the FLAIR series' grid (its shape and affine), so they overlay the scan a radiologist reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_qrvae.raw.geometry import resample_to_grid
from monai_qrvae.raw.preprocess import IMAGE_FILE, MASK_FILE, SERIES, TRANSFORMS_FILE

__all__ = [
    "load_transforms",
    "series_to_analysis",
    "maps_to_series",
    "lesion_report",
    "analysis_maps_by_key",
    "write_series_maps",
    "infer_raw",
    "infer_raw_items",
    "raw_entries",
]

_KINDS = ("auto", "mask", "continuous")


def load_transforms(prep_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``transforms.json`` of a preprocessing folder (or the JSON file itself)."""
    path = Path(prep_dir)
    if path.is_dir():
        path = path / TRANSFORMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the folder written by 'qrvae preprocess'.")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    missing = [k for k in ("series", "analysis", "mni_to_t1", "t1_to_series") if k not in info]
    if missing:
        raise ValueError(f"{path} lacks {missing}; expected transforms.json written by 'qrvae preprocess'.")
    return info


def _series_name(reference: str) -> str:
    names = {s.lower(): s for s in SERIES}
    if reference.lower() not in names:
        raise ValueError(f"reference must be one of {list(SERIES)} (any case), got {reference!r}.")
    return names[reference.lower()]


def series_to_analysis(info: dict[str, Any], reference: str = "FLAIR") -> np.ndarray:
    """World point map (RAS, ``4 x 4``) from series ``reference``'s world to the analysis (MNI) world."""
    name = _series_name(reference)
    mni_to_t1 = np.asarray(info["mni_to_t1"], dtype=np.float64)
    t1_to_series = np.asarray(info["t1_to_series"][name], dtype=np.float64)
    return np.linalg.inv(mni_to_t1) @ np.linalg.inv(t1_to_series)


def maps_to_series(
    map_path_or_array: str | os.PathLike | np.ndarray | nib.Nifti1Image,
    prep_dir: str | os.PathLike,
    reference: str = "flair",
    kind: str = "auto",
    cval: float = 0.0,
) -> nib.Nifti1Image:
    """Resample a map from the analysis grid onto a raw series' own grid (shape and affine).

    Args:
        map_path_or_array: a NIfTI path or image on the analysis grid, or an array of the analysis grid's shape
            (3D, or 4D with channels last).
        prep_dir: the folder written by :func:`~monai_qrvae.raw.preprocess.preprocess` (its ``transforms.json``).
        reference: the series whose grid is wanted: ``"flair"`` (default), ``"t1"`` or ``"t2"``.
        kind: ``"mask"`` (nearest neighbour, ``uint8`` output), ``"continuous"`` (trilinear, ``float32``) or
            ``"auto"`` (mask when the values are only 0 and 1).
        cval: value given where the series sees outside the analysis grid (use 1 for p-maps).

    Returns:
        a NIfTI image on the series' grid (its affine is the series file's own).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    info = load_transforms(prep_dir)
    shape = tuple(int(s) for s in info["analysis"]["shape"])
    analysis_affine = np.asarray(info["analysis"]["affine"], dtype=np.float64)
    if isinstance(map_path_or_array, (str, os.PathLike)):
        path = Path(map_path_or_array)
        if not path.is_file():
            raise FileNotFoundError(f"map {path} does not exist.")
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        if not np.allclose(img.affine, analysis_affine, atol=1e-3):
            raise ValueError(
                f"map {path} is not on the analysis grid of {prep_dir}: affine\n{img.affine}\n"
                f"expected\n{analysis_affine}"
            )
    elif isinstance(map_path_or_array, nib.Nifti1Image):
        data = np.asarray(map_path_or_array.dataobj)
    else:
        data = np.asarray(map_path_or_array)
    data = np.squeeze(data) if data.ndim > 3 and data.shape[-1] == 1 else data
    if tuple(data.shape[:3]) != shape or data.ndim not in (3, 4):
        raise ValueError(f"map has shape {data.shape}; expected the analysis grid {shape} (+ channels).")
    if kind == "auto":
        values = np.unique(data) if data.dtype.kind in "biu" or data.size < 5_000_000 else np.array([0.5])
        kind = "mask" if set(values.tolist()) <= {0, 1} else "continuous"
    name = _series_name(reference)
    series = info["series"][name]
    series_shape = tuple(int(s) for s in series["shape"])
    series_affine = np.asarray(series["affine"], dtype=np.float64)
    out = resample_to_grid(
        data.astype(np.float32),
        analysis_affine,
        series_shape,
        series_affine,
        series_to_analysis(info, name),
        order=0 if kind == "mask" else 1,
        cval=cval,
    )
    out = (out > 0.5).astype(np.uint8) if kind == "mask" else out.astype(np.float32)
    img = nib.Nifti1Image(out, series_affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(series_affine, code="scanner")
    img.set_sform(series_affine, code="scanner")
    return img


def lesion_report(lesion: nib.Nifti1Image, zmap: nib.Nifti1Image | None = None) -> dict[str, Any]:
    """Connected lesions (26-connectivity) of a mask on its own grid: :func:`monai_qrvae.report.lesion_report`."""
    from monai_qrvae.report import lesion_report as report

    z = np.asarray(zmap.dataobj, dtype=np.float32) if zmap is not None else None
    return report(np.asarray(lesion.dataobj), np.asarray(lesion.affine), z)


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


_MAP_KINDS = (("z", "continuous", 0.0, "zmap"), ("p", "continuous", 1.0, "pmap"), ("lesion", "mask", 0.0, "lesion"))


def analysis_maps_by_key(written: list[str | os.PathLike] | list[Path]) -> dict[str, Path]:
    """Pick the z, p and lesion maps (``*_zmap/_pmap/_lesion.nii.gz``) among written paths.

    Raises:
        RuntimeError: one of the three is missing.
    """
    by_key: dict[str, Path] = {}
    for path in written:
        for key, _, _, postfix in _MAP_KINDS:
            if Path(path).name.endswith(f"_{postfix}.nii.gz"):
                by_key[key] = Path(path)
    missing = [k for k, *_ in _MAP_KINDS if k not in by_key]
    if missing:
        raise RuntimeError(
            f"inference wrote {[str(p) for p in written]}; expected z, p and lesion maps, {missing} lack."
        )
    return by_key


def write_series_maps(
    analysis_maps: dict[str, Path],
    prep_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    source: str | os.PathLike,
    reference: str = "flair",
    analysis_report: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Put the z, p and lesion maps of the analysis grid back on a raw series' grid, with its lesion report.

    ``analysis_report``: the lesion report written on the analysis grid; its ``site`` check (the scan against the
    healthy calibration) is carried over to the series' report.

    Writes ``<stem>_zmap.nii.gz``, ``<stem>_pmap.nii.gz`` (1 where nothing was tested), ``<stem>_lesion.nii.gz``
    and ``<stem>_lesions.json`` / ``.csv`` (:func:`monai_qrvae.report.write_lesion_report`) into ``out_dir``, where
    ``<stem>`` is the name of the ``source`` series file (the ``reference`` series).

    Returns:
        ``{"maps": {"z", "p", "lesion"}, "report": json path, "report_csv": csv path}``.
    """
    from monai_qrvae.report import write_lesion_report
    from monai_qrvae.utils import atomic_write

    name = _series_name(reference)
    out = Path(out_dir)
    stem = _stem(source)
    maps: dict[str, str] = {}
    images: dict[str, nib.Nifti1Image] = {}
    for key, kind, cval, postfix in _MAP_KINDS:
        img = maps_to_series(analysis_maps[key], prep_dir, reference=name, kind=kind, cval=cval)
        path = out / f"{stem}_{postfix}.nii.gz"
        atomic_write(path, lambda tmp, img=img: img.to_filename(tmp))
        maps[key], images[key] = str(path), img
    report = lesion_report(images["lesion"], images["z"])
    report.update({"series": name, "source": os.path.abspath(source)})
    if analysis_report is not None and Path(analysis_report).is_file():
        site = json.loads(Path(analysis_report).read_text()).get("site")
        if site is not None:
            report["site"] = site
    json_path, csv_path = write_lesion_report(report, out, stem)
    return {"maps": maps, "report": str(json_path), "report_csv": str(csv_path)}


def infer_raw(
    model_dir: str | os.PathLike,
    t1: str | os.PathLike,
    t2: str | os.PathLike,
    flair: str | os.PathLike,
    out_dir: str | os.PathLike,
    reference: str = "flair",
    preprocess_kwargs: dict[str, Any] | None = None,
    **infer_kwargs: Any,
) -> dict[str, Any]:
    """Preprocess three raw series, detect lesions, and write z, p, lesion maps + report on the FLAIR grid.

    Layout: ``out_dir/preprocessed/`` (:func:`~monai_qrvae.raw.preprocess.preprocess`), ``out_dir/analysis/``
    (the maps on the analysis grid, from :func:`monai_qrvae.workflows.infer`) and, on the ``reference`` series'
    grid, ``out_dir/<series file name>_zmap.nii.gz``, ``_pmap.nii.gz``, ``_lesion.nii.gz`` and the lesion report
    ``_lesions.json`` / ``_lesions.csv`` (:func:`write_series_maps`).

    Args:
        model_dir: a model folder (``model_config.json`` + ``model.pt``), as for ``qrvae infer``.
        t1: T1 series. t2: T2 series. flair: FLAIR series.
        out_dir: output folder.
        reference: the series whose grid the maps are written on (default FLAIR).
        preprocess_kwargs: passed to :func:`~monai_qrvae.raw.preprocess.preprocess`.
        infer_kwargs: passed to :func:`monai_qrvae.workflows.infer` (``alpha``, ``per``, ``min_size``, ...).

    Returns:
        ``{"preprocess": ..., "analysis_maps": [...], "maps": {"z", "p", "lesion"}, "report": path,
        "report_csv": path}``.
    """
    from monai_qrvae.raw.preprocess import preprocess
    from monai_qrvae.workflows import infer

    name = _series_name(reference)
    out = Path(out_dir)
    if not (Path(model_dir) / "model_config.json").is_file():  # fail before the long preprocessing
        raise FileNotFoundError(f"model folder {model_dir} has no model_config.json; expected a trained model folder.")
    prep_dir = out / "preprocessed"
    prep = preprocess(t1, t2, flair, prep_dir, **(preprocess_kwargs or {}))
    item = {"image": str(prep_dir / IMAGE_FILE), "brain_mask": str(prep_dir / MASK_FILE)}
    written = infer(model_dir, [item], out / "analysis", **infer_kwargs)
    source = {"T1": t1, "T2": t2, "FLAIR": flair}[name]
    analysis_report = next((p for p in written if p.name.endswith("_lesions.json")), None)
    result = write_series_maps(analysis_maps_by_key(written), prep_dir, out, source, name, analysis_report)
    return {
        "preprocess": {k: v for k, v in prep.items() if k in ("timing", "similarity", "files")},
        "analysis_maps": [str(p) for p in written],
        **result,
    }


def infer_raw_items(
    model_dir: str | os.PathLike,
    items: list[dict[str, Any]],
    out_dir: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`infer_raw` for datalist entries ``{"image": [T1, T2, FLAIR], "raw": true}`` (e.g. ``raw_datalist.json``).

    Every entry is checked (three existing files) before the first one is processed; each subject's results go to
    ``out_dir/<folder of its T1 file>/``. Relative paths are resolved against ``base_dir`` (the datalist's folder).

    Raises:
        ValueError: an entry is not a raw entry of three files.
        MissingSeriesError: a series file does not exist.
    """
    jobs = raw_entries(items, base_dir)
    return [infer_raw(model_dir, *paths, Path(out_dir) / name, **kwargs) for name, paths in jobs]


def raw_entries(items: list[dict[str, Any]], base_dir: str | os.PathLike | None = None) -> list[tuple[str, list[Path]]]:
    """Check raw datalist entries ``{"image": [T1, T2, FLAIR], "raw": true}``: ``(subject name, [T1, T2, FLAIR])``.

    The name is the folder of the T1 file (made unique with the entry's index when two share one).

    Raises:
        ValueError: an entry is not a raw entry of three files.
        MissingSeriesError: a series file does not exist.
    """
    from monai_qrvae.raw.errors import MissingSeriesError

    base = Path(base_dir) if base_dir is not None else Path(".")
    jobs = []
    for i, item in enumerate(items):
        image = item.get("image") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not item.get("raw") or not isinstance(image, (list, tuple)) or len(image) != 3:
            raise ValueError(
                f"entry {i} is {item!r}; expected {{'image': [T1, T2, FLAIR], 'raw': true}} (three raw series)."
            )
        paths = [Path(p) if Path(p).is_absolute() else base / p for p in image]
        for series, path in zip(SERIES, paths):
            if not (path.is_file() or path.is_dir()):  # a file, or a DICOM series folder
                raise MissingSeriesError(f"entry {i}: {series} series {path} does not exist.")
        jobs.append(paths)
    names = [paths[0].parent.name or f"subject-{i}" for i, paths in enumerate(jobs)]
    if len(set(names)) != len(names):
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    return list(zip(names, jobs))
