"""Brain mask: :class:`BrainMask`, the foreground (non-zero in any channel) of a skull-stripped image."""

from __future__ import annotations

import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
from scipy import ndimage

from monai_qrvae.transforms.utils import check_finite_image

__all__ = ["BrainMask"]


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
        check_finite_image(img_t, "BrainMask")
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
