"""Space-occupying tumours (glioma / metastasis-like) of the synthetic cohort, drawn on a generator's grid.

One tumour per subject (``lesion_kind="tumour"``): a whole-tumour volume of 20-150 mL made of a solid part, an
optional necrotic core and surrounding vasogenic oedema, an irregular lobulated shape centred in the cerebral white
matter, and a mild mass effect (a smooth radial displacement pushing the surrounding tissue outwards by a few mm,
applied to the tissue maps, the rendered image and the brain mask before the tumour is painted).
:class:`TumourMixin` holds the drawing; :class:`monai_qrvae.data.generator.SyntheticBrainGenerator` mixes it in.
Every number is documented (with its source) in docs/data.md, "Tumour kind".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .anatomy import CONTRASTS
from .lesions import EDGE_MM, GeneratorGrid, Lesion

__all__ = [
    "Tumour",
    "TumourMixin",
    "TUMOUR_VOLUME_ML",
    "TUMOUR_CORE_FRACTION",
    "TUMOUR_NECROSIS",
    "TUMOUR_CONTRASTS",
    "TUMOUR_MASS_EFFECT_MM",
    "TUMOUR_CENTRAL_MM",
    "TUMOUR_DEPTH_MM",
]

#: Whole-tumour (solid + necrosis + oedema: the label) volume in mL, log-uniform over this range.
TUMOUR_VOLUME_ML: tuple[float, float] = (20.0, 150.0)
#: Share of the whole tumour taken by the core (solid part + necrosis), uniform; the rest is oedema.
TUMOUR_CORE_FRACTION: tuple[float, float] = (0.25, 0.6)
#: Probability of a necrotic core and its share of the core (uniform).
TUMOUR_NECROSIS: tuple[float, tuple[float, float]] = (0.5, (0.3, 0.6))
#: Intensity / normal white matter ratio ranges (uniform) per compartment and contrast (T1, T2, FLAIR).
TUMOUR_CONTRASTS: dict[str, dict[str, tuple[float, float]]] = {
    "oedema": {"T1": (0.7, 0.85), "T2": (1.8, 2.4), "FLAIR": (1.3, 1.6)},
    "solid": {"T1": (0.65, 0.85), "T2": (1.4, 1.9), "FLAIR": (1.15, 1.45)},
    "necrosis": {"T1": (0.4, 0.55), "T2": (2.2, 2.7), "FLAIR": (0.3, 0.7)},
}
#: Peak outward displacement of the mass effect (mm, uniform) at the tumour's equivalent-sphere radius.
TUMOUR_MASS_EFFECT_MM: tuple[float, float] = (2.0, 5.0)
#: The tumour's centre lies within this distance (mm, axially) of the brain mask's centre of mass.
TUMOUR_CENTRAL_MM = 20.0
#: The tumour's centre lies at least this deep (mm) inside the brain mask, in white matter.
TUMOUR_DEPTH_MM = 15.0
#: Relative amplitude of the solid part's texture and the oedema's slow variation.
_TEXTURE = 0.06


@dataclass
class Tumour(Lesion):
    """One inserted tumour (a :class:`Lesion` with ``kind="tumour"``; world coordinates in mm, RAS).

    ``n_voxels`` / ``volume_ml`` are the whole tumour's (the label); ``radius_mm`` is its equivalent-sphere radius;
    ``contrast`` is the oedema's intensity / normal white matter ratio.

    Attributes:
        necrotic: whether the tumour has a necrotic core.
        parts_ml: volume (mL) of each compartment (``solid``, ``necrosis``, ``oedema``).
        contrasts: intensity / normal white matter ratio per compartment and contrast.
        mass_effect_mm: peak outward displacement of the surrounding tissue.
    """

    necrotic: bool = False
    parts_ml: dict[str, float] | None = None
    contrasts: dict[str, dict[str, float]] | None = None
    mass_effect_mm: float = 0.0


def _top_voxels(score: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` allowed voxels of highest ``score`` (boolean mask; fewer if fewer are allowed)."""
    out = np.zeros(score.shape, dtype=bool)
    idx = np.flatnonzero(allowed)
    if idx.size and n > 0:
        order = np.argsort(-score.reshape(-1)[idx], kind="stable")[:n]
        out.reshape(-1)[idx[order]] = True
    return out


