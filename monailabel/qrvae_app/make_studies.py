"""Lay out a MONAI Label studies folder (one 4D T1/T2/FLAIR NIfTI per study) from a monai-qrvae datalist.

MONAI Label's local datastore lists the ``*.nii.gz`` files directly inside the studies folder and names each study
after its file. The app needs the three contrasts of a subject in ONE 4D NIfTI ``(X, Y, Z, 3)``, volumes in the
order T1, T2, FLAIR. This script writes ``<out>/<study>.nii.gz`` for every datalist entry:

- an entry whose ``image`` is already a 4D file (what ``qrvae make-data`` writes: ``sub-XXX/image.nii.gz``) is
  linked (or copied with ``--copy``) as ``<out>/sub-XXX.nii.gz``;
- an entry whose ``image`` is a list of three 3D files (T1, T2, FLAIR on one grid, as ``make_datalist`` makes
  for per-contrast folders) is stacked into a new 4D file.

Usage (any environment with nibabel, e.g. the project's ``.venv``)::

    python monailabel/qrvae_app/make_studies.py --datalist data/synth/datalist.json --out studies --section test
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", required=True, help="Decathlon-style datalist JSON (qrvae make-data)")
    parser.add_argument("--out", required=True, help="studies folder to pass to monailabel start_server --studies")
    parser.add_argument("--section", action="append", help="datalist section(s) (default: test)")
    parser.add_argument("--copy", action="store_true", help="copy 4D files instead of linking them")
    args = parser.parse_args(argv)
    paths = make_studies(args.datalist, args.out, tuple(args.section or ["test"]), copy=args.copy)
    print(f"wrote {len(paths)} studies to {args.out}")


if __name__ == "__main__":
    main()
