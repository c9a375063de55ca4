"""Lesion-level inference: cluster statistics, conformal lesion p-values, BH over lesions, the two thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.stats import false_discovery_control

from monai_qrvae.anomaly import bh_q_values, bh_reject, cluster_statistics, lesion_candidates, lesion_p_values
from monai_qrvae.anomaly.lesions import TAIL_P_FLOOR, fit_lesion_tail, voxel_volume_ml
from monai_qrvae.calibration import Calibration
from monai_qrvae.report import lesion_report, write_lesion_report
from monai_qrvae.transforms.anomaly.thresholds import LesionThresholdd, label_free_transforms

AFFINE = np.diag([2.0, 1.5, 3.0, 1.0])  # 9 mm3 = 0.009 mL per voxel


def _volume() -> np.ndarray:
    s = np.zeros((8, 8, 8))
    s[1, 1, 1], s[1, 1, 2], s[2, 2, 2] = 3.0, 4.0, 5.0  # one 26-connected cluster of 3 voxels
    s[6, 6, 6] = 2.5  # a second, single voxel
    s[4, 4, 4] = 2.0  # exactly at the threshold: not a candidate
    return s


def test_cluster_statistics_known_values():
    s = _volume()
    labels, n = lesion_candidates(s, 2.0)
    assert n == 2
    ml = voxel_volume_ml(AFFINE)
    assert ml == pytest.approx(0.009)
    st = cluster_statistics(s, labels, n, 2.0, ml)
    assert st["voxels"].tolist() == [3, 1]
    np.testing.assert_allclose(st["extent"], [0.027, 0.009])
    np.testing.assert_allclose(st["mass"], [(1 + 2 + 3) * 0.009, 0.5 * 0.009])
    np.testing.assert_allclose(st["peak"], [5.0, 2.5])
    labels6, n6 = lesion_candidates(s, 2.0, connectivity=1)  # face connectivity splits the diagonal voxel
    assert n6 == 3 and labels6[4, 4, 4] == 0
    assert lesion_candidates(s, 2.0, mask=s < 4.5)[1] == 2  # the peak voxel masked out: (1,1,1)-(1,1,2) remain


def test_lesion_p_values_hand_count():
    healthy = [0.1, 0.5, 0.5, 2.0]
    p = lesion_p_values([0.5, 3.0, 0.05, 2.0], healthy)
    # (1 + #{h >= s}) / (4 + 1)
    np.testing.assert_allclose(p, [4 / 5, 1 / 5, 5 / 5, 2 / 5])


def test_fitted_tail_extrapolates_an_exponential_null():
    """Beyond the largest healthy statistic the tail's p-value follows the true survival function (here exp(-s))."""
    healthy = np.random.default_rng(1).exponential(size=2000)
    tail = fit_lesion_tail(healthy)
    assert tail is not None and tail.exceedances == 200 and tail.n == 2000
    assert abs(tail.shape) < 0.2 and tail.scale == pytest.approx(1.0, rel=0.25)  # exponential: shape 0, scale 1
    s = np.array([0.5, 2.0, healthy.max(), healthy.max() + 1.0, healthy.max() + 4.0])
    p = lesion_p_values(s, healthy, tail)
    floor = 1.0 / 2001
    np.testing.assert_array_equal(p[:3], lesion_p_values(s[:3], healthy))  # inside the healthy range: conformal
    assert p[3] < floor and p[4] < p[3]
    assert (np.abs(np.log10(p[3:] / np.exp(-s[3:]))) < 1).all()  # within a factor of 10 of the truth at 1e-4..1e-6
    assert (np.diff(lesion_p_values(np.linspace(0, 20, 200), healthy, tail)) <= 0).all()  # non-increasing


def test_fitted_tail_needs_enough_values_and_floors_bounded_tails():
    assert fit_lesion_tail(np.arange(19.0)) is None  # fewer than 2 x 10 statistics
    assert fit_lesion_tail(np.ones(100)) is None  # all ties: no exceedance
    bounded = np.random.default_rng(2).uniform(size=500)  # shape < 0: the tail ends at 1
    tail = fit_lesion_tail(bounded)
    assert tail is not None and tail.shape < 0
    assert lesion_p_values([5.0], bounded, tail)[0] == TAIL_P_FLOOR


def test_tail_gives_bh_power_over_many_candidates():
    """The conformal floor 1 / (N + 1) is above BH's first step alpha / m for many candidates; the tail is not."""
    rng = np.random.default_rng(3)
    healthy = rng.exponential(size=225)
    candidates = np.concatenate([[healthy.max() * 3], rng.exponential(size=22)])  # one glaring lesion, 22 noise
    conformal = lesion_p_values(candidates, healthy)
    assert conformal[0] == pytest.approx(1 / 226) and not bh_reject(conformal, 0.05).any()  # 1/226 > 0.05/23
    with_tail = lesion_p_values(candidates, healthy, fit_lesion_tail(healthy))
    assert bh_reject(with_tail, 0.05).tolist() == [True] + [False] * 22


