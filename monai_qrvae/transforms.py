"""Pre-processing transforms for QR-VAE brain MRI: slices, brain masks and intensity normalisation.

Array transforms hold the logic; their dictionary (``...d``) forms loop over ``keys`` and delegate, as in
``monai.transforms.intensity``. Volumes are channel-first ``(C, H, W, D)`` with the axial slices along the
last axis (after ``Orientationd(axcodes="RAS")``).

- :class:`SelectSlices` / :class:`SelectSlicesd`: keep ``N`` contiguous axial slices (invertible, so a map
  computed on the slices can be put back into the volume, also with ``monai.transforms.Invertd``).
- :class:`BrainMask` / :class:`BrainMaskd`: foreground (non-zero in any channel) mask, optionally eroded.
- :class:`MaskedScaleIntensityPercentiles`, :class:`MaskedZScore`, :class:`HistogramStandardize` and their
  ``...d`` forms: per-channel normalisation with statistics taken inside the brain mask only.
- :func:`slices_to_items`: split a dict of ``(C, H, W, N)`` volumes into ``N`` dicts of 2D ``(C, H, W)`` items.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, Transform
from monai.transforms.utils import create_translate
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import TraceKeys, TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple
from scipy import ndimage

__all__ = [
    "SLICE_INDEX_KEY",
    "SLICE_INDICES_KEY",
    "DEFAULT_LANDMARK_PERCENTILES",
    "SelectSlices",
    "SelectSlicesd",
    "BrainMask",
    "BrainMaskd",
    "MaskedScaleIntensityPercentiles",
    "MaskedScaleIntensityPercentilesd",
    "MaskedZScore",
    "MaskedZScored",
    "HistogramStandardize",
    "HistogramStandardized",
    "slices_to_items",
]

SLICE_INDICES_KEY = "slice_indices"
"""Meta-dict key where :class:`SelectSlices` stores the kept slice indices (1D int64 tensor)."""

SLICE_INDEX_KEY = "slice_index"
"""Key of the original axial index in each 2D item made by :func:`slices_to_items`."""

DEFAULT_LANDMARK_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
"""Nyul & Udupa landmarks: the 1st and 99th percentiles (the standard-scale ends) and the deciles between."""

_SLICE_MODES = ("centre", "range", "mask_centre")
_MODE_ALIASES = {"center": "centre", "mask_center": "mask_centre"}


# ----------------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------------


def _check_finite(img: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` when ``img`` holds NaN or Inf values."""
    if img.is_floating_point() or img.is_complex():
        bad = ~torch.isfinite(img)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: the input of shape {tuple(img.shape)} contains {int(bad.sum())} NaN/Inf values; "
                "expected finite intensities."
            )


def _check_volume(img: NdarrayOrTensor, name: str) -> None:
    """Raise ``ValueError`` unless ``img`` is a channel-first 3D volume ``(C, H, W, D)``."""
    if len(img.shape) != 4:
        raise ValueError(f"{name}: expected a channel-first volume (C, H, W, D), got shape {tuple(img.shape)}.")


def _as_float(img: NdarrayOrTensor) -> torch.Tensor:
    """Plain (meta-free) floating-point tensor view of ``img``."""
    img_t = convert_to_tensor(img, track_meta=False)
    return img_t if img_t.is_floating_point() else img_t.float()


