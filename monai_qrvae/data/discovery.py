"""Subject discovery: group a folder's files into subjects by file-name patterns, and size the datalist splits."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .io import _CONTRASTS, PathLike

__all__ = ["allocate_splits", "find_subjects", "split_share"]


def split_share(fraction: float, n: int) -> int:
    """Subjects of ``n`` given to a split of ``fraction``: ``floor(fraction * n)``, robust to rounding errors."""
    return int(np.floor(fraction * n + 1e-9))


def allocate_splits(
    n_healthy: int,
    n_lesion: int,
    val_fraction: float = 0.1,
    calibration_fraction: float = 0.33,
    test_healthy_fraction: float = 0.09,
    n_validation: int | None = None,
    n_calibration: int | None = None,
    n_test_healthy: int | None = None,
    n_tuning: int | None = None,
) -> dict[str, int]:
    """Split sizes of a cohort of ``n_healthy`` healthy and ``n_lesion`` lesion subjects.

    Rule (``H = n_healthy``, ``L = n_lesion``; explicit ``n_*`` values replace the fractions):

    - ``calibration = floor(calibration_fraction * H)``, ``test_healthy = floor(test_healthy_fraction * H)``,
      ``validation = floor(val_fraction * H)`` but at least 1 when ``H >= 2`` and ``val_fraction > 0``;
    - ``training`` gets the rest and at least 1 when ``H >= 1``: if the others leave nothing, they shrink in the
      order test_healthy, calibration, validation;
    - ``test_lesion = ceil(L / 2)`` (the test split is served first), ``tuning = L - test_lesion``.

    The default cohort (``H = 61``, ``L = 20``) gives 30 / 6 / 20 / 5 healthy and 10 / 10 lesion subjects;
    ``H = 5, L = 2`` gives training 3, validation 1, calibration 1, test_healthy 0, test_lesion 1, tuning 1.

    Returns:
        ``{"training", "validation", "calibration", "test_healthy", "test_lesion", "tuning"}`` sizes.
    """
    for name, value in (("val_fraction", val_fraction), ("calibration_fraction", calibration_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    if not 0.0 <= test_healthy_fraction < 1.0:
        raise ValueError(f"test_healthy_fraction must be in [0, 1), got {test_healthy_fraction}.")
    for name, value in (
        ("n_validation", n_validation),
        ("n_calibration", n_calibration),
        ("n_test_healthy", n_test_healthy),
        ("n_tuning", n_tuning),
    ):
        if value is not None and (int(value) != value or value < 0):
            raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}.")
    h = int(n_healthy)
    cal = split_share(calibration_fraction, h) if n_calibration is None else int(n_calibration)
    th = split_share(test_healthy_fraction, h) if n_test_healthy is None else int(n_test_healthy)
    if n_validation is None:
        val = split_share(val_fraction, h)
        if val_fraction > 0 and h >= 2:
            val = max(val, 1)
    else:
        val = int(n_validation)
    explicit = {"validation": n_validation, "calibration": n_calibration, "test_healthy": n_test_healthy}
    sizes = {"validation": val, "calibration": cal, "test_healthy": th}
    for key in ("test_healthy", "calibration", "validation"):  # shrink until training keeps one subject
        while h >= 1 and h - sum(sizes.values()) < 1 and sizes[key] > 0:
            if explicit[key] is not None:
                break
            sizes[key] -= 1
    training = h - sum(sizes.values())
    if training < (1 if h >= 1 else 0):
        raise ValueError(
            f"{h} healthy subjects cannot hold validation={sizes['validation']}, calibration="
            f"{sizes['calibration']}, test_healthy={sizes['test_healthy']} and at least 1 training subject."
        )
    lesion = int(n_lesion)
    if n_tuning is None:
        tuning = lesion // 2
    elif n_tuning > lesion:
        raise ValueError(f"n_tuning={n_tuning} exceeds the {lesion} lesion subjects.")
    else:
        tuning = int(n_tuning)
    return {"training": training, **sizes, "test_lesion": lesion - tuning, "tuning": tuning}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a file-name pattern with ``{subject}`` and glob wildcards (``*``, ``?``, ``**``)."""
    out, seen, i = [], False, 0
    while i < len(pattern):
        if pattern.startswith("{subject}", i):
            out.append("(?P=subject)" if seen else "(?P<subject>[^/]+?)")
            seen, i = True, i + len("{subject}")
        elif pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _check_pattern(pattern: str, what: str) -> str:
    if not isinstance(pattern, str) or "{subject}" not in pattern:
        raise ValueError(
            f"{what} pattern must be a string containing '{{subject}}' (e.g. '{{subject}}/{{subject}}_flair.nii.gz'), "
            f"got {pattern!r}."
        )
    if os.path.isabs(pattern):
        raise ValueError(f"{what} pattern must be relative to the root folder, got {pattern!r}.")
    return pattern.replace(os.sep, "/")