def test_bh_matches_scipy_and_is_monotone():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=30), rng.uniform(0, 0.004, size=8)])
    np.testing.assert_allclose(bh_q_values(p), false_discovery_control(p))
    previous = np.zeros(p.size, dtype=bool)
    for alpha in (0.01, 0.05, 0.1, 0.2, 0.5):
        rejected = bh_reject(p, alpha)
        np.testing.assert_array_equal(rejected, false_discovery_control(p) <= alpha)
        assert (rejected | ~previous).all()  # everything rejected at a smaller alpha stays rejected
        previous = rejected
    assert bh_reject(np.array([]), 0.05).size == 0


def _calibration(volume_max: list[float]) -> Calibration:
    cal = Calibration(torch.linspace(-3, 2, 1000), torch.tensor([0, 1000]), torch.tensor([2.0] * len(volume_max)))
    cal.lesion_threshold = 2.0
    cal.score["lesion_p"] = 0.001
    healthy = {"extent": [0.009] * 19, "mass": [0.001 * (i + 1) for i in range(19)], "peak": [2.5] * 19}
    cal.lesion_stats = {k: torch.tensor(v, dtype=torch.float64) for k, v in healthy.items()}
    cal.lesion_volume_max = {k: torch.tensor(volume_max, dtype=torch.float64) for k in healthy}
    return cal


def _item() -> dict:
    z = MetaTensor(torch.from_numpy(_volume()).float()[None], affine=torch.from_numpy(AFFINE))
    return {"z": z, "brain_mask": torch.ones(1, 8, 8, 8)}


def test_lesion_fdr_threshold_and_report(tmp_path):
    cal = _calibration([0.001] * 19)
    d = LesionThresholdd("z", cal, alpha=0.1, statistic="mass", p_key="p")(_item())
    stats = d["lesion_stats"]
    assert stats["threshold"] == "lesion" and stats["candidates"] == 2 and stats["voxel_ml"] == pytest.approx(0.009)
    assert stats["calibration"]["n_volumes"] == 19 and stats["calibration"]["healthy_clusters"] == 19
    # mass 0.054 beats every healthy cluster: p = 1 / 20; mass 0.0045 is beaten by 15: p = 16 / 20
    (kept,) = stats["lesions"]
    assert kept["label"] == 1 and kept["p"] == pytest.approx(1 / 20) and kept["q"] == pytest.approx(2 / 20)
    assert d["lesion"].sum() == 3 and d["lesion_labels"].max() == 1
    assert float(d["p"][0, 6, 6, 6]) == pytest.approx(16 / 20) and float(d["p"][0, 0, 0, 0]) == 1.0
    rep = lesion_report(d["lesion"][0].numpy(), AFFINE, lesion_labels=d["lesion_labels"][0].numpy(), lesion_stats=stats)
    (lesion,) = rep["lesions"]
    assert lesion["p"] == pytest.approx(0.05) and lesion["q"] == pytest.approx(0.1) and lesion["statistic"] == "mass"
    assert rep["inference"]["alpha"] == 0.1 and "lesions" not in rep["inference"]
    _, csv_path = write_lesion_report(rep, tmp_path, "s")
    assert "0.05" in csv_path.read_text().splitlines()[1]
    stricter = LesionThresholdd("z", cal, alpha=0.05, statistic="mass")(_item())
    assert stricter["lesion_stats"]["lesions"] == [] and stricter["lesion"].sum() == 0  # q = 0.1 > 0.05


def test_lesion_volume_threshold_is_strict():
    # the volume-level threshold at alpha 0.05 of 19 maxima is the largest: 0.0045 (the second candidate's mass)
    cal = _calibration([0.0045] + [0.001] * 18)
    assert cal.lesion_volume_threshold("mass", 0.05) == pytest.approx(0.0045)
    tf = LesionThresholdd("z", cal, alpha=0.05, mode="volume", statistic="mass", voxel_ml=0.009)
    d = tf(_item())
    assert [e["label"] for e in d["lesion_stats"]["lesions"]] == [1]  # 0.0045 is not > 0.0045
    assert d["lesion_stats"]["lesions"][0]["above_volume_threshold"] is True
    # the evidence of the kept lesion and the max-statistic p of each candidate: (1 + #{maxima >= value}) / (n + 1)
    (kept,) = d["lesion_stats"]["lesions"]
    assert (kept["voxels"], kept["extent_ml"], kept["mass_ml"], kept["peak"]) == (3, 0.027, 0.054, 5.0)
    assert kept["value"] == pytest.approx(0.054) and kept["p"] == pytest.approx(1 / 20) and "q" not in kept
    stats = d["lesion_stats"]
    assert stats["threshold"] == "lesion-volume" and stats["volume_threshold"] == pytest.approx(0.0045)
    assert stats["candidates"] == 2 and stats["voxel_ml"] == 0.009 and stats["statistic"] == "mass"
    with_p = LesionThresholdd("z", cal, alpha=0.05, mode="volume", statistic="mass", p_key="p")(_item())
    assert float(with_p["p"][0, 6, 6, 6]) == pytest.approx(2 / 20)  # 0.0045: the largest maximum is >= it
    assert float(with_p["p"][0, 2, 2, 2]) == pytest.approx(1 / 20) and float(with_p["p"][0, 0, 0, 0]) == 1.0
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match="alpha"):
            LesionThresholdd("z", cal, alpha=alpha, mode="volume", statistic="mass")
    (t,) = label_free_transforms("lesion-volume", cal, alpha=0.05, statistic="mass")
    assert isinstance(t, LesionThresholdd) and t.mode == "volume"


