"""BIDS datasets in and out: ``qrvae make-datalist --bids ROOT`` and maps written as a BIDS derivative.

In: pybids (``BIDSLayout``, no validation) finds each subject's (and session's) ``anat`` T1w, T2w and FLAIR
images (``.nii``/``.nii.gz``); healthy vs lesion comes from ``participants.tsv`` (column ``--group-column``,
default ``group``; values such as ``control``/``healthy``/``HC`` are healthy, any other value is a lesion subject)
and/or a ``--label-pattern`` (a lesion label file under the root, e.g.
``derivatives/lesions/sub-{subject}/anat/sub-{subject}_desc-lesion_mask.nii.gz``; ``{session}`` is replaced by the
session label): a subject with a label file is a lesion subject. The entries then go through
:func:`monai_qrvae.data.datalist.make_datalist` (the same five splits and fixed-seed shuffle as the pattern form).
When the three series of every subject share one grid they are analysis-ready entries (``image``: [T1, T2, FLAIR]);
otherwise every entry is a raw-series entry (``raw: true``) for ``qrvae infer --datalist``.

Out: :func:`write_derivative` puts a subject's maps under
``<root>/derivatives/qrvae/sub-<s>/[ses-<t>/]anat/sub-<s>[_ses-<t>]_desc-lesion_mask.nii.gz`` (and ``desc-z_statmap``,
``desc-p_statmap``, ``desc-lesion_report.json``) with the derivative's ``dataset_description.json``.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Any

from monai_qrvae.utils import atomic_write

__all__ = ["HEALTHY_GROUPS", "bids_subjects", "make_bids_datalist", "derivative_paths", "write_derivative"]

#: participants.tsv group values read as healthy (case-insensitive).
HEALTHY_GROUPS = ("healthy", "control", "controls", "hc", "hv", "normal", "ctrl")
_SUFFIXES = ("T1w", "T2w", "FLAIR")


def _layout(root: Path) -> Any:
    try:
        from bids import BIDSLayout
    except ImportError as e:  # pragma: no cover - the bids extra is part of `make install`
        raise ImportError("--bids needs pybids: pip install 'monai-qrvae[bids]'.") from e
    return BIDSLayout(str(root), validate=False)


def _groups(root: Path, column: str) -> dict[str, bool]:
    """``{subject label: is_lesion}`` from ``participants.tsv`` (empty when the file or column is absent)."""
    path = root / "participants.tsv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or column not in rows[0]:
        return {}
    groups = {}
    for row in rows:
        subject = str(row.get("participant_id", "")).removeprefix("sub-")
        value = str(row.get(column, "")).strip()
        if subject and value and value.lower() not in ("n/a", ""):
            groups[subject] = value.lower() not in HEALTHY_GROUPS
    return groups


def bids_subjects(
    root: str | os.PathLike,
    label_pattern: str | None = None,
    group_column: str = "group",
    skip_incomplete: bool = False,
) -> list[dict[str, Any]]:
    """One entry per subject and session: ``{"subject", "image": [T1w, T2w, FLAIR], "bids": {...}, "label"?}``.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no subject with all three series (unless skipped).
        ValueError: several files of one kind for a subject and session (e.g. two runs), naming them.
    """
    root = Path(root).resolve()
    if not (root / "dataset_description.json").is_file() and not root.is_dir():
        raise FileNotFoundError(f"BIDS root {root} does not exist; expected a BIDS dataset folder.")
    layout = _layout(root)
    found: dict[tuple[str, str | None], dict[str, list[str]]] = {}
    for f in layout.get(datatype="anat", suffix=list(_SUFFIXES), extension=[".nii.gz", ".nii"]):
        ents = f.get_entities()
        key = (str(ents["subject"]), str(ents["session"]) if ents.get("session") else None)
        found.setdefault(key, {}).setdefault(ents["suffix"], []).append(f.path)
    if not found:
        raise FileNotFoundError(f"no sub-*/anat/*_T1w|_T2w|_FLAIR.nii[.gz] under the BIDS root {root}.")
    groups = _groups(root, group_column)
    subjects = []
    for (sub, ses), files in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
        missing = [s for s in _SUFFIXES if s not in files]
        if missing:
            if skip_incomplete:
                continue
            raise FileNotFoundError(
                f"{name} under {root} has no {', '.join(missing)} image (pass --skip-incomplete to leave it out)."
            )
        several = {s: sorted(v) for s, v in files.items() if len(v) > 1}
        if several:
            s, paths = next(iter(several.items()))
            raise ValueError(f"{name} has {len(paths)} {s} images {[Path(p).name for p in paths]}; expected one.")
        entry: dict[str, Any] = {
            "subject": name,
            "image": [files[s][0] for s in _SUFFIXES],
            "bids": {"subject": sub, "session": ses},
        }
        if label_pattern:
            hits = sorted(glob.glob(str(root / label_pattern.format(subject=sub, session=ses or ""))))
            if len(hits) > 1:
                raise ValueError(f"{name}: --label-pattern {label_pattern!r} matches {len(hits)} files; expected one.")
            if hits:
                entry["label"] = hits[0]
        if "label" not in entry and groups.get(sub):
            entry["stratum"] = "lesion"
        subjects.append(entry)
    if not subjects:
        raise FileNotFoundError(f"no subject under the BIDS root {root} has T1w, T2w and FLAIR images.")
    return subjects


def _same_grid(paths: list[str]) -> bool:
    import nibabel as nib
    import numpy as np

    headers = [nib.load(p) for p in paths]
    return all(
        h.shape[:3] == headers[0].shape[:3] and np.allclose(h.affine, headers[0].affine, atol=1e-4) for h in headers
    )


def make_bids_datalist(
    root: str | os.PathLike,
    out: str | os.PathLike | None,
    label_pattern: str | None = None,
    group_column: str = "group",
    skip_incomplete: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """The datalist of a BIDS dataset (:func:`bids_subjects` + :func:`~monai_qrvae.data.datalist.make_datalist`).

    Entries keep ``bids`` (subject, session and the root relative to the datalist) for :func:`write_derivative`.
    ``kwargs`` go to ``make_datalist`` (``section``, ``seed``, ``val_fraction``, ``check``...).
    """
    from monai_qrvae.data.datalist import make_datalist

    subjects = bids_subjects(root, label_pattern, group_column, skip_incomplete)
    raw = not all(_same_grid(s["image"]) for s in subjects)
    base = Path(out).resolve().parent if out is not None else None
    bids_root = os.path.relpath(Path(root).resolve(), base) if base is not None else str(Path(root).resolve())
    for s in subjects:
        s["bids"]["root"] = bids_root
        if raw:
            s["raw"] = True
    if raw:
        kwargs["check"] = False  # raw series are on their own grids: checked when read (qrvae infer)
    return make_datalist(root, [], out, subjects=subjects, empty_labels=not raw, **kwargs)


def derivative_paths(root: str | os.PathLike, subject: str, session: str | None = None) -> dict[str, Path]:
    """Where a subject's maps go in ``<root>/derivatives/qrvae`` (BIDS derivative names)."""
    folder = Path(root) / "derivatives" / "qrvae" / f"sub-{subject}"
    if session:
        folder = folder / f"ses-{session}"
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    folder = folder / "anat"
    return {
        "lesion": folder / f"{stem}_desc-lesion_mask.nii.gz",
        "z": folder / f"{stem}_desc-z_statmap.nii.gz",
        "p": folder / f"{stem}_desc-p_statmap.nii.gz",
        "report": folder / f"{stem}_desc-lesion_report.json",
    }


def write_derivative(
    root: str | os.PathLike, subject: str, session: str | None, maps: dict[str, str | os.PathLike]
) -> dict[str, Path]:
    """Copy a subject's maps (``lesion``, ``z``, ``p``, ``report``) into the BIDS derivative, atomically; write the
    derivative's ``dataset_description.json`` when absent."""
    from monai_qrvae.version import __version__

    deriv = Path(root) / "derivatives" / "qrvae"
    description = deriv / "dataset_description.json"
    if not description.is_file():
        text = json.dumps(
            {
                "Name": "QR-VAE lesion maps",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "monai-qrvae", "Version": __version__}],
                "SourceDatasets": [{"URL": "../../"}],
            },
            indent=2,
        )
        atomic_write(description, lambda tmp: Path(tmp).write_text(text))
    targets = derivative_paths(root, subject, session)
    written = {}
    for key, src in maps.items():
        if key in targets and src is not None:
            written[key] = atomic_write(targets[key], lambda tmp, src=src: shutil.copyfile(src, tmp))
    return written
