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
   axial centre of mass (the slices the default model analyses). With ``lesion_kind="tumour"`` each lesion subject
   gets one glioma / metastasis-like tumour instead (:mod:`monai_qrvae.data.tumours`: 20-150 mL of solid part,
   optional necrotic core and vasogenic oedema, with a mass effect that pushes the surrounding tissue, image and
   brain mask outwards by a few mm before the tumour is painted; the label is the whole tumour);
5. a multiplicative smooth bias field per contrast, then Rician noise inside the brain, rounded to whole numbers
   (as a scanner stores them; it also halves the file size); zero outside the brain mask (skull stripped).

Every random draw comes from ``numpy.random.default_rng([seed, subject_index, stream])`` with separate streams
for anatomy, noise, lesions, look-alikes and tumours, so a subject can be rendered with and without its lesions and
the two renders differ only where lesions were added (``w > 0``; the label is the subset ``w >= 0.5``; a tumour's
mass effect also moves the tissue within about three tumour radii). The same seed gives byte-identical files
(nibabel writes gzip with ``mtime=0``).

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

import json
import os
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from .anatomy import (  # noqa: F401 - re-exported: the names that moved stay importable from here
    BASE_INTENSITIES,
    BIAS_CTRL_MM,
    BIAS_SD,
    CONTRASTS,
    GENERATOR_VERSION,
    SNR,
    TISSUES,
    _load_template,
)
from .discovery import allocate_splits, split_share
from .generator import LESION_KIND_NAMES, SyntheticBrainGenerator, SyntheticSubject
from .lesions import (
    CENTRAL_MM,
    EDGE_MM,
    FLAIR_DELTA_CLIP,
    FLAIR_DELTA_GAMMA,
    FLAIR_SUBTLE_DELTA,
    LESION_COUNT,
    LESION_KINDS,
    LOOKALIKES,
    T1_PER_FLAIR,
    T2_PER_FLAIR,
    Lesion,
)
from .tumours import (
    TUMOUR_CENTRAL_MM,
    TUMOUR_CONTRASTS,
    TUMOUR_CORE_FRACTION,
    TUMOUR_DEPTH_MM,
    TUMOUR_MASS_EFFECT_MM,
    TUMOUR_NECROSIS,
    TUMOUR_VOLUME_ML,
    Tumour,
)

__all__ = [  # sorted; the names defined in submodules are re-exported
    "BASE_INTENSITIES",
    "BIAS_SD",
    "CENTRAL_MM",
    "CONTRASTS",
    "EDGE_MM",
    "FLAIR_DELTA_CLIP",
    "FLAIR_DELTA_GAMMA",
    "FLAIR_SUBTLE_DELTA",
    "GENERATOR_VERSION",
    "LESION_COUNT",
    "LESION_KINDS",
    "LESION_KIND_NAMES",
    "LOOKALIKES",
    "Lesion",
    "SECTIONS",
    "SNR",
    "STRATA",
    "SyntheticBrainGenerator",
    "SyntheticSubject",
    "T1_PER_FLAIR",
    "T2_PER_FLAIR",
    "TISSUES",
    "TUMOUR_CENTRAL_MM",
    "TUMOUR_CONTRASTS",
    "TUMOUR_CORE_FRACTION",
    "TUMOUR_DEPTH_MM",
    "TUMOUR_MASS_EFFECT_MM",
    "TUMOUR_NECROSIS",
    "TUMOUR_VOLUME_ML",
    "Tumour",
    "make_cohort",
    "subject_name",
]

#: Datalist sections written by :func:`make_cohort` and strata of its entries.
SECTIONS: tuple[str, ...] = ("training", "validation", "calibration", "tuning", "test")
STRATA: tuple[str, ...] = ("healthy", "typical", "subtle", "tumour")
#: Default split fractions (see :func:`monai_qrvae.data.discovery.allocate_splits`).
VAL_FRACTION, CALIBRATION_FRACTION, TEST_HEALTHY_FRACTION, SUBTLE_FRACTION = 0.1, 0.33, 0.09, 0.3


