"""A synthetic multi-contrast brain MRI cohort (T1, T2, FLAIR) with lesions, made on the machine.

The source is the MNI ICBM 152 2009 template that ships inside ``nilearn`` (grey- and white-matter probability
maps and a brain mask; nothing is downloaded). Each subject is rendered from these maps (every number, with its
source, is documented in docs/data.md and held in the module constants below):

1. a random affine (scale, rotation, shift) plus a smooth random displacement field (a low-resolution grid of
   random displacements upsampled with cubic B-splines) warps the tissue maps onto a fixed output grid
   (trilinear sampling with :func:`scipy.ndimage.map_coordinates`);
2. CSF is ``brain mask - GM - WM`` (clipped); each voxel's intensity is the mix of per-subject tissue
   intensities weighted by the tissue fractions (:data:`BASE_INTENSITIES`; FLAIR GM/WM about 1.07);
3. healthy FLAIR hyperintensities that are not lesions, in every subject (:data:`LOOKALIKES`): periventricular
   rims and caps at the ventricle horns, choroid plexus, flow-like artefacts in CSF, regional cortical
   hyperintensity;
4. lesion subjects get 3 to 15 lesions (:data:`LESION_COUNT`, :data:`LESION_KINDS`): many small (3-10 mm),
   some medium and some confluent periventricular ones, in white matter. Each voxel's lesion weight ``w`` (its
   lesion fraction: 1 inside, a soft partial-volume border of :data:`EDGE_MM` outside) mixes the tissue with the
   lesion intensity, ``(1 - w) * tissue + w * lesion``; the lesion / normal-appearing white matter ratio is
   ``1 + delta`` on FLAIR (mean 1.25, :data:`FLAIR_DELTA_GAMMA`), more on T2, iso- to hypointense on T1. The
   label is ``w >= 0.5`` (half the peak weight), the visibly abnormal part. ``subtle`` subjects get faint lesions
   only (:data:`FLAIR_SUBTLE_DELTA`). The first lesion's centre lies within :data:`CENTRAL_MM` of the brain mask's
   axial centre of mass (the slices the default model analyses);
5. a multiplicative smooth bias field per contrast, then Rician noise inside the brain, rounded to whole numbers
   (as a scanner stores them; it also halves the file size); zero outside the brain mask (skull stripped).

Every random draw comes from ``numpy.random.default_rng([seed, subject_index, stream])`` with separate streams
for anatomy, noise, lesions and look-alikes, so a subject can be rendered with and without its lesions and the two
renders differ only where lesions were added (``w > 0``; the label is the subset ``w >= 0.5``). The same seed
gives byte-identical files (nibabel writes gzip with ``mtime=0``).

File layout written by :func:`make_cohort` (all contrasts share one affine; RAS, axial slices on the last axis)::

    out_dir/
        datalist.json              # training / validation / calibration (healthy), tuning (lesions),
                                   # test (lesions + healthy, all labelled); entries carry a "stratum"
        sub-001/image.nii.gz       # 4D float32 (X, Y, Z, 3): T1, T2, FLAIR
        sub-001/brain_mask.nii.gz  # 3D uint8
        sub-052/label.nii.gz       # 3D uint8, tuning and test subjects (all zero for healthy test subjects)
        sub-052/lesions.json       # per-lesion details (centre, size, kind, contrast), lesion subjects only
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "CONTRASTS",
    "TISSUES",
    "GENERATOR_VERSION",
    "BASE_INTENSITIES",
    "Lesion",
    "SyntheticSubject",
    "SyntheticBrainGenerator",
    "make_cohort",
    "subject_name",
    "SECTIONS",
    "STRATA",
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
    "BIAS_SD",
    "SNR",
]

#: Channel order of every image: T1, T2, FLAIR (FLAIR is channel 2).
CONTRASTS: tuple[str, ...] = ("T1", "T2", "FLAIR")
#: Tissue order of :attr:`SyntheticSubject.tissues`.
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")
#: Bumped whenever the same seed would give different images.
GENERATOR_VERSION = "2"
#: Mean tissue intensities (arbitrary units, rows = contrasts, columns = CSF, GM, WM) before per-subject jitter.
#: FLAIR GM/WM = 1.07 (ISBI 2015: lesion/WM 1.25 and lesion/GM 1.19 give GM/WM about 1.05; 1.05-1.1 is typical).
BASE_INTENSITIES: dict[str, tuple[float, float, float]] = {
    "T1": (300.0, 600.0, 850.0),
    "T2": (1500.0, 750.0, 550.0),
    "FLAIR": (150.0, 600.0, 560.0),
}
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
#: Log-s.d. range of the smooth multiplicative bias field (control points every BIAS_CTRL_MM).
BIAS_SD: tuple[float, float] = (0.03, 0.1)
BIAS_CTRL_MM = 60.0
#: Signal-to-noise range (mean of GM and WM over the Rician sigma).
SNR: tuple[float, float] = (30.0, 50.0)

#: Datalist sections written by :func:`make_cohort` and strata of its entries.
SECTIONS: tuple[str, ...] = ("training", "validation", "calibration", "tuning", "test")
STRATA: tuple[str, ...] = ("healthy", "typical", "subtle")
#: Default split fractions (see :func:`monai_qrvae.data.datalist.allocate_splits`).
VAL_FRACTION, CALIBRATION_FRACTION, TEST_HEALTHY_FRACTION, SUBTLE_FRACTION = 0.12, 0.2, 0.1, 0.3

_ANATOMY, _NOISE, _LESIONS, _LOOKALIKES = 0, 1, 2, 3  # random streams per subject


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
    """

    image: np.ndarray
    brain_mask: np.ndarray
    tissues: np.ndarray
    affine: np.ndarray
    label: np.ndarray | None = None
    lesions: list[Lesion] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Template:
    """Tissue maps on a cropped 1 mm grid, anti-aliased for the output spacing."""

    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    origin: np.ndarray  # world coordinate (mm) of voxel (0, 0, 0) of the cropped arrays
    brain_lo: np.ndarray  # world bounding box of the brain mask (mm)
    brain_hi: np.ndarray


