"""Lesions and healthy look-alikes of the synthetic cohort, drawn on a generator's grid.

:class:`LesionsMixin` holds the drawing (look-alikes: periventricular rims and caps, choroid plexus, flow-like
artefacts, regional cortical hyperintensity; lesions: small, medium and confluent white-matter lesions with a
soft partial-volume border); :class:`monai_qrvae.data.generator.SyntheticBrainGenerator` mixes it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .anatomy import CONTRASTS, _distance_to, _smooth_field

__all__ = [
    "Lesion",
    "LesionsMixin",
    "LESION_COUNT",
    "LESION_KINDS",
    "FLAIR_DELTA_GAMMA",
    "FLAIR_DELTA_CLIP",
    "FLAIR_SUBTLE_DELTA",
    "T2_PER_FLAIR",
    "T1_PER_FLAIR",
    "EDGE_MM",
    "CENTRAL_MM",
    "LOOKALIKES",
]

#: Lesions per lesion subject (inclusive range, uniform).
LESION_COUNT: tuple[int, int] = (3, 15)
#: Lesion kinds: probability and radius range in mm (log-uniform): small 3-10 mm across, medium, confluent
#: periventricular (stretched along the ventricles).
LESION_KINDS: dict[str, tuple[float, tuple[float, float]]] = {
    "small": (0.6, (1.5, 5.0)),
    "medium": (0.28, (5.0, 8.0)),
    "confluent": (0.12, (6.0, 10.0)),
}
#: FLAIR lesion / normal-appearing WM ratio at full lesion weight is ``1 + delta``; typical lesions:
#: ``delta ~ Gamma(shape, scale)`` (mean 0.36, s.d. 0.15), clipped to FLAIR_DELTA_CLIP. Averaged over the labelled
#: voxels (partial-volume border included) the ratio is about 1.25, as in ISBI 2015 (Freire and Ferrari 2018).
FLAIR_DELTA_GAMMA: tuple[float, float] = (6.0, 0.06)
FLAIR_DELTA_CLIP: tuple[float, float] = (0.18, 0.9)
#: ``delta`` of the lesions of ``subtle`` subjects: uniform, at the faint end (overlapping grey matter).
FLAIR_SUBTLE_DELTA: tuple[float, float] = (0.12, 0.2)
#: T2 ratio ``1 + delta * u`` and T1 ratio ``1 - delta * u`` with ``u`` uniform in these ranges.
T2_PER_FLAIR: tuple[float, float] = (1.5, 3.0)
T1_PER_FLAIR: tuple[float, float] = (0.0, 1.2)
#: Width (mm) of the soft partial-volume border outside the label.
EDGE_MM = 1.5
#: The first lesion's centre lies within this distance (mm) of the brain mask's axial centre of mass.
CENTRAL_MM = 12.0
#: Healthy look-alikes (relative amplitudes are fractions of the local intensity; levels are x white matter).
LOOKALIKES: dict[str, Any] = {
    "rim_amplitude": (0.05, 0.15),
    "rim_width_mm": 1.5,
    "cap_amplitude": (0.2, 0.45),
    "cap_width_mm": 4.0,
    "horn_length_mm": 10.0,
    "choroid_flair": (1.0, 1.4),
    "choroid_radius_mm": (2.5, 4.5),
    "flow_count": (4, 10),
    "flow_radius_mm": (2.0, 3.5),
    "flow_flair": (1.1, 1.7),
    "cortex_amplitude": (0.03, 0.08),
    "cortex_ctrl_mm": 30.0,
}


@dataclass
class Lesion:
    """One inserted lesion (world coordinates in mm, RAS).

    Attributes:
        centre_mm: world coordinate of the seed voxel.
        radius_mm: nominal radius of the blob before the random irregularity.
        n_voxels: voxels in this lesion (lesions may overlap, so the sum can exceed the label size).
        volume_ml: ``n_voxels`` times the voxel volume, in millilitres.
        location: where the seed was drawn: ``"periventricular"``, ``"white_matter"``, ``"juxtacortical"`` or
            ``"any"``.
        kind: ``"small"``, ``"medium"`` or ``"confluent"`` (see :data:`LESION_KINDS`).
        subtle: faint lesion (``delta`` below the top of :data:`FLAIR_SUBTLE_DELTA`).
        contrast: lesion / normal-appearing white matter intensity ratio per contrast.
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    n_voxels: int
    volume_ml: float
    location: str
    kind: str
    subtle: bool
    contrast: dict[str, float]


