"""Raw T1/T2/FLAIR series -> the analysis-ready image the model expects (``qrvae preprocess``).

Steps (ANTs through ``antspyx`` for bias correction and registration, ``deepbet`` for brain extraction; both in the
``raw`` extra, imported only here):

1. **read and check** the three series (exist, 3D, finite, not constant, a plausible field of view);
2. **N4 bias-field correction** (:func:`ants.n4_bias_field_correction`), fitted on a coarse (``n4_mm``) copy of
   each series inside its head mask; the smooth field is then divided out of the full-resolution series;
3. **rigid co-registration** of T2 and FLAIR to T1 by image content (:func:`ants.registration`, ``Rigid``,
   Mattes mutual information, centre-of-mass start: the headers of different series are not trusted);
4. **brain extraction** on the corrected T1 (deepbet's TorchScript model, shipped inside its wheel, CPU);
5. **affine alignment** of the brain-extracted T1 to the MNI152 2009 T1 template shipped with ``nilearn``
   (``Affine``, mutual information) -- the template the embedded data is built on;
6. **one resampling** of each corrected series (trilinear) and of the brain mask onto the analysis grid: the
   embedded data's 2 mm MNI grid (:func:`analysis_grid`), through the composed transforms; zero outside the brain.
   The analysed brain is the extracted brain minus its outer ``mask_erosion_mm`` (2 mm): brain extraction keeps a
   shell of CSF and meninges at the surface (on the raw-like data: 4 % of its voxels outside the true brain, 0.1 %
   of the brain missed) whose dark partial-volume voxels the model never saw in training; they shift the
   percentile normalisation and with it every z-score (see docs/raw.md, "Analysed brain").

The steps live in :mod:`~monai_qrvae.raw.series` (1), :mod:`~monai_qrvae.raw.bias` (2),
:mod:`~monai_qrvae.raw.registration` (3, 5) and :mod:`~monai_qrvae.raw.brain_extraction` (4); this module runs them.

The intensity standardisation of training (percentiles inside the brain mask) is part of the model's own
preprocessing (:func:`monai_qrvae.preprocessing.volume_transforms`), so it is applied at inference as in training.

**Checks before anything is written**: a missing or unreadable series, or a T2/FLAIR pose that is not a similarity
peak at all (:func:`alignment_sharpness` <= ``DEFAULT_THRESHOLDS["sharpness"]`` = 0) raise
:class:`~monai_qrvae.raw.errors.RawInputError` subclasses naming the file; ``alignment_check=False``
(``--no-alignment-check``) records the figures and refuses nothing. A series whose similarity peak is no sharper
than its outline's (:func:`outline_sharpness`), or a T1 brain loosely aligned with the template, gives a warning
(logged, and listed in ``transforms.json``'s ``warnings``), not a refusal. Skull-stripped series are accepted as well
as heads (docs/raw.md, "Alignment check").

Output folder::

    out_dir/
        image.nii.gz           # 4D float32 (X, Y, Z, 3): T1, T2, FLAIR on the analysis grid, skull-stripped
        brain_mask.nii.gz      # 3D uint8 on the analysis grid
        brain_mask_t1.nii.gz   # 3D uint8 brain mask on the T1 series' own grid
        transforms/T2_to_T1.mat, FLAIR_to_T1.mat, T1_to_MNI.mat   # ANTs (fixed -> moving point maps, LPS)
        transforms.json        # the same as RAS 4x4 point maps + every series' grid + similarity figures
        timing.json            # seconds per step and their shares
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from monai_qrvae.raw.bias import _n4
from monai_qrvae.raw.brain_extraction import _brain_extraction
from monai_qrvae.raw.errors import RawInputError, RegistrationError
from monai_qrvae.raw.geometry import resample_to_grid
from monai_qrvae.raw.registration import _ants, _register, _template
from monai_qrvae.raw.series import (
    _head_mask,
    alignment_sharpness,
    load_series,
    normalised_mutual_information,
    outline_sharpness,
)

__all__ = [
    "SERIES",
    "IMAGE_FILE",
    "MASK_FILE",
    "TRANSFORMS_FILE",
    "TIMING_FILE",
    "DEFAULT_THRESHOLDS",
    "analysis_grid",
    "preprocess",
]

#: Series names, in the channel order of the analysis-ready image.
SERIES: tuple[str, ...] = ("T1", "T2", "FLAIR")
IMAGE_FILE = "image.nii.gz"
MASK_FILE = "brain_mask.nii.gz"
MASK_T1_FILE = "brain_mask_t1.nii.gz"
TRANSFORMS_FILE = "transforms.json"
TIMING_FILE = "timing.json"
#: Alignment checks (docs/raw.md, "Alignment check"). ``sharpness``: a T2/FLAIR series is **refused** when the peak
#: sharpness of its found rigid pose (:func:`~monai_qrvae.raw.series.alignment_sharpness`, inside the T1 foreground)
#: is <= this bound; 0 is the null of "no peak" (4 mm / 4 degrees of misalignment lose nothing), fitted to no data
#: (``--no-alignment-check``: refuse nothing). A **warning** (logged, in ``transforms.json`` ``warnings``) is given when
#: the images' peak is no sharper than their outlines' (:func:`~monai_qrvae.raw.series.outline_sharpness`: no evidence
#: of shared anatomy beyond the head/brain outline). ``template``: a warning, not a refusal, when the NMI of the
#: brain-extracted T1 with the MNI template is below it (raw-like data 1.128-1.144, a real 5 mm T1 1.036).
DEFAULT_THRESHOLDS: dict[str, float] = {"sharpness": 0.0, "template": 1.05}


@functools.lru_cache(maxsize=4)
def analysis_grid(spacing: float = 2.0, margin_mm: float = 12.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` of the embedded data's grid: the MNI152 brain's bounding box plus ``margin_mm``.

    The same grid as :class:`monai_qrvae.data.synthetic.SyntheticBrainGenerator` (``spacing``, ``margin_mm``),
    computed from nilearn's 1 mm MNI152 2009 brain mask (shipped with nilearn; nothing is downloaded).
    """
    from nilearn import datasets

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    affine = np.asarray(mask_img.affine, dtype=np.float64)
    idx = np.argwhere(np.asarray(mask_img.dataobj) > 0)
    lo = affine[:3, 3] + idx.min(0) - margin_mm
    hi = affine[:3, 3] + idx.max(0) + margin_mm
    shape = tuple(int(np.ceil((h - low) / spacing)) + 1 for low, h in zip(lo, hi))
    out = np.diag([spacing, spacing, spacing, 1.0])
    out[:3, 3] = lo
    return shape, out  # type: ignore[return-value]


