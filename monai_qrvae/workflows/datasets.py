"""The data the jobs read: checked datalist sections and the training slices (prepared once per process).

:func:`_datalist` checks one section of a datalist (files, contrasts, shapes) before any job starts;
:func:`_slice_dataset` keeps the last few slice datasets in memory, so the demo, the sweep and the benchmark
prepare each cohort's slices once.
"""

from __future__ import annotations

import json
import os
from typing import Any

from monai_qrvae.preprocessing import SliceDataset, volume_transforms

__all__: list[str] = []


def _datalist(datalist: str | os.PathLike, section: str, read_data: bool = False) -> list[dict]:
    """One checked section of a datalist: files exist, contrasts agree in shape and affine, 3 channels.

    With ``read_data`` every voxel is read too (corrupt data, NaN/Inf voxels, all-zero images).
    """
    from monai_qrvae.data.datalist import load_datalist

    items = load_datalist(datalist, section=section, check=True, num_channels=3, read_data=read_data)
    if not items:
        raise ValueError(f"datalist {datalist}: section {section!r} is empty; expected at least one subject.")
    return items


_SLICE_CACHE: dict[tuple[str, int | None, int | None], SliceDataset] = {}
_SLICE_CACHE_SIZE = 4


def _slice_dataset(items: list[dict], image_size: int | None, num_slices: int | None, progress: bool) -> SliceDataset:
    """The slices of ``items``, prepared once per process: the demo, the sweep and the benchmark train several
    methods and seeds on the same volumes (a small in-memory cache of the last few datasets, keyed by the entries,
    their files' modification times and the slice settings)."""

    def stamp(value: Any) -> Any:
        paths = value if isinstance(value, list) else [value]
        return [(str(p), os.stat(p).st_mtime_ns) if isinstance(p, str) and os.path.exists(p) else str(p) for p in paths]

    key = (
        json.dumps([{k: stamp(v) for k, v in sorted(item.items())} for item in items], default=str),
        image_size,
        num_slices,
    )
    if key not in _SLICE_CACHE:
        if len(_SLICE_CACHE) >= _SLICE_CACHE_SIZE:
            _SLICE_CACHE.pop(next(iter(_SLICE_CACHE)))
        vt = volume_transforms(image_size=image_size, num_slices=num_slices)
        _SLICE_CACHE[key] = SliceDataset(items, vt, progress=progress)
    return _SLICE_CACHE[key]
