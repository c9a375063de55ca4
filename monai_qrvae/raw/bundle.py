"""Glue of the bundle's raw-series inference (``bundle/configs/inference_raw.json``, layered on ``inference.json``).

The override keeps the bundle's own network, checkpoint loader, preprocessing, evaluator and savers, and adds the
two raw steps around them::

    raw series --preprocess_items--> analysis-ready image + brain mask (per subject)
               --the bundle's evaluator--> z, p, lesion maps on the analysis grid
               --series_maps_items--> the same maps + lesion report on each subject's FLAIR grid

Inputs: a datalist of raw entries ``{"image": [T1, T2, FLAIR], "raw": true}`` (``qrvae make-data --raw`` writes
``raw/raw_datalist.json``), or one subject's ``t1``/``t2``/``flair`` paths. :func:`check_raw_inputs` runs in the
override's ``initialize`` step: bad input (a missing or unreadable series, a malformed datalist, the raw extra not
installed) is one line on stderr and exit status 2 before anything is written.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from monai_qrvae.data.datalist import missing_section_message, read_datalist_json
from monai_qrvae.raw.errors import RawInputError
from monai_qrvae.raw.inverse import analysis_maps_by_key, raw_entries, write_series_maps
from monai_qrvae.raw.preprocess import IMAGE_FILE, MASK_FILE, SERIES

__all__ = ["raw_items", "check_raw_inputs", "preprocess_items", "analysis_datalist", "series_maps_items"]

logger = logging.getLogger("monai_qrvae")

_PROG = "monai.bundle run"


def raw_items(
    datalist_file: str | os.PathLike | None,
    section: str = "test",
    t1: str | os.PathLike | None = None,
    t2: str | os.PathLike | None = None,
    flair: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """The subjects to analyse: ``[{"name", "series": [T1, T2, FLAIR]}]`` (paths checked to exist).

    Args:
        datalist_file: a JSON datalist whose ``section`` lists raw entries (relative paths: against its folder).
            Ignored when ``t1``/``t2``/``flair`` are given.
        section: the datalist section to read.
        t1: T1 series of one subject. t2: T2 series. flair: FLAIR series (all three, or none).

    Raises:
        ValueError: only some of ``t1``/``t2``/``flair`` given, a malformed datalist, or a section that is missing,
            empty or not made of raw entries.
        FileNotFoundError: the datalist or a series file does not exist.
    """
    given = [t1, t2, flair]
    if any(given):
        if not all(given):
            raise ValueError(f"give all three raw series t1, t2 and flair; got t1={t1}, t2={t2}, flair={flair}.")
        jobs = raw_entries([{"image": [str(p) for p in given], "raw": True}])
    else:
        if not datalist_file:
            raise ValueError("give a raw datalist (raw_data_list_file_path) or the three series t1, t2, flair.")
        path = Path(datalist_file)
        content = read_datalist_json(path)  # missing file, invalid JSON: errors that name the file
        entries = content.get(section)
        if not isinstance(entries, list):
            raise ValueError(missing_section_message(path, content, section, job="raw inference"))
        if not entries:
            raise ValueError(f"raw datalist {path}: section {section!r} is empty; expected raw entries there.")
        jobs = raw_entries(entries, path.parent)
    return [{"name": name, "series": [str(p) for p in paths]} for name, paths in jobs]


def check_raw_inputs(
    datalist_file: str | os.PathLike | None,
    section: str = "test",
    t1: str | os.PathLike | None = None,
    t2: str | os.PathLike | None = None,
    flair: str | os.PathLike | None = None,
    prog: str = _PROG,
) -> None:
    """The override's ``initialize`` check: every series readable as a 3D MR volume and the raw extra installed;
    otherwise one line on stderr and exit status 2, before anything is read by the engine or written."""
    import importlib.util

    from monai_qrvae.raw.series import load_series

    try:
        for item in raw_items(datalist_file, section, t1, t2, flair):
            for name, series in zip(SERIES, item["series"]):
                load_series(series, name)
        missing = [m for m in ("ants", "deepbet") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(
                f"raw series need {missing} (the raw extra): pip install 'monai-qrvae[raw]' (docs/raw.md)."
            )
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def preprocess_items(
    items: list[dict[str, Any]], prep_root: str | os.PathLike, prog: str = _PROG, **kwargs: Any
) -> list[dict[str, Any]]:
    """Run :func:`~monai_qrvae.raw.preprocess.preprocess` on every subject into ``prep_root/<name>/``.

    Returns the items with ``prep_dir``, ``image`` and ``brain_mask`` (the analysis-ready files). A subject whose
    series cannot be aligned (:class:`~monai_qrvae.raw.errors.RegistrationError`) stops the run with one line and
    exit status 2; subjects already preprocessed stay on disk.
    """
    from monai_qrvae.raw.preprocess import preprocess

    prepared = []
    for item in items:
        prep_dir = Path(prep_root) / item["name"]
        try:
            preprocess(*item["series"], prep_dir, **kwargs)
        except (RawInputError, FileNotFoundError, ImportError) as err:
            print(f"{prog}: error: subject {item['name']}: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        logger.info("preprocessed %s -> %s", item["name"], prep_dir)
        prepared.append(
            {
                **item,
                "prep_dir": str(prep_dir),
                "image": str(prep_dir / IMAGE_FILE),
                "brain_mask": str(prep_dir / MASK_FILE),
            }
        )
    return prepared


def analysis_datalist(prepared: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The evaluator's datalist: ``{"image", "brain_mask"}`` of each preprocessed subject."""
    return [{"image": p["image"], "brain_mask": p["brain_mask"]} for p in prepared]


def series_maps_items(
    prepared: list[dict[str, Any]], output_dir: str | os.PathLike, reference: str = "flair"
) -> list[dict[str, Any]]:
    """After the evaluator: each subject's maps (``output_dir/<name>_zmap.nii.gz``, ...) onto its ``reference``
    series' grid, written with the lesion report into ``output_dir/<name>/`` (:func:`write_series_maps`)."""
    index = {"t1": 0, "t2": 1, "flair": 2}[reference.lower()]
    results = []
    for p in prepared:
        written = [Path(output_dir) / f"{p['name']}_{postfix}.nii.gz" for postfix in ("zmap", "pmap", "lesion")]
        maps = analysis_maps_by_key([w for w in written if w.is_file()])
        report = Path(output_dir) / f"{p['name']}_lesions.json"
        result = write_series_maps(
            maps, p["prep_dir"], Path(output_dir) / p["name"], p["series"][index], reference, report
        )
        logger.info(
            "%s: maps and lesion report on the %s grid in %s", p["name"], reference.upper(), result["maps"]["z"]
        )
        results.append(result)
    return results