def subject_name(index: int, n_subjects: int = 999) -> str:
    """Folder name of subject ``index`` (0-based): ``sub-001``, ... (wider when there are 1000 or more)."""
    width = max(3, len(str(n_subjects)))
    return f"sub-{index + 1:0{width}d}"


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code="aligned")
    img.set_sform(affine, code="aligned")
    img.header["descrip"] = f"monai-qrvae synthetic v{GENERATOR_VERSION}".encode()
    img.to_filename(str(path))


def make_cohort(
    out_dir: str | os.PathLike,
    n_healthy: int = 61,
    n_lesion: int = 20,
    seed: int = 1,
    spacing: float = 2.0,
    val_fraction: float = VAL_FRACTION,
    calibration_fraction: float = CALIBRATION_FRACTION,
    test_healthy_fraction: float = TEST_HEALTHY_FRACTION,
    subtle_fraction: float = SUBTLE_FRACTION,
    n_validation: int | None = None,
    n_calibration: int | None = None,
    n_test_healthy: int | None = None,
    n_tuning: int | None = None,
    lesion_kind: str = "ms",
) -> Path:
    """Write a synthetic cohort and its Decathlon-style datalist; return the datalist path.

    Subjects ``sub-001 ... sub-{n_healthy}`` are healthy and go, in this order, to ``training``, ``validation``,
    ``calibration`` and ``test`` (healthy test subjects, with an all-zero label); the next ``n_lesion`` subjects
    have lesions and go to ``test`` first, then ``tuning``. The split sizes follow :func:`allocate_splits`
    (default cohort: 30 training, 6 validation, 20 calibration, 10 tuning, 10 + 5 test). In each lesion split the
    last ``floor(subtle_fraction * n)`` subjects form the ``subtle`` stratum (only faint lesions). With
    ``lesion_kind="tumour"`` every lesion subject has one tumour instead and the ``tumour`` stratum
    (``subtle_fraction`` is not used).

    Entries are ``{"image", "brain_mask", "label" (tuning and test), "stratum"}`` with paths relative to the JSON's
    folder and ``stratum`` one of ``"healthy"``, ``"typical"``, ``"subtle"``, ``"tumour"``.

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
        lesion_kind: ``"ms"`` (default: 3-15 white-matter lesions per lesion subject) or ``"tumour"`` (one
            20-150 mL tumour with oedema, optional necrosis and mass effect; see docs/data.md, "Tumour kind").

    Returns:
        the path of ``out_dir/datalist.json``.
    """
    if int(n_healthy) != n_healthy or n_healthy < 0 or int(n_lesion) != n_lesion or n_lesion < 0:
        raise ValueError(f"n_healthy and n_lesion must be non-negative integers, got {n_healthy!r}, {n_lesion!r}.")
    if n_healthy + n_lesion == 0:
        raise ValueError("the cohort is empty: n_healthy + n_lesion must be at least 1.")
    if not 0.0 <= subtle_fraction <= 1.0:
        raise ValueError(f"subtle_fraction must be in [0, 1], got {subtle_fraction}.")
    if lesion_kind not in LESION_KIND_NAMES:
        raise ValueError(f"lesion_kind must be one of {LESION_KIND_NAMES}, got {lesion_kind!r}.")
    tumour = lesion_kind == "tumour"
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
        if tumour:
            plan += [(section, "tumour")] * n
            continue
        n_subtle = split_share(subtle_fraction, n)
        plan += [(section, "typical")] * (n - n_subtle) + [(section, "subtle")] * n_subtle
    sections: dict[str, list[dict[str, str]]] = {k: [] for k in SECTIONS}
    healthy_test: list[dict[str, str]] = []
    n_lesion_voxels = 0
    for index, (section, stratum) in enumerate(plan):
        has_lesions = stratum != "healthy"
        subject = gen.generate(index, lesions=has_lesions, subtle=stratum == "subtle", kind=lesion_kind)
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
            **({"lesion_kind": lesion_kind} if tumour else {}),  # absent from the default cohort (same bytes)
        },
        **sections,
    }
    from monai_qrvae.utils import atomic_write

    text = json.dumps(datalist, indent=2) + "\n"
    return atomic_write(out / "datalist.json", lambda tmp: Path(tmp).write_text(text))
