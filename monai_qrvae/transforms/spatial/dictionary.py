"""``ModelSpacingd``: MONAI's ``Spacingd`` that leaves the data's other entries alone.

After resampling a NIfTI-loaded key, MONAI's ``Spacingd`` refreshes every entry whose name starts with
``<key>_`` as if it were that key's meta dictionary; an entry such as MONAI Label's ``image_path`` (a string) then
fails with "'str' object has no attribute 'update'". ``ModelSpacingd`` sets such non-dictionary entries aside
during the call; resampling, its recorded history and :meth:`inverse` are ``Spacingd``'s.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import Spacingd

__all__ = ["ModelSpacingd", "ModelSpacingD", "ModelSpacingDict"]


class ModelSpacingd(Spacingd):
    """``monai.transforms.Spacingd`` (same arguments) that never treats a non-dictionary ``<key>_...`` entry as a
    meta dictionary: the resampling onto the model's grid in :func:`~monai_qrvae.preprocessing.volume_transforms`."""

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)
        }
        out = dict(super().__call__(d, lazy=lazy))
        out.update(aside)
        return out


ModelSpacingD = ModelSpacingDict = ModelSpacingd
