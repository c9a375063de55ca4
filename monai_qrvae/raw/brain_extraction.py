"""Step 4 of :func:`~monai_qrvae.raw.preprocess.preprocess`: brain extraction with deepbet (the ``raw`` extra)."""

from __future__ import annotations

import functools
from typing import Any

import nibabel as nib
import numpy as np


def _brain_extraction(data: np.ndarray, affine: np.ndarray, threads: int | None) -> np.ndarray:
    """deepbet's brain mask of a T1 volume (CPU, weights from the installed wheel)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        bet = _bet_model()
        _, mask_img, _ = bet.run(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))
    finally:
        torch.set_num_threads(previous)
    return np.asarray(mask_img.dataobj) > 0


@functools.lru_cache(maxsize=1)
def _bet_model() -> Any:
    try:
        from deepbet import BrainExtraction
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"brain extraction needs deepbet: pip install 'monai-qrvae[raw]'; import failed: {e}") from e
    return BrainExtraction(no_gpu=True)  # TorchScript weights from the installed wheel, nothing is downloaded