def _timed(timing: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    timing[name] = timing.get(name, 0.0) + time.perf_counter() - start
    return out


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, descrip: str) -> None:
    from monai_qrvae.utils import atomic_write

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code="mni")
    img.set_sform(affine, code="mni")
    img.header["descrip"] = descrip.encode()[:79]
    atomic_write(path, lambda tmp: img.to_filename(tmp))


_LOG = logging.getLogger(__name__)
_NO_CHECK = "give --no-alignment-check (alignment_check=False) to skip this check"


def _check_alignment(
    name: str,
    work: Mapping[str, tuple[np.ndarray, np.ndarray]],
    t1_to_series: np.ndarray,
    mask: np.ndarray,
    limit: float | None,
    paths: Mapping[str, Path],
    warnings: list[str] | None = None,
) -> dict[str, float]:
    """Alignment figures of series ``name`` (mapped by ``t1_to_series``) with T1 on their ``work`` copies, rounded to
    4 decimals: ``nmi``, ``perturbed_nmi`` and ``sharpness`` inside ``mask`` (:func:`alignment_sharpness`),
    ``image_sharpness`` and ``outline_sharpness`` around it (:func:`outline_sharpness`). A warning is logged and
    appended to ``warnings`` when ``image_sharpness <= outline_sharpness``.

    Raises:
        RegistrationError: ``sharpness <= limit`` (``None``: never).
    """
    t1_work, t1_work_affine = work["T1"]
    moving, moving_affine = work[name]
    nmi, perturbed, sharpness = alignment_sharpness(t1_work, t1_work_affine, moving, moving_affine, t1_to_series, mask)
    if limit is not None and sharpness <= limit:
        raise RegistrationError(
            f"{name} series {paths[name]} does not align with the T1 series {paths['T1']}: after rigid registration "
            f"the found pose is not a similarity peak (a 4 mm / 4 degree misalignment keeps {1 - sharpness:.0%} of "
            f"the similarity, sharpness {sharpness:.3f}, expected > {limit:.2f}); are both series of the same "
            f"patient's head? {_NO_CHECK}."
        )
    image, outline = outline_sharpness(
        t1_work, t1_work_affine, moving, moving_affine, t1_to_series, mask, _head_mask(moving)
    )
    out = {"nmi": round(nmi, 4), "perturbed_nmi": round(perturbed, 4), "sharpness": round(sharpness, 4)}
    out.update(image_sharpness=round(image, 4), outline_sharpness=round(outline, 4))
    if image <= outline:
        text = (
            f"{name} series {paths[name]}: its similarity peak with T1 is no sharper than that of the two series' "
            f"outlines (image sharpness {image:.3f} <= outline sharpness {outline:.3f}): no evidence beyond the "
            "outline that it is the same patient's; check it is."
        )
        _LOG.warning(text)
        if warnings is not None:
            warnings.append(text)
    return out