def _prepare_mask(img: torch.Tensor, mask: NdarrayOrTensor | None, name: str) -> torch.Tensor:
    """Boolean mask ``(1 or C, *spatial)`` for ``img`` ``(C, *spatial)``.

    ``mask=None`` gives the voxels that are non-zero in any channel. A mask without a channel axis gets one.

    Raises:
        ValueError: the mask shape does not match the image, or the mask (or one of its channels) is empty.
    """
    if mask is None:
        mask_t = (img != 0).any(dim=0, keepdim=True)
        if not bool(mask_t.any()):
            raise ValueError(
                f"{name}: empty mask: mask=None selects the non-zero voxels, but the image of shape "
                f"{tuple(img.shape)} is all zero; expected a (skull-stripped) brain with non-zero intensities."
            )
        return mask_t
    mask_t = convert_to_tensor(mask, track_meta=False, device=img.device)
    if mask_t.ndim == img.ndim - 1:
        mask_t = mask_t[None]
    if mask_t.ndim != img.ndim or mask_t.shape[1:] != img.shape[1:] or mask_t.shape[0] not in (1, img.shape[0]):
        raise ValueError(
            f"{name}: mask shape {tuple(mask.shape)} does not match image shape {tuple(img.shape)}; expected "
            f"(1, {', '.join(map(str, img.shape[1:]))}) or the image shape."
        )
    mask_t = mask_t.bool() if mask_t.dtype == torch.bool else mask_t > 0
    empty = ~mask_t.flatten(1).any(dim=1)
    if bool(empty.any()):
        raise ValueError(
            f"{name}: empty mask (no foreground voxel in channel(s) {empty.nonzero().flatten().tolist()} of a mask "
            f"of shape {tuple(mask_t.shape)}); expected at least one non-zero mask voxel per channel."
        )
    return mask_t


def _percentiles(values: torch.Tensor, q: Sequence[float]) -> list[float]:
    """Percentiles ``q`` (0-100, linear interpolation) of a 1D tensor.

    Same definition as ``monai``'s ``percentile`` (``torch.quantile``), but CPU tensors go through ``np.percentile``,
    which partitions instead of sorting: about 10x faster on the ~10^5-10^6 brain voxels of a volume.
    """
    if values.device.type == "cpu":
        return [float(v) for v in np.percentile(values.numpy(), list(q))]
    return [float(v) for v in percentile(values, list(q))]


def _channel_mask(mask: torch.Tensor, channel: int) -> torch.Tensor:
    """The mask of ``channel`` (a single-channel mask is shared by all channels)."""
    return mask[channel if mask.shape[0] > 1 else 0]


# ----------------------------------------------------------------------------------------------------------------
# slice selection
# ----------------------------------------------------------------------------------------------------------------


