"""Decathlon-style datalists for a user's own scans: build them from a folder, load them, check them.

The format is the one :func:`make_cohort` writes and :func:`monai.data.load_decathlon_datalist` reads::

    {"training": [{"image": ["s1/t1.nii.gz", "s1/t2.nii.gz", "s1/flair.nii.gz"], "brain_mask": "s1/mask.nii.gz"}],
     "validation": [...], "test": [{"image": "s9/image.nii.gz", "brain_mask": ..., "label": "s9/seg.nii.gz"}]}

``image`` is either one 4D file whose last axis holds the contrasts (T1, T2, FLAIR) or a list of one 3D file per
contrast, in that order; :class:`monai.transforms.LoadImaged` stacks such a list as channels, and
:class:`monai.transforms.EnsureChannelFirstd` gives ``(C, X, Y, Z)`` either way. ``brain_mask`` and ``label`` are
optional single-channel volumes on the same grid. Paths are relative to the JSON file's folder.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel (header only unless ``read_data``); NRRD and MetaImage
(``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) through MONAI's :class:`monai.data.ITKReader`. Every check raises
:class:`FileNotFoundError` (missing file) or :class:`ValueError` (unreadable file, shape or affine mismatch, wrong
number of channels) with a message that names the file.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "DATALIST_SECTIONS",
    "SECTION_PURPOSES",
    "JOB_SECTIONS",
    "allocate_splits",
    "missing_section_message",
    "require_sections",
    "section_counts",
    "ImageInfo",
    "ImageTooLargeError",
    "available_memory_bytes",
    "read_image_info",
    "read_image",
    "check_item",
    "check_datalist",
    "load_datalist",
    "read_datalist_json",
    "find_subjects",
    "make_datalist",
]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES
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
_CONTRASTS = ("T1", "T2", "FLAIR")

PathLike = str | os.PathLike


@dataclass
class ImageInfo:
    """Geometry of one image file (or of a per-contrast list of files).

    Attributes:
        path: the file (the first file for a list).
        spatial_shape: the three spatial sizes.
        n_channels: channels: the 4th axis of a 4D file, components of an ITK vector image, or list length.
        affine: ``(4, 4)`` voxel-to-world matrix, RAS (as MONAI's readers report it).
        data: ``(C, X, Y, Z)`` float32 voxels when read, else ``None``.
    """

    path: str
    spatial_shape: tuple[int, ...]
    n_channels: int
    affine: np.ndarray
    data: np.ndarray | None = None


def _suffix(path: PathLike) -> str:
    name = os.fspath(path).lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def _expected_channels(num_channels: int) -> str:
    names = ", ".join(_CONTRASTS) if num_channels == len(_CONTRASTS) else f"{num_channels} contrasts"
    return f"{num_channels} ({names})"


class ImageTooLargeError(ValueError):
    """An image whose voxels would not fit in the memory available (found from its header)."""


def available_memory_bytes() -> int:
    """The largest image (bytes of float32 voxels) read: ``QRVAE_MAX_IMAGE_BYTES`` if set, else the free memory."""
    limit = os.environ.get("QRVAE_MAX_IMAGE_BYTES")
    if limit:
        return int(float(limit))
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with MONAI's usual installs
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _check_fits_in_memory(path: str, shape: Sequence[int]) -> None:
    """Refuse, before reading voxels, an image whose float32 copy is larger than :func:`available_memory_bytes`."""
    needed = 4 * int(np.prod([int(s) for s in shape], dtype=np.float64))
    limit = available_memory_bytes()
    if needed > limit:
        raise ImageTooLargeError(
            f"image file {path} has shape {tuple(shape)}: {needed / 2**30:.1f} GiB as float32; expected at most "
            f"{limit / 2**30:.1f} GiB (the memory available, or QRVAE_MAX_IMAGE_BYTES): crop or downsample it first."
        )


def read_image_info(path: PathLike, read_data: bool = False) -> ImageInfo:
    """Read the geometry (and optionally the voxels) of one image file.

    Args:
        path: a NIfTI, NRRD or MetaImage file.
        read_data: also read (and so verify) every voxel; NIfTI headers alone are read otherwise. ITK formats
            are always read in full.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the suffix is not supported, the file cannot be read, or it is not a 3D volume
            (optionally with channels on a 4th axis).
        ImageTooLargeError: (a ``ValueError``) a NIfTI whose header promises more float32 voxels than
            :func:`available_memory_bytes`; checked before the voxels are read.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"unsupported image file {path}: suffix {suffix!r}, expected one of {SUPPORTED_SUFFIXES}.")
    try:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            img = nib.load(path)
            shape = tuple(int(s) for s in img.shape)
            affine = np.asarray(img.affine, dtype=np.float64)
            _check_fits_in_memory(path, shape)  # from the header, before any voxel is allocated
            data = np.asarray(img.dataobj, dtype=np.float32) if read_data else None
            if len(shape) == 5 and shape[3] == 1:  # NIfTI vector images: (X, Y, Z, 1, C)
                shape = shape[:3] + shape[4:]
                data = None if data is None else data[:, :, :, 0]
            channels = shape[3] if len(shape) == 4 else 1
            if data is not None:
                data = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
        else:
            from monai.data import ITKReader

            reader = ITKReader()
            array, meta = reader.get_data(reader.read(path))
            shape = tuple(int(s) for s in meta["spatial_shape"])
            affine = np.asarray(meta["affine"], dtype=np.float64)
            channel_last = array.ndim == len(shape) + 1
            channels = int(array.shape[-1]) if channel_last else 1
            shape = shape + ((channels,) if channel_last else ())
            data = np.asarray(array, dtype=np.float32)
            data = np.moveaxis(data, -1, 0) if channel_last else data[None]
            data = data if read_data else None
    except ImageTooLargeError:
        raise
    except Exception as err:  # nibabel, gzip, zlib and ITK raise many different types
        raise ValueError(f"cannot read image file {path}: {type(err).__name__}: {err}".strip()) from err
    if len(shape) not in (3, 4):
        raise ValueError(
            f"image file {path} has shape {shape}; expected a 3D volume (X, Y, Z) or 4D (X, Y, Z, C) with the "
            "contrasts on the last axis."
        )
    return ImageInfo(path=path, spatial_shape=shape[:3], n_channels=channels, affine=affine, data=data)


