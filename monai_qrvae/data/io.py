"""Image IO for datalists: read and check image files (geometry, channels, voxels), write an empty label.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel (header only unless ``read_data``); NRRD and MetaImage
(``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) through MONAI's :class:`monai.data.ITKReader`. Every check raises
:class:`FileNotFoundError` (missing file) or :class:`ValueError` (unreadable file, shape or affine mismatch, wrong
number of channels) with a message that names the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ras_spacing",
    "common_spacing",
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "ImageInfo",
    "ImageTooLargeError",
    "available_memory_bytes",
    "read_image_info",
    "read_image",
    "check_item",
    "read_json",
]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES
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


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the R, A and S axes of the grid ``affine`` describes once reoriented to RAS."""
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    order = nib.orientations.io_orientation(affine)[:, 0].astype(int)  # input axis i -> RAS axis order[i]
    out = np.empty(3)
    out[order] = sizes
    return tuple(float(v) for v in out)  # type: ignore[return-value]


def common_spacing(items: Sequence[dict[str, Any]], key: str = "image") -> tuple[float, float, float]:
    """The median RAS voxel size (mm, rounded to 0.01 mm) of the images of datalist ``items`` (headers only).

    Raises:
        ValueError: for no items.
    """
    if not items:
        raise ValueError("cannot tell the grid of no images: expected at least one datalist entry.")
    sizes = []
    for item in items:
        image = item[key]
        first = image[0] if isinstance(image, (list, tuple)) else image
        sizes.append(ras_spacing(read_image_info(first).affine))
    return tuple(round(float(v), 2) for v in np.median(np.asarray(sizes), axis=0))  # type: ignore[return-value]


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


def read_json(path: PathLike, what: str, expected: str) -> Any:
    """The parsed content of a JSON file; an unreadable file or invalid JSON is one ``ValueError``.

    The message reads ``cannot read {what} {path}: {error type}: {error}; expected {expected}.``

    Raises:
        ValueError: the file cannot be read or decoded, or is not valid JSON.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {what} {path}: {type(err).__name__}: {err}; expected {expected}.") from err