class SelectSlices(InvertibleTransform):
    """Keep ``N`` contiguous axial slices (last axis) of a ``(C, H, W, D)`` volume: ``-> (C, H, W, N)``.

    Modes:
        - ``"centre"``: ``num_slices`` slices around the middle slice, ``start = D // 2 - num_slices // 2``
          (the convention of ``monai.transforms.CenterSpatialCrop``).
        - ``"range"``: slices ``start:stop`` with Python slice semantics (negative values count from the end),
          clamped to ``[0, D]``; ``stop=None`` means ``start + num_slices`` (or ``D`` when ``num_slices`` is
          None) and ``start=None`` means 0.
        - ``"mask_centre"``: ``num_slices`` slices centred on the centre of mass of the brain mask along the
          axial axis (``start = round(com) - num_slices // 2``), shifted to stay inside ``[0, D)``; needs ``mask``.

    The kept indices and the original depth are recorded with ``push_transform`` (in
    ``TraceKeys.EXTRA_INFO``: ``"slice_indices"``, ``"orig_depth"``, ``"start"``, ``"stop"``), so that
    :meth:`inverse` puts a ``(C', H, W, N)`` map (``C'`` may differ from ``C``, e.g. an anomaly map) back into a
    ``(C', H, W, D)`` volume, the other slices filled with ``fill_value``. The indices are also readable in the
    output's meta dict under ``"slice_indices"`` (:data:`SLICE_INDICES_KEY`, a 1D int64 tensor).

    Affine: the selection is always contiguous, so it is a crop along the last axis: the output affine is
    ``affine @ translate(0, 0, start)`` (the origin moves to slice ``start``, spacing and direction unchanged),
    exactly as ``SpatialCrop`` does; :meth:`inverse` applies ``translate(0, 0, -start)``.

    Args:
        num_slices: number of slices to keep (``"centre"`` and ``"mask_centre"``; the default ``stop`` of
            ``"range"``). A ``ValueError`` is raised at call time when it exceeds the depth ``D``.
        mode: ``"centre"``, ``"range"`` or ``"mask_centre"`` (``"center"`` and ``"mask_center"`` also accepted).
        start: first slice of ``"range"``.
        stop: end (exclusive) of ``"range"``.
        fill_value: value of the slices that :meth:`inverse` adds back.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        num_slices: int | None = 20,
        mode: str = "centre",
        start: int | None = None,
        stop: int | None = None,
        fill_value: float = 0.0,
    ) -> None:
        mode = _MODE_ALIASES.get(mode, mode)
        if mode not in _SLICE_MODES:
            raise ValueError(f"SelectSlices: mode must be one of {_SLICE_MODES}, got {mode!r}.")
        if num_slices is None and mode != "range":
            raise ValueError(f"SelectSlices: mode={mode!r} needs num_slices (a positive int), got None.")
        if num_slices is not None and (int(num_slices) != num_slices or num_slices < 1):
            raise ValueError(f"SelectSlices: num_slices must be a positive int, got {num_slices!r}.")
        self.num_slices = None if num_slices is None else int(num_slices)
        self.mode = mode
        self.start = start
        self.stop = stop
        self.fill_value = fill_value

    def compute_range(self, img_shape: Sequence[int], mask: NdarrayOrTensor | None = None) -> tuple[int, int]:
        """The kept slices ``start:stop`` for a volume of shape ``img_shape`` ``(C, H, W, D)``.

        Args:
            img_shape: shape of the channel-first volume.
            mask: brain mask ``(1 or C, H, W, D)`` or ``(H, W, D)``, needed by ``"mask_centre"``.

        Raises:
            ValueError: the selection is empty, ``num_slices > D``, or the mask is missing, empty or of another
                shape than the volume.
        """
        img_shape = tuple(int(s) for s in img_shape)
        if len(img_shape) != 4:
            raise ValueError(f"SelectSlices: expected a channel-first volume (C, H, W, D), got shape {img_shape}.")
        depth = img_shape[-1]
        if self.mode == "range":
            first = 0 if self.start is None else int(self.start)
            last = self.stop
            if last is None:
                last = depth if self.num_slices is None else first + self.num_slices
            start, stop, _ = slice(first, int(last)).indices(depth)
            if stop <= start:
                raise ValueError(
                    f"SelectSlices: empty range start={self.start}, stop={self.stop} (num_slices={self.num_slices}) "
                    f"for depth {depth}; expected at least one slice in [0, {depth})."
                )
            return start, stop
        num = int(self.num_slices)  # type: ignore[arg-type]
        if num > depth:
            raise ValueError(f"SelectSlices: num_slices={num} exceeds the depth D={depth} of the volume {img_shape}.")
        if self.mode == "centre":
            start = depth // 2 - num // 2
        else:
            centre = int(math.floor(self.mask_centre_of_mass(img_shape, mask) + 0.5))
            start = min(max(centre - num // 2, 0), depth - num)
        return start, start + num

    @staticmethod
    def mask_centre_of_mass(img_shape: Sequence[int], mask: NdarrayOrTensor | None) -> float:
        """Centre of mass (in voxels) of the non-zero voxels of ``mask`` along the last (axial) axis.

        Raises:
            ValueError: ``mask`` is None, empty, or its spatial shape differs from ``img_shape[1:]``.
        """
        if mask is None:
            raise ValueError(
                "SelectSlices: mode='mask_centre' needs a brain mask (1, H, W, D), got None "
                "(pass mask=..., or mask_key=... to SelectSlicesd)."
            )
        mask_t = convert_to_tensor(mask, track_meta=False)
        if mask_t.ndim == len(img_shape) - 1:
            mask_t = mask_t[None]
        if mask_t.ndim != len(img_shape) or tuple(mask_t.shape[1:]) != tuple(img_shape[1:]):
            raise ValueError(
                f"SelectSlices: mask shape {tuple(mask.shape)} does not match image shape {tuple(img_shape)}; "
                f"expected (1, {', '.join(map(str, img_shape[1:]))})."
            )
        profile = (mask_t != 0).sum(dim=tuple(range(mask_t.ndim - 1))).double()
        total = profile.sum()
        if total == 0:
            raise ValueError(
                f"SelectSlices: empty brain mask of shape {tuple(mask_t.shape)}: mode='mask_centre' expected "
                "at least one non-zero voxel."
            )
        return float((profile * torch.arange(profile.numel(), dtype=torch.float64)).sum() / total)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> torch.Tensor:
        """Select the slices of ``img`` ``(C, H, W, D)``; ``mask`` is used by ``"mask_centre"`` only."""
        _check_volume(img, "SelectSlices")
        start, stop = self.compute_range(img.shape, mask)
        return self.select(img, start, stop)

    def select(self, img: NdarrayOrTensor, start: int, stop: int) -> torch.Tensor:
        """Keep slices ``start:stop`` of ``img`` ``(C, H, W, D)`` and record them for :meth:`inverse`."""
        _check_volume(img, "SelectSlices")
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        spatial = tuple(int(s) for s in img_t.shape[1:])
        depth = spatial[-1]
        if not 0 <= start < stop <= depth:
            raise ValueError(f"SelectSlices: slices {start}:{stop} are outside the depth D={depth} of the volume.")
        extra_info = {SLICE_INDICES_KEY: list(range(start, stop)), "orig_depth": depth, "start": start, "stop": stop}
        meta_info = self.track_transform_meta(
            img_t,
            sp_size=[*spatial[:-1], stop - start],
            affine=create_translate(len(spatial), [0] * (len(spatial) - 1) + [start]),
            extra_info=extra_info,
            orig_size=spatial,
            transform_info=self.get_transform_info(),
            lazy=False,
        )
        out = convert_to_tensor(img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t, track_meta=False)
        out = convert_to_tensor(out[..., start:stop], track_meta=get_track_meta())
        if isinstance(out, MetaTensor):
            out = out.copy_meta_from(meta_info)
            out.meta[SLICE_INDICES_KEY] = torch.arange(start, stop, dtype=torch.int64)
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Put a ``(C', H, W, N)`` map back into ``(C', H, W, D)``, other slices set to ``fill_value``."""
        transform = self.pop_transform(data)
        return self.inverse_transform(data, transform)

    def inverse_transform(self, data: torch.Tensor, transform: Mapping) -> torch.Tensor:
        """Invert with the recorded ``transform`` (already popped from ``data``)."""
        extra = transform[TraceKeys.EXTRA_INFO]
        indices = list(extra[SLICE_INDICES_KEY])
        depth, start = int(extra["orig_depth"]), int(extra["start"])
        if data.ndim != 4 or data.shape[-1] != len(indices):
            raise ValueError(
                f"SelectSlices.inverse: expected a (C', H, W, {len(indices)}) map on the {len(indices)} selected "
                f"slices, got shape {tuple(data.shape)}."
            )
        plain = data.as_tensor() if isinstance(data, MetaTensor) else convert_to_tensor(data, track_meta=False)
        out_t = torch.full((*plain.shape[:-1], depth), self.fill_value, dtype=plain.dtype, device=plain.device)
        out_t[..., indices] = plain
        out = convert_to_tensor(out_t, track_meta=get_track_meta())
        if isinstance(data, MetaTensor) and isinstance(out, MetaTensor):
            with self.trace_transform(False):
                meta_info = self.track_transform_meta(
                    data,
                    affine=create_translate(3, [0, 0, -start]),
                    transform_info=self.get_transform_info(),
                    lazy=False,
                )
            out = out.copy_meta_from(meta_info)
            out.meta.pop(SLICE_INDICES_KEY, None)
        return out


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