class GeneratorGrid:
    """The output grid of the generator a drawing mixin is mixed into.

    Attributes (set by the generator):
        spacing: isotropic voxel size in mm.
        shape: the output grid's shape.
        affine: the output grid's ``(4, 4)`` voxel-to-world matrix.
    """

    spacing: float
    shape: tuple[int, int, int]
    affine: np.ndarray


class LesionsMixin(GeneratorGrid):
    """Draws look-alikes and lesions on the grid of the generator it is mixed into (:class:`GeneratorGrid`)."""

    def _lookalikes(
        self,
        rng: np.random.Generator,
        tissues: np.ndarray,
        mask: np.ndarray,
        geometry: dict[str, np.ndarray],
        intensities: np.ndarray,
        clean: np.ndarray,
    ) -> dict[str, Any]:
        """Add healthy FLAIR hyperintensities that are not lesions to ``clean`` ``(3, X, Y, Z)`` in place.

        Periventricular rims (thin, along every ventricle wall) and caps (thicker, at the frontal and occipital
        horns), choroid plexus (tissue-like blobs inside the ventricles' atria) and flow-like artefacts (bright,
        elongated spots in CSF, FLAIR only). Amplitudes are relative to the subject's white matter.
        """
        s = self.spacing
        csf = tissues[0]
        ventricles, dist = geometry["ventricles"], geometry["vent_dist"]
        info: dict[str, Any] = {}
        wm_int = intensities[:, 2]
        if ventricles.any():
            tissue = mask & ~ventricles
            # rim: a thin band of relative hyperintensity along every ventricle wall
            rim_amp = float(rng.uniform(*LOOKALIKES["rim_amplitude"]))
            rim = np.where(tissue, np.exp(-dist / LOOKALIKES["rim_width_mm"]), 0.0)
            # caps: thicker, brighter at the anterior and posterior ends (horns) of the ventricles
            ys = np.nonzero(ventricles)[1]
            y_lo, y_hi = np.percentile(ys, [3.0, 97.0])
            horn_mm = LOOKALIKES["horn_length_mm"] / s
            horns = ventricles.copy()
            horns[:, int(np.ceil(y_lo + horn_mm)) : int(np.floor(y_hi - horn_mm)) + 1, :] = False
            cap_dist = _distance_to(horns, s, reach_mm=30.0)
            cap_amp = rng.uniform(*LOOKALIKES["cap_amplitude"], size=2)
            cap_w = np.where(tissue, np.exp(-cap_dist / LOOKALIKES["cap_width_mm"]), 0.0)
            front = np.arange(self.shape[1])[None, :, None] > (y_lo + y_hi) / 2.0
            cap = cap_w * np.where(front, cap_amp[0], cap_amp[1])
            rel = np.maximum(rim_amp * rim, cap).astype(np.float32)
            clean[2] *= 1.0 + rel  # FLAIR
            clean[1] *= 1.0 + 0.5 * rel  # T2: milder
            info.update({"rim_amplitude": round(rim_amp, 4), "cap_amplitude": cap_amp.round(4).tolist()})
            # choroid plexus: 1-2 tissue-like blobs in the posterior half of the ventricles
            post = np.flatnonzero(ventricles & ~front & (dist == 0))
            n_cp = int(rng.integers(1, 3))
            cp_level = float(rng.uniform(*LOOKALIKES["choroid_flair"]))
            for _ in range(n_cp if post.size else 0):
                centre = np.array(np.unravel_index(rng.choice(post), self.shape))
                radius = float(rng.uniform(*LOOKALIKES["choroid_radius_mm"]))
                w = self._blob_weight(centre, radius, np.ones(3)) * ventricles
                target = np.array([intensities[0, 1], intensities[1, 1], cp_level * wm_int[2]], dtype=np.float32)
                clean[:] = clean * (1.0 - w[None]) + w[None] * target[:, None, None, None]
            info["choroid_plexus"] = {"n": n_cp if post.size else 0, "flair_vs_wm": round(cp_level, 4)}
        # flow-like artefacts: bright spots in CSF, elongated in-plane (phase encoding), FLAIR only
        fluid = np.flatnonzero(mask & (csf > 0.7))
        n_flow = int(rng.integers(LOOKALIKES["flow_count"][0], LOOKALIKES["flow_count"][1] + 1)) if fluid.size else 0
        levels = []
        for _ in range(n_flow):
            centre = np.array(np.unravel_index(rng.choice(fluid), self.shape))
            radius = float(rng.uniform(*LOOKALIKES["flow_radius_mm"]))
            level = float(rng.uniform(*LOOKALIKES["flow_flair"]))
            w = self._blob_weight(centre, radius, np.array([1.0, 2.5, 1.0])) * np.clip(csf, 0.0, 1.0) * mask
            clean[2] = clean[2] * (1.0 - w) + w * level * wm_int[2]
            levels.append(round(level, 4))
        info["flow_artefacts_flair_vs_wm"] = levels
        # regional grey-matter hyperintensity (e.g. insula, cingulate, hippocampus): a smooth positive field x GM
        amp = float(rng.uniform(*LOOKALIKES["cortex_amplitude"]))
        field = _smooth_field(rng, self.shape, s, ctrl_mm=LOOKALIKES["cortex_ctrl_mm"], scale=1.0)[0]
        clean[2] *= 1.0 + amp * np.maximum(field, 0.0) * tissues[1]
        info["cortex_amplitude"] = round(amp, 4)
        return info

    def _blob_weight(self, centre: np.ndarray, radius: float, stretch: np.ndarray) -> np.ndarray:
        """A smooth ellipsoidal weight in [0, 1] (1 at ``centre``, 0.5 at ``radius * stretch``) on the whole grid."""
        s = self.spacing
        out = np.zeros(self.shape, dtype=np.float32)
        half = int(np.ceil(2.0 * radius * stretch.max() / s)) + 1
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, self.shape)
        rel = np.meshgrid(
            *[(np.arange(a, b) - c) * s / (radius * e) for a, b, c, e in zip(lo, hi, centre, stretch)], indexing="ij"
        )
        r2 = rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2
        out[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] = np.exp(-np.log(2.0) * r2)
        return out

    def _lesions(
        self,
        rng: np.random.Generator,
        tissues: np.ndarray,
        mask: np.ndarray,
        geometry: dict[str, np.ndarray],
        n_lesions: int,
        subtle: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Lesion]]:
        """Draw lesions.

        Returns:
            ``(weight, ratio, owner, lesions)``: the lesion weight ``(X, Y, Z)`` in [0, 1] (the voxel's lesion
            fraction: 1 inside, a soft partial-volume border outside), the per-contrast lesion / normal-appearing
            white matter intensity ratio ``(3, X, Y, Z)`` of the lesion that owns each voxel, the owner index
            (-1: none) and the lesion list. The label is ``weight >= 0.5`` (half the peak weight, 1).
        """
        s = self.spacing
        csf, _, wm = tissues
        eligible = mask & (csf < 0.25)
        white = mask & (wm > 0.5) & (csf < 0.25)
        depth = geometry["depth"]
        near = geometry["vent_dist"] < 10.0
        # the first lesion's centre lies within CENTRAL_MM of the brain mask's axial centre of mass
        z_mm = self.affine[2, 3] + s * np.arange(self.shape[2])
        z_com = float((mask.sum((0, 1)) * z_mm).sum() / max(int(mask.sum()), 1))
        central = (np.abs(z_mm - z_com) <= CENTRAL_MM)[None, None, :]
        candidates = {
            "periventricular": np.flatnonzero(white & near),
            "white_matter": np.flatnonzero(white),
            "juxtacortical": np.flatnonzero(eligible & (depth < 15.0) & (wm > 0.2)),
            "any": np.flatnonzero(eligible),
        }
        central_flat = np.broadcast_to(central, self.shape).reshape(-1)
        first_candidates = {k: v[central_flat[v]] for k, v in candidates.items()}
        if candidates["any"].size == 0:
            raise ValueError("no voxel can hold a lesion: the brain mask has no white or grey matter.")
        weight = np.zeros(self.shape, dtype=np.float32)
        ratio = np.ones((len(CONTRASTS), *self.shape), dtype=np.float32)
        owner = np.full(self.shape, -1, dtype=np.int16)
        # lesions live in white matter: weight x (1 - CSF)^2 x a white-matter factor (not for juxtacortical ones)
        not_csf = np.clip(1.0 - csf, 0.0, 1.0) ** 2
        white_factor = np.clip(0.2 + 1.6 * wm, 0.0, 1.0) * not_csf
        lesions = []
        for i in range(n_lesions):
            u = rng.random()
            p_small, p_medium = LESION_KINDS["small"][0], LESION_KINDS["medium"][0]
            kind = "small" if u < p_small else "medium" if u < p_small + p_medium else "confluent"
            if subtle and kind == "confluent":  # faint lesions are small or medium
                kind = "medium"
            r_lo, r_hi = LESION_KINDS[kind][1]
            radius = float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi))))
            v = rng.random()
            if kind == "confluent":
                location = "periventricular"
            else:
                location = "periventricular" if v < 0.4 else "white_matter" if v < 0.85 else "juxtacortical"
            pool = first_candidates if i == 0 else candidates
            if pool[location].size == 0:
                location = "white_matter" if pool["white_matter"].size else "any"
            if pool[location].size == 0:
                pool, location = candidates, "any"
            centre = np.array(np.unravel_index(rng.choice(pool[location]), self.shape))
            stretch = np.exp(np.clip(rng.normal(0.0, 0.2, 3), -0.5, 0.5))
            if kind == "confluent":  # along the ventricles (anterior-posterior), flatter across
                stretch = stretch * np.array([0.8, rng.uniform(1.3, 1.8), 1.0])
            irregularity = rng.uniform(0.15, 0.45) if kind == "small" else rng.uniform(0.3, 0.7)
            half = int(np.ceil((1.6 * radius * stretch.max() + EDGE_MM) / s)) + 1
            lo = np.maximum(centre - half, 0)
            hi = np.minimum(centre + half + 1, self.shape)
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            rel = np.meshgrid(
                *[(np.arange(a, b) - c) * s / (radius * e) for a, b, c, e in zip(lo, hi, centre, stretch)],
                indexing="ij",
            )
            noise = ndimage.gaussian_filter(
                rng.standard_normal(tuple(int(b - a) for a, b in zip(lo, hi))), max(0.35 * radius / s, 0.8)
            )
            noise /= max(float(noise.std()), 1e-6)
            value = 1.0 - (rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2) + irregularity * noise
            local_centre = tuple(int(c - a) for c, a in zip(centre, lo))
            value[local_centre] = max(float(value[local_centre]), 1.0)  # the seed voxel is fully lesion
            # value falls by about 2 / radius per mm at the border: the soft border is EDGE_MM wide
            gain = max(0.5, radius * float(stretch.min()) / (2.0 * EDGE_MM))
            tissue = not_csf[box] if location == "juxtacortical" else white_factor[box]
            w = (np.clip(0.5 + gain * value, 0.0, 1.0) * tissue * mask[box]).astype(np.float32)
            w[local_centre] = 1.0  # the seed voxel is fully lesion (so every lesion is labelled)
            # FLAIR lesion / NAWM ratio; T2 more, T1 iso- to hypointense
            if subtle:
                delta = rng.uniform(*FLAIR_SUBTLE_DELTA)
            else:
                delta = float(np.clip(rng.gamma(*FLAIR_DELTA_GAMMA), *FLAIR_DELTA_CLIP))
            k = np.array(
                [
                    1.0 - delta * rng.uniform(*T1_PER_FLAIR),
                    1.0 + delta * rng.uniform(*T2_PER_FLAIR),
                    1.0 + delta,
                ],
                dtype=np.float32,
            )
            region_w = weight[box]
            take = w > region_w
            weight[box] = np.where(take, w, region_w)
            ratio[(slice(None), *box)] = np.where(take[None], k[:, None, None, None], ratio[(slice(None), *box)])
            owner[box] = np.where(take, i, owner[box])
            n_vox = int((w >= 0.5).sum())
            world = self.affine[:3, :3] @ centre + self.affine[:3, 3]
            lesions.append(
                Lesion(
                    centre_mm=tuple(round(float(v), 2) for v in world),
                    radius_mm=round(radius, 3),
                    n_voxels=n_vox,
                    volume_ml=round(n_vox * s**3 / 1000.0, 4),
                    location=location,
                    kind=kind,
                    subtle=bool(subtle or delta < FLAIR_SUBTLE_DELTA[1]),
                    contrast={c: round(float(v), 4) for c, v in zip(CONTRASTS, k)},
                )
            )
        return weight, ratio, owner, lesions