def _skull_stripped(data: np.ndarray) -> bool:
    """Whether a series looks skull-stripped: most voxels exactly zero around one non-zero, brain-sized object."""
    from scipy import ndimage

    nonzero = data != 0
    if nonzero.mean() > 0.5:
        return False
    labels, n = ndimage.label(nonzero)
    if n == 0:
        return False
    largest = np.bincount(labels.ravel())[1:].max()
    return bool(largest >= 0.9 * nonzero.sum())


def _brain_mask(
    corrected: np.ndarray, raw: np.ndarray, affine: np.ndarray, threads: int | None
) -> tuple[np.ndarray, str]:
    """The T1 brain mask and where it came from: deepbet's mask, or -- on a skull-stripped series whose deepbet mask
    disagrees with its non-zero region (Dice < 0.9) -- that region (holes filled)."""
    from scipy import ndimage

    from monai_qrvae.raw.geometry import dice

    mask = _brain_extraction(corrected, affine, threads)
    if not _skull_stripped(raw):
        return mask, "deepbet"
    nonzero = ndimage.binary_fill_holes(raw != 0)
    if dice(mask, nonzero) >= 0.9:
        return mask, "deepbet (skull-stripped input)"
    return nonzero, "non-zero region (skull-stripped input; deepbet's mask had Dice < 0.9 with it)"


def _erode_mm(mask: np.ndarray, affine: np.ndarray, distance_mm: float) -> np.ndarray:
    """``mask`` without its voxels within ``distance_mm`` of its surface (Euclidean, in the grid's own spacing)."""
    if distance_mm <= 0:
        return mask
    from scipy import ndimage

    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    return ndimage.distance_transform_edt(np.pad(mask, 1), sampling=zooms)[1:-1, 1:-1, 1:-1] > distance_mm