# ----------------------------------------------------------------------------------------------------------------
# brain mask
# ----------------------------------------------------------------------------------------------------------------


class BrainMask(Transform):
    """Brain mask ``(1, *spatial)`` of a (skull-stripped) image ``(C, *spatial)``.

    A voxel is brain when ``|x| > threshold`` in any channel; the mask is then optionally eroded with
    ``scipy.ndimage.binary_erosion`` (``erosion`` iterations of the face-connected structuring element, over all
    spatial axes; voxels on the image border count as background).

    Args:
        threshold: a voxel is foreground when its absolute intensity exceeds this in some channel.
        erosion: number of erosion iterations (0: none).
        dtype: output data type (default float32 0/1, safe to resample and collate).

    Raises:
        ValueError: the image contains NaN/Inf, or the mask is empty (before or after erosion).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float = 0.0, erosion: int = 0, dtype: DtypeLike | torch.dtype = np.float32) -> None:
        if erosion < 0 or int(erosion) != erosion:
            raise ValueError(f"BrainMask: erosion must be a non-negative int, got {erosion!r}.")
        self.threshold = threshold
        self.erosion = int(erosion)
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Mask of ``img`` ``(C, *spatial)``: a tensor (``MetaTensor`` with the meta of ``img``), one channel."""
        img = convert_to_tensor(img, track_meta=get_track_meta())
        img_t = convert_to_tensor(img, track_meta=False)
        if img_t.ndim < 2:
            raise ValueError(f"BrainMask: expected a channel-first image (C, *spatial), got shape {tuple(img.shape)}.")
        _check_finite(img_t, "BrainMask")
        mask = (img_t.abs() > self.threshold).any(dim=0, keepdim=True)
        if not bool(mask.any()):
            raise ValueError(
                f"BrainMask: empty brain mask: expected at least one voxel with |intensity| > {self.threshold} in "
                f"some channel, got an image of shape {tuple(img_t.shape)} with max |intensity| "
                f"{float(img_t.abs().max()) if img_t.numel() else 0.0}."
            )
        if self.erosion:
            eroded = ndimage.binary_erosion(
                mask[0].cpu().numpy(),
                structure=ndimage.generate_binary_structure(mask.ndim - 1, 1),
                iterations=self.erosion,
            )
            if not eroded.any():
                raise ValueError(
                    f"BrainMask: empty brain mask after erosion={self.erosion}: the {int(mask.sum())}-voxel mask "
                    "vanished; expected a smaller erosion for this image."
                )
            mask = torch.as_tensor(eroded, device=img_t.device)[None]
        return convert_to_dst_type(mask, img, dtype=self.dtype)[0]


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


