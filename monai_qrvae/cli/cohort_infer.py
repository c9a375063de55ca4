"""``qrvae infer --datalist`` as a cohort run (:mod:`monai_qrvae.io.cohort`): raw-series or analysis-ready entries."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from monai_qrvae.cli.utils import POST_ARGS, arg_values
from monai_qrvae.io.cohort import run_cohort

__all__ = ["infer_datalist"]


def _image_subjects(model_dir: str, entries: list[dict[str, Any]]) -> list[tuple[str, list[str], dict[str, Any]]]:
    """``(name, input files, item)`` per analysis-ready entry, every entry's header checked before anything runs."""
    from monai.utils import ImageMetaKey

    from monai_qrvae.data.io import check_item
    from monai_qrvae.handlers.savers import output_stem
    from monai_qrvae.workflows.models import CONFIG_FILE, ModelConfig

    config = ModelConfig.load(Path(model_dir) / CONFIG_FILE)
    subjects = []
    for i, entry in enumerate(entries):
        item = {k: entry[k] for k in ("image", "brain_mask") if k in entry}  # not label, bids, stratum...
        check_item(item, num_channels=config.in_channels)
        image = item["image"]
        files = [os.fspath(p) for p in (image if isinstance(image, (list, tuple)) else [image])]
        files += [os.fspath(item["brain_mask"])] if item.get("brain_mask") else []
        subjects.append((output_stem({ImageMetaKey.FILENAME_OR_OBJ: files[0]}, f"subject-{i}"), files, item))
    names = [s[0] for s in subjects]
    if len(set(names)) != len(names):
        subjects = [(f"{n}-{i}", f, it) for i, (n, f, it) in enumerate(subjects)]
    return subjects


def _write_bids_derivatives(entries: list[dict[str, Any]], names: list[str], out: Path, base: Path) -> list[str]:
    """Copy the maps of every complete subject of a BIDS datalist into ``<BIDS root>/derivatives/qrvae``."""
    import json

    from monai_qrvae.io.bids import write_derivative
    from monai_qrvae.io.cohort import MANIFEST_DIR

    written: list[str] = []
    for entry, name in zip(entries, names):
        info, manifest = entry.get("bids"), out / MANIFEST_DIR / f"{name}.json"
        if not info or not manifest.is_file():
            continue
        outputs = json.loads(manifest.read_text())["outputs"]
        maps = {}
        for rel in outputs:
            for key, postfix in (("lesion", "_lesion.nii.gz"), ("z", "_zmap.nii.gz"), ("p", "_pmap.nii.gz")):
                if rel.endswith(postfix):
                    maps[key] = out / rel
            if rel.endswith("_lesions.json"):
                maps["report"] = out / rel
        root = Path(info["root"]) if Path(info["root"]).is_absolute() else base / info["root"]
        written += [str(p) for p in write_derivative(root, info["subject"], info.get("session"), maps).values()]
    return written


def infer_datalist(args: argparse.Namespace, entries: list[dict[str, Any]], raw: bool) -> int:
    """Analyse a datalist section as a resumable cohort run; print the written paths and ``cohort.csv``.

    ``entries``: raw entries as in the JSON (``raw: true``; relative to the datalist's folder) or analysis-ready
    entries with resolved paths (``load_decathlon_datalist``).
    """
    post_kwargs = {**arg_values(args, *POST_ARGS, "device"), "save_png": not args.no_png}
    settings = {k: v for k, v in post_kwargs.items() if k != "device"}
    dicom_out = bool(getattr(args, "dicom_out", False))
    if raw:
        from monai_qrvae.raw.inverse import infer_raw, raw_entries

        prep = {"alignment_check": not args.no_alignment_check}
        jobs = [(name, [str(p) for p in paths]) for name, paths in raw_entries(entries, Path(args.datalist).parent)]
        settings.update(prep, dicom_out=dicom_out)

        def analyse(name: str, inputs: list[str], stage: Path) -> Path:
            result = infer_raw(args.model, *inputs, stage, preprocess_kwargs=prep, **post_kwargs)
            if dicom_out or Path(inputs[2]).is_dir():
                from monai_qrvae.io.dicom_out import write_dicom_results

                write_dicom_results(result, inputs[2], stage)
            return Path(result["report"])

        summary = run_cohort(jobs, analyse, args.out, args.model, settings, as_folders=True)
    else:
        if dicom_out:
            raise ValueError("--dicom-out needs raw series (--t1 --t2 --flair or a raw datalist); got 4D images.")
        from monai_qrvae.workflows import infer

        subjects = _image_subjects(args.model, entries)
        items = {name: item for name, _, item in subjects}

        def analyse(name: str, inputs: list[str], stage: Path) -> Path:
            written = infer(args.model, [items[name]], stage, **post_kwargs)
            return next(p for p in written if p.name.endswith("_lesions.json"))

        jobs = [(name, files) for name, files, _ in subjects]
        summary = run_cohort(jobs, analyse, args.out, args.model, settings)
    if summary["rank"] == 0 and any(isinstance(e, dict) and e.get("bids") for e in entries):
        names = [name for name, _ in jobs]
        summary["written"] += _write_bids_derivatives(entries, names, Path(args.out), Path(args.datalist).parent)
    for path in summary["written"]:
        print(path)
    if summary["cohort_csv"]:
        print(summary["cohort_csv"])
    return 0
