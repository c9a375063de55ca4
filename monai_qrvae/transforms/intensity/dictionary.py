"""Dictionary wrappers of the masked intensity transforms: the mask is read from ``data[mask_key]``."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

from monai_qrvae.transforms.intensity.array import (
    DEFAULT_LANDMARK_PERCENTILES,
    HistogramStandardize,
    MaskedScaleIntensityPercentiles,
    MaskedZScore,
)

__all__ = [
    "MaskedScaleIntensityPercentilesd",
    "MaskedScaleIntensityPercentilesD",
    "MaskedScaleIntensityPercentilesDict",
    "MaskedZScored",
    "MaskedZScoreD",
    "MaskedZScoreDict",
    "HistogramStandardized",
    "HistogramStandardizeD",
    "HistogramStandardizeDict",
]


class _MaskedIntensityd(MapTransform):
    """Base of the masked intensity dictionary transforms: reads the mask under ``mask_key`` and delegates."""

    def __init__(self, keys: KeysCollection, mask_key: Hashable | None, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.transform: Any = None

    def _mask(self, d: Mapping[Hashable, Any]) -> NdarrayOrTensor | None:
        if self.mask_key is None:
            return None
        if self.mask_key not in d:
            raise ValueError(
                f"{self.__class__.__name__}: expected the brain mask under key {self.mask_key!r}, got keys {list(d)}."
            )
        return d[self.mask_key]

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        mask = self._mask(d)
        for key in keys:
            d[key] = self.transform(d[key], mask)
        return d


class MaskedScaleIntensityPercentilesd(_MaskedIntensityd):
    """Dictionary-based wrapper of :class:`MaskedScaleIntensityPercentiles`.

    Args:
        keys: keys of the images ``(C, *spatial)`` to scale.
        mask_key: key of the brain mask ``(1 or C, *spatial)``; None: the non-zero voxels of each image.
        lower, upper, b_min, b_max, clip, background, dtype: see :class:`MaskedScaleIntensityPercentiles`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = MaskedScaleIntensityPercentiles.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: Hashable | None = None,
        lower: float = 1.0,
        upper: float = 99.0,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        background: float = 0.0,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, mask_key, allow_missing_keys)
        self.transform = MaskedScaleIntensityPercentiles(lower, upper, b_min, b_max, clip, background, dtype)


class MaskedZScored(_MaskedIntensityd):
    """Dictionary-based wrapper of :class:`MaskedZScore`.

    Args:
        keys: keys of the images ``(C, *spatial)`` to normalise.
        mask_key: key of the brain mask ``(1 or C, *spatial)``; None: the non-zero voxels of each image.
        background, dtype: see :class:`MaskedZScore`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = MaskedZScore.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: Hashable | None = None,
        background: float = 0.0,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, mask_key, allow_missing_keys)
        self.transform = MaskedZScore(background=background, dtype=dtype)


class HistogramStandardized(_MaskedIntensityd):
    """Dictionary-based wrapper of :class:`HistogramStandardize` (one set of landmarks shared by all keys).

    Args:
        keys: keys of the images ``(C, *spatial)`` to standardise.
        mask_key: key of the brain mask ``(1 or C, *spatial)``; None: the non-zero voxels of each image.
        landmarks, percentiles, output_range, background, dtype: see :class:`HistogramStandardize` (``landmarks``:
            array ``(C, L)``, JSON path or None).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = HistogramStandardize.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: Hashable | None = None,
        landmarks: NdarrayOrTensor | Sequence[Sequence[float]] | str | Path | None = None,
        percentiles: Sequence[float] = DEFAULT_LANDMARK_PERCENTILES,
        output_range: Sequence[float] | None = (0.0, 1.0),
        background: float = 0.0,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, mask_key, allow_missing_keys)
        self.transform = HistogramStandardize(landmarks, percentiles, output_range, background, dtype)

    @property
    def standardizer(self) -> HistogramStandardize:
        """The array transform holding the landmarks (for ``state_dict`` / ``to_json``)."""
        return self.transform

    def fit(self, data: Iterable[Mapping[Hashable, NdarrayOrTensor]]) -> HistogramStandardized:
        """Learn the landmarks from training dicts: every present key of every dict, with its ``mask_key`` mask."""
        images, masks = [], []
        for d in data:
            for key in self.key_iterator(dict(d)):
                images.append(d[key])
                masks.append(self._mask(d))
        self.transform.fit(images, masks)
        return self


MaskedScaleIntensityPercentilesD = MaskedScaleIntensityPercentilesDict = MaskedScaleIntensityPercentilesd
MaskedZScoreD = MaskedZScoreDict = MaskedZScored
HistogramStandardizeD = HistogramStandardizeDict = HistogramStandardized
