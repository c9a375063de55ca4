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


def test_lesion_report_on_an_oblique_grid():
    """A rotated, anisotropic grid (an oblique acquisition): the centroid is affine @ the voxel centroid (not its
    transpose) and each lesion's volume its voxel count times |det(affine)|."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, 1.5, 2.5])
    affine[:3, 3] = (30.0, -40.0, 12.0)
    mask = np.zeros((12, 12, 8), np.uint8)
    mask[2:5, 6:8, 1:3] = 1  # 12 voxels, voxel centroid (3, 6.5, 1.5)
    mask[9, 1, 6] = 1  # a single voxel
    rep = lesion_report(mask, affine)
    big, single = rep["lesions"]
    voxel_ml = 1.0 * 1.5 * 2.5 / 1000  # a rotation keeps volumes: |det| = product of the spacings
    assert rep["voxel_ml"] == pytest.approx(voxel_ml)
    assert (big["voxels"], single["voxels"]) == (12, 1)
    assert big["volume_ml"] == pytest.approx(12 * voxel_ml) and single["volume_ml"] == pytest.approx(voxel_ml, abs=6e-5)
    # voxel (3, 6.5, 1.5) -> (1.0 * 3, 1.5 * 6.5, 2.5 * 1.5) = (3, 9.75, 3.75) rotated by 30 degrees, then moved
    x, y = c * 3.0 - s * 9.75 + 30.0, s * 3.0 + c * 9.75 - 40.0
    assert big["centroid_mm"] == pytest.approx([round(x, 2), round(y, 2), 3.75 + 12.0], abs=1e-9)
    assert single["centroid_mm"] == pytest.approx(
        [c * 9 - s * 1.5 + 30.0, s * 9 + c * 1.5 - 40.0, 15.0 + 12.0], abs=0.006
    )
    assert rep["total_volume_ml"] == pytest.approx(13 * voxel_ml, abs=6e-5)  # rounded to 0.1 uL


def test_lesion_evidence_from_the_label_covering_most_of_each_lesion():
    mask, affine, _, _ = _case()
    labels = np.zeros((10, 10, 10), np.float32)
    labels[7, 7, 6] = 2.0  # one of the 9 voxels of the big lesion carries candidate 2, the others none
    labels[1:3, 1:3, 1] = 1.0  # half of the small lesion carries candidate 1, a quarter candidate 3
    labels[1, 1:3, 2] = 3.0
    stats = {
        "threshold": "lesion",
        "alpha": 0.1,
        "statistic": "mass",
        "lesions": [
            {"label": 1, "value": 0.0123456, "p": 0.05, "q": 0.1, "p_from_tail": True},
            {"label": 2, "value": 0.5, "p": 0.2, "q": 0.3, "p_from_tail": False},
            {"label": 3, "value": 0.7, "p": 0.01, "q": 0.01, "p_from_tail": False},
        ],
    }
    big, small = lesion_report(mask, affine, lesion_labels=labels, lesion_stats=stats)["lesions"]
    assert {k: big[k] for k in ("statistic", "value", "p", "q", "p_from_tail")} == {
        "statistic": "mass",
        "value": 0.5,
        "p": 0.2,
        "q": 0.3,
        "p_from_tail": False,
    }
    assert small["value"] == 0.01235 and small["p"] == 0.05 and small["p_from_tail"] is True
    assert "above_volume_threshold" not in small
    volume_stats = {
        "threshold": "lesion-volume",
        "alpha": 0.05,
        "statistic": "peak",
        "lesions": [{"label": 2, "value": 6.0, "p": 1 / 21, "above_volume_threshold": True}],
    }
    big, small = lesion_report(mask, affine, lesion_labels=labels, lesion_stats=volume_stats)["lesions"]
    assert big["above_volume_threshold"] is True and "q" not in big and "p_from_tail" not in big
    assert "p" not in small  # candidate 1 was not kept: no evidence


def test_drivers_by_strength_and_evidence_only_with_labels(tmp_path):
    mask, affine, z, cz = _case()
    cz[1, 6:9, 6:9, 6] = 4.0  # T2 now drives the big lesion more than FLAIR (3.0): listed first
    big, _ = lesion_report(mask, affine, z, cz)["lesions"]
    assert big["drivers"] == ["T2", "FLAIR"]
    stats = {
        "threshold": "lesion",
        "alpha": 0.1,
        "statistic": "mass",
        "lesions": [{"label": 1, "value": 1.0, "p": 0.1}],
    }
    rep = lesion_report(mask, affine, lesion_stats=stats)  # evidence needs the candidates' labels too
    assert rep["inference"] == {"threshold": "lesion", "alpha": 0.1, "statistic": "mass"}
    assert all("p" not in e and "statistic" not in e for e in rep["lesions"])
    for name, kwargs in (
        ("zmap", {"zmap": np.zeros((2, 2, 2))}),
        ("contrast_z", {"contrast_z": np.zeros((3, 2, 2, 2))}),
        ("lesion_labels", {"lesion_labels": np.zeros((2, 2, 2))}),
    ):
        with pytest.raises(ValueError, match=rf"{name} of shape \(.*2, 2, 2\) does not match"):
            lesion_report(mask, affine, **kwargs)


def test_csv_cells_left_empty_and_the_header_of_an_empty_report(tmp_path):
    mask, affine, _, _ = _case()
    _, csv_path = write_lesion_report(lesion_report(mask, affine), tmp_path, "plain")  # no z-map, no evidence
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r[k] == "" for r in rows for k in ("max_z", "drivers", "statistic", "p", "q"))
    _, empty = write_lesion_report(lesion_report(np.zeros_like(mask), affine), tmp_path, "empty")
    assert empty.read_text().splitlines() == ["id,voxels,volume_ml,x_mm,y_mm,z_mm,max_z,drivers,statistic,p,q"]