def test_calibration_fits_saves_and_loads_lesion_statistics(tmp_path):
    rng = np.random.default_rng(1)
    maps = [MetaTensor(torch.from_numpy(rng.normal(size=(12, 12, 12))).float(), affine=torch.from_numpy(AFFINE))]
    maps.append(maps[0] * 0.5)
    cal = Calibration.from_scores(maps, lesion_p=0.01)
    assert cal.lesion_threshold == pytest.approx(cal.primary_threshold(0.01))
    extent = cal.lesion_stats["extent"]
    assert extent.numel() > 0 and torch.allclose(extent / 0.009, (extent / 0.009).round())  # voxel counts x 9 mm3
    assert cal.lesion_volume_max["mass"].numel() == 2
    cal.save(tmp_path)
    back = Calibration.load(tmp_path)
    assert back.lesion_threshold == cal.lesion_threshold and torch.equal(
        back.lesion_stats["mass"], cal.lesion_stats["mass"]
    )
    # an older calibration.pt, written before lesion-level inference, loads without them
    state = cal.state_dict()
    for key in ("lesion_stats", "lesion_volume_max"):
        state.pop(key)
    state["meta"].pop("lesion_threshold")
    torch.save(state, tmp_path / "old.pt")
    old = Calibration.load(tmp_path / "old.pt")
    assert old.lesion_stats is None and old.lesion_threshold is None and old.n_volumes == 2
    with pytest.raises(ValueError, match="no lesion-level calibration"):
        LesionThresholdd("z", old)


def test_cluster_statistics_defaults_one_cluster_and_none():
    s = np.zeros((4, 4, 4))
    s[1, 1, 1:3] = (3.0, 4.0)
    labels, n = lesion_candidates(s, 2.0)
    assert n == 1
    st = cluster_statistics(s, labels, n, 2.0)  # voxel_ml defaults to 1: extent and mass in voxels
    assert st["voxels"].tolist() == [2.0] and st["extent"].tolist() == [2.0]
    assert st["mass"].tolist() == [3.0] and st["peak"].tolist() == [4.0]
    # a label with no voxel left (n above the labels present) still has its entry: 0 voxels, no mass
    st3 = cluster_statistics(s, labels, 3, 2.0, 0.5)
    assert st3["voxels"].tolist() == [2.0, 0.0, 0.0] and st3["mass"].tolist() == [1.5, 0.0, 0.0]
    empty = cluster_statistics(s, np.zeros_like(labels), 0, 2.0)
    assert set(empty) == {"voxels", "extent", "mass", "peak"}
    assert all(v.shape == (0,) and v.dtype == np.float64 for v in empty.values())


def test_bh_reject_keeps_q_equal_to_alpha_and_checks_alpha():
    assert bh_reject([0.05], 0.05).tolist() == [True]  # q = 0.05 <= alpha
    assert bh_reject([0.01, 0.04, 0.5], 0.06).tolist() == [True, True, False]  # q = 0.03, 0.06, 0.5
    for alpha in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            bh_reject([0.01], alpha)


def test_tail_is_fitted_from_twenty_statistics_to_their_ten_largest():
    """The fewest statistics a tail is fitted to: 2 x 10, the largest 10 above the 11th largest."""
    healthy = np.random.default_rng(5).exponential(1.0, 20)
    tail = fit_lesion_tail(healthy)
    h = np.sort(healthy)
    assert tail is not None and tail.n == 20 and tail.exceedances == 10
    assert tail.threshold == h[9] and tail.maximum == h[-1]
    assert fit_lesion_tail(healthy[:19]) is None


def test_tail_survival_is_the_pareto_tail_above_its_threshold():
    """``P(S >= s) = k / n * genpareto.sf(s - threshold)``: an exponential tail (shape 0) above 2.0, 5 of 50."""
    from monai_qrvae.anomaly.lesions import LesionTail

    tail = LesionTail(threshold=2.0, exceedances=5, n=50, shape=0.0, scale=1.5, maximum=4.0)
    np.testing.assert_allclose(tail.sf([2.0, 3.5, 5.0]), 0.1 * np.exp(-np.array([0.0, 1.5, 3.0]) / 1.5), rtol=1e-12)
    assert tail.sf(200.0) == TAIL_P_FLOOR
