"""Raw-like series (T1, T2, FLAIR with a head, own grids, motion and bias) from the embedded generator.

Each subject of :class:`monai_qrvae.data.synthetic.SyntheticBrainGenerator` (a skull-stripped brain on the 2 mm
MNI-like analysis grid) is turned into what a scanner would give:

1. **a head around the brain**: a smooth intracranial envelope (the brain mask closed by a Gaussian), then
   extra-cerebral CSF (0.5-1.5 mm), skull (5-8 mm, dark on every contrast) and scalp (5-9 mm, fat: bright on T1,
   moderately bright on T2 and FLAIR), with partial-volume edges; air outside;
2. **one pose per series**: T1 is placed by a random rigid motion (rotation up to ``max_rotation_deg`` about a
   random axis through the brain centre, shift up to ``max_shift_mm``) and T2 and FLAIR each by another random
   rigid motion of the same size relative to T1 (the patient moves between series);
3. **its own grid and orientation**: by default T1 1 mm isotropic stored sagittally (``ASL``), T2 1 x 1 x 2 mm
   (``LPS``) and FLAIR 1 x 1 x 3 mm axial slices (``LAS``), each covering the moved head plus 4 mm;
4. **a bias field** (smooth, up to about +-25 %) and Rician noise per series; stored as ``int16``.

The truth is kept: ``truth.json`` holds every series' affine and the world point maps between the head (analysis)
space and each series, and ``brain_mask_t1.nii.gz`` / ``label_flair.nii.gz`` the brain mask on the T1 grid and
the lesion label on the FLAIR grid. Layout written by :func:`make_raw_subject`::

    out_dir/
        T1.nii.gz, T2.nii.gz, FLAIR.nii.gz   # 3D int16 raw-like series
        brain_mask_t1.nii.gz                 # true brain mask on the T1 series' grid (uint8)
        label_flair.nii.gz                   # true lesion label on the FLAIR series' grid (lesion subjects)
        truth.json                           # affines, poses, point maps, draws

World point maps in ``truth.json`` (RAS mm, ``4 x 4``): ``head_to_series[S]`` sends a point of the analysis (head)
space to where it lies in series ``S``; ``t1_to_series[S] = head_to_series[S] @ inv(head_to_series["T1"])``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from monai_qrvae.data.synthetic import CONTRASTS, SyntheticBrainGenerator, SyntheticSubject, subject_name
from monai_qrvae.raw.geometry import resample_to_grid

__all__ = [
    "RAW_SERIES",
    "DEFAULT_SPACINGS",
    "DEFAULT_AXCODES",
    "RAW_VERSION",
    "build_head",
    "random_pose",
    "make_raw_subject",
    "make_raw_cohort",
]

#: Series written per subject (same order as the channels of the analysis-ready image).
RAW_SERIES: tuple[str, ...] = CONTRASTS
#: Default voxel sizes (mm) per series.
DEFAULT_SPACINGS: dict[str, tuple[float, float, float]] = {
    "T1": (1.0, 1.0, 1.0),
    "T2": (1.0, 1.0, 2.0),
    "FLAIR": (1.0, 1.0, 3.0),
}
#: Default storage orientation per series (nibabel axis codes): sagittal T1, axial T2 and FLAIR.
DEFAULT_AXCODES: dict[str, str] = {"T1": "ASL", "T2": "LPS", "FLAIR": "LAS"}
#: Bumped whenever the same seed would give different raw series.
RAW_VERSION = "1"
_RAW_STREAM = 7  # random stream of the raw-like draws (the generator uses 0-2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def build_head(
    subject: SyntheticSubject, rng: np.random.Generator, pad_mm: float = 32.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Put a head (CSF rim, skull, scalp) around a generated brain on a padded copy of its grid.

    Returns:
        ``(head, head_mask, affine, params)``: ``(X, Y, Z, 3)`` float32 intensities (T1, T2, FLAIR), the head's
        ``uint8`` mask (scalp included), the padded grid's affine and the drawn layer sizes and intensities.
    """
    spacing = float(np.linalg.norm(subject.affine[:3, 0]))
    pad = int(np.ceil(pad_mm / spacing))
    brain = np.pad(subject.brain_mask > 0, pad)
    image = np.pad(subject.image, ((pad, pad), (pad, pad), (pad, pad), (0, 0)))
    affine = subject.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    envelope = ndimage.gaussian_filter(brain.astype(np.float32), 3.0 / spacing) > 0.5  # fills sulci, not edges
    envelope = ndimage.binary_fill_holes(envelope | brain)
    depth = ndimage.distance_transform_edt(~envelope, sampling=spacing).astype(np.float32)  # mm outside
    # thickness varies smoothly over the head
    wobble = ndimage.gaussian_filter(rng.standard_normal(brain.shape).astype(np.float32), 15.0 / spacing)
    wobble /= max(float(np.abs(wobble).max()), 1e-6)
    csf_t = float(rng.uniform(0.5, 1.5))
    skull_t = float(rng.uniform(5.0, 8.0))
    scalp_t = float(rng.uniform(5.0, 9.0))
    r_csf = csf_t
    r_skull = r_csf + skull_t + 1.5 * wobble
    r_head = r_skull + scalp_t + 1.5 * wobble
    width = 0.6  # mm, partial-volume edge
    in_csf, in_skull, in_head = (_sigmoid((r - depth) / width) for r in (r_csf, r_skull, r_head))
    tissue = subject.params.get("intensities", {})
    csf = np.array([tissue.get(c, {}).get("CSF", v) for c, v in zip(CONTRASTS, (300.0, 1500.0, 150.0))])
    gm = np.array([tissue.get(c, {}).get("GM", v) for c, v in zip(CONTRASTS, (600.0, 750.0, 700.0))])
    wm = np.array([tissue.get(c, {}).get("WM", v) for c, v in zip(CONTRASTS, (850.0, 550.0, 560.0))])
    skull = 0.08 * np.array([wm[0], gm[1], gm[2]]) * rng.uniform(0.7, 1.3)
    scalp = np.array([1.35 * wm[0], 1.3 * gm[1], 1.1 * gm[2]]) * rng.uniform(0.9, 1.1, 3)
    outer = (
        csf[None, None, None] * in_csf[..., None]
        + skull[None, None, None] * (in_skull - in_csf)[..., None]
        + scalp[None, None, None] * (in_head - in_skull)[..., None]
    )
    head = np.where(brain[..., None], image, outer).astype(np.float32)
    params = {
        "csf_mm": round(csf_t, 3),
        "skull_mm": round(skull_t, 3),
        "scalp_mm": round(scalp_t, 3),
        "skull_intensity": dict(zip(CONTRASTS, skull.round(2).tolist())),
        "scalp_intensity": dict(zip(CONTRASTS, scalp.round(2).tolist())),
    }
    return head, (in_head > 0.5).astype(np.uint8), affine, params