class TumourMixin(GeneratorGrid):
    """Draws one tumour and its mass effect on the grid of the generator it is mixed into (:class:`GeneratorGrid`)."""

    def _tumour_plan(
        self, rng: np.random.Generator, tissues: np.ndarray, mask: np.ndarray, depth: np.ndarray
    ) -> dict[str, Any]:
        """Draw the tumour's centre (voxel), volumes, necrosis, contrasts and mass effect (before any warp)."""
        s = self.spacing
        wm = tissues[2]
        z_mm = self.affine[2, 3] + s * np.arange(self.shape[2])
        z_com = float((mask.sum((0, 1)) * z_mm).sum() / max(int(mask.sum()), 1))
        central = (np.abs(z_mm - z_com) <= TUMOUR_CENTRAL_MM)[None, None, :]
        white = mask & (wm > 0.5) & (tissues[0] < 0.2)
        pool = np.flatnonzero(white & central & (depth >= TUMOUR_DEPTH_MM))
        if pool.size == 0:
            pool = np.flatnonzero(white) if white.any() else np.flatnonzero(mask)
        if pool.size == 0:
            raise ValueError("no voxel can hold a tumour: the brain mask is empty.")
        centre = np.array(np.unravel_index(rng.choice(pool), self.shape))
        volume = float(np.exp(rng.uniform(*np.log(TUMOUR_VOLUME_ML))))
        core = float(rng.uniform(*TUMOUR_CORE_FRACTION))
        necrotic = bool(rng.random() < TUMOUR_NECROSIS[0])
        necrosis = float(rng.uniform(*TUMOUR_NECROSIS[1])) if necrotic else 0.0
        ratios = {
            part: {c: float(rng.uniform(*ranges[c])) for c in CONTRASTS} for part, ranges in TUMOUR_CONTRASTS.items()
        }
        mass = float(rng.uniform(*TUMOUR_MASS_EFFECT_MM))
        stretch = np.exp(np.clip(rng.normal(0.0, 0.15, 3), -0.35, 0.35))
        n_lobes = int(rng.integers(2, 5))
        lobes = rng.normal(0.0, 1.0, (n_lobes, 3))
        lobes *= rng.uniform(0.3, 0.6, (n_lobes, 1)) / np.linalg.norm(lobes, axis=1, keepdims=True)
        return {
            "centre": centre,
            "volume_ml": volume,
            "core_fraction": core,
            "necrotic": necrotic,
            "necrosis_fraction": necrosis,
            "ratios": ratios,
            "mass_effect_mm": mass,
            "stretch": stretch,
            "lobes": lobes,
            "lobe_weights": rng.uniform(0.5, 1.0, n_lobes),
            "noise_seed": int(rng.integers(2**31)),
        }

    def _mass_effect(
        self, plan: dict[str, Any], arrays: list[np.ndarray], mask: np.ndarray
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Push the tissue around the tumour outwards: resample ``arrays`` ``(C, X, Y, Z)`` and ``mask``.

        The forward displacement is radial from the centre, ``A r / R`` inside the equivalent-sphere radius ``R`` and
        ``A (R / r)^2 exp(-((r - R) / R)^2)`` outside (continuous, zero far away); each output voxel samples the
        undisplaced maps at ``x - u(x)`` (trilinear). Only voxels displaced by more than 0.01 mm are resampled, so
        the maps are bit-identical far from the tumour. Each array is interpolated over the brain only (divided by
        the interpolated mask), so nothing outside the brain leaks in.

        Returns:
            the resampled arrays, the new mask and the displacement magnitude (mm) per voxel.
        """
        s = self.spacing
        amp = plan["mass_effect_mm"]
        radius = (3.0 * plan["volume_ml"] * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        axes = [(np.arange(n) - c) * s for n, c in zip(self.shape, plan["centre"])]
        rel = np.stack(np.meshgrid(*axes, indexing="ij"), 0)
        r = np.sqrt((rel**2).sum(0))
        outside = np.maximum(r, radius)
        disp = np.where(
            r < radius, amp * r / radius, amp * (radius / outside) ** 2 * np.exp(-(((outside - radius) / radius) ** 2))
        )
        moved = np.flatnonzero(disp > 0.01)
        # x - u(x) in voxels: u is radial, |u| = disp
        factor = 1.0 - disp.reshape(-1)[moved] / np.maximum(r.reshape(-1)[moved], 1e-6)
        src = plan["centre"][:, None] + rel.reshape(3, -1)[:, moved] * factor[None] / s
        weight = ndimage.map_coordinates(mask.astype(np.float32), src, order=1, mode="constant", cval=0.0)
        new_mask = mask.copy()
        new_mask.reshape(-1)[moved] = weight >= 0.5
        out = []
        for arr in arrays:
            arr = arr.copy()
            for ch in arr:
                values = ndimage.map_coordinates(ch * mask, src, order=1, mode="constant", cval=0.0)
                ch.reshape(-1)[moved] = np.where(weight >= 0.5, values / np.maximum(weight, 1e-6), 0.0)
            out.append(arr)
        return out, new_mask, disp.astype(np.float32)

    def _tumour(
        self, plan: dict[str, Any], tissues: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Tumour]:
        """Shape the tumour's compartments on the (displaced) tissue maps.

        Returns:
            ``(weight, ratio, parts, tumour)``: the weight ``(X, Y, Z)`` in [0, 1] (1 in the whole tumour, a soft
            border of :data:`EDGE_MM` outside), the per-contrast intensity / white matter ratio ``(3, X, Y, Z)``,
            the compartments (uint8: 1 solid, 2 necrosis, 3 oedema; the label, ``weight >= 0.5``, is ``parts > 0``)
            and the :class:`Tumour` record.
        """
        s = self.spacing
        rng = np.random.default_rng(plan["noise_seed"])
        centre, stretch = plan["centre"], plan["stretch"]
        radius = (3.0 * plan["volume_ml"] * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        voxel_ml = s**3 / 1000.0
        n_whole = max(1, int(round(plan["volume_ml"] / voxel_ml)))
        n_core = max(1, int(round(plan["core_fraction"] * n_whole)))
        n_nec = int(round(plan["necrosis_fraction"] * n_core))
        # a lobulated core: the best of a few Gaussian lobes around the centre plus smooth noise
        axes = [(np.arange(n) - c) * s for n, c in zip(self.shape, centre)]
        rel = np.stack(np.meshgrid(*axes, indexing="ij"), 0) / (radius * stretch[:, None, None, None])
        core_score = np.exp(-(rel**2).sum(0))
        for offset, w in zip(plan["lobes"], plan["lobe_weights"]):
            core_score = np.maximum(core_score, w * np.exp(-((rel - offset[:, None, None, None]) ** 2).sum(0) / 0.5))
        smooth = max(0.25 * radius / s, 1.0)
        noise = ndimage.gaussian_filter(rng.standard_normal(self.shape).astype(np.float32), smooth)
        noise /= max(float(noise.std()), 1e-6)
        core_score = core_score + 0.12 * noise
        fine = ndimage.gaussian_filter(rng.standard_normal(self.shape).astype(np.float32), max(2.0 / s, 0.7))
        fine /= max(float(fine.std()), 1e-6)
        csf, _, wm = tissues
        brain = mask & (csf < 0.5)
        core = _top_voxels(core_score, brain, n_core)
        necrosis = _top_voxels(core_score + 0.05 * fine, core, n_nec) if n_nec else np.zeros_like(core)
        # oedema spreads from the core along white matter (finger-like), sparing the cortex and CSF
        dist = ndimage.distance_transform_edt(~core, sampling=s)
        oedema_score = -dist / max(radius, 1.0) + 0.6 * wm + 0.15 * noise + 0.1 * fine
        whole = core | _top_voxels(oedema_score, brain & ~core, n_whole - int(core.sum()))
        labels, n_parts = ndimage.label(whole)
        if n_parts > 1:  # keep the component holding the core's peak; stray islands go
            keep = labels[tuple(np.unravel_index(np.argmax(np.where(core, core_score, -np.inf)), self.shape))]
            whole &= labels == keep
            core &= whole
            necrosis &= whole
        oedema = whole & ~core
        solid = core & ~necrosis

        ratios = plan["ratios"]
        ratio = np.ones((len(CONTRASTS), *self.shape), dtype=np.float32)
        texture = 1.0 + _TEXTURE * np.clip(fine, -2.5, 2.5)
        slow = 1.0 + _TEXTURE * np.clip(noise, -2.5, 2.5)
        for c, name in enumerate(CONTRASTS):
            level = np.where(oedema, ratios["oedema"][name] * slow, 1.0)
            level = np.where(solid, ratios["solid"][name] * texture, level)
            level = np.where(necrosis, ratios["necrosis"][name], level)
            ratio[c] = level
        # soft transitions between compartments (about 1 mm), then the whole tumour's soft outer border
        inside = whole.astype(np.float32)
        for c in range(len(CONTRASTS)):
            blurred = ndimage.gaussian_filter(ratio[c] * inside, 1.0 / s)
            norm = ndimage.gaussian_filter(inside, 1.0 / s)
            ratio[c] = np.where(whole, blurred / np.maximum(norm, 1e-6), ratio[c])
        # outside: the nearest tumour voxel's ratio, fading across EDGE_MM (w < 0.5: changed, not labelled)
        d_out, nearest = ndimage.distance_transform_edt(~whole, sampling=s, return_indices=True)
        ratio = ratio[(slice(None), *nearest)]
        border = 0.45 * np.clip(1.0 - (d_out - s) / EDGE_MM, 0.0, 1.0) * np.clip(1.0 - csf, 0.0, 1.0)
        weight = np.where(whole, 1.0, np.where(mask, border, 0.0)).astype(np.float32)
        compartments = np.zeros(self.shape, dtype=np.uint8)
        compartments[solid], compartments[necrosis], compartments[oedema] = 1, 2, 3

        parts = {"solid": int(solid.sum()), "necrosis": int(necrosis.sum()), "oedema": int(oedema.sum())}
        n_vox = int(whole.sum())
        world = self.affine[:3, :3] @ centre + self.affine[:3, 3]
        tumour = Tumour(
            centre_mm=tuple(round(float(v), 2) for v in world),
            radius_mm=round(float((3.0 * n_vox * s**3 / (4.0 * np.pi)) ** (1.0 / 3.0)), 3),
            n_voxels=n_vox,
            volume_ml=round(n_vox * voxel_ml, 4),
            location="white_matter",
            kind="tumour",
            subtle=False,
            contrast={c: round(ratios["oedema"][c], 4) for c in CONTRASTS},
            necrotic=bool(parts["necrosis"] > 0),
            parts_ml={k: round(n * voxel_ml, 4) for k, n in parts.items()},
            contrasts={p: {c: round(v, 4) for c, v in r.items()} for p, r in ratios.items() if parts[p] > 0},
            mass_effect_mm=round(plan["mass_effect_mm"], 3),
        )
        return weight, ratio, compartments, tumour

    def _tumour_info(self, plan: dict[str, Any]) -> dict[str, Any]:
        """The drawn (not measured) tumour parameters, for ``params``."""
        return {
            "volume_ml_drawn": round(plan["volume_ml"], 3),
            "core_fraction": round(plan["core_fraction"], 4),
            "necrosis_fraction": round(plan["necrosis_fraction"], 4),
            "mass_effect_mm": round(plan["mass_effect_mm"], 3),
        }
