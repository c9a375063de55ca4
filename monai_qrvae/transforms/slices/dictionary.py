"""Dictionary slice transforms: :class:`SelectSlicesd` and :func:`slices_to_items` (volumes -> 2D items)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import convert_to_tensor, ensure_tuple

from monai_qrvae.transforms.slices.array import SLICE_INDEX_KEY, SLICE_INDICES_KEY, SelectSlices
from monai_qrvae.transforms.utils import _check_volume

__all__ = ["SelectSlicesd", "SelectSlicesD", "SelectSlicesDict", "slices_to_items"]


class SelectSlicesd(MapTransform, InvertibleTransform):
    """Dictionary-based wrapper of :class:`SelectSlices`: the same slices are kept for every key.

    The range is computed once, from the first present key (and from ``data[mask_key]`` in ``"mask_centre"``
    mode), then applied to all ``keys``; every key must have the same depth. Invertible, also through
    ``monai.transforms.Invertd``.

    Args:
        keys: keys of the ``(C, H, W, D)`` volumes to slice (the mask key may be one of them).
        num_slices: see :class:`SelectSlices`.
        mode: see :class:`SelectSlices`.
        start: see :class:`SelectSlices`.
        stop: see :class:`SelectSlices`.
        mask_key: key of the brain mask, required by ``"mask_centre"``.
        fill_value: value of the slices that :meth:`inverse` adds back.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = SelectSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_slices: int | None = 20,
        mode: str = "centre",
        start: int | None = None,
        stop: int | None = None,
        mask_key: Hashable | None = None,
        fill_value: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.slicer = SelectSlices(num_slices=num_slices, mode=mode, start=start, stop=stop, fill_value=fill_value)
        if self.slicer.mode == "mask_centre" and mask_key is None:
            raise ValueError("SelectSlicesd: mode='mask_centre' needs mask_key (the key of the brain mask), got None.")
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        mask = None
        if self.slicer.mode == "mask_centre":
            if self.mask_key not in d:
                raise ValueError(
                    f"SelectSlicesd: mode='mask_centre' expected the brain mask under key {self.mask_key!r}, "
                    f"got keys {list(d)}."
                )
            mask = d[self.mask_key]
        ref_shape = tuple(d[keys[0]].shape)
        _check_volume(d[keys[0]], f"SelectSlicesd[{keys[0]!r}]")
        start, stop = self.slicer.compute_range(ref_shape, mask)
        for key in keys:
            if tuple(d[key].shape[1:]) != ref_shape[1:]:
                raise ValueError(
                    f"SelectSlicesd: {key!r} has shape {tuple(d[key].shape)} but {keys[0]!r} has {ref_shape}; "
                    "expected the same spatial shape for all keys."
                )
            d[key] = self.slicer.select(d[key], start, stop)
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.slicer.inverse(d[key])
        return d


def _take_slice(vol: NdarrayOrTensor, i: int, orig_index: int) -> NdarrayOrTensor:
    """2D item ``(C, H, W)`` of slice ``i`` of ``vol`` ``(C, H, W, N)`` (a copy, not a view)."""
    if isinstance(vol, MetaTensor):
        aff = vol.affine.to(torch.float64)
        aff2d = aff[[0, 1, 3]][:, [0, 1, 3]].clone()
        aff2d[:2, 2] += aff[:2, 2] * i
        meta = {k: v for k, v in vol.meta.items() if k not in ("affine", SLICE_INDICES_KEY)}
        meta[SLICE_INDEX_KEY] = orig_index
        return MetaTensor(vol.as_tensor()[..., i].clone(), affine=aff2d, meta=meta)
    if isinstance(vol, torch.Tensor):
        return vol[..., i].clone()
    return np.array(vol[..., i], copy=True)


def slices_to_items(
    data: Mapping[Hashable, Any],
    keys: KeysCollection,
    slice_keys: KeysCollection | None = None,
    allow_missing_keys: bool = False,
) -> list[dict[Hashable, Any]]:
    """Split a dict of ``(C, H, W, N)`` volumes into ``N`` dicts of 2D ``(C, H, W)`` items, one per slice.

    This is how a cached training set of 2D slices is made once from volumes (e.g. after
    :class:`SelectSlicesd`): ``items = [it for d in volumes for it in slices_to_items(d, ["image", "mask"])]``.

    Each item holds slice ``i`` of every key in ``keys``, element ``i`` of every key in ``slice_keys``
    (per-slice sequences of length ``N``, e.g. per-slice labels), a reference to every other value, and
    ``"slice_index"`` (:data:`SLICE_INDEX_KEY`): the slice's index in the original volume, read from the meta
    key ``"slice_indices"`` that :class:`SelectSlices` writes (else ``i``). A ``MetaTensor`` slice is a new
    ``MetaTensor`` with a fresh transform history, the volume's meta (plus ``"slice_index"``) and the in-plane
    ``3 x 3`` affine of that slice (rows/columns of the first two axes, origin moved to slice ``i``).

    Args:
        data: a dict with ``(C, H, W, N)`` arrays under ``keys``.
        keys: keys of the volumes to split; all must have the same ``N``.
        slice_keys: keys of per-slice sequences (length ``N``) to index instead of copying.
        allow_missing_keys: skip absent keys instead of raising.

    Returns:
        ``N`` dicts.

    Raises:
        ValueError: a key is missing, a value is not ``(C, H, W, N)``, or the ``N`` differ.
    """
    keys = ensure_tuple(keys)
    slice_keys = () if slice_keys is None else ensure_tuple(slice_keys)
    missing = [k for k in (*keys, *slice_keys) if k not in data]
    if missing and not allow_missing_keys:
        raise ValueError(f"slices_to_items: keys {missing} not found; got keys {list(data)}.")
    keys = tuple(k for k in keys if k in data)
    slice_keys = tuple(k for k in slice_keys if k in data)
    if not keys:
        raise ValueError(f"slices_to_items: none of the keys is present in the data (keys {list(data)}).")
    for k in keys:
        if len(data[k].shape) != 4:
            raise ValueError(f"slices_to_items: {k!r} has shape {tuple(data[k].shape)}; expected (C, H, W, N).")
    num = int(data[keys[0]].shape[-1])
    lengths = {k: int(data[k].shape[-1]) for k in keys} | {k: len(data[k]) for k in slice_keys}
    if any(n != num for n in lengths.values()):
        raise ValueError(f"slices_to_items: expected the same number of slices for every key, got {lengths}.")
    indices = list(range(num))
    for k in keys:
        vol = data[k]
        if isinstance(vol, MetaTensor) and SLICE_INDICES_KEY in vol.meta:
            indices = [int(v) for v in convert_to_tensor(vol.meta[SLICE_INDICES_KEY], track_meta=False).flatten()]
            break
    if len(indices) != num:
        raise ValueError(f"slices_to_items: meta {SLICE_INDICES_KEY!r} has {len(indices)} indices for {num} slices.")
    others = {k: v for k, v in data.items() if k not in keys and k not in slice_keys}
    items = []
    for i, orig in enumerate(indices):
        item: dict[Hashable, Any] = dict(others)
        item.update({k: _take_slice(data[k], i, orig) for k in keys})
        item.update({k: data[k][i] for k in slice_keys})
        item[SLICE_INDEX_KEY] = orig
        items.append(item)
    return items


SelectSlicesD = SelectSlicesDict = SelectSlicesd
