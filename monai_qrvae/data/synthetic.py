"""A synthetic multi-contrast brain MRI cohort (T1, T2, FLAIR) with lesions, made on the machine.

The source is the MNI ICBM 152 2009 template that ships inside ``nilearn`` (grey- and white-matter probability
maps and a brain mask; nothing is downloaded). Each subject is rendered from these maps:

1. a random affine (scale, rotation, shift) plus a smooth random displacement field (a low-resolution grid of
   random displacements upsampled with cubic B-splines) warps the tissue maps onto a fixed output grid
   (trilinear sampling with :func:`scipy.ndimage.map_coordinates`);
2. CSF is ``brain mask - GM - WM`` (clipped); each voxel's intensity is the mix of per-subject tissue
   intensities weighted by the tissue fractions (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: GM > WM, CSF dark);
3. lesion subjects get 1 to 6 lesions: smoothed random blobs, a few voxels to a few centimetres across,
   mostly in white matter and around the ventricles, that multiply the local intensity by ``1 + w * k`` with
   ``k > 0`` on T2/FLAIR (hyperintense) and ``k < 0`` on T1 (hypointense); some are subtle (FLAIR within the
   grey-matter range). The label is exactly the set of voxels whose intensity was changed;
4. a multiplicative smooth bias field per contrast, then Rician noise inside the brain, rounded to whole numbers
   (as a scanner stores them; it also halves the file size); zero outside the brain mask (skull stripped).

Every random draw comes from ``numpy.random.default_rng([seed, subject_index, stream])`` with separate streams
for anatomy, noise and lesions, so a subject can be rendered with and without its lesions and the two renders
differ exactly on the label. The same seed gives byte-identical files (nibabel writes gzip with ``mtime=0``).

File layout written by :func:`make_cohort` (all contrasts share one affine; RAS, axial slices on the last axis)::

    out_dir/
        datalist.json              # Decathlon-style: training / validation (healthy), test (lesions)
        sub-001/image.nii.gz       # 4D float32 (X, Y, Z, 3): T1, T2, FLAIR
        sub-001/brain_mask.nii.gz  # 3D uint8
        sub-041/label.nii.gz       # 3D uint8, lesion subjects only
        sub-041/lesions.json       # per-lesion details (centre, size, contrast), lesion subjects only
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
]

#: Channel order of every image: T1, T2, FLAIR (FLAIR is channel 2).
CONTRASTS: tuple[str, ...] = ("T1", "T2", "FLAIR")
#: Tissue order of :attr:`SyntheticSubject.tissues`.
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")
#: Bumped whenever the same seed would give different images.
GENERATOR_VERSION = "1"
#: Mean tissue intensities (arbitrary units, rows = contrasts, columns = CSF, GM, WM) before per-subject jitter.
BASE_INTENSITIES: dict[str, tuple[float, float, float]] = {
    "T1": (300.0, 600.0, 850.0),
    "T2": (1500.0, 750.0, 550.0),
    "FLAIR": (150.0, 700.0, 560.0),
}

_ANATOMY, _NOISE, _LESIONS = 0, 1, 2  # random streams per subject


@dataclass
class Lesion:
    """One inserted lesion (world coordinates in mm, RAS).

    Attributes:
        centre_mm: world coordinate of the seed voxel.
        radius_mm: nominal radius of the blob before the random irregularity.
        n_voxels: voxels in this lesion (lesions may overlap, so the sum can exceed the label size).
        volume_ml: ``n_voxels`` times the voxel volume, in millilitres.
        location: where the seed was drawn: ``"periventricular"``, ``"white_matter"`` or ``"any"``.
        subtle: whether the FLAIR contrast was drawn from the subtle range (overlapping grey matter).
        contrast: relative intensity change at full lesion weight per contrast (``k`` in ``1 + w * k``).
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    n_voxels: int
    volume_ml: float
    location: str
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
        patient = gen.generate(0, lesions=True)   # the same anatomy, noise and bias, plus 1-6 lesions
        changed = (healthy.image != patient.image).any(-1)   # equals patient.label
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

    def _lesions(
        self, rng: np.random.Generator, tissues: np.ndarray, mask: np.ndarray, n_lesions: int
    ) -> tuple[np.ndarray, np.ndarray, list[Lesion]]:
        """Draw lesions; return the per-contrast relative change ``(3, X, Y, Z)``, the label and the lesion list."""
        s = self.spacing
        csf, _, wm = tissues
        eligible = mask & (csf < 0.5)
        white = mask & (wm > 0.5)
        depth = ndimage.distance_transform_edt(mask, sampling=s)
        ventricles = (csf > 0.6) & (depth > 12.0)
        if ventricles.any():
            near = ndimage.distance_transform_edt(~ventricles, sampling=s) < 10.0
        else:
            near = np.zeros_like(mask)
        candidates = {
            "periventricular": np.flatnonzero(white & near),
            "white_matter": np.flatnonzero(white),
            "any": np.flatnonzero(eligible),
        }
        if candidates["any"].size == 0:
            raise ValueError("no voxel can hold a lesion: the brain mask has no white or grey matter.")
        effect = np.zeros((len(CONTRASTS), *self.shape), dtype=np.float32)
        label = np.zeros(self.shape, dtype=bool)
        lesions = []
        for _ in range(n_lesions):
            u = rng.random()
            location = "periventricular" if u < 0.5 else "white_matter" if u < 0.85 else "any"
            if candidates[location].size == 0:
                location = "any"
            centre = np.array(np.unravel_index(rng.choice(candidates[location]), self.shape))
            radius = float(np.exp(rng.uniform(np.log(0.75 * s), np.log(18.0))))
            stretch = np.exp(np.clip(rng.normal(0.0, 0.25, 3), -0.6, 0.6))
            irregularity = rng.uniform(0.3, 0.9)
            half = int(np.ceil(1.6 * radius * stretch.max() / s)) + 1
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
            blob = (value > 0) & eligible[box]
            local_centre = tuple(int(c - a) for c, a in zip(centre, lo))
            blob[local_centre] = True  # the seed voxel is eligible by construction
            value[local_centre] = max(float(value[local_centre]), 1e-3)
            weight = 0.3 + 0.7 * np.clip(value / float(value[blob].max()), 0.0, 1.0)
            subtle = bool(rng.random() < 0.35)
            k_flair = rng.uniform(0.12, 0.3) if subtle else rng.uniform(0.3, 1.0)
            k = np.array([-rng.uniform(0.05, 0.45), k_flair * rng.uniform(1.0, 2.0), k_flair], dtype=np.float32)
            change = np.where(blob[None], weight[None] * k[:, None, None, None], 0.0).astype(np.float32)
            region = effect[(slice(None), *box)]
            effect[(slice(None), *box)] = np.where(np.abs(change) > np.abs(region), change, region)
            label[box] |= blob
            n_vox = int(blob.sum())
            world = self.affine[:3, :3] @ centre + self.affine[:3, 3]
            lesions.append(
                Lesion(
                    centre_mm=tuple(round(float(v), 2) for v in world),
                    radius_mm=round(radius, 3),
                    n_voxels=n_vox,
                    volume_ml=round(n_vox * s**3 / 1000.0, 4),
                    location=location,
                    subtle=subtle,
                    contrast={c: round(float(v), 4) for c, v in zip(CONTRASTS, k)},
                )
            )
        return effect, label, lesions

    def generate(self, index: int, lesions: bool | int = False) -> SyntheticSubject:
        """Render subject ``index``.

        Args:
            index: subject number (>= 0). The anatomy, intensities, bias and noise depend only on
                ``(seed, index)``, never on ``lesions``.
            lesions: ``False`` or ``0`` for a healthy render, ``True`` for a random count (1 to 6),
                or the number of lesions to insert.

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
        drawn = int(lesion_rng.integers(1, 7))  # always drawn, so the stream is the same whatever is asked
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
        jitter = 1.0 + np.clip(rng.normal(0.0, 0.04, (len(CONTRASTS), len(TISSUES))), -0.08, 0.08)
        intensities = np.array([BASE_INTENSITIES[c] for c in CONTRASTS]) * jitter * gains[:, None]
        bias_sd = rng.uniform(0.03, 0.12, len(CONTRASTS))
        bias = _smooth_field(rng, self.shape, self.spacing, ctrl_mm=60.0, scale=1.0, n=len(CONTRASTS))
        bias = np.exp(bias * bias_sd.astype(np.float32)[:, None, None, None])
        snr = rng.uniform(18.0, 40.0, len(CONTRASTS))
        sigma = intensities[:, 1:].mean(1) / snr

        clean = np.einsum("ct,t...->c...", intensities.astype(np.float32), tissues)
        label = None
        found: list[Lesion] = []
        if n_lesions:
            effect, label_bool, found = self._lesions(lesion_rng, tissues, mask, n_lesions)
            clean *= 1.0 + effect
            label = label_bool.astype(np.uint8)
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
    n_healthy: int = 40,
    n_lesion: int = 10,
    seed: int = 0,
    spacing: float = 2.0,
    val_fraction: float = 0.2,
) -> Path:
    """Write a synthetic cohort and its Decathlon-style datalist; return the datalist path.

    Subjects ``sub-001 ... sub-{n_healthy}`` are healthy (the first ``1 - val_fraction`` of them go to
    ``training``, the rest to ``validation``); the next ``n_lesion`` subjects have lesions and go to ``test``.
    Entries are ``{"image", "brain_mask"}`` (+ ``"label"`` for lesion subjects), relative to the JSON's folder.

    Args:
        out_dir: output folder (created if needed; files of the same name are overwritten).
        n_healthy: number of healthy subjects (training + validation).
        n_lesion: number of lesion subjects (test).
        seed: random seed; the same seed, sizes and spacing give byte-identical files.
        spacing: isotropic voxel size in mm.
        val_fraction: fraction of the healthy subjects put in ``validation`` (at least one when there are two
            or more healthy subjects and ``val_fraction > 0``).

    Returns:
        the path of ``out_dir/datalist.json``.
    """
    if int(n_healthy) != n_healthy or n_healthy < 0 or int(n_lesion) != n_lesion or n_lesion < 0:
        raise ValueError(f"n_healthy and n_lesion must be non-negative integers, got {n_healthy!r}, {n_lesion!r}.")
    if n_healthy + n_lesion == 0:
        raise ValueError("the cohort is empty: n_healthy + n_lesion must be at least 1.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = SyntheticBrainGenerator(spacing=spacing, seed=seed)
    n_total = int(n_healthy) + int(n_lesion)
    n_val = int(round(n_healthy * val_fraction))
    if val_fraction > 0 and n_healthy >= 2:
        n_val = min(max(n_val, 1), n_healthy - 1)
    sections: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    n_lesion_voxels = 0
    for index in range(n_total):
        has_lesions = index >= n_healthy
        subject = gen.generate(index, lesions=has_lesions)
        name = subject_name(index, n_total)
        folder = out / name
        folder.mkdir(exist_ok=True)
        _save_nifti(subject.image, subject.affine, folder / "image.nii.gz")
        _save_nifti(subject.brain_mask, subject.affine, folder / "brain_mask.nii.gz")
        entry = {"image": f"{name}/image.nii.gz", "brain_mask": f"{name}/brain_mask.nii.gz"}
        if has_lesions:
            _save_nifti(subject.label, subject.affine, folder / "label.nii.gz")
            entry["label"] = f"{name}/label.nii.gz"
            n_lesion_voxels += int(subject.label.sum())
            info = {"subject": name, "lesions": [asdict(les) for les in subject.lesions], "params": subject.params}
            (folder / "lesions.json").write_text(json.dumps(info, indent=2) + "\n")
            sections["test"].append(entry)
        elif index < n_healthy - n_val:
            sections["training"].append(entry)
        else:
            sections["validation"].append(entry)

    datalist = {
        "name": "monai-qrvae synthetic brain MRI",
        "description": (
            "Synthetic skull-stripped T1/T2/FLAIR subjects rendered from the MNI ICBM 152 2009 template shipped "
            "with nilearn; healthy subjects in training/validation, subjects with inserted lesions in test."
        ),
        "reference": "Fonov et al. 2011, NeuroImage 54(1) (MNI ICBM 152 2009 template); monai-qrvae generator",
        "licence": "derived from the MNI ICBM 152 2009 template (see nilearn's dataset description)",
        "tensorImageSize": "4D",
        "modality": {str(i): c for i, c in enumerate(CONTRASTS)},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(sections["training"]),
        "numValidation": len(sections["validation"]),
        "numTest": len(sections["test"]),
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
            "channels": list(CONTRASTS),
            "layout": "sub-XXX/image.nii.gz is 4D (X, Y, Z, 3) float32: T1, T2, FLAIR; brain_mask/label uint8",
        },
        **sections,
    }
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path
