"""The data the jobs read: checked datalist sections and the training slices.

:func:`checked_section` checks one section of a datalist (files, contrasts, shapes) before any job starts. Training
slices come one of two ways:

- in memory (the default): :func:`slice_dataset` keeps the last few :class:`~monai_qrvae.preprocessing.SliceDataset`
  in memory, so the demo, the sweep and the benchmark prepare each cohort's slices once; memory grows with the
  cohort (every slice is held);
- bounded (:class:`PersistentSliceDataset`, ``train(..., cache_dir=...)``): each volume's slices are prepared once
  into a folder on disk by MONAI's ``PersistentDataset`` and read back through a small LRU of volumes, so memory
  does not grow with the number of subjects. Same slices, same order, same figures.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Transform, apply_transform
from torch.utils.data import Dataset as _TorchDataset
from tqdm.auto import tqdm

from monai_qrvae.logging_utils import progress_enabled
from monai_qrvae.preprocessing import SliceDataset, volume_transforms

__all__ = ["PersistentSliceDataset"]


def checked_section(datalist: str | os.PathLike, section: str, read_data: bool = False) -> list[dict]:
    """One checked section of a datalist: files exist, contrasts agree in shape and affine, 3 channels.

    With ``read_data`` every voxel is read too (corrupt data, NaN/Inf voxels, all-zero images).
    """
    from monai_qrvae.data.datalist import load_datalist

    items = load_datalist(datalist, section=section, check=True, num_channels=3, read_data=read_data)
    if not items:
        raise ValueError(f"datalist {datalist}: section {section!r} is empty; expected at least one subject.")
    return items


def _stamp(value: Any) -> Any:
    """A datalist value with each existing file's modification time (a changed file is a different entry)."""
    paths = value if isinstance(value, list) else [value]
    return [(str(p), os.stat(p).st_mtime_ns) if isinstance(p, str) and os.path.exists(p) else str(p) for p in paths]


def _stamped(item: dict) -> dict:
    """A datalist entry, keys sorted, every file with its modification time."""
    return {k: _stamp(v) for k, v in sorted(item.items())}


SLICE_CACHE: dict[tuple[Any, ...], SliceDataset] = {}
SLICE_CACHE_SIZE = 4


def slice_dataset(
    items: list[dict],
    image_size: int | None,
    num_slices: int | None,
    progress: bool,
    context: str = "none",
    spacing: Sequence[float] | None = None,
) -> SliceDataset:
    """The slices of ``items``, prepared once per process: the demo, the sweep and the benchmark train several
    methods and seeds on the same volumes (a small in-memory cache of the last few datasets, keyed by the entries,
    their files' modification times and the slice settings)."""
    key = (
        json.dumps([_stamped(item) for item in items], default=str),
        image_size,
        num_slices,
        context,
        None if spacing is None else tuple(spacing),
    )
    if key not in SLICE_CACHE:
        if len(SLICE_CACHE) >= SLICE_CACHE_SIZE:
            SLICE_CACHE.pop(next(iter(SLICE_CACHE)))
        vt = volume_transforms(image_size=image_size, num_slices=num_slices, context=context, spacing=spacing)
        SLICE_CACHE[key] = SliceDataset(items, vt, progress=progress)
    return SLICE_CACHE[key]


def _stamped_hash(item: dict) -> bytes:
    """The cache name of a datalist entry in :class:`PersistentSliceDataset` (its files and their modification
    times: an image rewritten in place is prepared again)."""
    return pickle_hashing(_stamped(item))


class _VolumeSlices(Transform):
    """The transform :class:`PersistentSliceDataset` caches: one volume -> its slice items (exactly as
    :class:`~monai_qrvae.preprocessing.SliceDataset` makes them), stored as one stacked tensor per key (a few large
    tensors load much faster than many small ones): ``{"num_slices": N, "stacked": {key: (N, ...) tensor or list}}``.
    """

    def __init__(self, transform: Callable, keys: Sequence[str]) -> None:
        self.transform = transform
        self.keys = tuple(keys)

    def __call__(self, volume: dict[str, Any]) -> dict[str, Any]:
        try:
            slices = SliceDataset([volume], self.transform, keys=self.keys, progress=False).data
        except ValueError as e:  # a volume without slices: SliceDataset skips it unless every volume has none
            if not str(e).startswith("no slices were produced"):
                raise
            slices = []
        stacked = {
            k: torch.stack([s[k] for s in slices]) if isinstance(v, torch.Tensor) else [s[k] for s in slices]
            for k, v in (slices[0].items() if slices else ())
        }
        return {"num_slices": len(slices), "stacked": stacked}


