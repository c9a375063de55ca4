"""Lay out a MONAI Label studies folder (one 4D T1/T2/FLAIR NIfTI per study) from a monai-qrvae datalist.

MONAI Label's local datastore lists the ``*.nii.gz`` files directly inside the studies folder and names each study
after its file. The app needs the three contrasts of a subject in ONE 4D NIfTI ``(X, Y, Z, 3)``, volumes in the
order T1, T2, FLAIR. This script writes ``<out>/<study>.nii.gz`` for every datalist entry:

- an entry whose ``image`` is already a 4D file (what ``qrvae make-data`` writes: ``sub-XXX/image.nii.gz``) is
  linked (or copied with ``--copy``) as ``<out>/sub-XXX.nii.gz``;
- an entry whose ``image`` is a list of three 3D files (T1, T2, FLAIR on one grid, as ``make_datalist`` makes
  for per-contrast folders) is stacked into a new 4D file.

Raw studies (for the ``qrvae_raw_lesion`` model): ``--raw-datalist`` takes a datalist of raw entries
``{"image": [T1, T2, FLAIR], "raw": true}`` (``qrvae make-data --raw`` writes ``raw/raw_datalist.json``) and writes
each subject's FLAIR series as the study ``<out>/<subject>-raw.nii.gz`` and its T1 and T2 series as
``<out>/series/<subject>-raw/T1.nii.gz`` and ``T2.nii.gz`` (a sub-folder: not listed as studies).

Usage (any environment with nibabel, e.g. the project's ``.venv``)::

    python monailabel/qrvae_app/make_studies.py --datalist data/synth/datalist.json --out studies --section test
    python monailabel/qrvae_app/make_studies.py --raw-datalist data/synth/raw/raw_datalist.json --out studies
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

CONTRASTS = ("T1", "T2", "FLAIR")


def study_name(image: str | list[str]) -> str:
    """``sub-001/image.nii.gz`` -> ``sub-001``; ``x/sub-001_T1w.nii.gz`` -> ``sub-001_T1w`` (first file of a list)."""
    path = Path(image[0] if isinstance(image, (list, tuple)) else image)
    stem = path.name
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    if stem in ("image", "t1", "T1") and path.parent.name:
        return path.parent.name
    return stem


def stack_contrasts(files: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Stack three 3D NIfTI files (T1, T2, FLAIR, same grid) into one 4D NIfTI ``(X, Y, Z, 3)``."""
    if len(files) != len(CONTRASTS):
        raise ValueError(f"expected {len(CONTRASTS)} files ({', '.join(CONTRASTS)}), got {len(files)}: {files}")
    images = [nib.load(str(f)) for f in files]
    ref = images[0]
    for f, img in zip(files, images):
        if img.ndim != 3 or img.shape != ref.shape or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise ValueError(
                f"{f}: shape {img.shape}, affine differs or not 3D; all contrasts must be 3D on the grid of {files[0]} "
                f"{ref.shape} (register and resample them first)."
            )
    data = np.stack([np.asarray(img.dataobj, dtype=np.float32) for img in images], axis=-1)
    out = Path(out)
    nib.save(nib.Nifti1Image(data, ref.affine, ref.header), str(out))
    return out


def make_studies(
    datalist: str | os.PathLike, out: str | os.PathLike, sections: tuple[str, ...] = ("test",), copy: bool = False
) -> list[Path]:
    """Write one ``<out>/<study>.nii.gz`` per entry of the datalist's ``sections``; return the written paths."""
    datalist = Path(datalist)
    root = datalist.parent
    entries = json.loads(datalist.read_text())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for section in sections:
        if section not in entries:
            raise ValueError(f"datalist {datalist} has no section {section!r}; it has {sorted(entries)}.")
        for entry in entries[section]:
            image = entry["image"]
            target = out / f"{study_name(image)}.nii.gz"
            if isinstance(image, (list, tuple)):
                written.append(stack_contrasts([root / p for p in image], target))
                continue
            source = (root / image).resolve()
            if target.is_symlink() or target.exists():
                target.unlink()
            if copy:
                shutil.copyfile(source, target)
            else:
                target.symlink_to(source)
            written.append(target)
    return written


def make_raw_studies(
    raw_datalist: str | os.PathLike,
    out: str | os.PathLike,
    sections: tuple[str, ...] = ("test",),
    suffix: str = "-raw",
) -> list[Path]:
    """Lay out raw entries as raw studies: ``<out>/<study>.nii.gz`` (the FLAIR series) and
    ``<out>/series/<study>/T1.nii.gz``, ``T2.nii.gz`` (copies); return the study files. ``<study>`` is the folder
    name of the entry's T1 file plus ``suffix`` (``sub-004-raw``: apart from the subject's 4D study)."""
    raw_datalist = Path(raw_datalist)
    entries = json.loads(raw_datalist.read_text())
    out = Path(out)
    written = []
    for section in sections:
        if section not in entries:
            raise ValueError(f"raw datalist {raw_datalist} has no section {section!r}; it has {sorted(entries)}.")
        for entry in entries[section]:
            files = entry.get("image")
            if not entry.get("raw") or not isinstance(files, list) or len(files) != len(CONTRASTS):
                raise ValueError(f"{raw_datalist}: expected raw entries {{'image': [T1, T2, FLAIR], 'raw': true}}.")
            t1, t2, flair = (raw_datalist.parent / f for f in files)
            study = t1.parent.name + suffix
            series = out / "series" / study
            series.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(t1, series / "T1.nii.gz")
            shutil.copyfile(t2, series / "T2.nii.gz")
            shutil.copyfile(flair, out / f"{study}.nii.gz")
            written.append(out / f"{study}.nii.gz")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", help="Decathlon-style datalist JSON (qrvae make-data)")
    parser.add_argument("--raw-datalist", help="raw datalist JSON (qrvae make-data --raw): raw studies")
    parser.add_argument("--out", required=True, help="studies folder to pass to monailabel start_server --studies")
    parser.add_argument("--section", action="append", help="datalist section(s) (default: test)")
    parser.add_argument("--copy", action="store_true", help="copy 4D files instead of linking them")
    args = parser.parse_args(argv)
    if not args.datalist and not args.raw_datalist:
        parser.error("give --datalist and/or --raw-datalist")
    sections = tuple(args.section or ["test"])
    paths = make_studies(args.datalist, args.out, sections, copy=args.copy) if args.datalist else []
    if args.raw_datalist:
        paths += make_raw_studies(args.raw_datalist, args.out, sections)
    print(f"wrote {len(paths)} studies to {args.out}")


if __name__ == "__main__":
    main()