def preprocess(
    t1: str | os.PathLike,
    t2: str | os.PathLike,
    flair: str | os.PathLike,
    out_dir: str | os.PathLike,
    work_mm: float = 2.0,
    n4_mm: float = 6.0,
    spacing: float = 2.0,
    thresholds: Mapping[str, float] | None = None,
    threads: int | None = None,
    mask_erosion_mm: float = 2.0,
    alignment_check: bool = True,
) -> dict[str, Any]:
    """Turn three raw series into the analysis-ready image, brain mask and transforms (layout in the module doc).

    Args:
        t1: T1-weighted series (the reference of the co-registration and of brain extraction).
        t2: T2-weighted series.
        flair: FLAIR series.
        out_dir: output folder (created; files of the same name are replaced).
        work_mm: voxel size of the copies the registrations work on (their last level runs at twice this size).
        n4_mm: voxel size of the copies the N4 bias field is fitted on.
        spacing: voxel size of the analysis grid (2 mm: the embedded data's and the shipped model's grid).
        thresholds: overrides of :data:`DEFAULT_THRESHOLDS` (``sharpness``, ``template``).
        threads: torch threads for brain extraction (``None``: torch's default). ANTs follows
            ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``.
        mask_erosion_mm: the analysed brain is the extracted brain without its voxels within this distance (mm) of
            the mask's surface (0: the whole extracted brain); ``brain_mask_t1.nii.gz`` keeps the extraction itself.
        alignment_check: refuse a T2/FLAIR pose that is not a similarity peak (:data:`DEFAULT_THRESHOLDS`
            ``sharpness``; ``False``: compute and record the figures and warnings, refuse nothing;
            ``--no-alignment-check``).

    Returns:
        the content of ``transforms.json`` plus ``"timing"`` (seconds per step) and ``"files"`` (written paths).

    Raises:
        MissingSeriesError: a series file does not exist.
        RawInputError: a series cannot be used, or no acceptable alignment was found (:class:`RegistrationError`).
    """
    limits = {**DEFAULT_THRESHOLDS, **(thresholds or {})}

    def check(key: str) -> float | None:
        return limits[key] if alignment_check else None

    paths = {"T1": Path(t1), "T2": Path(t2), "FLAIR": Path(flair)}
    timing: dict[str, float] = {}
    total_start = time.perf_counter()
    images = _timed(timing, "read", lambda: {n: load_series(p, n) for n, p in paths.items()})
    _ants()  # fail early (before any work) when the extra is not installed
    if importlib.util.find_spec("deepbet") is None:
        raise ImportError("brain extraction needs deepbet: pip install 'monai-qrvae[raw]' (deepbet==1.0.2).")
    data = {n: np.asarray(img.dataobj, dtype=np.float32) for n, img in images.items()}
    affines = {n: np.asarray(img.affine) for n, img in images.items()}

    corrected: dict[str, np.ndarray] = {}
    work: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in SERIES:
        full, small, small_affine = _timed(timing, "n4", lambda n=name: _n4(data[n], affines[n], work_mm, n4_mm))
        corrected[name], work[name] = full, (small, small_affine)

    similarity: dict[str, float] = {}
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qrvae-preprocess-") as tmp_name:
        tmp = Path(tmp_name)
        t1_work, t1_work_affine = work["T1"]
        t1_head = _head_mask(t1_work)  # the head, or the brain of a skull-stripped series
        maps: dict[str, np.ndarray] = {}  # RAS point maps T1 world -> series world
        for name in SERIES[1:]:
            moving, moving_affine = work[name]
            maps[name] = _timed(
                timing,
                "coregistration",
                lambda m=moving, a=moving_affine, n=name: _register(
                    t1_work, t1_work_affine, m, a, "Rigid", tmp / f"{n}_to_T1.mat"
                ),
            )
            figures = _timed(
                timing,
                "alignment_check",
                lambda n=name: _check_alignment(n, work, maps[n], t1_head, check("sharpness"), paths, warnings),
            )
            similarity.update({f"{name}_{k}": v for k, v in figures.items()})
        mask_t1, mask_source = _timed(
            timing, "brain_extraction", lambda: _brain_mask(corrected["T1"], data["T1"], affines["T1"], threads)
        )
        if mask_t1.sum() * abs(np.linalg.det(affines["T1"][:3, :3])) < 200_000:  # 200 ml
            raise RawInputError(
                f"T1 series {paths['T1']}: brain extraction found {mask_t1.sum()} voxels "
                f"({mask_t1.sum() * abs(np.linalg.det(affines['T1'][:3, :3])) / 1000:.0f} ml); expected a brain "
                "(>= 200 ml); is it a T1-weighted head scan?"
            )
        brain_work = resample_to_grid(mask_t1.astype(np.float32), affines["T1"], t1_work.shape, t1_work_affine) > 0.5
        for name in SERIES[1:]:  # recorded, not checked (an absolute NMI depends on the scanner)
            t1_to_series = maps[name]
            warped = resample_to_grid(*work[name], t1_work.shape, t1_work_affine, t1_to_series, order=1)
            similarity[f"{name}_brain_nmi"] = round(normalised_mutual_information(t1_work, warped, brain_work), 4)
        tpl, tpl_affine = _template()
        mni_to_t1 = _timed(
            timing,
            "template_alignment",
            lambda: _register(tpl, tpl_affine, t1_work * brain_work, t1_work_affine, "Affine", tmp / "T1_to_MNI.mat"),
        )
        warped = resample_to_grid(t1_work * brain_work, t1_work_affine, tpl.shape, tpl_affine, mni_to_t1, order=1)
        similarity["T1_template_nmi"] = round(normalised_mutual_information(tpl, warped, tpl > 0), 4)
        if similarity["T1_template_nmi"] < limits["template"]:  # a warning: an absolute NMI depends on the scanner
            text = (
                f"T1 series {paths['T1']}: its brain aligns loosely with the MNI152 template (normalised mutual "
                f"information {similarity['T1_template_nmi']:.3f} < {limits['template']:.2f}); check it is a T1 head."
            )
            _LOG.warning(text)
            warnings.append(text)

        analysed_t1 = _erode_mm(mask_t1, affines["T1"], mask_erosion_mm)

        def _resample() -> tuple[np.ndarray, np.ndarray]:
            shape, grid_affine = analysis_grid(spacing)
            mask = resample_to_grid(analysed_t1.astype(np.float32), affines["T1"], shape, grid_affine, mni_to_t1) > 0.5
            channels = []
            for name in SERIES:
                to_series = mni_to_t1 if name == "T1" else maps[name] @ mni_to_t1
                channels.append(
                    resample_to_grid(corrected[name], affines[name], shape, grid_affine, to_series, order=1) * mask
                )
            return np.stack(channels, -1).astype(np.float32), mask.astype(np.uint8)

        image, mask = _timed(timing, "resample", _resample)
        shape, grid_affine = analysis_grid(spacing)

        def _write() -> list[Path]:
            out = Path(out_dir)
            (out / "transforms").mkdir(parents=True, exist_ok=True)
            _write_nifti(image, grid_affine, out / IMAGE_FILE, "monai-qrvae preprocess: T1,T2,FLAIR")
            _write_nifti(mask, grid_affine, out / MASK_FILE, "monai-qrvae preprocess: brain mask")
            _write_nifti(mask_t1.astype(np.uint8), affines["T1"], out / MASK_T1_FILE, "brain mask, T1 grid")
            written = [out / IMAGE_FILE, out / MASK_FILE, out / MASK_T1_FILE]
            for src in sorted(tmp.glob("*.mat")):
                shutil.copyfile(src, out / "transforms" / src.name)
                written.append(out / "transforms" / src.name)
            return written

        files = _timed(timing, "write", _write)

    out = Path(out_dir)
    info: dict[str, Any] = {
        "convention": (
            "4x4 world point maps in RAS mm; 'mni_to_t1' sends a point of the analysis (MNI) space to the T1 "
            "series' world, 't1_to_series[S]' a point of T1's world to series S's world; the ANTs .mat files hold "
            "the same maps in LPS (fixed -> moving: T1_to_MNI.mat fixed=MNI, S_to_T1.mat fixed=T1)"
        ),
        "inputs": {n: os.path.abspath(p) for n, p in paths.items()},
        "series": {n: {"shape": [int(s) for s in data[n].shape], "affine": affines[n].tolist()} for n in SERIES},
        "analysis": {"shape": list(shape), "affine": grid_affine.tolist(), "channels": list(SERIES)},
        "mni_to_t1": mni_to_t1.tolist(),
        "t1_to_series": {"T1": np.eye(4).tolist(), **{n: m.tolist() for n, m in maps.items()}},
        "ants_transforms": {
            "T2_to_T1": "transforms/T2_to_T1.mat",
            "FLAIR_to_T1": "transforms/FLAIR_to_T1.mat",
            "T1_to_MNI": "transforms/T1_to_MNI.mat",
        },
        "template": "MNI152 2009 T1 (nilearn, 2 mm, brain)",
        "similarity": similarity,
        "thresholds": limits,
        "alignment_check": bool(alignment_check),
        "warnings": warnings,
        "brain_mask_source": mask_source,
        "brain_volume_ml": round(float(mask_t1.sum() * abs(np.linalg.det(affines["T1"][:3, :3]))) / 1000.0, 2),
        "analysed_volume_ml": round(float(analysed_t1.sum() * abs(np.linalg.det(affines["T1"][:3, :3]))) / 1000.0, 2),
        "mask_erosion_mm": float(mask_erosion_mm),
        "work_mm": float(work_mm),
        "n4_mm": float(n4_mm),
    }
    from monai_qrvae.utils import atomic_write

    text = json.dumps(info, indent=2) + "\n"
    atomic_write(out / TRANSFORMS_FILE, lambda tmp: Path(tmp).write_text(text))
    timing["total"] = time.perf_counter() - total_start
    steps = {k: round(v, 3) for k, v in timing.items() if k != "total"}
    shares = {k: round(v / max(timing["total"], 1e-9), 4) for k, v in steps.items()}
    timing_info = {"seconds": steps, "share": shares, "total_seconds": round(timing["total"], 3)}
    text = json.dumps(timing_info, indent=2) + "\n"
    atomic_write(out / TIMING_FILE, lambda tmp: Path(tmp).write_text(text))
    files += [out / TRANSFORMS_FILE, out / TIMING_FILE]
    return {**info, "timing": timing_info, "files": [str(f) for f in files]}
