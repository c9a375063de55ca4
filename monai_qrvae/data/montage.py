"""PNG montage of one subject: each contrast (rows) at a few axial levels (columns), lesion outline in red.

Slices are shown in neurological convention (RAS ``x`` to the right, so the patient's right is on the right;
anterior up), each contrast windowed to the 0.5-99.5 percentiles of its brain voxels. Drawn on a bare
``matplotlib.figure.Figure`` with the Agg canvas: no display, no pyplot state, no global backend change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datalist import read_image

__all__ = ["choose_levels", "plot_montage", "save_montage", "subject_montage"]

_CONTRASTS = ("T1", "T2", "FLAIR")


def _as_volume(
    image: Any, channel_dim: int | None
) -> tuple[np.ndarray, np.ndarray | None]:  # (C, X, Y, Z) and the affine when read from files
    if isinstance(image, (str, os.PathLike)) or (
        isinstance(image, (list, tuple)) and image and all(isinstance(p, (str, os.PathLike)) for p in image)
    ):
        return read_image(image)
    affine = getattr(image, "affine", None)
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if array.ndim == 3:
        return array[None], None if affine is None else np.asarray(affine)
    if array.ndim != 4:
        raise ValueError(f"image must be 3D (X, Y, Z) or 4D with a channel axis, got shape {array.shape}.")
    if channel_dim is None:
        channel_dim = 0 if array.shape[0] <= 4 and array.shape[-1] > 4 else -1
    return np.moveaxis(array, channel_dim, 0), None if affine is None else np.asarray(affine)


def _as_mask(mask: Any, shape: Sequence[int], what: str) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, (str, os.PathLike)):
        mask = read_image(mask, num_channels=1)[0]
    array = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    array = np.squeeze(array)
    if array.shape != tuple(shape):
        raise ValueError(f"{what} has shape {array.shape}, expected the image's spatial shape {tuple(shape)}.")
    return array > 0


def choose_levels(brain: np.ndarray, label: np.ndarray | None = None, levels: int = 5) -> list[int]:
    """Pick ``levels`` axial slice indices (last axis) spread over the brain; with a label, up to half of them go
    through the largest lesion areas (at least 5 slices apart).

    Args:
        brain: ``(X, Y, Z)`` boolean brain (or non-zero image) mask.
        label: optional ``(X, Y, Z)`` boolean lesion mask.
        levels: number of slices.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}.")
    z = np.flatnonzero(brain.any(axis=(0, 1)))
    if z.size == 0:
        z = np.arange(brain.shape[-1])
    lo, hi = z[0] + 0.3 * (z[-1] - z[0]), z[0] + 0.85 * (z[-1] - z[0])
    chosen = [int(round(v)) for v in np.linspace(lo, hi, levels)]
    lesion_levels: set[int] = set()
    if label is not None and label.any():
        area = label.sum(axis=(0, 1)).astype(float)
        for _ in range(max(1, levels // 2)):  # up to half the levels go through the largest lesion areas
            best = int(np.argmax(area))
            if area[best] <= 0:
                break
            area[max(0, best - 4) : best + 5] = 0
            free = [i for i, c in enumerate(chosen) if c not in lesion_levels]
            if best not in chosen and free:
                chosen[min(free, key=lambda i: abs(chosen[i] - best))] = best
            lesion_levels.add(best)
    return sorted(set(chosen))


def plot_montage(
    image: Any,
    label: Any = None,
    brain_mask: Any = None,
    levels: int | Sequence[int] = 5,
    channel_names: Sequence[str] = _CONTRASTS,
    title: str | None = None,
    channel_dim: int | None = None,
) -> Any:
    """Draw the montage and return the matplotlib ``Figure``.

    Args:
        image: ``(X, Y, Z, C)`` or ``(C, X, Y, Z)`` array/tensor, or a file path (4D) or list of per-contrast paths.
        label: optional lesion mask (array or path), outlined in red.
        brain_mask: optional brain mask (array or path) used to window intensities and place the levels
            (default: voxels non-zero in any channel).
        levels: number of axial levels, or the slice indices themselves.
        channel_names: row titles.
        title: figure title.
        channel_dim: axis of the channels of an array input (default: guessed, ``0`` or ``-1``).
    """
    from matplotlib.figure import Figure

    volume, affine = _as_volume(image, channel_dim)
    shape = volume.shape[1:]
    lab = _as_mask(label, shape, "label")
    brain = _as_mask(brain_mask, shape, "brain_mask")
    if brain is None:
        brain = (volume != 0).any(0)
    zs = choose_levels(brain, lab, levels) if isinstance(levels, int) else [int(z) for z in levels]
    for z in zs:
        if not 0 <= z < shape[-1]:
            raise ValueError(f"level {z} is outside the image's {shape[-1]} axial slices.")

    n_rows, n_cols = volume.shape[0], len(zs)
    fig = Figure(figsize=(2.1 * n_cols, 2.1 * n_rows * shape[1] / shape[0] + (0.5 if title else 0.2)), dpi=100)
    fig.patch.set_facecolor("black")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.02})
    for c in range(n_rows):
        values = volume[c][brain] if brain.any() else volume[c].ravel()
        vmin, vmax = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
        for j, z in enumerate(zs):
            ax = axes[c, j]
            ax.imshow(volume[c, :, :, z].T, cmap="gray", origin="lower", vmin=vmin, vmax=max(vmax, vmin + 1e-6))
            if lab is not None and lab[:, :, z].any():
                ax.contour(lab[:, :, z].T.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j == 0:
                name = channel_names[c] if c < len(channel_names) else f"channel {c}"
                ax.set_ylabel(name, color="white", fontsize=11)
            if c == 0:
                where = f"z={z}" if affine is None else f"z={z} ({affine[2, 2] * z + affine[2, 3]:.0f} mm)"
                ax.set_title(where, color="white", fontsize=9)
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    return fig


def save_montage(
    image: Any,
    out: str | os.PathLike,
    label: Any = None,
    brain_mask: Any = None,
    levels: int | Sequence[int] = 5,
    title: str | None = None,
    dpi: int = 100,
    **kwargs: Any,
) -> Path:
    """Write :func:`plot_montage` to a PNG file and return its path (folders are created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = plot_montage(image, label=label, brain_mask=brain_mask, levels=levels, title=title, **kwargs)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(
        out, dpi=dpi, facecolor=fig.get_facecolor(), bbox_inches="tight", pad_inches=0.05, metadata={"Software": None}
    )
    return out


def subject_montage(
    subject_dir: str | os.PathLike, out: str | os.PathLike | None = None, levels: int | Sequence[int] = 5
) -> Path:
    """Montage of a subject folder written by :func:`make_cohort` (``image.nii.gz``, ``brain_mask.nii.gz``,
    ``label.nii.gz`` when present); the PNG goes to ``out`` (default ``subject_dir/montage.png``)."""
    folder = Path(subject_dir)
    image = folder / "image.nii.gz"
    if not image.is_file():
        raise FileNotFoundError(f"no image.nii.gz in subject folder {folder}")
    mask = folder / "brain_mask.nii.gz"
    label = folder / "label.nii.gz"
    return save_montage(
        image,
        out if out is not None else folder / "montage.png",
        label=label if label.is_file() else None,
        brain_mask=mask if mask.is_file() else None,
        levels=levels,
        title=folder.name,
    )
