"""The standard preprocessing chain (3D volume -> normalised stack of central axial slices) and the slice dataset.

The same chain is written out in the bundle configs; both call these transforms. Every spatial step is
invertible, so ``monai.transforms.Invertd`` puts maps computed on the slices back onto the input's grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import Dataset
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    Resized,
)
from tqdm.auto import tqdm

from monai_qrvae.context import context_transform
from monai_qrvae.logging_utils import progress_enabled
from monai_qrvae.transforms import (
    BrainMaskd,
    MaskedScaleIntensityPercentilesd,
    ModelSpacingd,
    SelectSlicesd,
    slices_to_items,
)

__all__ = ["RAS_LABELS", "volume_transforms", "SliceDataset"]

#: Orientation labels of the (beginning, end) of each axis, given explicitly to ``Orientationd``: the NIfTI (RAS)
#: convention, MONAI's former default, so MONAI's deprecation warning about the default is not printed on every run.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def volume_transforms(
    image_key: str = "image",
    mask_key: str = "brain_mask",
    label_key: str = "label",
    image_size: int | None = 64,
    num_slices: int | None = 20,
    slice_mode: str = "mask_centre",
    lower: float = 1.0,
    upper: float = 99.0,
    clip: bool = False,
    load: bool = True,
    context: str = "none",
    num_neighbours: int = 1,
    spacing: Sequence[float] | None = None,
) -> Compose:
    """Load, reorient to RAS, resample to the model's grid, normalise inside the brain, crop to the brain, resize
    in-plane and select slices.

    Output per item: ``image`` ``(C, S, S, N)``, ``brain_mask`` ``(1, S, S, N)`` and, where present,
    ``label`` ``(1, S, S, N)``, with ``S = image_size`` and ``N = num_slices``. A missing ``brain_mask`` is
    made from the non-zero voxels of the image; a missing ``label`` is allowed (inference).

    Args:
        image_key: key of the multi-contrast image (one 4D file or a list of per-contrast files).
        mask_key: key of the brain mask.
        label_key: key of the lesion label (optional in the data).
        image_size: in-plane size after resizing (the network's input size); ``None`` keeps the input's in-plane
            grid (for pointwise methods such as FLAIR thresholding).
        num_slices: number of central axial slices kept; ``None`` keeps every slice of the brain's bounding box.
        slice_mode: how slices are chosen, see :class:`~monai_qrvae.transforms.SelectSlices`.
        lower: lower intensity percentile inside the brain (maps to 0).
        upper: upper intensity percentile inside the brain (maps to 1).
        clip: clip the scaled intensities to [0, 1]. Off by default: clipping at the 99th percentile would cap
            exactly the bright (lesion) voxels the detector looks for.
        load: include ``LoadImaged``/``EnsureChannelFirstd`` (set False for data already in memory).
        context: through-plane context channels appended to the image after the slices are chosen: ``"none"``,
            ``"neighbours"`` (2.5D) or ``"position"``, see :mod:`monai_qrvae.context`.
        num_neighbours: slices on each side for ``context="neighbours"``.
        spacing: voxel size (mm, RAS axes) the volume is resampled to after reorientation (:class:`ModelSpacingd`,
            MONAI's ``Spacingd``: bilinear image, nearest mask and label; invertible), so that what the network sees
            and how many voxels are tested do not depend on the scanner's grid; ``None`` keeps the input's grid. An
            input already on that grid is not resampled.
    """
    keys = [image_key, mask_key, label_key]
    steps: list[Callable] = []
    if load:
        steps += [
            LoadImaged(keys=keys, allow_missing_keys=True, image_only=True),
            EnsureChannelFirstd(keys=keys, allow_missing_keys=True),
        ]
    steps += [
        EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=True),
        Orientationd(keys=keys, axcodes="RAS", labels=RAS_LABELS, allow_missing_keys=True),
        BrainMaskd(keys=image_key, mask_key=mask_key, overwrite=False),  # on the input grid, before resampling
    ]
    if spacing is not None:
        steps.append(
            ModelSpacingd(
                keys=keys,
                pixdim=tuple(float(s) for s in spacing),
                mode=("bilinear", "nearest", "nearest"),
                padding_mode="zeros",
                allow_missing_keys=True,
            )
        )
    steps += [
        MaskedScaleIntensityPercentilesd(keys=image_key, mask_key=mask_key, lower=lower, upper=upper, clip=clip),
        CropForegroundd(keys=keys, source_key=mask_key, margin=1, allow_missing_keys=True),
    ]
    if image_size is not None:
        steps.append(
            Resized(
                keys=keys,
                spatial_size=(image_size, image_size, -1),
                mode=("area", "nearest", "nearest"),
                allow_missing_keys=True,
            )
        )
    steps += [
        SelectSlicesd(
            keys=keys,
            num_slices=num_slices,
            mode=slice_mode if num_slices is not None else "range",
            mask_key=mask_key,
            allow_missing_keys=True,
        ),
        EnsureTyped(keys=[mask_key, label_key], dtype=torch.float32, allow_missing_keys=True),
    ]
    extra = context_transform(context, image_key, num_neighbours)
    if extra is not None:
        steps.append(extra)
    return Compose(steps)


class SliceDataset(Dataset):
    """A dataset of 2D axial slices, made once from 3D volumes (the volume work is not repeated each epoch).

    Args:
        data: volume dictionaries (a datalist section).
        transform: the 3D chain, e.g. :func:`volume_transforms`; each output is split into its slices.
        keys: keys split into slices (``(C, H, W, N)`` -> N items of ``(C, H, W)``).
        slice_transform: optional transform applied to each 2D slice on every access (augmentation).
        progress: show a progress bar while the volumes are prepared.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        transform: Callable,
        keys: Sequence[str] = ("image", "brain_mask"),
        slice_transform: Callable | None = None,
        progress: bool = True,
    ) -> None:
        items: list[dict[str, Any]] = []
        for volume in tqdm(data, desc="preparing slices", disable=not progress_enabled(progress), leave=False):
            prepared = transform(dict(volume))
            for item in slices_to_items(prepared, keys=[k for k in keys if k in prepared]):
                items.append(
                    {
                        k: (v.as_tensor() if hasattr(v, "as_tensor") else v)
                        for k, v in item.items()
                        if k in keys or k == "slice_index"
                    }
                )
        if not items:
            raise ValueError(f"no slices were produced from {len(data)} volume(s); expected at least one volume.")
        super().__init__(data=items, transform=slice_transform)
