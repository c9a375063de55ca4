"""Data for monai-qrvae: the embedded synthetic cohort, datalists for a user's own scans, and subject montages.

- :func:`make_cohort` / :class:`SyntheticBrainGenerator`: synthetic T1/T2/FLAIR subjects (healthy and with lesions)
  rendered on the machine from nilearn's MNI152 2009 template, written as NIfTI plus a Decathlon-style
  ``datalist.json`` (layout in :mod:`monai_qrvae.data.synthetic`).
- :func:`make_datalist`, :func:`load_datalist`, :func:`check_datalist`: the same datalist format for real scans
  (NIfTI, NRRD, MetaImage), with errors that name the offending file.
- :func:`save_montage` / :func:`subject_montage`: a PNG of one subject's contrasts with the lesion outline.
- :mod:`monai_qrvae.data.realism`: :func:`~monai_qrvae.data.realism.flair_threshold_check`, how well FLAIR
  thresholding does on a datalist section (the generator's acceptance figures, see docs/data.md).
"""

from __future__ import annotations

from .datalist import (
    DATALIST_SECTIONS,
    ITK_SUFFIXES,
    JOB_SECTIONS,
    NIFTI_SUFFIXES,
    SECTION_PURPOSES,
    SUPPORTED_SUFFIXES,
    ImageInfo,
    allocate_splits,
    check_datalist,
    check_item,
    find_subjects,
    load_datalist,
    make_datalist,
    read_image,
    read_image_info,
    require_sections,
    section_counts,
)
from .montage import choose_levels, plot_montage, save_montage, subject_montage
from .synthetic import (
    BASE_INTENSITIES,
    CONTRASTS,
    GENERATOR_VERSION,
    SECTIONS,
    STRATA,
    TISSUES,
    Lesion,
    SyntheticBrainGenerator,
    SyntheticSubject,
    Tumour,
    make_cohort,
    subject_name,
)

__all__ = [
    "BASE_INTENSITIES",
    "CONTRASTS",
    "GENERATOR_VERSION",
    "SECTIONS",
    "STRATA",
    "TISSUES",
    "Lesion",
    "SyntheticBrainGenerator",
    "SyntheticSubject",
    "Tumour",
    "make_cohort",
    "subject_name",
    "DATALIST_SECTIONS",
    "JOB_SECTIONS",
    "SECTION_PURPOSES",
    "allocate_splits",
    "require_sections",
    "section_counts",
    "ITK_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "ImageInfo",
    "check_datalist",
    "check_item",
    "find_subjects",
    "load_datalist",
    "make_datalist",
    "read_image",
    "read_image_info",
    "choose_levels",
    "plot_montage",
    "save_montage",
    "subject_montage",
]
