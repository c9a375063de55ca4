"""The per-volume empirical null: each method's centre and width on hand-built scores whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_qrvae.anomaly.null import IQR_NORMAL, PPF_090, empirical_null, standardise


def _three_bins(n_lo: int, n_mid: int, n_hi: int, lo: float = 0.0, hi: float = 7.5) -> np.ndarray:
    """Scores whose central half (between the 25th and 75th percentiles, exactly ``lo`` and ``hi``) is ``n_lo``
    values at ``lo``, ``n_mid`` in the 21st of the 60 histogram bins and ``n_hi`` at ``hi``, with as many values
    below ``lo`` as above ``hi``: three non-empty bins, so the fitted log-parabola goes through their three points
    (every value exact in float32, as the scores are read)."""
    m = (n_lo + n_mid + n_hi - 1) // 2
    mid = lo + 20.5 * (hi - lo) / 60
    return np.r_[np.full(m, lo - 5.0), np.full(n_lo, lo), np.full(n_mid, mid), np.full(n_hi, hi), np.full(m, hi + 5.0)]


def _robust(values: np.ndarray) -> tuple[float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return q50, (q75 - q25) / IQR_NORMAL


def test_central_matching_is_the_vertex_and_curvature_of_the_log_histogram_parabola():
    values = _three_bins(1, 6, 2)
    d = 7.5 / 60  # bin width; the three bins' mid-points and log counts
    t = np.array([0.5 * d, 20.5 * d, 59.5 * d])
    y = np.log([1.0, 6.0, 2.0])
    a = ((y[2] - y[1]) / (t[2] - t[1]) - (y[1] - y[0]) / (t[1] - t[0])) / (t[2] - t[0])
    b = (y[1] - y[0]) / (t[1] - t[0]) - a * (t[0] + t[1])
    centre, width = empirical_null(values, method="central")
    assert a < 0
    assert centre == pytest.approx(-b / (2 * a), rel=1e-9) and width == pytest.approx(np.sqrt(-1 / (2 * a)), rel=1e-9)
    assert centre != pytest.approx(_robust(values)[0], abs=0.5)  # not the fallback


def _central_reference(values: np.ndarray) -> tuple[float, float]:
    """Efron's central matching from its definition: the Poisson-weighted (by the counts) least-squares parabola
    through the log counts of the 60-bin histogram of the central half, in the scores' own units."""
    lo, hi = np.quantile(values, [0.25, 0.75])
    counts, edges = np.histogram(values[(values >= lo) & (values <= hi)], bins=60, range=(lo, hi))
    mids, k = 0.5 * (edges[1:] + edges[:-1]), counts > 0
    design = np.stack([mids[k] ** 2, mids[k], np.ones(k.sum())], axis=1)
    weighted = design * counts[k, None]
    a, b, _ = np.linalg.solve(design.T @ weighted, weighted.T @ np.log(counts[k]))
    return -b / (2 * a), np.sqrt(-1 / (2 * a))


def test_central_matching_is_the_count_weighted_fit_over_the_central_halfs_range():
    """Many bins (a least-squares fit, not an interpolation) and quartiles that are not data values."""
    values = np.random.default_rng(3).normal(3.0, 2.0, 4001).astype(np.float32).astype(np.float64)
    values = np.r_[values, 40.0]  # an even count: the quartiles fall between two scores
    centre, width = empirical_null(values)  # "central" is the default method
    assert (centre, width) == pytest.approx(_central_reference(values), rel=1e-7)
    z, null = standardise(torch.from_numpy(values))
    assert null == (centre, width)


def test_central_matching_falls_back_to_the_robust_null_when_the_centre_is_not_concave():
    convex = _three_bins(4, 3, 4)  # more values at the edges of the central half than inside it
    assert empirical_null(convex, method="central") == pytest.approx(_robust(convex), rel=1e-12)
    tied = np.r_[np.zeros(40), np.arange(1.0, 11.0)]  # the central half is one value: nothing to fit
    assert empirical_null(tied, method="central") == pytest.approx((0.0, 1e-6))


def test_median_upper_and_robust_nulls_on_known_percentiles():
    values = np.arange(101.0)  # percentiles are the values themselves: q25 = 25, q50 = 50, q75 = 75, q90 = 90
    assert empirical_null(values, method="none") == (0.0, 1.0)
    assert empirical_null(values, method="median") == (50.0, 1.0)
    assert empirical_null(values, method="upper") == pytest.approx((50.0, 40.0 / PPF_090))
    assert empirical_null(values, method="robust") == pytest.approx((50.0, 50.0 / IQR_NORMAL))
    flat = np.full(12, 3.0)  # no spread: the width is floored at 1e-6
    for method in ("upper", "robust"):
        assert empirical_null(flat, method=method) == (3.0, 1e-6)


def test_empirical_null_needs_ten_finite_brain_scores():
    scores = torch.arange(12.0)
    scores[0] = float("nan")
    mask = torch.ones(12)
    mask[11] = 0
    assert empirical_null(scores, mask, method="median") == (5.5, 1.0)  # the 10 finite masked scores: 1..10
    mask[10] = 0
    with pytest.raises(ValueError, match="at least 10 finite brain scores, got 9"):
        empirical_null(scores, mask, method="median")
    with pytest.raises(ValueError, match="does not match"):
        empirical_null(scores, torch.ones(11), method="median")


def test_standardise_uses_the_volumes_own_null_inside_its_mask():
    scores = torch.arange(101.0).reshape(1, 101)
    z, (centre, width) = standardise(scores, method="robust")
    assert (centre, width) == pytest.approx((50.0, 50.0 / IQR_NORMAL))
    assert torch.allclose(z, (scores - 50.0) / (50.0 / IQR_NORMAL))
    mask = scores < 21  # the null of 0..20 only
    z, (centre, width) = standardise(scores, mask, method="median")
    assert (centre, width) == (10.0, 1.0) and torch.equal(z, scores - 10.0)


def test_central_matching_falls_back_when_the_vertex_is_outside_the_scores():
    # integer-rounded uniform scores in [0, 10]: the central half's log histogram is almost flat and barely concave,
    # its parabola's vertex far outside the data (centre 49.3, width 62.5 before the guard): no mode to match there
    u = np.round(np.random.default_rng(0).uniform(0, 10, 20000))
    robust = empirical_null(u, method="robust")
    assert empirical_null(u, method="central") == robust
    lo, hi = np.quantile(u, (0.25, 0.75))
    assert lo <= robust[0] <= hi
    # a skewed null (gamma, shape 2: mode 1) has its mode below the central half; its fitted vertex is kept
    skewed = np.random.default_rng(2).gamma(2.0, 1.0, 200000)
    centre, _ = empirical_null(skewed, method="central")
    assert centre < np.quantile(skewed, 0.25) and abs(centre - 1.0) < abs(
        empirical_null(skewed, method="robust")[0] - 1.0
    )
    # a Gaussian core keeps its fitted mode (inside the central half), not the robust median
    g = np.random.default_rng(1).normal(3.0, 2.0, 20000)
    g = np.concatenate([g, np.full(2000, 9.0)])  # a lesion tail moves the median but not the mode
    centre, width = empirical_null(g, method="central")
    assert abs(centre - 3.0) < 0.2 and abs(width - 2.0) < 0.3 and centre != empirical_null(g, method="robust")[0]
