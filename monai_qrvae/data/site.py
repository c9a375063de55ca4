"""A synthetic site shift: the same subjects as if scanned at another site (contrast curve, bias field, noise).

The embedded cohort comes from one simulated scanner; a hospital's scans do not. :func:`shift_image` changes what a
new scanner and protocol change (the tissue contrast curve, a stronger receive-field bias, another noise level),
per contrast and drawn per subject, with MONAI's intensity transforms; anatomy, lesions and labels stay as they
are. :func:`make_shifted_datalist` writes a shifted copy of a datalist section, for checking that label-free
thresholds calibrated at one site hold at another (docs/real.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SITE_SHIFT", "shift_image", "make_shifted_datalist"]

#: the shift drawn per subject and contrast: gamma of the contrast curve (log-uniform range), bias-field
#: coefficient range of ``monai.transforms.RandBiasField`` (degree 3), Gaussian noise s.d. as a share of the brain's
#: median intensity, and a global intensity scale (log-uniform range).
SITE_SHIFT: dict[str, tuple[float, float]] = {
    "gamma": (0.7, 1.4),
    "bias_coeff": (0.2, 0.4),
    "noise": (0.02, 0.05),
    "scale": (0.5, 2.0),
}


def shift_image(image: np.ndarray, brain: np.ndarray, seed: int) -> np.ndarray:
    """One subject as seen at another site.

    Args:
        image: ``(C, X, Y, Z)`` intensities (>= 0).
        brain: ``(X, Y, Z)`` brain mask.
        seed: the subject's draw.

    Returns:
        ``(C, X, Y, Z)`` float32 intensities, zero where ``image`` is zero.
    """
    from monai.transforms import RandBiasField, RandGaussianNoise

    rng = np.random.default_rng(seed)
    brain = np.asarray(brain) > 0
    out = np.empty(image.shape, dtype=np.float32)
    for c, channel in enumerate(np.asarray(image, dtype=np.float32)):
        inside = channel[brain]
        ref = float(np.median(inside[inside > 0])) if np.any(inside > 0) else 1.0
        gamma = float(np.exp(rng.uniform(*np.log(SITE_SHIFT["gamma"]))))
        x = ref * np.power(np.clip(channel, 0, None) / ref, gamma)
        bias = RandBiasField(degree=3, coeff_range=SITE_SHIFT["bias_coeff"], prob=1.0)
        bias.set_random_state(seed=int(rng.integers(2**31)))
        x = np.asarray(bias(x[None]))[0]
        noise = RandGaussianNoise(prob=1.0, mean=0.0, std=float(rng.uniform(*SITE_SHIFT["noise"])) * ref)
        noise.set_random_state(seed=int(rng.integers(2**31)))
        x = np.abs(np.asarray(noise(x[None]))[0])  # magnitude images stay non-negative
        scale = float(np.exp(rng.uniform(*np.log(SITE_SHIFT["scale"]))))
        out[c] = np.where(channel > 0, x * scale, 0.0)
    return out


def make_shifted_datalist(
    datalist: str | os.PathLike, section: str, output_dir: str | os.PathLike, seed: int = 0
) -> Path:
    """Write a site-shifted copy of a datalist ``section`` (images as 4D NIfTI, masks and labels referenced).

    Returns:
        the new datalist JSON (``output_dir/datalist.json``) with the shifted subjects in ``section``.
    """
    import nibabel as nib

    from monai_qrvae.data.datalist import load_datalist

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for i, item in enumerate(load_datalist(datalist, section=section, check=False)):
        img = nib.load(item["image"])
        data = np.asarray(img.dataobj, dtype=np.float32)
        data = data[..., None] if data.ndim == 3 else data
        brain = np.asarray(nib.load(item["brain_mask"]).dataobj) > 0
        shifted = shift_image(np.moveaxis(data, -1, 0), brain, seed=seed * 100_003 + i)
        name = Path(item["image"]).parent.name or f"subject-{i:03d}"
        (output_dir / name).mkdir(exist_ok=True)
        path = output_dir / name / "image.nii.gz"
        nib.save(nib.Nifti1Image(np.moveaxis(shifted, 0, -1), img.affine), path)
        entry = {k: os.path.abspath(v) for k, v in item.items() if k in ("brain_mask", "label")}
        entry.update({k: v for k, v in item.items() if k not in ("image", "brain_mask", "label")})
        entry["image"] = os.path.relpath(path, output_dir)
        entries.append(entry)
    out = output_dir / "datalist.json"
    out.write_text(json.dumps({section: entries}, indent=2))
    return out