def _same_grid(info: ImageInfo, ref: ImageInfo, what: str, atol: float) -> None:
    if tuple(info.spatial_shape) != tuple(ref.spatial_shape):
        raise ValueError(
            f"{what} {info.path} has spatial shape {tuple(info.spatial_shape)} but {ref.path} has "
            f"{tuple(ref.spatial_shape)}; all files of a subject must share one grid (resample them first)."
        )
    if not np.allclose(info.affine, ref.affine, rtol=0.0, atol=atol):
        raise ValueError(
            f"{what} {info.path} has affine\n{np.round(info.affine, 4)}\nbut {ref.path} has\n"
            f"{np.round(ref.affine, 4)}\n(tolerance {atol} mm); all files of a subject must share one affine "
            "(register/resample them first)."
        )


def read_image(
    image: PathLike | Sequence[PathLike], num_channels: int | None = None, atol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Read one multi-channel image: a 4D file or a list of per-contrast files.

    Args:
        image: one file (3D or 4D) or a list of 3D files, one per contrast.
        num_channels: the number of channels expected, or ``None`` to accept any.
        atol: tolerance (mm) when comparing the affines of per-contrast files.

    Returns:
        ``(data, affine)``: ``(C, X, Y, Z)`` float32 voxels and the ``(4, 4)`` RAS affine.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file cannot be read, the channel count is wrong, or per-contrast files differ in grid.
    """
    info = _check_image(image, num_channels, read_data=True, atol=atol, what="image")
    data = info.data if info.data is not None else np.zeros((0,), dtype=np.float32)
    return data, info.affine


def _check_image(image: Any, num_channels: int | None, read_data: bool, atol: float, what: str = "image") -> ImageInfo:
    if isinstance(image, (str, os.PathLike)):
        info = read_image_info(image, read_data=read_data)
        if num_channels is not None and info.n_channels != num_channels:
            raise ValueError(
                f"{what} file {info.path} has {info.n_channels} channel(s) (spatial shape "
                f"{tuple(info.spatial_shape)}); expected {_expected_channels(num_channels)} on the last axis of one "
                "4D file, or a list of one 3D file per contrast."
            )
        return info
    if isinstance(image, Sequence) and len(image) > 0 and all(isinstance(p, (str, os.PathLike)) for p in image):
        if num_channels is not None and len(image) != num_channels:
            raise ValueError(
                f"{what} lists {len(image)} file(s) {[os.fspath(p) for p in image]}; expected "
                f"{_expected_channels(num_channels)}, one file per contrast in that order."
            )
        infos = [read_image_info(p, read_data=read_data) for p in image]
        for info in infos:
            if info.n_channels != 1:
                raise ValueError(
                    f"{what} file {info.path} has {info.n_channels} channels; each file of a per-contrast list must "
                    "hold one contrast (a 3D volume)."
                )
            _same_grid(info, infos[0], f"{what} file", atol)
        data = np.concatenate([i.data for i in infos], 0) if read_data else None  # type: ignore[misc]
        return ImageInfo(infos[0].path, infos[0].spatial_shape, len(infos), infos[0].affine, data)
    raise ValueError(f"{what} must be a file path or a non-empty list of file paths, got {image!r}.")


def _check_values(info: ImageInfo, what: str) -> None:
    """Voxel checks that need the data: NaN/Inf voxels, an all-zero (empty brain) image."""
    data = info.data
    finite = np.isfinite(data)
    if not finite.all():
        bad = int((~finite).sum())
        raise ValueError(
            f"{what} file {info.path} has {bad} NaN or Inf voxel(s) of {data.size}; expected finite intensities "
            "(fix or mask them before use)."
        )
    if not np.any(data):
        raise ValueError(
            f"{what} file {info.path} is all zero: the brain mask would be empty; expected a skull-stripped brain "
            "with non-zero voxels."
        )


def check_item(
    item: dict[str, Any],
    num_channels: int | None = 3,
    read_data: bool = False,
    image_key: str = "image",
    mask_keys: Sequence[str] = ("brain_mask", "label"),
    atol: float = 1e-3,
) -> ImageInfo:
    """Check one datalist entry: files exist and are readable, channel count, one grid for every file.

    Args:
        item: ``{"image": path or [paths], "brain_mask"?: path, "label"?: path}`` with resolved paths
            (as :func:`monai.data.load_decathlon_datalist` returns them).
        num_channels: channels ``image`` must have (``None``: any).
        read_data: read every voxel (finds truncated/corrupt data, NaN/Inf voxels and all-zero images,
            slower); NIfTI headers only otherwise.
        image_key: key of the image.
        mask_keys: single-channel keys checked, when present, against the image's grid.
        atol: tolerance (mm) for affine comparisons.

    Returns:
        the image's :class:`ImageInfo` (``data`` is not kept).

    Raises:
        FileNotFoundError: a listed file does not exist.
        ValueError: unreadable file, wrong channel count, shapes/affines that differ, or (with ``read_data``) a
            label with values other than 0 and 1.
    """
    if not isinstance(item, dict) or image_key not in item:
        raise ValueError(f"a datalist entry must be a dict with an {image_key!r} key, got {item!r}.")
    info = _check_image(item[image_key], num_channels, read_data, atol, what=image_key)
    if info.data is not None:
        _check_values(info, image_key)
    info.data = None
    for key in mask_keys:
        if key not in item or item[key] is None:
            continue
        mask = _check_image(item[key], 1, read_data, atol, what=key)
        _same_grid(mask, info, f"{key} file", atol)
        if key == "label" and mask.data is not None:
            _check_binary(mask, key)
    return info


def _check_binary(info: ImageInfo, what: str) -> None:
    """A lesion label must hold 0 (background) and 1 (lesion) only."""
    values = np.unique(info.data)
    if not np.isin(values, (0.0, 1.0)).all():
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise ValueError(
            f"{what} file {info.path} has the values [{shown}] ({len(values)} distinct); expected a binary lesion "
            "mask of 0 (background) and 1 (lesion): merge or binarise the classes first."
        )


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
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"cannot read datalist {path}: {type(err).__name__}: {err}; expected a Decathlon-style JSON object "
            'such as {"test": [{"image": "sub-001/image.nii.gz"}]}.'
        ) from err
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
    return counts


def allocate_splits(
    n_healthy: int,
    n_lesion: int,
    val_fraction: float = 0.12,
    calibration_fraction: float = 0.2,
    test_healthy_fraction: float = 0.1,
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

    The default cohort (``H = 51``, ``L = 20``) gives 30 / 6 / 10 / 5 healthy and 10 / 10 lesion subjects;
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
    cal = int(np.floor(calibration_fraction * h + 1e-9)) if n_calibration is None else int(n_calibration)
    th = int(np.floor(test_healthy_fraction * h + 1e-9)) if n_test_healthy is None else int(n_test_healthy)
    if n_validation is None:
        val = int(np.floor(val_fraction * h + 1e-9))
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
    val_fraction: float = 0.12,
    seed: int = 0,
    num_channels: int | None = 3,
    check: bool = True,
    skip_incomplete: bool = False,
    update: bool = False,
    calibration_fraction: float = 0.2,
    test_healthy_fraction: float = 0.1,
    empty_labels: bool = True,
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
        healthy = [s for s in subjects if "label" not in s]
        labelled = [s for s in subjects if "label" in s]
        sizes = allocate_splits(
            len(healthy),
            len(labelled),
            val_fraction=val_fraction,
            calibration_fraction=calibration_fraction,
            test_healthy_fraction=test_healthy_fraction,
        )
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
                item = {k: (v if k == "stratum" else _relative(v, base)) for k, v in item.items()}
            cleaned.append(item)
        sections[key] = cleaned

    n_ch = num_channels if num_channels is not None else (1 if isinstance(image, str) else len(image))
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
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(out, json.dumps(datalist, indent=2) + "\n")
    return datalist


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file in the same folder and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_empty_label(entry: dict[str, Any], path: Path) -> str:
    """Write an all-zero uint8 label on the grid of ``entry``'s brain mask (or first image file); return its path."""
    import nibabel as nib

    ref = entry.get("brain_mask") or (entry["image"] if isinstance(entry["image"], str) else entry["image"][0])
    info = read_image_info(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.zeros(tuple(info.spatial_shape), dtype=np.uint8), info.affine)
    img.set_qform(info.affine, code=1)
    img.set_sform(info.affine, code=1)
    img.to_filename(str(path))
    return str(path)