def _glob(root: Path, pattern: str) -> list[str]:
    return sorted(
        Path(p).relative_to(root).as_posix()
        for p in glob.glob(os.path.join(glob.escape(str(root)), pattern), recursive=True)
        if os.path.isfile(p)
    )


def find_subjects(
    root: PathLike,
    image: str | Sequence[str],
    brain_mask: str | None = None,
    label: str | None = None,
    skip_incomplete: bool = False,
) -> list[dict[str, Any]]:
    """Group the files under ``root`` into subjects by file-name patterns.

    Each pattern is relative to ``root`` and contains ``{subject}`` (the subject's identifier, the same in every
    pattern, one path component at most) and optionally glob wildcards. Subjects are those matched by the first
    image pattern; every other pattern must then match exactly one file per subject (a missing ``label`` is
    allowed: the subject has no label).

    Example (BraTS): ``image=["{subject}/{subject}_t1.nii.gz", "{subject}/{subject}_t2.nii.gz",
    "{subject}/{subject}_flair.nii.gz"], label="{subject}/{subject}_seg.nii.gz"``.

    Args:
        root: the folder.
        image: one pattern (one multi-channel file per subject) or one pattern per contrast (T1, T2, FLAIR).
        brain_mask: pattern of the brain masks (required for every subject when given).
        label: pattern of the lesion labels (optional per subject).
        skip_incomplete: drop subjects with a missing contrast or mask instead of raising.

    Returns:
        sorted list of ``{"subject": id, "image": path or [paths], "brain_mask"?: path, "label"?: path}`` with
        absolute paths.

    Raises:
        FileNotFoundError: ``root`` is missing, nothing matches, or a subject lacks a file.
        ValueError: a pattern is invalid or matches several files for one subject.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"root folder not found: {root}")
    single = isinstance(image, str)
    patterns = [image] if single else list(image)
    if not patterns:
        raise ValueError("at least one image pattern is required.")
    patterns = [_check_pattern(p, f"image[{i}]") for i, p in enumerate(patterns)]
    extra = {k: _check_pattern(p, k) for k, p in (("brain_mask", brain_mask), ("label", label)) if p is not None}

    first = patterns[0]
    regex = _pattern_regex(first)
    ids = sorted({m.group("subject") for p in _glob(root, first.replace("{subject}", "*")) if (m := regex.match(p))})
    if not ids:
        raise FileNotFoundError(f"no file under {root} matches the image pattern {first!r}.")

    def one(subject: str, pattern: str, what: str) -> str | None:
        found = _glob(root, pattern.replace("{subject}", glob.escape(subject)))
        if len(found) > 1:
            raise ValueError(
                f"subject {subject!r}: {what} pattern {pattern!r} matches {len(found)} files under {root}: {found}; "
                "make the pattern more specific."
            )
        return str(root / found[0]) if found else None

    subjects = []
    for subject in ids:
        entry: dict[str, Any] = {"subject": subject}
        files, missing = [], []
        for i, pattern in enumerate(patterns):
            what = "image" if single else f"contrast {i} ({_CONTRASTS[i] if i < 3 else i})"
            path = one(subject, pattern, what)
            files.append(path)
            if path is None:
                missing.append(f"{what} (pattern {pattern!r})")
        for key, pattern in extra.items():
            entry[key] = one(subject, pattern, key)
            if entry[key] is None:
                del entry[key]
                if key != "label":
                    missing.append(f"{key} (pattern {pattern!r})")
        if missing:
            if skip_incomplete:
                continue
            raise FileNotFoundError(
                f"subject {subject!r} under {root} has no file for: {', '.join(missing)} "
                "(pass skip_incomplete=True / --skip-incomplete to leave such subjects out)."
            )
        entry["image"] = files[0] if single else files
        subjects.append(entry)
    if not subjects:
        raise FileNotFoundError(f"no complete subject under {root} for the patterns {patterns + list(extra.values())}.")
    return subjects