def random_pose(
    rng: np.random.Generator, max_rotation_deg: float, max_shift_mm: float, centre_mm: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random rigid point map: rotation about a random axis through ``centre_mm``, then a random shift.

    The angle and the shift length are uniform in ``[0, max]``; the directions are uniform on the sphere.
    """
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = float(rng.uniform(0.0, max_rotation_deg))
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    shift = direction * float(rng.uniform(0.0, max_shift_mm))
    rot = Rotation.from_rotvec(np.deg2rad(angle) * axis).as_matrix()
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = centre_mm - rot @ centre_mm + shift
    info = {"angle_deg": round(angle, 4), "axis": axis.round(5).tolist(), "shift_mm": shift.round(4).tolist()}
    return pose, info


def _series_grid(
    head_mask: np.ndarray, head_affine: np.ndarray, pose: np.ndarray, spacing: Sequence[float], axcodes: str
) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """Grid (RAS-ordered shape and affine) covering the posed head, and the affine after reorienting to axcodes."""
    idx = np.argwhere(head_mask)
    lo, hi = idx.min(0) - 1, idx.max(0) + 1
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = (pose @ head_affine @ corners.T).T[:, :3]
    margin = 4.0
    wlo, whi = world.min(0) - margin, world.max(0) + margin
    sp = np.asarray(spacing, dtype=np.float64)
    shape = tuple(int(np.ceil((h - low) / s)) + 1 for low, h, s in zip(wlo, whi, sp))
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = wlo
    return shape, affine, affine


def _bias(rng: np.random.Generator, shape: Sequence[int], strength: float) -> np.ndarray:
    """A smooth multiplicative field ``exp(quadratic polynomial)`` over the grid, spanning about ``+-strength``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.uniform(-1.0, 1.0, 9).astype(np.float32)
    field = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    field = field + c[6] * x * y + c[7] * y * z + c[8] * x * z
    field = field - field.mean()
    field *= np.float32(strength / max(float(np.abs(field).max()), 1e-6))
    return np.exp(field)


def _save(array: np.ndarray, affine: np.ndarray, path: Path, axcodes: str = "RAS", dtype: Any = None) -> np.ndarray:
    """Write an array given on a RAS-ordered grid, stored reoriented to ``axcodes``; return the stored affine."""
    img = nib.Nifti1Image(array if dtype is None else array.astype(dtype), affine)
    if axcodes != "RAS":
        ornt = nib.orientations.ornt_transform(
            nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(axcodes))
        )
        img = img.as_reoriented(ornt)
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code="scanner")
    img.set_sform(img.affine, code="scanner")
    img.header["descrip"] = f"monai-qrvae raw-like v{RAW_VERSION}".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    img.to_filename(str(tmp))
    os.replace(tmp, path)
    return np.asarray(img.affine)


