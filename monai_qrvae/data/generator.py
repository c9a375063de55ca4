"""The synthetic subject generator: warps the tissue template, renders T1/T2/FLAIR, adds look-alikes and lesions.

See :mod:`monai_qrvae.data.synthetic` for the method and the cohort layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .anatomy import (
    BASE_INTENSITIES,
    BIAS_CTRL_MM,
    BIAS_SD,
    CONTRASTS,
    SNR,
    TISSUES,
    _distance_to,
    _load_template,
    _rotation,
    _smooth_field,
)
from .lesions import LESION_COUNT, Lesion, LesionsMixin
from .tumours import TumourMixin

__all__ = ["SyntheticSubject", "SyntheticBrainGenerator", "LESION_KIND_NAMES"]

_ANATOMY, _NOISE, _LESIONS, _LOOKALIKES, _TUMOUR = 0, 1, 2, 3, 4  # random streams per subject
#: Kinds of lesion subject: ``"ms"`` (3-15 white-matter lesions) or ``"tumour"`` (one space-occupying mass).
LESION_KIND_NAMES: tuple[str, ...] = ("ms", "tumour")


@dataclass
class SyntheticSubject:
    """One rendered subject.

    Attributes:
        image: ``(X, Y, Z, 3)`` float32 intensities (T1, T2, FLAIR), zero outside the brain mask.
        brain_mask: ``(X, Y, Z)`` uint8 brain mask.
        tissues: ``(X, Y, Z, 3)`` float32 tissue fractions (CSF, GM, WM) inside the mask (sum 1), zero outside.
        affine: ``(4, 4)`` voxel-to-world (RAS, mm) matrix shared by every contrast and every subject.
        label: ``(X, Y, Z)`` uint8 lesion mask, or ``None`` for a render without lesions.
        lesions: the inserted lesions.
        params: the per-subject draws (tissue intensities, noise, bias and deformation amplitudes).
        parts: ``(X, Y, Z)`` uint8 tumour compartments of a tumour subject (1 solid, 2 necrosis, 3 oedema; 0
            elsewhere; the label is ``parts > 0``), else ``None``.
    """

    image: np.ndarray
    brain_mask: np.ndarray
    tissues: np.ndarray
    affine: np.ndarray
    label: np.ndarray | None = None
    lesions: list[Lesion] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    parts: np.ndarray | None = None


class SyntheticBrainGenerator(LesionsMixin, TumourMixin):
    """Render synthetic T1/T2/FLAIR subjects from nilearn's MNI152 2009 tissue maps.

    Args:
        spacing: isotropic output voxel size in mm (the output grid covers the template brain plus ``margin_mm``).
        seed: non-negative integer; subject ``i`` of seed ``s`` is always the same subject.
        margin_mm: space kept around the template brain on every side.

    Example::

        gen = SyntheticBrainGenerator(spacing=2.0, seed=0)
        healthy = gen.generate(0)                 # no lesions
        patient = gen.generate(0, lesions=True)   # the same anatomy, noise and bias, plus 3-15 lesions
        changed = (healthy.image != patient.image).any(-1)   # contains patient.label (the visible part)
        tumour = gen.generate(0, lesions=True, kind="tumour")  # one 20-150 mL tumour with mass effect
    """

    def __init__(self, spacing: float = 2.0, seed: int = 0, margin_mm: float = 12.0) -> None:
        spacing = float(spacing)
        if not np.isfinite(spacing) or spacing < 0.5 or spacing > 8.0:
            raise ValueError(f"spacing must be between 0.5 and 8 mm, got {spacing}.")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        if margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0, got {margin_mm}.")
        self.spacing = spacing
        self.seed = int(seed)
        self.margin_mm = float(margin_mm)
        self._template = _load_template(spacing)
        lo = self._template.brain_lo - margin_mm
        hi = self._template.brain_hi + margin_mm
        self.shape: tuple[int, int, int] = tuple(int(np.ceil((h - low) / spacing)) + 1 for low, h in zip(lo, hi))
        self.affine = np.diag([spacing, spacing, spacing, 1.0])
        self.affine[:3, 3] = lo
        self._centre = (self._template.brain_lo + self._template.brain_hi) / 2.0

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index), stream])

    def _warp(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """Sample GM, WM and mask on the output grid through a random affine and a smooth displacement."""
        tpl, s = self._template, self.spacing
        scale = 1.0 + np.clip(rng.normal(0.0, 0.03, 3), -0.08, 0.08)
        angles = np.deg2rad(np.clip(rng.normal(0.0, 3.0, 3), -8.0, 8.0))
        shift = np.clip(rng.normal(0.0, 2.0, 3), -5.0, 5.0)
        amplitude = float(rng.uniform(1.5, 3.5))
        disp = _smooth_field(rng, self.shape, s, ctrl_mm=32.0, scale=amplitude, n=3)
        # world -> template world: c + M (x - c) + shift + u(x); M maps the subject onto the template
        matrix = _rotation(angles) @ np.diag(1.0 / scale)
        axes = [self.affine[d, 3] + s * np.arange(n) - self._centre[d] for d, n in enumerate(self.shape)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), 0).reshape(3, -1)
        coords = matrix @ grid
        coords += (self._centre + shift - tpl.origin)[:, None]
        coords += disp.reshape(3, -1)
        maps = [
            ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0, prefilter=False)
            for arr in (tpl.gm, tpl.wm, tpl.mask)
        ]
        params = {
            "scale": scale.round(4).tolist(),
            "rotation_deg": np.rad2deg(angles).round(3).tolist(),
            "shift_mm": shift.round(3).tolist(),
            "displacement_mm": round(amplitude, 3),
        }
        return np.stack(maps, 0).reshape(3, *self.shape), params

    def _geometry(self, tissues: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Depth inside the brain, the ventricles (deep CSF) and the distance to them (mm), shared by lesions and
        look-alikes."""
        s = self.spacing
        depth = ndimage.distance_transform_edt(mask, sampling=s).astype(np.float32)
        ventricles = (tissues[0] > 0.6) & (depth > 12.0)
        vent_dist = _distance_to(ventricles, s, reach_mm=30.0)
        return {"depth": depth, "ventricles": ventricles, "vent_dist": vent_dist}

    def generate(
        self,
        index: int,
        lesions: bool | int = False,
        subtle: bool = False,
        kind: str = "ms",
        mass_effect: bool = True,
    ) -> SyntheticSubject:
        """Render subject ``index``.

        Args:
            index: subject number (>= 0). The anatomy, intensities, look-alikes, bias and noise depend only on
                ``(seed, index)``, never on ``lesions`` (a tumour's mass effect moves them locally).
            lesions: ``False`` or ``0`` for a healthy render, ``True`` for a random count (``LESION_COUNT``,
                3 to 15), or the number of lesions to insert (``kind="tumour"``: ``True`` or ``1``, one tumour).
            subtle: draw every lesion's contrast from the faint range (:data:`FLAIR_SUBTLE_DELTA`; ``"ms"`` only).
            kind: ``"ms"`` (white-matter lesions) or ``"tumour"`` (one tumour with oedema, optional necrosis and
                mass effect; see :mod:`monai_qrvae.data.tumours`), from a random stream of its own.
            mass_effect: apply the tumour's mass effect (``False`` renders the same tumour without it).

        Returns:
            the rendered :class:`SyntheticSubject` (``label`` is ``None`` when no lesion was requested).
        """
        if int(index) != index or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}.")
        if isinstance(lesions, (bool, np.bool_)):
            n_lesions = None if lesions else 0
        elif isinstance(lesions, (int, np.integer)) and lesions >= 0:
            n_lesions = int(lesions)
        else:
            raise ValueError(f"lesions must be a bool or a non-negative integer, got {lesions!r}.")
        if kind not in LESION_KIND_NAMES:
            raise ValueError(f"kind must be one of {LESION_KIND_NAMES}, got {kind!r}.")
        if kind == "tumour" and n_lesions not in (None, 0, 1):
            raise ValueError(f"a tumour subject has one tumour: lesions must be True, False, 0 or 1, got {lesions!r}.")
        lesion_rng = self._rng(index, _LESIONS)
        drawn = int(lesion_rng.integers(LESION_COUNT[0], LESION_COUNT[1] + 1))  # always drawn: same stream
        if n_lesions is None:
            n_lesions = drawn

        rng = self._rng(index, _ANATOMY)
        maps, params = self._warp(rng)
        gm, wm, brain = maps
        mask = brain > 0.5
        csf = np.clip(brain - gm - wm, 0.0, 1.0)
        tissues = np.stack([csf, np.clip(gm, 0.0, 1.0), np.clip(wm, 0.0, 1.0)], 0)
        total = tissues.sum(0)
        tissues = np.where(mask[None], tissues / np.maximum(total, 1e-6)[None], 0.0).astype(np.float32)

        gains = np.exp(rng.normal(0.0, 0.15, len(CONTRASTS)))
        jitter = 1.0 + np.clip(rng.normal(0.0, 0.03, (len(CONTRASTS), len(TISSUES))), -0.06, 0.06)
        intensities = np.array([BASE_INTENSITIES[c] for c in CONTRASTS]) * jitter * gains[:, None]
        bias_sd = rng.uniform(*BIAS_SD, len(CONTRASTS))
        bias = _smooth_field(rng, self.shape, self.spacing, ctrl_mm=BIAS_CTRL_MM, scale=1.0, n=len(CONTRASTS))
        bias = np.exp(bias * bias_sd.astype(np.float32)[:, None, None, None])
        snr = rng.uniform(*SNR, len(CONTRASTS))
        sigma = intensities[:, 1:].mean(1) / snr

        clean = np.einsum("ct,t...->c...", intensities.astype(np.float32), tissues)
        geometry = self._geometry(tissues, mask)
        lookalikes = self._lookalikes(self._rng(index, _LOOKALIKES), tissues, mask, geometry, intensities, clean)
        label = None
        found: list[Lesion] = []
        parts = None
        noise_mask = mask  # the voxels whose noise is drawn first (the undisplaced brain for a tumour subject)
        if kind == "tumour" and n_lesions != 0:
            plan = self._tumour_plan(self._rng(index, _TUMOUR), tissues, mask, geometry["depth"])
            if mass_effect:
                (tissues, clean), mask, _ = self._mass_effect(plan, [tissues, clean], mask)
                total = tissues.sum(0)
                tissues = np.where(mask[None], tissues / np.maximum(total, 1e-6)[None], 0.0).astype(np.float32)
            weight, ratio, parts, tumour = self._tumour(plan, tissues, mask)
            label = (parts > 0).astype(np.uint8)
            target = ratio * intensities[:, 2].astype(np.float32)[:, None, None, None]
            clean = clean * (1.0 - weight[None]) + weight[None] * target
            found = [tumour]
            params["tumour"] = self._tumour_info(plan)
        elif n_lesions:
            weight, ratio, _, found = self._lesions(lesion_rng, tissues, mask, geometry, n_lesions, bool(subtle))
            wm_int = intensities[:, 2].astype(np.float32)[:, None, None, None]
            target = ratio * wm_int
            # hyperintense contrasts (T2, FLAIR): at least (1 + delta / 2) times the local tissue; T1: ratio x local
            delta = ratio - 1.0
            target[1:] = np.maximum(target[1:], clean[1:] * (1.0 + 0.5 * delta[1:]))
            target[0] = clean[0] * ratio[0]
            lesioned = weight > 0
            clean = np.where(lesioned[None], clean * (1.0 - weight[None]) + weight[None] * target, clean)
            label = (weight >= 0.5).astype(np.uint8)
        clean *= bias

        noise_rng = self._rng(index, _NOISE)
        image = np.zeros((len(CONTRASTS), mask.size), dtype=np.float32)
        # the undisplaced brain's voxels first, so a tumour subject's noise matches its healthy render away from it
        supports = [np.flatnonzero(noise_mask)]
        if noise_mask is not mask:
            supports.append(np.flatnonzero(mask & ~noise_mask))
        for inside in supports:
            for c in range(len(CONTRASTS)):
                signal = clean[c].reshape(-1)[inside]
                real = signal + sigma[c] * noise_rng.standard_normal(inside.size, dtype=np.float32)
                imag = sigma[c] * noise_rng.standard_normal(inside.size, dtype=np.float32)
                image[c, inside] = np.rint(np.sqrt(real * real + imag * imag))  # integers, like a scanner's output
        if noise_mask is not mask:
            image[:, ~mask.reshape(-1)] = 0.0  # voxels the mass effect moved out of the brain
        image = np.moveaxis(image.reshape(len(CONTRASTS), *self.shape), 0, -1)

        params.update(
            {
                "intensities": {
                    c: dict(zip(TISSUES, intensities[i].round(3).tolist())) for i, c in enumerate(CONTRASTS)
                },
                "bias_sd": dict(zip(CONTRASTS, bias_sd.round(4).tolist())),
                "noise_sigma": dict(zip(CONTRASTS, sigma.round(3).tolist())),
                "lookalikes": lookalikes,
                "subtle": bool(subtle) if n_lesions else False,
            }
        )
        return SyntheticSubject(
            image=np.ascontiguousarray(image),
            brain_mask=mask.astype(np.uint8),
            tissues=np.ascontiguousarray(np.moveaxis(tissues, 0, -1)),
            affine=self.affine.copy(),
            label=label,
            lesions=found,
            params=params,
            parts=parts,
        )