# ----------------------------------------------------------------------------------------------------------------
# intensity normalisation inside the brain mask
# ----------------------------------------------------------------------------------------------------------------


class MaskedScaleIntensityPercentiles(Transform):
    """Per-channel robust scaling with percentiles computed inside the brain mask only.

    For each channel, ``a = P_lower`` and ``b = P_upper`` of the voxels inside the mask are mapped to ``b_min``
    and ``b_max`` linearly (optionally clipped to ``[b_min, b_max]``); voxels outside the mask are set to
    ``background``. Cf. ``monai.transforms.ScaleIntensityRangePercentiles``, which uses all voxels.

    Args:
        lower: lower percentile in [0, 100].
        upper: upper percentile in [0, 100], greater than ``lower``.
        b_min: value ``P_lower`` maps to.
        b_max: value ``P_upper`` maps to.
        clip: clip the scaled brain voxels to ``[b_min, b_max]``.
        background: value of the voxels outside the mask.
        dtype: output data type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        lower: float = 1.0,
        upper: float = 99.0,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        background: float = 0.0,
        dtype: DtypeLike = np.float32,
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(
                f"MaskedScaleIntensityPercentiles: expected 0 <= lower < upper <= 100, got {lower=}, {upper=}."
            )
        self.lower = lower
        self.upper = upper
        self.b_min = b_min
        self.b_max = b_max
        self.clip = clip
        self.background = background
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Scale ``img`` ``(C, *spatial)``; ``mask`` ``(1 or C, *spatial)``, None: non-zero voxels."""
        name = self.__class__.__name__
        img = convert_to_tensor(img, track_meta=get_track_meta())
        img_t = _as_float(img)
        _check_finite(img_t, name)
        mask_t = _prepare_mask(img_t, mask, name)
        out = torch.empty_like(img_t)
        for c in range(img_t.shape[0]):
            m = _channel_mask(mask_t, c)
            a, b = _percentiles(img_t[c][m], [self.lower, self.upper])
            if b - a == 0.0:
                warnings.warn(
                    f"{name}: channel {c} is constant inside the mask (P{self.lower} = P{self.upper} = {a}); "
                    "only shifting it.",
                    stacklevel=2,
                )
                scaled = img_t[c] - a + self.b_min
            else:
                scaled = (img_t[c] - a) / (b - a) * (self.b_max - self.b_min) + self.b_min
            if self.clip:
                scaled = scaled.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max))
            # dense arithmetic + where: faster than gathering and scattering the masked voxels
            out[c] = torch.where(m, scaled, torch.tensor(self.background, dtype=scaled.dtype))
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]


