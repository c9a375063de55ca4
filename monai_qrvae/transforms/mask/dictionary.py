"""Dictionary brain mask: :class:`BrainMaskd` writes the mask of one or more images under ``mask_key``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from monai_qrvae.transforms.mask.array import BrainMask

__all__ = ["BrainMaskd", "BrainMaskD", "BrainMaskDict"]


class BrainMaskd(MapTransform):
    """Dictionary-based wrapper of :class:`BrainMask`: writes the mask of ``keys`` under ``mask_key``.

    With several keys, their channels are pooled (a voxel is brain if non-zero in any channel of any key); the
    mask takes the meta data (affine, applied operations) of the first key.

    Args:
        keys: keys of the images ``(C, *spatial)`` the mask is computed from.
        mask_key: key the mask ``(1, *spatial)`` is written to.
        threshold: see :class:`BrainMask`.
        erosion: see :class:`BrainMask`.
        dtype: see :class:`BrainMask`.
        overwrite: replace a mask already under ``mask_key``; False keeps it (e.g. a loaded brain mask) and only
            makes the mask when the key is absent.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = BrainMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: Hashable = "mask",
        threshold: float = 0.0,
        erosion: int = 0,
        dtype: DtypeLike | torch.dtype = np.float32,
        overwrite: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.overwrite = overwrite
        self.masker = BrainMask(threshold=threshold, erosion=erosion, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys or (not self.overwrite and self.mask_key in d):
            return d
        if len(keys) == 1:
            d[self.mask_key] = self.masker(d[keys[0]])
            return d
        images = [convert_to_tensor(d[k], track_meta=False) for k in keys]
        shapes = {tuple(x.shape[1:]) for x in images}
        if len(shapes) != 1:
            raise ValueError(
                f"BrainMaskd: keys {keys} have spatial shapes {sorted(shapes)}; expected one common spatial shape."
            )
        mask = convert_to_tensor(self.masker(torch.cat([x.float() for x in images], dim=0)), track_meta=False)
        ref = convert_to_tensor(d[keys[0]], track_meta=get_track_meta())
        d[self.mask_key] = convert_to_dst_type(mask, ref, dtype=self.masker.dtype)[0]
        return d


BrainMaskD = BrainMaskDict = BrainMaskd
