"""Edge cases of the statistical core that mutation testing (``make mutation``, docs/testing.md) showed unchecked:
boundaries of the BH step-up rule and of the argument checks, float64 p-values, extreme scores, the lesion report's
evidence columns and rounding."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.stats import norm

from monai_qrvae.anomaly import benjamini_hochberg, quantile_function_score
from monai_qrvae.calibration import conformal_p_values, slice_strata, stratified_p_values
from monai_qrvae.calibration.thresholds import max_cluster_size, min_volumes, order_statistic_index, volume_threshold
from monai_qrvae.report import lesion_report, write_lesion_report

TAILS = (0.025, 0.15, 0.5, 0.85, 0.975)


# ---------------------------------------------------------------------------------------------------------------
# Benjamini-Hochberg
# ---------------------------------------------------------------------------------------------------------------
def _bh(values, alpha, **kw):
    return benjamini_hochberg(torch.tensor(values, dtype=torch.float64).reshape(1, 1, 1, 1, -1), alpha, **kw).flatten()


def test_bh_rejects_at_equality_and_exactly_one():
    # p_(k) = k alpha / m is rejected (the rule is <=): m = 4, alpha 0.2, p_(2) = 0.1 = 2 * 0.2 / 4
    assert _bh([0.1, 0.05, 0.9, 0.7], 0.2).tolist() == [True, True, False, False]
    # exactly one rejection among several tests: only the smallest p-value, nothing else
    assert _bh([0.001, 0.5, 0.9], 0.05).tolist() == [True, False, False]
    assert _bh([0.9, 0.001, 0.5], 0.05).tolist() == [False, True, False]
    assert not _bh([0.2, 0.5, 0.9], 0.05).any()  # none


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_bh_alpha_must_lie_strictly_inside_0_1(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        _bh([0.01, 0.5], alpha)


def test_bh_float32_p_values_and_the_nan_count():
    p = torch.tensor([0.001, 0.5, 0.02, 0.9], dtype=torch.float32).reshape(1, 1, 1, 1, -1)
    assert benjamini_hochberg(p, 0.05).flatten().tolist() == [True, False, True, False]
    bad = p.clone()
    bad[..., 1] = float("nan")
    with pytest.raises(ValueError, match=r"1 invalid values \(1 NaN\)"):
        benjamini_hochberg(bad, 0.05)
    with pytest.raises(ValueError, match=r"1 invalid values \(0 NaN\)"):
        benjamini_hochberg(p * 2.0, 0.05)  # 1.8 > 1; 1.0 is a valid p-value
    outside = torch.tensor([True, False, True, True]).reshape(1, 1, 1, 1, -1)
    assert benjamini_hochberg(bad, 0.05, mask=outside).flatten().tolist() == [True, False, True, False]


# ---------------------------------------------------------------------------------------------------------------
# conformal p-values
# ---------------------------------------------------------------------------------------------------------------
def test_conformal_p_values_in_float64_beyond_float32_resolution():
    cal = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    s = torch.tensor([1.0 + 1e-12, 3.0 - 1e-12], dtype=torch.float64)  # equal to 1.0 and 3.0 in float32
    p = conformal_p_values(s, cal)
    assert p.dtype == torch.float64 and p.tolist() == pytest.approx([3 / 4, 2 / 4])
    # float32 scores against float64 calibration scores: compared in float64
    p = conformal_p_values(torch.tensor([2.0, 2.5]), cal)
    assert p.dtype == torch.float32 and p.tolist() == pytest.approx([3 / 4, 2 / 4])
    # integer scores are scores like any other
    assert conformal_p_values(torch.tensor([0, 2, 4]), cal).tolist() == pytest.approx([1.0, 3 / 4, 1 / 4])


def test_slice_strata_and_stratified_p_values_keep_float64():
    assert slice_strata((2, 1), 1).tolist() == [[0], [0]]  # one stratum, one slice
    assert slice_strata((1, 4), 2).tolist() == [[0, 0, 1, 1]]
    with pytest.raises(ValueError, match="num_strata"):
        slice_strata((1, 4), 0)
    scores = torch.tensor([[0.5, 2.5]], dtype=torch.float64)
    cal = torch.tensor([0.0, 1.0, 2.0, 3.0])  # stratum 0: [0, 1]; stratum 1: [2, 3]
    p = stratified_p_values(scores, torch.tensor([[0, 1]]), cal, torch.tensor([0, 2, 4]))
    assert p.dtype == torch.float64 and p.tolist() == [[pytest.approx(2 / 3), pytest.approx(2 / 3)]]


# ---------------------------------------------------------------------------------------------------------------
# volume-level threshold and cluster sizes
# ---------------------------------------------------------------------------------------------------------------
def test_order_statistic_and_volume_threshold_boundaries():
    assert order_statistic_index(19, 0.05) == 19 and order_statistic_index(0, 0.5) == 1
    assert min_volumes(0.05) == 19 and min_volumes(0.5) == 1 and min_volumes(0.1) == 9
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match="alpha must be in"):
            order_statistic_index(10, alpha)
    with pytest.raises(ValueError, match="n must be"):
        order_statistic_index(-1, 0.1)
    assert volume_threshold(torch.arange(19, 0, -1).float(), 0.05) == 19.0  # the largest of 19
    assert volume_threshold(torch.arange(1, 20).float(), 0.1) == 18.0  # k = ceil(20 * 0.9) = 18


def test_max_cluster_size_connectivity():
    diagonal = np.zeros((4, 4))
    diagonal[0, 0] = diagonal[1, 1] = diagonal[2, 2] = 1
    assert max_cluster_size(diagonal) == 1  # faces only
    assert max_cluster_size(diagonal, connectivity=2) == 3  # corners too
    assert max_cluster_size(torch.zeros(3, 3)) == 0


# ---------------------------------------------------------------------------------------------------------------
# quantile score
# ---------------------------------------------------------------------------------------------------------------
def _pred(values, shape=(1, 1, 1, 1)):
    return torch.cat([torch.full(shape, float(v)) for v in values], dim=1)


def test_quantile_score_at_coinciding_quantiles_and_extreme_intensities():
    same = _pred([0.5] * 5)
    # x exactly at coinciding quantiles lies on the last segment that starts there: Phi^-1(0.85), not Phi^-1(0.025)
    at = quantile_function_score(torch.full((1, 1, 1, 1), 0.5), same, TAILS)
    assert float(at) == pytest.approx(norm.ppf(0.85), rel=1e-6)
    x = torch.tensor([float("inf"), float("-inf"), float("nan")]).reshape(1, 1, 1, 3)
    pred = _pred([0.1, 0.3, 0.5, 0.6, 0.7], shape=(1, 1, 1, 3))
    assert quantile_function_score(x, pred, TAILS).flatten().tolist() == [1e6, -1e6, 0.0]
    with pytest.raises(ValueError, match="sigma_floor"):
        quantile_function_score(x, pred, TAILS, sigma_floor=0.0)


def test_quantile_score_of_one_channel_with_a_single_channel_input():
    gen = torch.Generator().manual_seed(4)
    pred = torch.sort(torch.randn(1, 5, 3, 2, 2, generator=gen), dim=1).values.reshape(1, 15, 2, 2)
    x = torch.randn(1, 3, 2, 2, generator=gen, dtype=torch.float64)
    full = quantile_function_score(x, pred, TAILS)
    assert full.dtype == torch.float32  # the prediction's precision
    assert quantile_function_score(x, pred.double(), TAILS).dtype == torch.float64
    assert torch.allclose(quantile_function_score(x[:, 1:2], pred, TAILS, channel=1), full[:, 1:2])
    assert torch.allclose(quantile_function_score(x[:, 1:2], pred, TAILS, channel=-2), full[:, 1:2])


# ---------------------------------------------------------------------------------------------------------------
# lesion report: evidence, drivers, rounding, CSV
# ---------------------------------------------------------------------------------------------------------------
def _evidence_case():
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[0:3, 0:3, 0] = 1  # 9 voxels: candidate 1
    mask[6, 6, 5:7] = 1  # 2 voxels: candidate 2
    mask[6, 0, 7] = 1  # 1 voxel: no candidate covers it
    labels = np.zeros((8, 8, 8))
    labels[0:3, 0:3, 0] = 1
    labels[0, 0, 0] = 2  # a minority of lesion 1's voxels: the majority label wins
    labels[6, 6, 5:7] = 2
    stats = {
        "statistic": "mass",
        "alpha": 0.05,
        "lesions": [
            {"label": 1, "value": 12.3456789, "p": 0.004, "q": 0.012},
            {"label": 2, "value": 2.0, "p": 0.3, "above_volume_threshold": False},
        ],
    }
    z = np.zeros((8, 8, 8), np.float32)
    z[1, 1, 0] = 5.123456
    contrast = np.zeros((3, 8, 8, 8), np.float32)
    contrast[1][mask > 0] = 2.0  # T2 at exactly the driver threshold: drives
    contrast[2][mask > 0] = 3.0  # FLAIR more: listed first
    contrast[0][mask > 0] = 1.99  # T1 just below: does not drive
    return mask, labels, stats, z, contrast


def test_report_lesion_evidence_drivers_rounding_and_csv(tmp_path):
    mask, labels, stats, z, contrast = _evidence_case()
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    rep = lesion_report(mask, affine, z, contrast, lesion_labels=labels, lesion_stats=stats)
    big, two, one = rep["lesions"]
    assert rep["inference"] == {"statistic": "mass", "alpha": 0.05}
    assert big["statistic"] == "mass" and big["value"] == 12.34568 and big["p"] == 0.004 and big["q"] == 0.012
    assert "above_volume_threshold" not in big
    assert two["value"] == 2.0 and two["p"] == 0.3 and two["above_volume_threshold"] is False and "q" not in two
    assert "value" not in one and "p" not in one  # no candidate: no evidence
    assert big["drivers"] == ["FLAIR", "T2"] and big["max_z"] == 5.123
    assert big["contrast_z"] == {"T1": 1.99, "T2": 2.0, "FLAIR": 3.0}
    assert big["centroid_mm"] == [1.0, 1.0, 0.0] and two["centroid_mm"] == [6.0, 6.0, 16.5]
    assert big["volume_ml"] == 0.027 and rep["total_volume_ml"] == 0.036  # 9 and 12 voxels of 3 uL
    json_path, csv_path = write_lesion_report(rep, tmp_path, "s")
    text = json_path.read_text()
    assert text.startswith('{\n  "n_lesions": 3') and json.loads(text) == json.loads(json.dumps(rep))
    rows = list(csv.DictReader(csv_path.open(newline="")))
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert (rows[0]["statistic"], rows[0]["p"], rows[0]["q"], rows[0]["max_z"]) == (
        "12.34568",
        "0.004",
        "0.012",
        "5.123",
    )
    assert (rows[1]["statistic"], rows[1]["p"], rows[1]["q"]) == ("2.0", "0.3", "")
    assert (rows[2]["statistic"], rows[2]["p"], rows[2]["q"]) == ("", "", "")
    assert rows[0]["volume_ml"] == "0.027" and rows[0]["drivers"] == "FLAIR+T2" and rows[0]["x_mm"] == "1.0"
    assert "\r\n" in csv_path.read_bytes().decode()  # csv's own line ends, not doubled


def test_report_rounding_of_centroids_and_volumes():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0, 0, 0:3] = 1  # centroid z index 1
    mask[3, 3, 3] = 1
    rep = lesion_report(mask, np.diag([1 / 3, 1 / 3, 1 / 3, 1.0]))
    big = rep["lesions"][0]
    assert big["centroid_mm"] == [0.0, 0.0, 0.33]  # two decimals
    assert big["volume_ml"] == 0.0001  # 3 / 27 uL = 0.000111 mL: four decimals
    assert rep["total_volume_ml"] == 0.0001
    with pytest.raises(ValueError, match="contrast z-maps"):
        lesion_report(mask, np.eye(4), contrast_z=np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="3D mask"):
        lesion_report(mask[0], np.eye(4))