class MaskedZScore(Transform):
    """Per-channel z-score with the mean and (population) standard deviation of the voxels inside the mask.

    Brain voxels become ``(x - mean) / std`` (mean 0, std 1 inside the mask); voxels outside are set to
    ``background``. A channel that is constant inside the mask is only centred (with a warning), as
    ``monai.transforms.NormalizeIntensity`` does.

    Args:
        background: value of the voxels outside the mask.
        dtype: output data type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, background: float = 0.0, dtype: DtypeLike = np.float32) -> None:
        self.background = background
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Z-score ``img`` ``(C, *spatial)``; ``mask`` ``(1 or C, *spatial)``, None: non-zero voxels."""
        name = self.__class__.__name__
        img = convert_to_tensor(img, track_meta=get_track_meta())
        img_t = _as_float(img)
        _check_finite(img_t, name)
        mask_t = _prepare_mask(img_t, mask, name)
        out = torch.full_like(img_t, self.background)
        for c in range(img_t.shape[0]):
            m = _channel_mask(mask_t, c)
            values = img_t[c][m].double()
            std, mean = torch.std_mean(values, correction=0)
            if float(std) == 0.0:
                warnings.warn(f"{name}: channel {c} is constant inside the mask; only centring it.", stacklevel=2)
                std = torch.ones_like(std)
            out[c][m] = ((values - mean) / std).to(out.dtype)
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]