def make_raw_subject(
    out_dir: str | os.PathLike,
    index: int,
    lesions: bool | int = False,
    seed: int = 0,
    spacing: float = 2.0,
    spacings: Mapping[str, Sequence[float]] | None = None,
    axcodes: Mapping[str, str] | None = None,
    max_rotation_deg: float = 10.0,
    max_shift_mm: float = 10.0,
    bias_strength: float = 0.25,
    noise: float = 0.02,
    generator: SyntheticBrainGenerator | None = None,
) -> dict[str, Any]:
    """Write subject ``index`` of the embedded generator as three raw-like series plus the truth.

    Args:
        out_dir: output folder (created).
        index: subject number (0-based, as in :func:`monai_qrvae.data.synthetic.subject_name`).
        lesions: as in :meth:`SyntheticBrainGenerator.generate`.
        seed: generator seed (also seeds the raw-like draws, stream 7).
        spacing: the generator's (analysis grid) voxel size in mm.
        spacings: voxel size per series (default :data:`DEFAULT_SPACINGS`).
        axcodes: storage orientation per series (default :data:`DEFAULT_AXCODES`).
        max_rotation_deg: largest rotation of a series pose (T1 relative to the head, T2/FLAIR relative to T1).
        max_shift_mm: largest shift of a series pose.
        bias_strength: bias field amplitude (log scale, about the relative change at the field's extremes).
        noise: Rician noise sigma as a fraction of each series' white-matter intensity.
        generator: a ready generator (else one is made from ``seed`` and ``spacing``).

    Returns:
        the truth dictionary written to ``out_dir/truth.json`` (paths are relative to ``out_dir``).
    """
    spacings = {**DEFAULT_SPACINGS, **(spacings or {})}
    axcodes = {**DEFAULT_AXCODES, **(axcodes or {})}
    for name in RAW_SERIES:
        if len(tuple(spacings[name])) != 3 or min(spacings[name]) <= 0:
            raise ValueError(f"spacings[{name!r}] must be three positive voxel sizes in mm, got {spacings[name]!r}.")
        if sorted(nib.orientations.axcodes2ornt(tuple(axcodes[name]))[:, 0].tolist()) != [0, 1, 2]:
            raise ValueError(f"axcodes[{name!r}] must name each of x, y, z once (e.g. 'LAS'), got {axcodes[name]!r}.")
    if max_rotation_deg < 0 or max_shift_mm < 0:
        raise ValueError(f"motion limits must be >= 0, got {max_rotation_deg} deg and {max_shift_mm} mm.")
    gen = generator if generator is not None else SyntheticBrainGenerator(spacing=spacing, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    subject = gen.generate(index, lesions=lesions)
    rng = np.random.default_rng([gen.seed, int(index), _RAW_STREAM])
    head, head_mask, head_affine, head_params = build_head(subject, rng)
    centre = subject.affine[:3, :3] @ np.argwhere(subject.brain_mask).mean(0) + subject.affine[:3, 3]
    pose_t1, info_t1 = random_pose(rng, max_rotation_deg, max_shift_mm, centre)
    poses, motion = {"T1": pose_t1}, {"T1": info_t1}
    for name in RAW_SERIES[1:]:
        rel, info = random_pose(rng, max_rotation_deg, max_shift_mm, pose_t1[:3, :3] @ centre + pose_t1[:3, 3])
        poses[name], motion[name] = rel @ pose_t1, info
    wm_level = np.array([subject.params["intensities"][c]["WM"] for c in CONTRASTS])
    wm_level[1:] = [subject.params["intensities"][c]["GM"] for c in CONTRASTS[1:]]
    series: dict[str, Any] = {}
    for c, name in enumerate(RAW_SERIES):
        shape, grid_affine, _ = _series_grid(head_mask, head_affine, poses[name], spacings[name], axcodes[name])
        inv_pose = np.linalg.inv(poses[name])
        data = resample_to_grid(head[..., c], head_affine, shape, grid_affine, inv_pose, order=1)
        data *= _bias(rng, shape, bias_strength)
        sigma = noise * float(wm_level[c])
        real = data + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        data = np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, 32767)
        stored = _save(data, grid_affine, out / f"{name}.nii.gz", axcodes[name], np.int16)
        series[name] = {
            "file": f"{name}.nii.gz",
            "shape": [int(s) for s in nib.load(out / f"{name}.nii.gz").shape],
            "spacing_mm": [float(s) for s in spacings[name]],
            "axcodes": axcodes[name],
            "affine": stored.tolist(),
            "head_to_series": poses[name].tolist(),
            "t1_to_series": (poses[name] @ np.linalg.inv(pose_t1)).tolist(),
            "motion": motion[name],
        }
        if name == "T1":
            mask = resample_to_grid(np.pad(subject.brain_mask, 0), subject.affine, shape, grid_affine, inv_pose) > 0.5
            _save(mask, grid_affine, out / "brain_mask_t1.nii.gz", axcodes[name], np.uint8)
        if name == "FLAIR" and subject.label is not None:
            label = resample_to_grid(subject.label, subject.affine, shape, grid_affine, inv_pose) > 0.5
            _save(label, grid_affine, out / "label_flair.nii.gz", axcodes[name], np.uint8)
    truth = {
        "subject_index": int(index),
        "seed": int(gen.seed),
        "raw_version": RAW_VERSION,
        "analysis_shape": [int(s) for s in subject.brain_mask.shape],
        "analysis_affine": subject.affine.tolist(),
        "brain_centre_mm": centre.round(4).tolist(),
        "series": series,
        "brain_mask_t1": "brain_mask_t1.nii.gz",
        "label_flair": "label_flair.nii.gz" if subject.label is not None else None,
        "lesion_voxels": int(subject.label.sum()) if subject.label is not None else 0,
        "head": head_params,
        "bias_strength": float(bias_strength),
        "noise": float(noise),
    }
    text = json.dumps(truth, indent=2) + "\n"
    tmp = out / ".truth.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "truth.json")
    return truth


