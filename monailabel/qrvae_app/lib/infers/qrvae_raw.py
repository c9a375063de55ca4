"""MONAI Label infer task: QR-VAE lesion detection from raw T1, T2 and FLAIR series (``qrvae_raw_lesion``).

The study a client opens is the patient's **FLAIR series** as the scanner wrote it (with skull, its own grid); the
T1 and T2 series of the same visit lie beside it in the studies folder::

    studies/
        patient-01.nii.gz            # FLAIR: the study (what 3D Slicer shows and gets the label on)
        series/patient-01/T1.nii.gz  # T1 of the same visit
        series/patient-01/T2.nii.gz  # T2 of the same visit

(``series/`` is a sub-folder, so MONAI Label does not list those files as studies; ``make_studies.py --raw-datalist``
lays a raw datalist out this way.) A request may instead name the two files on the server with the options
``{"t1": PATH, "t2": PATH}``.

The task runs what ``qrvae infer --t1 --t2 --flair`` runs (:func:`monai_qrvae.raw.infer_raw`: bias correction,
co-registration, brain extraction, template alignment, the model, the label-free threshold, the maps put back on
the FLAIR grid) with the app's model files, and returns the lesion mask on the FLAIR series' own grid; the result
JSON carries the lesion report (number of lesions, total volume in mL, per lesion its centroid in scanner mm,
volume, maximum z and driving contrasts). A missing companion series or series that do not align are refused with
HTTP 422 and one line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from ..pipeline import LoadedModel, PostOptions, StudyError, threshold_transforms

logger = logging.getLogger(__name__)

#: the folder beside the studies that holds each raw study's T1 and T2 series (``series/<study id>/T1.nii.gz``).
SERIES_FOLDER = "series"
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def study_id(path: str | os.PathLike) -> str:
    """The study id of a studies-folder file: its name without ``.nii.gz``/``.nii``."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def companion_series(flair: str | os.PathLike, request: dict[str, Any]) -> tuple[Path, Path]:
    """``(T1, T2)`` of the study whose FLAIR series is ``flair``: the request's ``t1``/``t2`` options, or
    ``<studies>/series/<study id>/T1.nii.gz`` and ``T2.nii.gz`` (or DICOM series folders ``T1/`` and ``T2/``; a
    request option may name a DICOM folder too).

    Raises:
        StudyError: a series file does not exist (the message says where it was looked for).
    """
    folder = Path(flair).parent / SERIES_FOLDER / study_id(flair)
    found = []
    for name in ("T1", "T2"):
        given = request.get(name.lower())
        candidates = [Path(given)] if given else [*(folder / f"{name}{s}" for s in _NIFTI_SUFFIXES), folder / name]
        path = next((c for c in candidates if c.is_file() or c.is_dir()), None)  # a folder: a DICOM series
        if path is None:
            where = f"the request's {name.lower()!r} option {given}" if given else f"{candidates[0]}"
            raise StudyError(
                f"study {study_id(flair)}: no {name} series at {where}; a raw study is its FLAIR series with the "
                f"T1 and T2 series of the same visit in {SERIES_FOLDER}/{study_id(flair)}/T1.nii.gz and T2.nii.gz "
                "(or the request options 't1' and 't2')."
            )
        found.append(path)
    return found[0], found[1]


class QRVAERawInfer(BasicInferTask):
    """Lesions from raw series: the FLAIR study plus its T1 and T2 series -> a lesion mask on the FLAIR grid.

    Args:
        model: the loaded model (shared with the app's other tasks).
        mask_erosion_mm: the analysed brain is the extracted brain minus its outer shell of this thickness (as
            ``qrvae preprocess``).
    """

    def __init__(self, model: LoadedModel, mask_erosion_mm: float = 2.0) -> None:
        self.model = model
        self.mask_erosion_mm = float(mask_erosion_mm)
        config = {k: model.defaults[k] for k in ("threshold", "alpha", "fdr_per", "median_size", "min_size")}
        super().__init__(
            path=str(model.weights),
            network=None,
            type=InferType.SEGMENTATION,
            labels={"lesion": 1},
            dimension=3,
            description=(
                "QR-VAE lesion detection from RAW series: the study is the FLAIR series (with skull, any grid), its "
                f"T1 and T2 in {SERIES_FOLDER}/<study>/T1.nii.gz, T2.nii.gz; bias correction, co-registration, "
                "brain extraction, then the model; the label comes back on the FLAIR grid "
                f"({config['threshold']} threshold at alpha {config['alpha']:g})"
            ),
            config=config,
        )

    def pre_transforms(self, data: Any = None) -> list[Any]:
        return []  # the whole pipeline runs in __call__ (monai_qrvae.raw.infer_raw), not in MONAI Label's chain

    def post_transforms(self, data: Any = None) -> list[Any]:
        return []

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str, dict[str, Any]]:
        from monai_qrvae.raw.errors import RawInputError
        from monai_qrvae.raw.inverse import infer_raw

        try:
            options = PostOptions.from_request(request, "lesion", self.model.defaults)
            threshold_transforms(self.model, options)  # an uncalibrated model is refused before any work
            flair = Path(str(request["image"]))
            t1, t2 = companion_series(flair, request)
            work = Path(tempfile.mkdtemp(prefix="qrvae-raw-"))
            try:
                result = infer_raw(
                    self.model.model_dir,
                    t1,
                    t2,
                    flair,
                    work,
                    preprocess_kwargs={"mask_erosion_mm": self.mask_erosion_mm, "threads": None},
                    threshold=options.threshold,
                    alpha=options.alpha,
                    per=options.fdr_per,
                    score_median=options.score_median,
                    median_size=options.median_size,
                    min_size=options.min_size,
                    save_png=False,
                )
                lesion = nib.load(str(result["maps"]["lesion"]))
                array = (np.asarray(lesion.dataobj) > 0).astype(np.uint8)
                report = json.loads(Path(result["report"]).read_text())
                out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
                nib.save(nib.Nifti1Image(array, lesion.affine), out)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        except (StudyError, RawInputError, FileNotFoundError) as e:
            logger.warning(f"refused raw study {request.get('image')!r}: {e}")
            raise HTTPException(status_code=422, detail=" ".join(str(e).split())) from None
        voxel_ml = float(abs(np.linalg.det(lesion.affine[:3, :3]))) / 1000.0
        summary = {
            "model": self.model.source,
            "output": "lesion",
            "raw": True,
            "series": {"T1": str(t1), "T2": str(t2), "FLAIR": str(flair)},
            "shape": list(array.shape),
            "threshold": options.threshold,
            "alpha": options.alpha,
            "fdr_per": options.fdr_per,
            "lesion_voxels": int(array.sum()),
            "lesion_volume_ml": round(int(array.sum()) * voxel_ml, 3),
            "report": report,
            "label_names": {"lesion": 1},
        }
        logger.info(
            f"{flair.name} (raw): lesion {{'lesion_voxels': {summary['lesion_voxels']}, "
            f"'n_lesions': {report.get('n_lesions')}}}"
        )
        return out, summary
