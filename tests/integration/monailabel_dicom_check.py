"""Run in .venv-monailabel (tests/integration/test_monailabel_dicom.py): what MONAI Label's DICOMweb datastore does
with a series.

``python tests/integration/monailabel_dicom_check.py SERIES_DIR WORK_DIR`` prints one JSON line: the study image MONAI
Label makes from the DICOM series (``dicom_to_nifti``) against this package's reader, and a lesion label on that
image's grid sent back as DICOM SEG (``nifti_to_dicom_seg``, what the datastore stores to the PACS) and read back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def main(series_dir: str, work: str) -> dict:
    from monailabel.datastore.utils.convert import dicom_seg_to_itk_image, dicom_to_nifti, nifti_to_dicom_seg

    from monai_qrvae.io.dicom import read_series

    study = nib.load(dicom_to_nifti(series_dir))
    ours, _ = read_series(series_dir, "FLAIR")
    data = np.asarray(study.dataobj)
    out = {
        "same_shape": list(study.shape) == list(ours.shape),
        "affine_max_diff": float(np.abs(study.affine - ours.affine).max()),
        "same_voxels": bool(np.array_equal(data, np.asarray(ours.dataobj))),
    }
    label = (data > np.percentile(data, 99)).astype(np.uint8)  # a label on the study's grid, as the app returns
    label_path = Path(work) / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, study.affine), label_path)
    seg = nifti_to_dicom_seg(series_dir, str(label_path), [{"name": "lesion"}], use_itk=False)
    back = nib.load(dicom_seg_to_itk_image(seg, output_ext=".nii.gz"))
    back_data = np.asarray(back.dataobj).astype(np.uint8)
    out.update(
        {
            "label_voxels": int(label.sum()),
            "seg_same_shape": list(back.shape[:3]) == list(label.shape),
            "seg_affine_max_diff": float(np.abs(back.affine - study.affine).max()),
            "seg_same_voxels": bool(
                back.shape[:3] == label.shape and np.array_equal(back_data.reshape(label.shape) > 0, label > 0)
            ),
        }
    )
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
