"""MONAI Label with DICOM studies (a DICOMweb datastore such as Orthanc), tested offline in .venv-monailabel.

The DICOMweb datastore downloads a series and turns it into the study image with ``dicom_to_nifti``; the app's
label comes back on that image's grid, and the datastore stores it to the PACS as DICOM SEG (``nifti_to_dicom_seg``).
Checked here without a server: the study image equals this package's reading of the series (so the label the app
computes on it lies on the FLAIR series' grid, where Slicer shows it), and a label on it survives the SEG round trip.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("QRVAE_MONAILABEL_VENV", ROOT / ".venv-monailabel"))
if not (VENV / "bin" / "python").exists() and (ROOT.parent / "main" / ".venv-monailabel").exists():
    VENV = ROOT.parent / "main" / ".venv-monailabel"


@pytest.mark.slow
def test_dicom_study_image_and_seg_round_trip_in_monailabel(tmp_path):
    pytest.importorskip("pydicom")
    if not (VENV / "bin" / "python").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{VENV} is missing (make monailabel-env)")
        pytest.skip(f"{VENV} is missing (make monailabel-env)")
    from monai_qrvae.io.dicom_write import write_series
    from monai_qrvae.raw.synthetic import make_raw_subject

    spacings = {"T1": (3.0,) * 3, "T2": (3.0, 3.0, 4.0), "FLAIR": (2.5, 2.5, 5.0)}
    make_raw_subject(tmp_path / "raw", 0, lesions=2, seed=3, spacing=4.0, spacings=spacings)
    img = nib.load(tmp_path / "raw" / "FLAIR.nii.gz")
    write_series(np.asarray(img.dataobj), img.affine, tmp_path / "flair", "FLAIR")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    check = Path(__file__).resolve().parent / "monailabel_dicom_check.py"
    cmd = [str(VENV / "bin" / "python"), str(check), str(tmp_path / "flair")]
    proc = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same_shape"] and result["same_voxels"] and result["affine_max_diff"] < 1e-4
    assert result["label_voxels"] > 0 and result["seg_same_shape"] and result["seg_same_voxels"]
    assert result["seg_affine_max_diff"] < 1e-3
