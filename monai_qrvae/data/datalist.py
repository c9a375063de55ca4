"""Decathlon-style datalists for a user's own scans: build them from a folder, load them, check them.

The format is the one :func:`make_cohort` writes and :func:`monai.data.load_decathlon_datalist` reads::

    {"training": [{"image": ["s1/t1.nii.gz", "s1/t2.nii.gz", "s1/flair.nii.gz"], "brain_mask": "s1/mask.nii.gz"}],
     "validation": [...], "test": [{"image": "s9/image.nii.gz", "brain_mask": ..., "label": "s9/seg.nii.gz"}]}

``image`` is either one 4D file whose last axis holds the contrasts (T1, T2, FLAIR) or a list of one 3D file per
contrast, in that order; :class:`monai.transforms.LoadImaged` stacks such a list as channels, and
:class:`monai.transforms.EnsureChannelFirstd` gives ``(C, X, Y, Z)`` either way. ``brain_mask`` and ``label`` are
optional single-channel volumes on the same grid. Paths are relative to the JSON file's folder.

This module writes (:func:`make_datalist`), reads (:func:`load_datalist`, :func:`read_datalist_json`) and checks
(:func:`check_datalist`, :func:`require_sections`) datalists; image IO lives in :mod:`monai_qrvae.data.io` and
subject discovery in :mod:`monai_qrvae.data.discovery` (both re-exported here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .discovery import allocate_splits, find_subjects
from .io import (
    _CONTRASTS,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    SUPPORTED_SUFFIXES,
    ImageInfo,
    ImageTooLargeError,
    PathLike,
    _write_empty_label,
    available_memory_bytes,
    check_item,
    read_image,
    read_image_info,
    read_json,
)

__all__ = [  # sorted; the names defined in submodules are re-exported
    "DATALIST_SECTIONS",
    "ITK_SUFFIXES",
    "ImageInfo",
    "ImageTooLargeError",
    "JOB_SECTIONS",
    "NIFTI_SUFFIXES",
    "SECTION_PURPOSES",
    "SUPPORTED_SUFFIXES",
    "allocate_splits",
    "available_memory_bytes",
    "check_datalist",
    "check_item",
    "find_subjects",
    "load_datalist",
    "make_datalist",
    "missing_section_message",
    "read_datalist_json",
    "read_image",
    "read_image_info",
    "require_sections",
    "section_counts",
]


DATALIST_SECTIONS: tuple[str, ...] = ("training", "validation", "calibration", "tuning", "test")
#: What each section holds and what it is for (used in messages).
SECTION_PURPOSES: dict[str, str] = {
    "training": "healthy subjects that fit the weights",
    "validation": "healthy subjects for early stopping and checkpoint choice",
    "calibration": "healthy subjects for label-free thresholds only (never trained on, never used to choose a model)",
    "tuning": "lesion subjects with labels, the only split where hyper-parameters and post-processing are chosen",
    "test": "lesion and healthy subjects, every entry with a label (all-zero for healthy ones), reported only",
}
#: Sections each job needs.
JOB_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("training", "validation"),
    "calibrate": ("calibration",),
    "tune": ("tuning",),
    "evaluate": ("test",),
}


def check_datalist(
    items: Sequence[dict[str, Any]], num_channels: int | None = 3, read_data: bool = False, atol: float = 1e-3
) -> list[dict[str, Any]]:
    """Check every entry of a loaded datalist section with :func:`check_item`; return the entries unchanged.

    Errors name the file and are prefixed with the entry's position (``entry 3 of 40``).
    """
    items = list(items)
    for i, item in enumerate(items):
        try:
            check_item(item, num_channels=num_channels, read_data=read_data, atol=atol)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"entry {i} of {len(items)}: {err}") from err
        except ValueError as err:
            raise ValueError(f"entry {i} of {len(items)}: {err}") from err
    return items


def load_datalist(
    path: PathLike,
    section: str = "training",
    check: bool = True,
    num_channels: int | None = 3,
    read_data: bool = False,
    base_dir: PathLike | None = None,
) -> list[dict[str, Any]]:
    """Load one section of a Decathlon-style datalist with resolved paths, and check it.

    Args:
        path: the JSON file.
        section: one of :data:`DATALIST_SECTIONS` (``"training"``, ``"validation"``, ``"calibration"``,
            ``"tuning"``, ``"test"``) or any other list in the file.
        check: run :func:`check_datalist` on the entries.
        num_channels: channels every image must have (``None``: any).
        read_data: read every voxel while checking.
        base_dir: folder the paths are relative to (default: the JSON's folder).

    Raises:
        FileNotFoundError: the JSON or a listed file does not exist.
        ValueError: the JSON is invalid, has no such section, or an entry fails its checks.
    """
    from monai.data import load_decathlon_datalist

    path = Path(path)
    content = read_datalist_json(path)
    if not isinstance(content, dict) or not isinstance(content.get(section), list):
        raise ValueError(missing_section_message(path, content, section))
    if not content[section]:
        return []
    items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=section, base_dir=base_dir)
    if check:
        try:
            check_datalist(items, num_channels=num_channels, read_data=read_data)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"datalist {path}, section {section!r}, {err}") from err
        except ValueError as err:
            raise ValueError(f"datalist {path}, section {section!r}, {err}") from err
    return items


def read_datalist_json(path: PathLike) -> dict[str, Any]:
    """The parsed JSON object of a datalist file, with errors that name the file and what was expected.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON, or its top level is not an object of sections.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist file not found: {path}")
    content = read_json(
        path, "datalist", 'a Decathlon-style JSON object such as {"test": [{"image": "sub-001/image.nii.gz"}]}'
    )
    if not isinstance(content, dict):
        raise ValueError(
            f"datalist {path}: got a JSON {type(content).__name__} at the top level; expected an object of sections "
            f"such as {list(DATALIST_SECTIONS)}, each a list of entries."
        )
    return content


def _lists(content: Any) -> list[str]:
    return [k for k, v in content.items() if isinstance(v, list)] if isinstance(content, dict) else []


def missing_section_message(path: PathLike, content: Any, section: str, job: str | None = None) -> str:
    """The message for a datalist without ``section``: what the section is for and how to make one."""
    purpose = SECTION_PURPOSES.get(section, "a list of entries")
    needed = f" (needed by {job!r})" if job else ""
    return (
        f"datalist {path} has no {section!r} section{needed}: no list {section!r} of {purpose}; lists found: "
        f"{_lists(content)}; expected the sections {list(DATALIST_SECTIONS)}. Write them with `qrvae make-data` "
        "(synthetic) or `qrvae make-datalist --section auto` (healthy scans -> training/validation/calibration/"
        "test, labelled scans -> tuning/test, fixed seed), or add the list by hand."
    )


def section_counts(path: PathLike) -> dict[str, int]:
    """Entries per list of a datalist file (every top-level list, known sections first)."""
    path = Path(path)
    content = read_datalist_json(path)
    found = _lists(content)
    order = [k for k in DATALIST_SECTIONS if k in found] + [k for k in found if k not in DATALIST_SECTIONS]
    return {k: len(content[k]) for k in order}


def require_sections(path: PathLike, sections: Sequence[str] | None = None, job: str | None = None) -> dict[str, int]:
    """Check that a datalist has the (non-empty) sections a job needs; return :func:`section_counts`.

    Args:
        path: the JSON file.
        sections: sections required; default: those of ``job`` (:data:`JOB_SECTIONS`).
        job: ``"train"``, ``"calibrate"``, ``"tune"`` or ``"evaluate"`` (named in the message).

    Raises:
        ValueError: a required section is absent or empty; the message names it, its purpose and the remedy.
    """
    if sections is None:
        if job not in JOB_SECTIONS:
            raise ValueError(f"job must be one of {list(JOB_SECTIONS)} when sections is None, got {job!r}.")
        sections = JOB_SECTIONS[job]
    counts = section_counts(path)
    content = {k: [None] * n for k, n in counts.items()}
    for section in sections:
        if section not in counts:
            raise ValueError(missing_section_message(path, content, section, job))
        if counts[section] == 0:
            raise ValueError(
                f"datalist {path} has an empty {section!r} section{f' (needed by {job!r})' if job else ''}; "
                f"expected {SECTION_PURPOSES.get(section, 'entries')}."
            )


def _relative(path: str | list[str], base: Path) -> str | list[str]:
    if isinstance(path, list):
        return [Path(os.path.relpath(p, base)).as_posix() for p in path]
    return Path(os.path.relpath(path, base)).as_posix()


def make_datalist(
    root: PathLike,
    image: str | Sequence[str],
    out: PathLike | None = None,
    brain_mask: str | None = None,
    label: str | None = None,
    section: str = "auto",
    val_fraction: float = 0.1,
    seed: int = 0,
    num_channels: int | None = 3,
    check: bool = True,
    skip_incomplete: bool = False,
    update: bool = False,
    calibration_fraction: float = 0.33,
    test_healthy_fraction: float = 0.09,
    empty_labels: bool = True,
    subjects: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build a Decathlon-style datalist from a folder of scans, by file-name patterns (see :func:`find_subjects`).

    Args:
        root: the folder holding the scans.
        image: one pattern (a 4D file per subject) or one pattern per contrast, in the order T1, T2, FLAIR.
        out: the JSON file to write (paths inside are relative to its folder); ``None`` writes nothing and
            returns absolute paths.
        brain_mask: pattern of brain masks (``"brain_mask"`` key).
        label: pattern of lesion labels (``"label"`` key).
        section: ``"auto"``: the five sections by :func:`allocate_splits` with a fixed-seed shuffle: subjects
            without a label are healthy (``training``, ``validation``, ``calibration`` and a few in ``test``),
            labelled subjects go to ``test`` (first half, rounded up) and ``tuning``; ``"training"``: only
            ``training`` and ``validation`` (split by ``val_fraction``); any other of :data:`DATALIST_SECTIONS`:
            every subject in that section.
        val_fraction: share of the unlabelled subjects put in ``validation``.
        seed: seed of the shuffles (healthy and labelled subjects are shuffled separately).
        num_channels: channels each image must have when ``check`` (``None``: any).
        check: read every file's header and check channels, shapes and affines (:func:`check_item`).
        skip_incomplete: leave out subjects with a missing file instead of raising.
        update: merge into an existing ``out`` (sections written here replace those of the same name).
        calibration_fraction: share of the unlabelled subjects put in ``calibration`` (``"auto"``).
        test_healthy_fraction: share of the unlabelled subjects put in ``test`` (``"auto"``).
        empty_labels: in ``"auto"`` with ``out`` given, write an all-zero label (uint8 NIfTI on the subject's
            grid) for each healthy ``test`` subject under ``<out folder>/empty_labels/``, so every ``test`` entry
            has a ``label``; otherwise healthy ``test`` entries have no ``label`` key.
        subjects: subjects found otherwise (e.g. :func:`monai_qrvae.io.bids.bids_subjects`) instead of by patterns;
            one with ``"stratum": "lesion"`` counts as labelled in ``"auto"``.

    Returns:
        the datalist dictionary (as written).

    Raises:
        FileNotFoundError, ValueError: see :func:`find_subjects` and :func:`check_item`; the message names the
            subject and the file.
    """
    if section not in ("auto",) + DATALIST_SECTIONS:
        raise ValueError(f"section must be 'auto' or one of {DATALIST_SECTIONS}, got {section!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if subjects is None:
        subjects = find_subjects(root, image, brain_mask=brain_mask, label=label, skip_incomplete=skip_incomplete)
    if check:
        for entry in subjects:
            try:
                check_item(entry, num_channels=num_channels)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"subject {entry['subject']!r}: {err}") from err
            except ValueError as err:
                raise ValueError(f"subject {entry['subject']!r}: {err}") from err

    sections: dict[str, list[dict[str, Any]]] = {}
    if section == "training":
        order = np.random.default_rng(seed).permutation(len(subjects))
        n_val = int(round(len(subjects) * val_fraction))
        if val_fraction > 0 and len(subjects) >= 2:
            n_val = min(max(n_val, 1), len(subjects) - 1)
        val_idx = set(order[len(subjects) - n_val :].tolist())
        sections["training"] = [s for i, s in enumerate(subjects) if i not in val_idx]
        sections["validation"] = [s for i, s in enumerate(subjects) if i in val_idx]
    elif section != "auto":
        sections[section] = subjects
    else:
        labelled = [s for s in subjects if "label" in s or s.get("stratum") == "lesion"]
        healthy = [s for s in subjects if not ("label" in s or s.get("stratum") == "lesion")]
        sizes = allocate_splits(len(healthy), len(labelled), val_fraction, calibration_fraction, test_healthy_fraction)
        rng = np.random.default_rng(seed)
        h_order = rng.permutation(len(healthy)).tolist()
        l_order = rng.permutation(len(labelled)).tolist()
        start = 0
        for key in ("training", "validation", "calibration", "test_healthy"):
            picked = sorted(h_order[start : start + sizes[key]])
            start += sizes[key]
            sections[key] = [dict(healthy[i], stratum="healthy") for i in picked]
        n_test = sizes["test_lesion"]
        sections["test"] = [labelled[i] for i in sorted(l_order[:n_test])]
        sections["tuning"] = [labelled[i] for i in sorted(l_order[n_test:])]
        test_healthy = sections.pop("test_healthy")
        if empty_labels and out is not None:
            folder = Path(out).resolve().parent / "empty_labels"
            for entry in test_healthy:
                entry["label"] = _write_empty_label(entry, folder / f"{entry['subject']}_label.nii.gz")
        sections["test"] += test_healthy
        sections = {k: sections[k] for k in DATALIST_SECTIONS}

    base = Path(out).resolve().parent if out is not None else None
    for key, entries in sections.items():
        cleaned = []
        for entry in entries:
            item = {k: v for k, v in entry.items() if k != "subject"}
            if base is not None:
                item = {k: (v if k in ("stratum", "bids", "raw") else _relative(v, base)) for k, v in item.items()}
            cleaned.append(item)
        sections[key] = cleaned

    n_ch = num_channels if num_channels is not None else (1 if isinstance(image, str) else len(image) or 3)
    datalist: dict[str, Any] = {}
    if update and out is not None and Path(out).is_file():
        try:
            datalist = json.loads(Path(out).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot update datalist {out}: {err}") from err
        if not isinstance(datalist, dict):
            raise ValueError(f"cannot update datalist {out}: expected a JSON object, got {type(datalist).__name__}.")
    datalist.setdefault("name", Path(root).resolve().name)
    datalist.setdefault("tensorImageSize", "4D")
    datalist.setdefault("modality", {str(i): (_CONTRASTS[i] if n_ch == 3 else f"contrast{i}") for i in range(n_ch)})
    datalist.setdefault("labels", {"0": "background", "1": "lesion"})
    datalist.update(sections)
    for key, count in (
        ("training", "numTraining"),
        ("validation", "numValidation"),
        ("calibration", "numCalibration"),
        ("tuning", "numTuning"),
        ("test", "numTest"),
    ):
        if key in datalist:
            datalist[count] = len(datalist[key])
    if out is not None:
        from monai_qrvae.utils import atomic_write

        text = json.dumps(datalist, indent=2) + "\n"
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return datalist