def _unstack(volume: dict[str, Any]) -> list[dict[str, Any]]:
    """The slice items of a volume stored by :class:`_VolumeSlices`."""
    return [{k: v[i] for k, v in volume["stacked"].items()} for i in range(int(volume["num_slices"]))]


class PersistentSliceDataset(_TorchDataset):
    """The slices of :class:`~monai_qrvae.preprocessing.SliceDataset` with memory bounded by ``cache_volumes``.

    Each volume is prepared once (``transform``, then split into slices) and written to ``cache_dir`` by MONAI's
    :class:`~monai.data.PersistentDataset` (one ``.pt`` file per volume, named by the entry's files and their
    modification times, written atomically by MONAI; a second run, or another process of a ``torchrun`` job,
    reads the files instead of preparing again). Item ``i`` is the same slice, in the same order, as item ``i`` of
    ``SliceDataset(data, transform, keys)``; it is read from the volume's file through an LRU of at most
    ``cache_volumes`` volumes (per process or data-loader worker), so memory does not grow with the cohort. Works
    with any sampler (``DistributedSampler`` included): the length is known after one pass over the volumes.

    The folder is specific to ``transform``: use one folder per preprocessing setting (``train`` uses a
    subfolder per ``image_size`` and ``num_slices``), as for any ``PersistentDataset``.

    Args:
        data: volume dictionaries (a datalist section).
        transform: the 3D chain, e.g. :func:`~monai_qrvae.preprocessing.volume_transforms` (deterministic).
        cache_dir: folder of the prepared volumes (created if missing).
        keys: keys split into slices (``(C, H, W, N)`` -> N items of ``(C, H, W)``).
        slice_transform: optional transform applied to each 2D slice on every access (augmentation).
        cache_volumes: volumes kept in memory at most (per process or worker).
        progress: show a progress bar while the volumes are prepared or checked.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        transform: Callable,
        cache_dir: str | os.PathLike,
        keys: Sequence[str] = ("image", "brain_mask"),
        slice_transform: Callable | None = None,
        cache_volumes: int = 16,
        progress: bool = True,
    ) -> None:
        if int(cache_volumes) < 1:
            raise ValueError(f"cache_volumes must be at least 1, got {cache_volumes}.")
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.slice_transform = slice_transform
        self.cache_volumes = int(cache_volumes)
        self.volumes = PersistentDataset(
            data=list(data), transform=_VolumeSlices(transform, keys), cache_dir=self.cache_dir, hash_func=_stamped_hash
        )
        counts = [
            int(self.volumes[i]["num_slices"])
            for i in tqdm(
                range(len(self.volumes)), desc="caching volumes", disable=not progress_enabled(progress), leave=False
            )
        ]
        if not sum(counts):
            raise ValueError(f"no slices were produced from {len(counts)} volume(s); expected at least one volume.")
        self._ends = np.cumsum(counts)
        self._lru: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return int(self._ends[-1])

    def _volume(self, index: int) -> list[dict[str, Any]]:
        """The slice items of volume ``index``, from the LRU or read from its cached file."""
        if index in self._lru:
            self._lru.move_to_end(index)
        else:
            self._lru[index] = _unstack(self.volumes[index])
            if len(self._lru) > self.cache_volumes:
                self._lru.popitem(last=False)
        return self._lru[index]

    def __getitem__(self, index: int) -> Any:
        size = len(self)
        if not -size <= int(index) < size:
            raise IndexError(f"slice index {index} out of range for a dataset of {size} slices.")
        index = int(index) % size
        volume = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[volume - 1]) if volume else 0
        item = self._volume(volume)[index - start]
        return item if self.slice_transform is None else apply_transform(self.slice_transform, item)


def persistent_slice_dataset(
    items: list[dict],
    image_size: int | None,
    num_slices: int | None,
    cache_dir: str | os.PathLike,
    progress: bool,
    context: str = "none",
    spacing: Sequence[float] | None = None,
) -> PersistentSliceDataset:
    """The bounded-memory slices of ``items``, cached under ``cache_dir`` in a subfolder per slice setting."""
    vt = volume_transforms(image_size=image_size, num_slices=num_slices, context=context, spacing=spacing)
    suffix = "" if context == "none" else f"_{context}"
    if spacing is not None:
        suffix += "_sp-" + "x".join(f"{s:g}" for s in spacing)
    folder = Path(cache_dir) / f"slices_size-{image_size}_n-{num_slices}{suffix}"
    return PersistentSliceDataset(items, vt, folder, progress=progress)
