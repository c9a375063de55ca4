"""Slice selection: :class:`SelectSlices` keeps ``N`` contiguous axial slices of a ``(C, H, W, D)`` volume.

Volumes are channel-first with the axial slices along the last axis (after ``Orientationd(axcodes="RAS")``). The
selection is invertible, so a map computed on the slices can be put back into the volume (also with
``monai.transforms.Invertd``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform
from monai.transforms.utils import create_translate
from monai.utils import TraceKeys, TransformBackends, convert_to_tensor

from monai_qrvae.transforms.utils import _check_volume

__all__ = ["SLICE_INDICES_KEY", "SLICE_INDEX_KEY", "SelectSlices"]

SLICE_INDICES_KEY = "slice_indices"
"""Meta-dict key where :class:`SelectSlices` stores the kept slice indices (1D int64 tensor)."""

SLICE_INDEX_KEY = "slice_index"
"""Key of the original axial index in each 2D item made by :func:`slices_to_items`."""

_SLICE_MODES = ("centre", "range", "mask_centre")
_MODE_ALIASES = {"center": "centre", "mask_center": "mask_centre"}


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