@functools.lru_cache(maxsize=4)
def _load_template(spacing: float) -> _Template:
    """Load nilearn's MNI152 2009 GM/WM maps and brain mask (shipped with the package, 1 mm), crop and smooth."""
    from nilearn import datasets  # local import: nilearn is slow to import and only needed here

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError(f"expected nilearn's 1 mm MNI152 template to be axis aligned, got affine\n{affine}.")
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(wm_img.dataobj, dtype=np.float32)
    mask = np.asarray(mask_img.dataobj, dtype=np.float32)
    idx = np.argwhere(mask > 0)
    lo, hi = idx.min(0), idx.max(0)
    pad = 4
    start = np.maximum(lo - pad, 0)
    stop = np.minimum(hi + pad + 1, mask.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    sigma = max(0.0, (float(spacing) - 1.0) / 2.0)  # anti-aliasing before sampling on a coarser grid
    arrays = []
    for arr in (gm, wm, mask):
        arr = np.ascontiguousarray(arr[crop])
        if sigma > 0:
            arr = ndimage.gaussian_filter(arr, sigma, mode="constant")
        arrays.append(arr)
    origin = affine[:3, 3] + start
    return _Template(
        gm=arrays[0],
        wm=arrays[1],
        mask=arrays[2],
        origin=origin,
        brain_lo=affine[:3, 3] + lo,
        brain_hi=affine[:3, 3] + hi,
    )


def _bspline_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """``(n_out, n_ctrl)`` cubic B-spline weights that upsample ``n_ctrl`` control values to ``n_out`` points."""
    t = np.linspace(1.0, n_ctrl - 2.0, n_out)
    d = np.abs(t[:, None] - np.arange(n_ctrl)[None, :])
    return np.where(d < 1, 2.0 / 3.0 - d**2 + d**3 / 2.0, np.where(d < 2, (2.0 - d) ** 3 / 6.0, 0.0))


def _smooth_field(
    rng: np.random.Generator, shape: Sequence[int], spacing: float, ctrl_mm: float, scale: float, n: int = 1
) -> np.ndarray:
    """``n`` smooth random fields on ``shape``: random control values every ``ctrl_mm`` upsampled by B-splines.

    Returns ``(n, *shape)`` float32 fields whose control values are ``N(0, scale**2)``.
    """
    n_ctrl = [max(4, int(np.ceil(s * spacing / ctrl_mm)) + 3) for s in shape]
    mats = [_bspline_matrix(s, c) for s, c in zip(shape, n_ctrl)]
    coef = rng.standard_normal((n, *n_ctrl)) * scale
    out = np.einsum("nabc,xa,yb,zc->nxyz", coef, *mats, optimize=True)
    return out.astype(np.float32)


def _distance_to(region: np.ndarray, spacing: float, reach_mm: float) -> np.ndarray:
    """Euclidean distance (mm) to ``region``, exact within ``reach_mm`` of its bounding box, ``inf`` beyond."""
    out = np.full(region.shape, np.inf, dtype=np.float32)
    idx = np.argwhere(region)
    if idx.size == 0:
        return out
    pad = int(np.ceil(reach_mm / spacing))
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, region.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    out[box] = ndimage.distance_transform_edt(~region[box], sampling=spacing)
    return out


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three angles (radians) about x, y and z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def subject_name(index: int, n_subjects: int = 999) -> str:
    """Folder name of subject ``index`` (0-based): ``sub-001``, ... (wider when there are 1000 or more)."""
    width = max(3, len(str(n_subjects)))
    return f"sub-{index + 1:0{width}d}"


class SyntheticBrainGenerator:
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

    def generate(self, index: int, lesions: bool | int = False, subtle: bool = False) -> SyntheticSubject:
        """Render subject ``index``.

        Args:
            index: subject number (>= 0). The anatomy, intensities, look-alikes, bias and noise depend only on
                ``(seed, index)``, never on ``lesions``.
            lesions: ``False`` or ``0`` for a healthy render, ``True`` for a random count (``LESION_COUNT``,
                3 to 15), or the number of lesions to insert.
            subtle: draw every lesion's contrast from the faint range (:data:`FLAIR_SUBTLE_DELTA`).

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
        if n_lesions:
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
        inside = np.flatnonzero(mask)
        image = np.zeros((len(CONTRASTS), mask.size), dtype=np.float32)
        for c in range(len(CONTRASTS)):
            signal = clean[c].reshape(-1)[inside]
            real = signal + sigma[c] * noise_rng.standard_normal(inside.size, dtype=np.float32)
            imag = sigma[c] * noise_rng.standard_normal(inside.size, dtype=np.float32)
            image[c, inside] = np.rint(np.sqrt(real * real + imag * imag))  # integers, like a scanner's output
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
        )


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code="aligned")
    img.set_sform(affine, code="aligned")
    img.header["descrip"] = f"monai-qrvae synthetic v{GENERATOR_VERSION}".encode()
    img.to_filename(str(path))


def make_cohort(
    out_dir: str | os.PathLike,
    n_healthy: int = 51,
    n_lesion: int = 20,
    seed: int = 0,
    spacing: float = 2.0,
    val_fraction: float = VAL_FRACTION,
    calibration_fraction: float = CALIBRATION_FRACTION,
    test_healthy_fraction: float = TEST_HEALTHY_FRACTION,
    subtle_fraction: float = SUBTLE_FRACTION,
    n_validation: int | None = None,
    n_calibration: int | None = None,
    n_test_healthy: int | None = None,
    n_tuning: int | None = None,
) -> Path:
    """Write a synthetic cohort and its Decathlon-style datalist; return the datalist path.

    Subjects ``sub-001 ... sub-{n_healthy}`` are healthy and go, in this order, to ``training``, ``validation``,
    ``calibration`` and ``test`` (healthy test subjects, with an all-zero label); the next ``n_lesion`` subjects
    have lesions and go to ``test`` first, then ``tuning``. The split sizes follow :func:`allocate_splits`
    (default cohort: 30 training, 6 validation, 10 calibration, 10 tuning, 10 + 5 test). In each lesion split the
    last ``floor(subtle_fraction * n)`` subjects form the ``subtle`` stratum (only faint lesions).

    Entries are ``{"image", "brain_mask", "label" (tuning and test), "stratum"}`` with paths relative to the JSON's
    folder and ``stratum`` one of ``"healthy"``, ``"typical"``, ``"subtle"``.

    Args:
        out_dir: output folder (created if needed; files of the same name are overwritten).
        n_healthy: healthy subjects in total (training + validation + calibration + healthy test).
        n_lesion: lesion subjects in total (tuning + test).
        seed: random seed; the same seed, sizes and spacing give byte-identical files.
        spacing: isotropic voxel size in mm.
        val_fraction: share of the healthy subjects in ``validation`` (see :func:`allocate_splits`).
        calibration_fraction: share of the healthy subjects in ``calibration``.
        test_healthy_fraction: share of the healthy subjects in ``test``.
        subtle_fraction: share of each lesion split in the ``subtle`` stratum.
        n_validation: explicit ``validation`` size (overrides the fraction); likewise ``n_calibration``,
            ``n_test_healthy`` and ``n_tuning`` (lesion subjects in ``tuning``; the rest go to ``test``).

    Returns:
        the path of ``out_dir/datalist.json``.
    """
    from .datalist import allocate_splits

    if int(n_healthy) != n_healthy or n_healthy < 0 or int(n_lesion) != n_lesion or n_lesion < 0:
        raise ValueError(f"n_healthy and n_lesion must be non-negative integers, got {n_healthy!r}, {n_lesion!r}.")
    if n_healthy + n_lesion == 0:
        raise ValueError("the cohort is empty: n_healthy + n_lesion must be at least 1.")
    if not 0.0 <= subtle_fraction <= 1.0:
        raise ValueError(f"subtle_fraction must be in [0, 1], got {subtle_fraction}.")
    sizes = allocate_splits(
        int(n_healthy),
        int(n_lesion),
        val_fraction=val_fraction,
        calibration_fraction=calibration_fraction,
        test_healthy_fraction=test_healthy_fraction,
        n_validation=n_validation,
        n_calibration=n_calibration,
        n_test_healthy=n_test_healthy,
        n_tuning=n_tuning,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = SyntheticBrainGenerator(spacing=spacing, seed=seed)
    n_total = int(n_healthy) + int(n_lesion)
    plan: list[tuple[str, str]] = []  # (section, stratum) per subject index
    for section in ("training", "validation", "calibration", "test_healthy"):
        plan += [(section, "healthy")] * sizes[section]
    for section in ("test_lesion", "tuning"):
        n = sizes[section]
        n_subtle = int(np.floor(subtle_fraction * n + 1e-9))
        plan += [(section, "typical")] * (n - n_subtle) + [(section, "subtle")] * n_subtle
    sections: dict[str, list[dict[str, str]]] = {k: [] for k in SECTIONS}
    healthy_test: list[dict[str, str]] = []
    n_lesion_voxels = 0
    for index, (section, stratum) in enumerate(plan):
        has_lesions = stratum != "healthy"
        subject = gen.generate(index, lesions=has_lesions, subtle=stratum == "subtle")
        name = subject_name(index, n_total)
        folder = out / name
        folder.mkdir(exist_ok=True)
        _save_nifti(subject.image, subject.affine, folder / "image.nii.gz")
        _save_nifti(subject.brain_mask, subject.affine, folder / "brain_mask.nii.gz")
        entry = {"image": f"{name}/image.nii.gz", "brain_mask": f"{name}/brain_mask.nii.gz"}
        if section in ("tuning", "test_lesion", "test_healthy"):
            label = subject.label if has_lesions else np.zeros_like(subject.brain_mask)
            _save_nifti(label, subject.affine, folder / "label.nii.gz")
            entry["label"] = f"{name}/label.nii.gz"
        if has_lesions:
            n_lesion_voxels += int(subject.label.sum())
            info = {
                "subject": name,
                "stratum": stratum,
                "lesions": [asdict(les) for les in subject.lesions],
                "params": subject.params,
            }
            (folder / "lesions.json").write_text(json.dumps(info, indent=2) + "\n")
        entry["stratum"] = stratum
        if section == "test_healthy":
            healthy_test.append(entry)
        else:
            sections["test" if section == "test_lesion" else section].append(entry)
    sections["test"] += healthy_test  # lesion subjects first, then the healthy ones

    counts = {k: len(v) for k, v in sections.items()}
    strata = {
        k: {s: sum(e["stratum"] == s for e in v) for s in STRATA if any(e["stratum"] == s for e in v)}
        for k, v in sections.items()
    }
    datalist = {
        "name": "monai-qrvae synthetic brain MRI",
        "description": (
            "Synthetic skull-stripped T1/T2/FLAIR subjects rendered from the MNI ICBM 152 2009 template shipped "
            "with nilearn. training, validation, calibration: healthy; tuning: lesion subjects with labels (the "
            "only split for choices); test: lesion and healthy subjects, every entry labelled (reported only)."
        ),
        "reference": "Fonov et al. 2011, NeuroImage 54(1) (MNI ICBM 152 2009 template); monai-qrvae generator",
        "licence": "derived from the MNI ICBM 152 2009 template (see nilearn's dataset description)",
        "tensorImageSize": "4D",
        "modality": {str(i): c for i, c in enumerate(CONTRASTS)},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": counts["training"],
        "numValidation": counts["validation"],
        "numCalibration": counts["calibration"],
        "numTuning": counts["tuning"],
        "numTest": counts["test"],
        "metadata": {
            "generator": "monai_qrvae.data.synthetic",
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "spacing_mm": float(spacing),
            "shape": list(gen.shape),
            "affine": gen.affine.tolist(),
            "n_healthy": int(n_healthy),
            "n_lesion": int(n_lesion),
            "n_lesion_voxels": n_lesion_voxels,
            "counts": counts,
            "strata": strata,
            "channels": list(CONTRASTS),
            "layout": "sub-XXX/image.nii.gz is 4D (X, Y, Z, 3) float32: T1, T2, FLAIR; brain_mask/label uint8",
        },
        **sections,
    }
    path = out / "datalist.json"
    _atomic_write_text(path, json.dumps(datalist, indent=2) + "\n")
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
