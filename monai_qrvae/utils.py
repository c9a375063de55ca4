"""Small helpers shared across the package: atomic file writers, finite-value checks and the contrast names.

This module imports nothing from the rest of :mod:`monai_qrvae`, so any module can use it without import cycles.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CONTRAST_NAMES",
    "identity",
    "atomic_write",
    "write_text",
    "write_json",
    "write_csv",
    "jsonable",
    "check_finite",
]

#: The input contrasts, in channel order (``image[0]`` is T1, ``image[1]`` T2, ``image[2]`` FLAIR).
CONTRAST_NAMES: tuple[str, ...] = ("T1", "T2", "FLAIR")


def identity(x: Any) -> Any:
    """``x`` itself: the default ``output_transform``/``batch_transform`` of the handlers."""
    return x


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path: str | None) -> None:
    if path is not None and os.path.exists(path):
        try:
            os.remove(path)
        except OSError:  # pragma: no cover - the folder became unwritable meanwhile
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over ``path``.

    A crash part-way leaves either the old file or none, never a truncated one.

    Raises:
        OSError: the folder cannot be created or written (read-only, permissions, disk full); the message names
            ``path`` and the cause, and no temporary file is left behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files: give results the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise OSError(
            e.errno,
            f"cannot write {path}: {e.strerror or e}; expected a writable output folder with free space "
            "(nothing was replaced)",
        ) from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (folders are created)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy/torch values as plain lists and numbers, paths as strings and NaN/Inf as ``None``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy/torch values converted, NaN as null) and a final newline, atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV atomically; ``columns`` default to every key of the rows, in order of appearance."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]

    def _write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, _write)


def check_finite(x: torch.Tensor, name: str, nan_only: bool = False) -> None:
    """Raise ``ValueError`` when ``x`` holds NaN or Inf values (only NaN with ``nan_only``).

    Integer and bool tensors always pass (they hold neither).

    Args:
        x: the tensor to check.
        name: what ``x`` is (a transform or an argument name); the message starts with it.
        nan_only: refuse NaN only and let Inf through (the losses: an infinite input gives an infinite loss).
    """
    if not (x.is_floating_point() or x.is_complex()):
        return
    if nan_only:
        if bool(torch.isnan(x).any()):
            raise ValueError(f"{name} contains NaN values (shape {tuple(x.shape)}); expected finite numbers.")
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: the input of shape {tuple(x.shape)} contains {int(bad.sum())} NaN/Inf values; "
            "expected finite intensities."
        )
