"""Through-plane context for 2D slice models: neighbouring slices (2.5D) or the slice position as extra channels.

A 2D network sees one axial slice at a time, while the anatomy changes from the skull base to the vertex. These
transforms append context channels to a ``(C, H, W, N)`` stack of axial slices; the first ``C`` channels stay the
contrasts the model reconstructs (``target_channels`` of the networks), the others are input only.

- :class:`AdjacentSlices` (``"neighbours"``): the ``k`` slices below and above each slice, replicated at the ends
  of the stack: ``(C, H, W, N) -> (C * (2k + 1), H, W, N)``, channel blocks ``[slice n, n-k, ..., n-1, n+1, ..., n+k]``.
- :class:`SlicePosition` (``"position"``): one channel holding the slice's relative position in the stack,
  ``n / (N - 1)`` in ``[0, 1]`` (0 at the lowest slice of the brain's bounding box, 1 at the top).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

__all__ = [
    "CONTEXTS",
    "context_channels",
    "context_transform",
    "AdjacentSlices",
    "AdjacentSlicesd",
    "AdjacentSlicesD",
    "AdjacentSlicesDict",
    "SlicePosition",
    "SlicePositiond",
    "SlicePositionD",
    "SlicePositionDict",
]

#: the through-plane contexts a slice model can be trained with.
CONTEXTS = ("none", "neighbours", "position")


def _check_stack(img: NdarrayOrTensor, name: str) -> None:
    if len(img.shape) != 4 or min(img.shape) < 1:
        raise ValueError(
            f"{name}: expected a channel-first stack of axial slices (C, H, W, N), got {tuple(img.shape)}."
        )


def _like(values: torch.Tensor, reference: NdarrayOrTensor) -> torch.Tensor:
    if isinstance(reference, MetaTensor):
        return MetaTensor(values, meta=dict(reference.meta), applied_operations=list(reference.applied_operations))
    return values


class AdjacentSlices(Transform):
    """Append the ``num_neighbours`` slices below and above every axial slice as channels (2.5D input).

    Args:
        num_neighbours: slices taken on each side (``k``); the ends of the stack are replicated.
    """

    def __init__(self, num_neighbours: int = 1) -> None:
        if int(num_neighbours) != num_neighbours or num_neighbours < 1:
            raise ValueError(f"AdjacentSlices: num_neighbours must be a positive int, got {num_neighbours!r}.")
        self.num_neighbours = int(num_neighbours)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """``(C, H, W, N) -> (C * (2k + 1), H, W, N)``, the slice's own channels first."""
        _check_stack(img, "AdjacentSlices")
        t = convert_to_tensor(img, track_meta=False)
        depth = t.shape[-1]
        index = torch.arange(depth)
        blocks = [t]
        for offset in [*range(-self.num_neighbours, 0), *range(1, self.num_neighbours + 1)]:
            blocks.append(t[..., (index + offset).clamp(0, depth - 1)])
        return _like(torch.cat(blocks, dim=0), img)


class SlicePosition(Transform):
    """Append one channel with the relative axial position ``n / (N - 1)`` of each slice (0.5 for one slice)."""

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """``(C, H, W, N) -> (C + 1, H, W, N)``."""
        _check_stack(img, "SlicePosition")
        t = convert_to_tensor(img, track_meta=False)
        depth = t.shape[-1]
        ramp = torch.linspace(0.0, 1.0, depth, dtype=t.dtype) if depth > 1 else torch.full((1,), 0.5, dtype=t.dtype)
        position = ramp.reshape(1, 1, 1, depth).expand(1, *t.shape[1:])
        return _like(torch.cat([t, position], dim=0), img)


class _Contextd(MapTransform):
    def __init__(self, keys: KeysCollection, transform: Transform, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class AdjacentSlicesd(_Contextd):
    """Dictionary-based :class:`AdjacentSlices`."""

    def __init__(self, keys: KeysCollection, num_neighbours: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, AdjacentSlices(num_neighbours), allow_missing_keys)


class SlicePositiond(_Contextd):
    """Dictionary-based :class:`SlicePosition`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, SlicePosition(), allow_missing_keys)


AdjacentSlicesD = AdjacentSlicesDict = AdjacentSlicesd
SlicePositionD = SlicePositionDict = SlicePositiond


def context_channels(context: str, num_channels: int, num_neighbours: int = 1) -> int:
    """The network's input channels for ``num_channels`` contrasts with a through-plane ``context``."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}.")
    if context == "neighbours":
        return num_channels * (2 * num_neighbours + 1)
    return num_channels + (context == "position")


def context_transform(context: str, keys: KeysCollection = "image", num_neighbours: int = 1) -> MapTransform | None:
    """The dictionary transform adding ``context`` channels (``None`` for ``"none"``)."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}.")
    if context == "neighbours":
        return AdjacentSlicesd(keys, num_neighbours)
    if context == "position":
        return SlicePositiond(keys)
    return None