def _piecewise_linear(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map through the points ``(xp, fp)`` with linear extrapolation by the end segments.

    Tied source landmarks (``xp[k] == xp[k - 1]``) are dropped, keeping the first of each run.
    """
    keep = torch.ones_like(xp, dtype=torch.bool)
    keep[1:] = xp[1:] > xp[:-1]
    xp, fp = xp[keep], fp[keep]
    if xp.numel() < 2:
        raise ValueError(
            "HistogramStandardize: the image is constant inside the mask (all landmarks equal); "
            "expected at least two distinct landmark intensities."
        )
    x64 = x.to(xp.dtype).contiguous()
    idx = torch.searchsorted(xp, x64).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return y0 + (x64 - x0) * (y1 - y0) / (x1 - x0)


class HistogramStandardize(Transform):
    """Nyul & Udupa piecewise-linear histogram standardisation, per channel, inside the brain mask.

    Nyul, Udupa, Zhang, "New variants of a method of MRI scale standardization", IEEE TMI 19(2), 2000.

    Training (:meth:`fit`): for every training volume and channel, the intensity landmarks at ``percentiles``
    (default 1, 10, 20, ..., 90, 99) are taken inside the mask and, when ``output_range=(s1, s2)`` is given,
    mapped linearly so that the first and last landmarks land on ``s1`` and ``s2``; the standard landmarks are
    their mean over volumes. With ``output_range=None`` the raw landmarks are averaged, so fitting on a single
    reference volume histogram-matches every subject to that reference (the QR-VAE paper's preprocessing).

    Transform (:meth:`__call__`): the landmarks of the new volume are computed the same way and the brain voxels
    are mapped piecewise-linearly from them to the standard landmarks (linear extrapolation beyond the first
    and last landmarks); voxels outside the mask are set to ``background``.

    The landmarks ``(C, L)`` round-trip through :meth:`state_dict` / :meth:`load_state_dict` and
    :meth:`to_json` / :meth:`from_json` (``landmarks=`` also accepts the JSON path).

    Args:
        landmarks: standard landmarks ``(C, L)`` (array, nested list), a JSON file written by :meth:`to_json`,
            or None (call :meth:`fit` before use).
        percentiles: strictly increasing landmark percentiles in [0, 100], at least two.
        output_range: ``(s1, s2)`` standard scale of the first and last landmarks, or None (reference scale).
        background: value of the voxels outside the mask.
        dtype: output data type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        landmarks: NdarrayOrTensor | Sequence[Sequence[float]] | str | Path | None = None,
        percentiles: Sequence[float] = DEFAULT_LANDMARK_PERCENTILES,
        output_range: Sequence[float] | None = (0.0, 1.0),
        background: float = 0.0,
        dtype: DtypeLike = np.float32,
    ) -> None:
        self.percentiles = self._check_percentiles(percentiles)
        self.output_range = self._check_output_range(output_range)
        self.background = background
        self.dtype = dtype
        self.landmarks: torch.Tensor | None = None
        if isinstance(landmarks, (str, Path)):
            path = Path(landmarks)
            if not path.is_file():
                raise FileNotFoundError(f"HistogramStandardize: landmarks file {str(path)!r} not found.")
            self.load_state_dict(json.loads(path.read_text()))
        elif landmarks is not None:
            self.landmarks = self._check_landmarks(landmarks)

    @staticmethod
    def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
        p = tuple(float(v) for v in ensure_tuple(percentiles))
        if len(p) < 2 or any(b <= a for a, b in zip(p, p[1:])) or p[0] < 0.0 or p[-1] > 100.0:
            raise ValueError(
                f"HistogramStandardize: percentiles must be at least two strictly increasing values in [0, 100], "
                f"got {percentiles}."
            )
        return p

    @staticmethod
    def _check_output_range(output_range: Sequence[float] | None) -> tuple[float, float] | None:
        if output_range is None:
            return None
        r = tuple(float(v) for v in ensure_tuple(output_range))
        if len(r) != 2 or not r[0] < r[1]:
            raise ValueError(f"HistogramStandardize: output_range must be (s1, s2) with s1 < s2, got {output_range}.")
        return r  # type: ignore[return-value]

    def _check_landmarks(self, landmarks: Any) -> torch.Tensor:
        lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))
        if lm.ndim != 2 or lm.shape[1] != len(self.percentiles):
            raise ValueError(
                f"HistogramStandardize: landmarks of shape {tuple(lm.shape)} do not match the {len(self.percentiles)} "
                f"percentiles; expected (C, {len(self.percentiles)})."
            )
        if not bool(torch.isfinite(lm).all()) or bool((lm[:, 1:] <= lm[:, :-1]).any()):
            raise ValueError(
                f"HistogramStandardize: landmarks must be finite and increase strictly per channel, got {lm.tolist()}."
            )
        return lm

    def image_landmarks(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> torch.Tensor:
        """Landmarks ``(C, L)`` (float64) of ``img`` ``(C, *spatial)`` inside ``mask`` (None: non-zero voxels)."""
        img_t = _as_float(img).double()
        _check_finite(img_t, "HistogramStandardize")
        mask_t = _prepare_mask(img_t, mask, "HistogramStandardize")
        return self._landmarks(img_t, mask_t)

    def _landmarks(self, img_t: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
        rows = [
            torch.as_tensor(_percentiles(img_t[c][_channel_mask(mask_t, c)], self.percentiles), dtype=torch.float64)
            for c in range(img_t.shape[0])
        ]
        return torch.stack(rows).cpu()

    def fit(
        self, images: Iterable[NdarrayOrTensor], masks: Iterable[NdarrayOrTensor | None] | None = None
    ) -> HistogramStandardize:
        """Learn the standard landmarks from training volumes.

        Args:
            images: volumes ``(C, *spatial)`` with the same channels.
            masks: one brain mask per volume (``(1 or C, *spatial)``, or None for the non-zero voxels), or None.

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: no image, image/mask counts differ, channel counts differ, NaN/Inf, empty mask, or a
                volume whose first and last landmarks coincide when ``output_range`` is set.
        """
        images = list(images)
        masks = [None] * len(images) if masks is None else list(masks)
        if not images:
            raise ValueError("HistogramStandardize.fit: expected at least one training image, got none.")
        if len(masks) != len(images):
            raise ValueError(f"HistogramStandardize.fit: got {len(images)} images but {len(masks)} masks.")
        all_landmarks = []
        for i, (img, mask) in enumerate(zip(images, masks)):
            lm = self.image_landmarks(img, mask)
            if self.output_range is not None:
                span = lm[:, -1:] - lm[:, :1]
                if bool((span <= 0).any()):
                    raise ValueError(
                        f"HistogramStandardize.fit: image {i} has equal first and last landmarks in channel(s) "
                        f"{(span[:, 0] <= 0).nonzero().flatten().tolist()}; expected a non-constant brain."
                    )
                s1, s2 = self.output_range
                lm = s1 + (lm - lm[:, :1]) / span * (s2 - s1)
            if all_landmarks and lm.shape != all_landmarks[0].shape:
                raise ValueError(
                    f"HistogramStandardize.fit: image {i} has {lm.shape[0]} channels, image 0 has "
                    f"{all_landmarks[0].shape[0]}; expected the same channels in all images."
                )
            all_landmarks.append(lm)
        self.landmarks = self._check_landmarks(torch.stack(all_landmarks).mean(dim=0))
        return self

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Standardise ``img`` ``(C, *spatial)``; ``mask`` ``(1 or C, *spatial)``, None: non-zero voxels."""
        if self.landmarks is None:
            raise ValueError(
                "HistogramStandardize: no standard landmarks; call fit(images, masks), pass landmarks=..., "
                "or load_state_dict() first."
            )
        img = convert_to_tensor(img, track_meta=get_track_meta())
        img_t = _as_float(img)
        if img_t.ndim < 2 or img_t.shape[0] != self.landmarks.shape[0]:
            raise ValueError(
                f"HistogramStandardize: image of shape {tuple(img_t.shape)} has not the {self.landmarks.shape[0]} "
                "channels of the landmarks; expected (C, *spatial) with the fitted C."
            )
        _check_finite(img_t, "HistogramStandardize")
        mask_t = _prepare_mask(img_t, mask, "HistogramStandardize")
        source = self._landmarks(img_t.double(), mask_t).to(img_t.device)
        target = self.landmarks.to(img_t.device)
        out = torch.full_like(img_t, self.background)
        for c in range(img_t.shape[0]):
            m = _channel_mask(mask_t, c)
            out[c][m] = _piecewise_linear(img_t[c][m], source[c], target[c]).to(out.dtype)
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: ``percentiles``, ``output_range`` and ``landmarks`` (``(C, L)`` or None)."""
        return {
            "percentiles": list(self.percentiles),
            "output_range": None if self.output_range is None else list(self.output_range),
            "landmarks": None if self.landmarks is None else self.landmarks.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`.

        Raises:
            ValueError: a key is missing or a value is invalid.
        """
        missing = {"percentiles", "output_range", "landmarks"} - set(state)
        if missing:
            raise ValueError(
                f"HistogramStandardize.load_state_dict: missing keys {sorted(missing)}, got keys {sorted(state)}."
            )
        self.percentiles = self._check_percentiles(state["percentiles"])
        self.output_range = self._check_output_range(state["output_range"])
        self.landmarks = None if state["landmarks"] is None else self._check_landmarks(state["landmarks"])

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` as JSON to ``path`` and return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.state_dict(), indent=2))
        return path

    @classmethod
    def from_json(cls, path: str | Path, **kwargs: Any) -> HistogramStandardize:
        """A transform with the state of the JSON file ``path`` (``kwargs``: ``background``, ``dtype``)."""
        return cls(landmarks=path, **kwargs)


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
        lower: see :class:`MaskedScaleIntensityPercentiles`.
        upper: see :class:`MaskedScaleIntensityPercentiles`.
        b_min: see :class:`MaskedScaleIntensityPercentiles`.
        b_max: see :class:`MaskedScaleIntensityPercentiles`.
        clip: see :class:`MaskedScaleIntensityPercentiles`.
        background: see :class:`MaskedScaleIntensityPercentiles`.
        dtype: see :class:`MaskedScaleIntensityPercentiles`.
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
        background: see :class:`MaskedZScore`.
        dtype: see :class:`MaskedZScore`.
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
        landmarks: see :class:`HistogramStandardize` (array ``(C, L)``, JSON path or None).
        percentiles: see :class:`HistogramStandardize`.
        output_range: see :class:`HistogramStandardize`.
        background: see :class:`HistogramStandardize`.
        dtype: see :class:`HistogramStandardize`.
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


# ----------------------------------------------------------------------------------------------------------------
# volumes -> 2D items
# ----------------------------------------------------------------------------------------------------------------


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