def _read_datalist(data: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    path = Path(data)
    if path.is_dir():
        path = path / "datalist.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a cohort folder or its datalist.json (make-data).")
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def make_raw_cohort(
    data: str | os.PathLike,
    subjects: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Path:
    """Write raw-like series for subjects of a cohort made by :func:`monai_qrvae.data.make_cohort`.

    The subjects are rendered again from the cohort's seed and spacing (``datalist.json`` metadata), so the brain in
    the raw series is exactly the one in ``sub-XXX/image.nii.gz``. Each goes to ``out_dir/sub-XXX/`` (layout in the
    module docstring) and ``out_dir/raw_datalist.json`` lists them in the cohort's sections as
    ``{"image": [T1, T2, FLAIR], "raw": true, "truth", "brain_mask_truth", "analysis_ready"[, "label_flair"]}``.

    Args:
        data: the cohort folder or its ``datalist.json``.
        subjects: subject folder names (``["sub-041", ...]``); default every subject of the datalist.
        out_dir: output folder (default ``<cohort>/raw``).
        kwargs: passed to :func:`make_raw_subject` (voxel sizes, orientations, motion, bias, noise).

    Returns:
        the path of ``raw_datalist.json``.
    """
    path, datalist = _read_datalist(data)
    meta = datalist.get("metadata", {})
    if "seed" not in meta or "spacing_mm" not in meta:
        raise ValueError(f"{path}: metadata has no 'seed'/'spacing_mm'; expected a datalist written by make-data.")
    root = path.parent
    out = Path(out_dir) if out_dir is not None else root / "raw"
    gen = SyntheticBrainGenerator(spacing=float(meta["spacing_mm"]), seed=int(meta["seed"]))
    n_total = int(meta.get("n_healthy", 0)) + int(meta.get("n_lesion", 0))
    entries: dict[str, dict[str, Any]] = {}
    all_sections = ("training", "validation", "calibration", "tuning", "test")
    for section in all_sections:
        for entry in datalist.get(section, []):
            name = Path(entry["image"]).parent.name
            entries[name] = {"section": section, "entry": entry}
    wanted = list(entries) if subjects is None else list(subjects)
    unknown = [s for s in wanted if s not in entries]
    if unknown:
        raise ValueError(
            f"{path}: subjects {unknown} are not in the datalist; expected names like {list(entries)[:3]}."
        )
    sections: dict[str, list[dict[str, Any]]] = {section: [] for section in all_sections}
    for name in wanted:
        index = int(name.split("-")[-1]) - 1
        if subject_name(index, max(n_total, 1)) != name:
            raise ValueError(f"{path}: cannot tell the subject index of {name!r}; expected names like 'sub-001'.")
        entry = entries[name]["entry"]
        header = nib.load(root / entry["image"])
        if tuple(header.shape[:3]) != gen.shape or not np.allclose(header.affine, gen.affine, atol=1e-4):
            raise ValueError(
                f"{root / entry['image']} has shape {header.shape[:3]} and affine\n{header.affine}\nbut the "
                f"generator (seed {meta['seed']}, spacing {meta['spacing_mm']}) gives {gen.shape}; was it edited?"
            )
        folder = out / name
        # healthy test subjects have an all-zero label file (generator v2): their stratum says they are healthy
        has_lesions = "label" in entry and entry.get("stratum") != "healthy"
        truth = make_raw_subject(folder, index, lesions=has_lesions, generator=gen, **kwargs)
        rel = os.path.relpath(folder, out)
        item: dict[str, Any] = {
            "image": [f"{rel}/{s}.nii.gz" for s in RAW_SERIES],
            "raw": True,
            "truth": f"{rel}/truth.json",
            "brain_mask_truth": f"{rel}/brain_mask_t1.nii.gz",
            "analysis_ready": os.path.relpath(root / entry["image"], out),
        }
        if truth["label_flair"]:
            item["label_flair"] = f"{rel}/label_flair.nii.gz"
        sections[entries[name]["section"]].append(item)
    raw_list = {
        "name": "monai-qrvae raw-like series",
        "description": "Three raw-like series (T1, T2, FLAIR) per subject: head, own grids, motion, bias field.",
        "metadata": {"cohort": os.path.relpath(path, out), "raw_version": RAW_VERSION, "series": list(RAW_SERIES)},
        **sections,
    }
    out.mkdir(parents=True, exist_ok=True)
    list_path = out / "raw_datalist.json"
    tmp = out / ".raw_datalist.json.tmp"
    tmp.write_text(json.dumps(raw_list, indent=2) + "\n")
    os.replace(tmp, list_path)
    return list_path
