"""Property-based tests (hypothesis) of the invariants the statistics promise, on generated inputs.

Conformal p-values, Benjamini-Hochberg, the volume-level threshold, the quantile score, the lesion report and the
raw path's maps on the series grid. Examples come from a fixed seed (the ``qrvae`` profile of ``conftest.py``), so a
failure reproduces on any machine; ``max_examples`` keeps each test to about a second.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import false_discovery_control

from monai_qrvae.anomaly import benjamini_hochberg, quantile_function_score
from monai_qrvae.calibration import Calibration, conformal_p_values
from monai_qrvae.calibration.thresholds import order_statistic_index
from monai_qrvae.raw.inverse import maps_to_series
from monai_qrvae.report import lesion_report
from monai_qrvae.transforms import VolumeThresholdd

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)


# ---------------------------------------------------------------------------------------------------------------
# conformal p-values
# ---------------------------------------------------------------------------------------------------------------
@settings(max_examples=60)
@given(cal=st.lists(finite, min_size=1, max_size=40), scores=st.lists(finite, min_size=1, max_size=30))
def test_conformal_p_values_are_the_rank_count_in_range_and_monotone(cal, scores):
    sorted_cal = torch.sort(torch.tensor(cal, dtype=torch.float32)).values
    s = torch.tensor(scores, dtype=torch.float32)
    p = conformal_p_values(s, sorted_cal).double().numpy()
    n = len(cal)
    expected = np.array([(1 + sum(c >= x for c in sorted_cal.tolist())) / (n + 1) for x in s.tolist()])
    assert np.allclose(p, expected, rtol=0, atol=1e-6)
    assert ((p >= 1 / (n + 1) - 1e-7) & (p <= 1 + 1e-7)).all()
    order = np.argsort(s.numpy(), kind="stable")
    assert (np.diff(p[order]) <= 1e-7).all()  # a higher score never gets a larger p-value


# ---------------------------------------------------------------------------------------------------------------
# Benjamini-Hochberg
# ---------------------------------------------------------------------------------------------------------------
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
alphas = st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.3])


def _away_from_boundaries(p: np.ndarray, alpha: float) -> bool:
    """No ``p_(k) m / k`` within rounding of ``alpha`` (where scipy's order of operations may round the other way)."""
    m = len(p)
    adjusted = np.sort(p) * m / np.arange(1, m + 1)
    return bool(np.all(np.abs(adjusted - alpha) > 1e-9))


@settings(max_examples=80)
@given(
    p=st.lists(unit, min_size=1, max_size=60),
    small_p=st.lists(st.floats(min_value=0.0, max_value=0.02), max_size=20),
    a1=alphas,
    a2=alphas,
)
def test_bh_equals_scipy_and_is_monotone_in_alpha(p, small_p, a1, a2):
    values = np.array(p + small_p)  # some very small p-values, so that BH rejects something at most alphas
    assume(_away_from_boundaries(values, a1) and _away_from_boundaries(values, a2))
    pt = torch.tensor(values, dtype=torch.float64).reshape(1, 1, 1, 1, -1)
    lo, hi = sorted((a1, a2))
    d_lo = benjamini_hochberg(pt, alpha=lo).flatten().numpy()
    d_hi = benjamini_hochberg(pt, alpha=hi).flatten().numpy()
    adjusted = false_discovery_control(values)
    assert np.array_equal(d_lo, adjusted <= lo) and np.array_equal(d_hi, adjusted <= hi)
    assert not (d_lo & ~d_hi).any()  # a larger alpha rejects a superset


@settings(max_examples=40)
@given(
    p=st.lists(unit, min_size=8, max_size=8).flatmap(
        lambda first: st.lists(unit, min_size=16, max_size=16).map(lambda rest: first + rest)
    ),
    mask=st.lists(st.booleans(), min_size=24, max_size=24),
    alpha=alphas,
)
def test_bh_inside_a_mask_and_per_slice_equals_scipy_on_the_tested_voxels(p, mask, alpha):
    values = np.array(p).reshape(2, 3, 4)  # (H, W, D): 4 slices of 6 voxels
    inside = np.array(mask).reshape(2, 3, 4)
    pt = torch.tensor(values)[None, None]
    d = benjamini_hochberg(pt, alpha=alpha, mask=torch.tensor(inside)[None, None])[0, 0].numpy()
    assert not (d & ~inside).any()
    if inside.any():
        assume(_away_from_boundaries(values[inside], alpha))
        assert np.array_equal(d[inside], false_discovery_control(values[inside]) <= alpha)
    per_slice = benjamini_hochberg(pt, alpha=alpha, per="slice")[0, 0].numpy()
    for k in range(4):
        assume(_away_from_boundaries(values[..., k].ravel(), alpha))
        expected = false_discovery_control(values[..., k].ravel()) <= alpha
        assert np.array_equal(per_slice[..., k].ravel(), expected)


# ---------------------------------------------------------------------------------------------------------------
# volume-level threshold: healthy false-alarm rate <= alpha
# ---------------------------------------------------------------------------------------------------------------
@settings(max_examples=40)
@given(
    alpha=st.sampled_from([0.05, 0.1, 0.2, 0.25]),
    extra=st.integers(min_value=0, max_value=20),
    levels=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_volume_threshold_false_alarm_rate_is_at_most_alpha_on_exchangeable_volumes(alpha, extra, levels, data):
    """Leave-one-out over ``n + 1`` exchangeable healthy volumes: each volume in turn is the new one and the others
    calibrate. The share of turns with any detection is the false-alarm probability given the multiset of maxima; it
    is at most alpha for every multiset, ties included (few ``levels`` of the maximum make ties likely)."""
    n = math.ceil(1 / alpha) - 1 + extra  # the fewest volumes alpha allows, and more
    maxima = data.draw(st.lists(st.integers(0, levels - 1), min_size=n + 1, max_size=n + 1)).copy()
    alarms = 0
    for i in range(n + 1):
        others = torch.tensor([float(m) for j, m in enumerate(maxima) if j != i])
        cal = Calibration(torch.zeros(4), torch.tensor([0, 4]), others)
        volume = torch.full((1, 2, 2, 2), -1.0)
        volume[0, 1, 0, 1] = float(maxima[i])  # the new volume's maximum
        item = {"z": volume, "brain_mask": torch.ones(1, 2, 2, 2)}
        lesion = VolumeThresholdd(calibration=cal, alpha=alpha)(item)["lesion"]
        alarms += bool(lesion.any())
    assert alarms / (n + 1) <= alpha + 1e-12
    if len(set(maxima)) == n + 1:  # distinct maxima: the guarantee is attained exactly
        assert alarms == n + 1 - order_statistic_index(n, alpha)


# ---------------------------------------------------------------------------------------------------------------
# quantile score: monotone in the intensity, whatever the order of the predicted quantiles
# ---------------------------------------------------------------------------------------------------------------
LEVELS = (0.025, 0.15, 0.5, 0.85, 0.975)


@settings(max_examples=80)
@given(
    q=st.lists(st.floats(min_value=-5.0, max_value=5.0, allow_nan=False), min_size=5, max_size=5),
    floor=st.sampled_from([1e-3, 0.05, 0.5]),
)
def test_quantile_score_is_monotone_in_intensity_and_ignores_the_order_of_the_quantiles(q, floor):
    x = torch.linspace(-8.0, 8.0, 401, dtype=torch.float64).reshape(1, 1, -1)
    given_order = torch.tensor(q, dtype=torch.float64).reshape(1, 5, 1).expand(1, 5, 401).contiguous()
    score = quantile_function_score(x, given_order, LEVELS, sigma_floor=floor)[0, 0].numpy()
    assert np.isfinite(score).all()
    assert (np.diff(score) >= -1e-9 * (1.0 + np.abs(score[1:]))).all()
    sorted_order = torch.sort(given_order, dim=1).values
    reference = quantile_function_score(x, sorted_order, LEVELS, sigma_floor=floor)
    assert torch.allclose(quantile_function_score(x, given_order, LEVELS, sigma_floor=floor), reference)
    # at the predicted median the score is 0 unless a neighbouring quantile coincides with it
    med = float(sorted_order[0, 2, 0])
    gaps = np.diff(np.sort(q))
    if gaps.min() > floor * 2:
        at_median = quantile_function_score(
            torch.full((1, 1, 1), med, dtype=torch.float64), sorted_order[..., :1], LEVELS
        )
        assert float(at_median) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# lesion report on oblique grids
# ---------------------------------------------------------------------------------------------------------------
def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


angle = st.floats(min_value=-math.pi, max_value=math.pi, allow_nan=False)
spacing = st.floats(min_value=0.4, max_value=4.0, allow_nan=False)
offset = st.floats(min_value=-150.0, max_value=150.0, allow_nan=False)


@st.composite
def oblique_affines(draw) -> np.ndarray:
    affine = np.eye(4)
    shear = np.eye(3)
    shear[0, 1], shear[1, 2] = draw(st.floats(-0.3, 0.3)), draw(st.floats(-0.3, 0.3))
    affine[:3, :3] = (
        _rotation((draw(angle), draw(angle), draw(angle)))
        @ shear
        @ np.diag([draw(spacing), draw(spacing), draw(spacing)])
    )
    affine[:3, 3] = (draw(offset), draw(offset), draw(offset))
    return affine


@settings(max_examples=60)
@given(
    affine=oblique_affines(),
    corners=st.lists(st.tuples(*[st.integers(0, 4)] * 3, *[st.integers(1, 4)] * 3), min_size=1, max_size=2),
)
def test_report_centroid_and_volume_on_random_oblique_grids(affine, corners):
    mask = np.zeros((20, 10, 10), np.uint8)
    boxes = []
    for k, (x, y, z, sx, sy, sz) in enumerate(corners):  # box k in its own half of the first axis: never touching
        box = (slice(10 * k + x, 10 * k + x + sx), slice(y, y + sy), slice(z, z + sz))
        mask[box] = 1
        boxes.append(box)
    rep = lesion_report(mask, affine)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    assert rep["n_lesions"] == len(boxes) and rep["voxel_ml"] == pytest.approx(voxel_ml, rel=1e-12)
    assert rep["total_volume_ml"] == pytest.approx(round(mask.sum() * voxel_ml, 4), abs=1e-9)
    expected = []
    for box in boxes:
        idx = np.argwhere(_box_mask(mask.shape, box))
        centre = affine @ np.r_[idx.mean(0), 1.0]
        expected.append((len(idx), round(len(idx) * voxel_ml, 4), [round(float(c), 2) for c in centre[:3]]))
    got = [(e["voxels"], e["volume_ml"], e["centroid_mm"]) for e in rep["lesions"]]
    for voxels, volume_ml, centroid in got:
        match = [e for e in expected if e[0] == voxels and np.allclose(e[2], centroid, atol=0.011)]
        assert match, (voxels, centroid, expected)
        assert volume_ml == pytest.approx(match[0][1], abs=1e-9)
    assert [g[0] for g in got] == sorted((g[0] for g in got), reverse=True)  # largest first


def _box_mask(shape, box) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[box] = True
    return m


# ---------------------------------------------------------------------------------------------------------------
# raw path: maps written on the series' own grid, for random orientations and spacings
# ---------------------------------------------------------------------------------------------------------------
@st.composite
def series_grids(draw) -> tuple[tuple[int, int, int], np.ndarray]:
    """A series grid of any axis order, flips, spacing and a small rotation, centred on the analysis volume."""
    perm = draw(st.permutations([0, 1, 2]))
    flips = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    spacings = [draw(st.floats(0.8, 4.0)) for _ in range(3)]
    shape = tuple(draw(st.integers(4, 12)) for _ in range(3))
    linear = np.zeros((3, 3))
    for col, axis in enumerate(perm):
        linear[axis, col] = flips[col] * spacings[col]
    linear = _rotation((draw(st.floats(-0.3, 0.3)), draw(st.floats(-0.3, 0.3)), draw(st.floats(-0.3, 0.3)))) @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    centre = np.array([draw(st.floats(-8.0, 8.0)) for _ in range(3)])  # the analysis grid spans -20 .. 20 mm
    affine[:3, 3] = centre - linear @ ((np.array(shape) - 1) / 2)
    return shape, affine


ANALYSIS_SHAPE = (21, 21, 21)


def _prep(tmp_path, series_shape, series_affine) -> dict:
    analysis = np.diag([2.0, 2.0, 2.0, 1.0])
    analysis[:3, 3] = -20.0
    info = {
        "series": {"FLAIR": {"shape": list(series_shape), "affine": series_affine.tolist()}},
        "analysis": {"shape": list(ANALYSIS_SHAPE), "affine": analysis.tolist()},
        "mni_to_t1": np.eye(4).tolist(),
        "t1_to_series": {"T1": np.eye(4).tolist(), "FLAIR": np.eye(4).tolist()},
    }
    (tmp_path / "transforms.json").write_text(json.dumps(info))
    return info


@settings(max_examples=30)
@given(grid=series_grids(), cval=st.sampled_from([0.0, 1.0]))
def test_maps_are_written_on_the_series_grid_for_any_orientation_and_spacing(tmp_path_factory, grid, cval):
    shape, affine = grid
    prep = tmp_path_factory.mktemp("prep")
    info = _prep(prep, shape, affine)
    a_aff = np.asarray(info["analysis"]["affine"])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in ANALYSIS_SHAPE], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ a_aff[:3, :3].T + a_aff[:3, 3]
    coef = np.array([0.3, -0.2, 0.5])
    zmap = (world @ coef + 7.0).reshape(ANALYSIS_SHAPE).astype(np.float32)
    img = maps_to_series(zmap, prep, kind="continuous", cval=cval)
    assert img.shape == shape and np.allclose(img.affine, affine, atol=1e-6)
    out = np.asarray(img.dataobj)
    s_idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    s_world = s_idx @ affine[:3, :3].T + affine[:3, 3]
    a_vox = (s_world - a_aff[:3, 3]) / 2.0
    inside = np.all((a_vox >= 1e-6) & (a_vox <= np.array(ANALYSIS_SHAPE) - 1 - 1e-6), axis=1).reshape(shape)
    outside = np.any((a_vox < -1.0 - 1e-6) | (a_vox > np.array(ANALYSIS_SHAPE) + 1e-6), axis=1).reshape(shape)
    expected = (s_world @ coef + 7.0).reshape(shape)
    assert inside.any()
    assert np.allclose(out[inside], expected[inside], atol=1e-3)  # trilinear is exact on a linear map
    assert np.all(out[outside] == cval)  # where the series sees beyond the analysis grid: the fill value
    # a mask goes nearest-neighbour: 1 well inside the region, 0 well outside it and beyond the analysis grid
    lesion = np.asarray(maps_to_series((zmap > 7.0).astype(np.uint8), prep).dataobj)
    assert lesion.dtype == np.uint8 and lesion.shape == shape
    clear = inside & (np.abs(expected - 7.0) > 1.5)  # one analysis voxel (2 mm) moves the linear map by < 1.3
    assert np.array_equal(lesion[clear] > 0, expected[clear] > 7.0)
    assert not lesion[outside].any()
