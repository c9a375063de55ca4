"""The per-subject lesion report: components, volumes, world-mm centroids, peak z and driving contrasts."""

import csv
import json

import numpy as np
import pytest

from monai_qrvae.report import lesion_report, write_lesion_report


def _case():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[6:9, 6:9, 6] = 1  # 9 voxels
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 0.0)
    z = np.zeros((10, 10, 10), np.float32)
    z[1, 1, 1], z[7, 7, 6] = 4.0, 6.5
    cz = np.zeros((3, 10, 10, 10), np.float32)
    cz[2][mask > 0] = 3.0  # FLAIR drives both
    cz[1, 6:9, 6:9, 6] = 2.5  # T2 drives the second one too
    return mask, affine, z, cz


def test_lesion_report_values():
    mask, affine, z, cz = _case()
    rep = lesion_report(mask, affine, z, cz)
    assert rep["n_lesions"] == 2
    assert rep["voxel_ml"] == pytest.approx(0.012)
    assert rep["total_volume_ml"] == pytest.approx(17 * 0.012)
    big, small = rep["lesions"]
    assert (big["id"], big["voxels"], small["voxels"]) == (1, 9, 8)
    assert big["centroid_mm"] == [2 * 7 - 10, 2 * 7 + 5, 3 * 6]  # voxel (7, 7, 6) in world mm
    assert small["centroid_mm"] == [2 * 1.5 - 10, 2 * 1.5 + 5, 3 * 1.5]
    assert big["max_z"] == 6.5 and small["max_z"] == 4.0
    assert big["drivers"] == ["FLAIR", "T2"] and small["drivers"] == ["FLAIR"]
    assert big["contrast_z"] == {"T1": 0.0, "T2": 2.5, "FLAIR": 3.0}


def test_report_files_and_bad_input(tmp_path):
    mask, affine, z, cz = _case()
    json_path, csv_path = write_lesion_report(lesion_report(mask, affine, z, cz), tmp_path, "sub-1")
    assert json.loads(json_path.read_text())["n_lesions"] == 2
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["drivers"] for r in rows] == ["FLAIR+T2", "FLAIR"] and float(rows[0]["z_mm"]) == 18.0
    assert lesion_report(np.zeros((4, 4, 4)), np.eye(4))["lesions"] == []
    with pytest.raises(ValueError, match="does not match the mask"):
        lesion_report(mask, affine, z[:5])
    with pytest.raises(ValueError, match="4 x 4 affine"):
        lesion_report(mask, np.eye(3))
