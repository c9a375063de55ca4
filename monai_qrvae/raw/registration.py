"""ANTs (``antspyx``, the ``raw`` extra, imported only when a step runs): image conversion, rigid and affine
registration (steps 3 and 5 of :func:`~monai_qrvae.raw.preprocess.preprocess`), the MNI152 template they align to."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from monai_qrvae.raw.geometry import affine_to_ants_geometry, ants_params_to_ras


def _ants() -> Any:
    try:
        import ants
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "raw-series preprocessing needs ANTsPy and deepbet: pip install 'monai-qrvae[raw]' "
            f"(antspyx, deepbet); import failed: {e}"
        ) from e
    return ants


def _to_ants(data: np.ndarray, affine: np.ndarray) -> Any:
    origin, spacing, direction = affine_to_ants_geometry(affine)
    return _ants().from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin, spacing, direction)


def _ants_affine(image: Any) -> np.ndarray:
    """RAS voxel-to-world matrix of an ANTs image."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)[None, :]
    lps[:3, 3] = image.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _register(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    kind: str,
    save_to: Path,
) -> np.ndarray:
    """ANTs registration (``Rigid`` or ``Affine``, Mattes MI); copy the transform to ``save_to``, return RAS map.

    The returned ``4 x 4`` matrix is the fixed -> moving world point map (RAS), as ANTs' own transform.
    """
    ants = _ants()
    f = _to_ants(fixed, fixed_affine)
    m = _to_ants(moving, moving_affine)
    out_prefix = str(save_to.parent / f".{save_to.stem}_")
    reg = ants.registration(
        f,
        m,
        type_of_transform=kind,
        aff_metric="mattes",
        aff_sampling=32,
        aff_random_sampling_rate=0.25,
        aff_iterations=(200, 100),
        aff_shrink_factors=(4, 2),
        aff_smoothing_sigmas=(2, 1),
        outprefix=out_prefix,
    )
    path = reg["fwdtransforms"][0]
    tx = ants.read_transform(path)
    shutil.move(path, save_to)
    for leftover in save_to.parent.glob(f".{save_to.stem}_*"):
        leftover.unlink()
    return ants_params_to_ras(tx.parameters, tx.fixed_parameters)


@functools.lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray]:
    """nilearn's MNI152 2009 T1 template (brain, 2 mm) masked by its brain mask: ``(data, affine)``."""
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    data = np.asarray(img.get_fdata(), dtype=np.float32) * (np.asarray(mask.dataobj) > 0)
    return data, np.asarray(img.affine, dtype=np.float64)
