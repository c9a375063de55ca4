"""Calibrated label-free threshold transforms on hand-built score maps: their defaults, the lesion-level evidence
they report, and ``label_free_transforms`` building every threshold with each argument in its place."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from monai.data import MetaTensor

from monai_qrvae.calibration import Calibration
from monai_qrvae.transforms import (
    ClusterThresholdd,
    ConformalPValued,
    FDRMaskd,
    VolumeThresholdd,
    label_free_transforms,
)
from monai_qrvae.transforms.anomaly.thresholds import LesionThresholdd

PEAK_A = float(torch.tensor(4.123456, dtype=torch.float32))  # the float32 peak of candidate A


def _f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _calibration() -> Calibration:
    """n = 20 healthy volumes: voxel scores 0..98 (conformal p = (1 + #{c >= s}) / 100), volume maxima 1..20;
    largest clusters above 0.5: nineteen of 1 voxel and one of 3; 19 healthy lesion clusters above 2.0 with peaks
    2.25, 2.375, ..., 4.5 and per-volume largest peaks eighteen 2.0 (no cluster), 3.0 and 5.0."""
    cal = Calibration(
        torch.arange(99).float(), torch.tensor([0, 99]), torch.arange(1, 21).float(), score={"score_median": 3}
    )
    cal.cluster_threshold = 0.5
    cal.max_cluster_sizes = torch.tensor([1] * 19 + [3])
    cal.lesion_threshold = 2.0
    cal.score["lesion_p"] = 0.01
    peaks = [2.25 + 0.125 * i for i in range(19)]
    cal.lesion_stats = {"extent": _f64([0.001] * 19), "mass": _f64([1e-4 * (i + 1) for i in range(19)])}
    cal.lesion_stats["peak"] = _f64(peaks)
    cal.lesion_volume_max = {k: _f64([0.0] * 18 + [0.001, 0.002]) for k in ("extent", "mass")}
    cal.lesion_volume_max["peak"] = _f64([2.0] * 18 + [3.0, 5.0])
    return cal


@pytest.fixture(scope="module")
def cal() -> Calibration:
    return _calibration()


def _lesion_item(score_key="z", mask_key="brain_mask", affine=None) -> dict:
    """Three candidates above 2.0 (labels in scan order): A = 2 voxels (3.0, 4.123456), C = 3 voxels (6, 6, 3),
    B = 1 voxel (2.5); a 9.0 outside the brain mask."""
    s = torch.zeros(1, 6, 6, 6)
    s[0, 1, 1, 1], s[0, 1, 1, 2] = 3.0, 4.123456  # A, label 1
    s[0, 1, 4, 4], s[0, 2, 4, 4], s[0, 3, 4, 4] = 6.0, 6.0, 3.0  # C, label 2
    s[0, 4, 4, 1] = 2.5  # B, label 3
    s[0, 5, 5, 5] = 9.0  # outside the brain
    mask = torch.ones(1, 6, 6, 6)
    mask[0, 5, 5, 5] = 0
    return {score_key: s if affine is None else MetaTensor(s, affine=affine), mask_key: mask}


# peak p-values against the 19 healthy peaks: A 4.123456 is beaten by 4.125..4.5 (4): 5 / 20; C 6.0 by none: 1 / 20;
# B 2.5 by 2.5..4.5 (17): 18 / 20. BH over the three: q(C) = 0.15, q(A) = min(0.9, 0.25 * 3 / 2) = 0.375, q(B) = 0.9
P_FDR = {1: 5 / 20, 2: 1 / 20, 3: 18 / 20}
Q_FDR = {1: 0.375, 2: 0.15}


def test_lesion_fdr_evidence_of_each_kept_candidate(cal):
    ml = 0.0012345  # a voxel volume whose extents and masses need more than 5 digits
    t = LesionThresholdd("z", cal, alpha=0.5, statistic="peak", p_key="p", voxel_ml=ml)
    d = t(_lesion_item())
    stats = d["lesion_stats"]
    assert stats["candidates"] == 3 and [e["label"] for e in stats["lesions"]] == [1, 2]
    a, c = stats["lesions"]
    assert (a["voxels"], c["voxels"]) == (2, 3)
    assert a["extent_ml"] == round(2 * ml, 5) and c["extent_ml"] == round(3 * ml, 5)
    assert a["mass_ml"] == round((1.0 + PEAK_A - 2.0) * ml, 5) and c["mass_ml"] == round(9.0 * ml, 5)
    assert a["peak"] == round(PEAK_A, 4) == 4.1235 and c["peak"] == 6.0
    assert a["value"] == pytest.approx(PEAK_A) and c["value"] == 6.0
    assert a["p"] == pytest.approx(P_FDR[1]) and c["p"] == pytest.approx(P_FDR[2])
    assert a["q"] == pytest.approx(Q_FDR[1]) and c["q"] == pytest.approx(Q_FDR[2])
    assert a["p_from_tail"] is False and c["p_from_tail"] is True  # only C is beyond the largest healthy peak 4.5
    assert "above_volume_threshold" not in a
    # the maps: mask and labels of the kept candidates, each candidate's p-value (1 elsewhere)
    assert d["lesion"].sum() == 5 and d["lesion"][0, 4, 4, 1] == 0 and d["lesion"][0, 5, 5, 5] == 0
    assert d["lesion_labels"][0, 1, 1, 2] == 1 and d["lesion_labels"][0, 3, 4, 4] == 2 and d["lesion_labels"].max() == 2
    for (x, y, z), label in (((1, 1, 1), 1), ((2, 4, 4), 2), ((4, 4, 1), 3)):
        assert float(d["p"][0, x, y, z]) == pytest.approx(P_FDR[label])
    assert float(d["p"][0, 0, 0, 0]) == 1.0 and float(d["p"][0, 5, 5, 5]) == 1.0
    assert d["p"].dtype == d["lesion"].dtype == torch.float32  # maps in float32, like the other score maps
    assert stats == {
        "threshold": "lesion",
        "alpha": 0.5,
        "statistic": "peak",
        "primary_threshold": 2.0,
        "primary_p": 0.01,
        "volume_threshold": None,
        "voxel_ml": ml,
        "candidates": 3,
        "calibration": {"n_volumes": 20, "names": [], "healthy_clusters": 19, "healthy_max": 4.5, "tail": None},
        "lesions": stats["lesions"],
    }
    # at alpha 0.2 only C (q = 0.15) is kept
    strict = LesionThresholdd("z", cal, alpha=0.2, statistic="peak", voxel_ml=ml)(_lesion_item())
    assert [e["label"] for e in strict["lesion_stats"]["lesions"]] == [2] and strict["lesion"].sum() == 3


def test_lesion_volume_mode_p_values_are_the_max_statistic_ones(cal):
    # volume-level threshold of the largest peaks at alpha 0.1: the 19th smallest of eighteen 2.0, 3.0 and 5.0 = 3.0;
    # p = (1 + #{maxima >= v}) / 21: A 4.12 -> 2 / 21, C 6.0 -> 1 / 21, B 2.5 -> 3 / 21
    t = LesionThresholdd("z", cal, alpha=0.1, mode="volume", statistic="peak", p_key="p")
    assert t.volume_threshold == 3.0
    d = t(_lesion_item())
    stats = d["lesion_stats"]
    assert stats["threshold"] == "lesion-volume" and stats["volume_threshold"] == 3.0
    a, c = stats["lesions"]
    assert (a["label"], c["label"]) == (1, 2) and a["p"] == pytest.approx(2 / 21) and c["p"] == pytest.approx(1 / 21)
    assert a["above_volume_threshold"] is True and "q" not in a and "p_from_tail" not in c
    assert float(d["p"][0, 4, 4, 1]) == pytest.approx(3 / 21)
    assert stats["calibration"]["tail"] is None
    # at alpha 0.05 the threshold is 5.0: C alone
    only_c = LesionThresholdd("z", cal, alpha=0.05, mode="volume", statistic="peak")(_lesion_item())
    assert [e["label"] for e in only_c["lesion_stats"]["lesions"]] == [2]


def test_lesion_voxel_volume_from_the_affine_or_one_cubic_millimetre(cal):
    t = LesionThresholdd("z", cal, alpha=0.5, statistic="peak")
    plain = t(_lesion_item())["lesion_stats"]
    assert plain["voxel_ml"] == 1e-3 and plain["lesions"][1]["extent_ml"] == 0.003
    affine = torch.diag(torch.tensor([2.0, 1.5, 3.0, 1.0]))
    meta = t(_lesion_item(affine=affine))["lesion_stats"]
    assert meta["voxel_ml"] == pytest.approx(0.009) and meta["lesions"][1]["extent_ml"] == pytest.approx(0.027)


def test_lesion_threshold_arguments_are_checked(cal):
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            LesionThresholdd("z", cal, alpha=alpha)
    with pytest.raises(ValueError, match="mode"):
        LesionThresholdd("z", cal, mode="cluster")
    t = LesionThresholdd("z", cal, statistic="peak")
    for shape in ((2, 6, 6, 6), (1, 6, 6)):
        with pytest.raises(ValueError, match=r"expected a \(1, H, W, D\) score map"):
            t({"z": torch.zeros(shape)})


def test_defaults_read_calibration_pt_and_need_the_score_key(tmp_path, monkeypatch):
    _calibration().save(tmp_path)
    monkeypatch.chdir(tmp_path)
    item = _lesion_item()
    conformal = ConformalPValued()
    assert isinstance(conformal.calibration, Calibration) and conformal.calibration.n_volumes == 20
    assert conformal.keys == ("z",) and conformal.mask_key == "brain_mask" and conformal.p_key == "p"
    assert float(conformal(item)["p"][0, 5, 5, 5]) == 1.0 and float(conformal(item)["p"][0, 2, 4, 4]) == pytest.approx(
        0.94
    )
    volume = VolumeThresholdd()
    assert volume.alpha == 0.05 and volume.threshold == 20.0 and volume.p_key is None
    cluster = ClusterThresholdd()
    assert cluster.alpha == 0.05 and cluster.min_size == 4 and cluster.connectivity == 1
    four = torch.zeros(1, 6, 6, 1)
    four[0, 0, :4, 0] = 1.0  # a cluster of 4 voxels (the smallest kept at 5 %), outside the brain mask
    brain = torch.ones(1, 6, 6, 1)
    brain[0, 0, :4, 0] = 0
    assert cluster({"z": four, "brain_mask": brain})["lesion"].sum() == 0
    assert cluster({"z": four, "brain_mask": torch.ones(1, 6, 6, 1)})["lesion"].sum() == 4
    lesion = LesionThresholdd()
    assert lesion.keys == ("z",) and lesion.alpha == 0.05 and lesion.mode == "fdr" and lesion.statistic == "mass"
    assert lesion.volume_threshold is None and lesion.calibration.lesion_threshold == 2.0
    for t in (conformal, volume, cluster, lesion):
        with pytest.raises(KeyError):
            t({"score": item["z"]})


def test_cluster_threshold_default_connectivity_is_faces(cal):
    # min size at alpha 0.1: the 19th smallest largest cluster (1) + 1 = 2 voxels, face-connected
    s = torch.zeros(1, 6, 6, 1)
    s[0, 0, 0:2, 0] = 1.0  # two face neighbours: kept
    s[0, 3, 3, 0] = s[0, 4, 4, 0] = 1.0  # two corner neighbours: two clusters of 1
    s[0, 5, 0, 0] = 0.5  # not above the cluster-forming threshold
    t = ClusterThresholdd("z", cal, alpha=0.1, mask_key=None)
    assert t.min_size == 2 and t.connectivity == 1
    lesion = t({"z": s})["lesion"]
    assert lesion.sum() == 2 and lesion[0, 0, 0:2, 0].sum() == 2


def _maps_item() -> dict:
    """A (1, 4, 4, 2) map under custom keys: 1000 and 97.5 and 19.5 inside the ROI, 1000 outside."""
    s = torch.zeros(1, 4, 4, 2)
    s[0, 0, 0, 0] = 1000.0
    s[0, 1, 1, 1] = 97.5
    s[0, 2, 2, 0] = 19.5
    s[0, 3, 3, 1] = 1000.0
    roi = torch.ones(1, 4, 4, 2)
    roi[0, 3, 3, 1] = 0
    return {"s": s, "roi": roi}


KW = {"alpha": 0.1, "per": "slice", "score_key": "s", "p_key": "pv", "mask_key": "roi", "output_key": "out"}


def _check_fdr(t, alpha=0.1):
    assert isinstance(t, FDRMaskd) and t.keys == ("pv",) and t.mask_key == "roi"
    assert t.alpha == alpha and t.per == "slice" and t.output_key == "out"


def test_label_free_gaussian_and_defaults():
    (t,) = label_free_transforms("gaussian", **{k: v for k, v in KW.items() if k != "score_key"})
    _check_fdr(t)
    p = torch.ones(1, 4, 4, 2)
    p[0, 0, 0, 0] = 0.001  # slice 0: 16 tests, 0.001 <= 0.1 / 16
    p[0, 1, 1, 1] = 0.001
    p[0, 3, 3, 1] = 0.0  # outside the ROI
    roi = _maps_item()["roi"]
    out = t({"pv": p, "roi": roi})["out"]
    assert out.sum() == 2 and out[0, 3, 3, 1] == 0
    (default,) = label_free_transforms()
    assert default.keys == ("p",) and default.mask_key == "brain_mask" and default.alpha == 0.05
    assert default.per == "volume" and default.output_key == "lesion"


def test_label_free_conformal(cal):
    conformal, fdr = label_free_transforms("conformal", cal, **dict(KW, alpha=0.3))
    assert isinstance(conformal, ConformalPValued) and conformal.calibration is cal and conformal.keys == ("s",)
    assert conformal.mask_key == "roi" and conformal.p_key == "pv"
    _check_fdr(fdr, 0.3)
    d = fdr(conformal(_maps_item()))
    # p = (1 + #{0..98 >= s}) / 100: 0.01 and 0.02 inside, 1 outside; at 0.3 per slice (16 and 15 tests in the ROI)
    # 0.01 <= 0.3 / 16 and 0.02 <= 0.3 / 15 are detected; over the 31 tests of the volume neither would be
    assert float(d["pv"][0, 0, 0, 0]) == pytest.approx(0.01) and float(d["pv"][0, 1, 1, 1]) == pytest.approx(0.02)
    assert float(d["pv"][0, 3, 3, 1]) == 1.0 and float(d["pv"][0, 2, 2, 0]) == pytest.approx(0.8)
    assert d["out"].sum() == 2 and d["out"][0, 0, 0, 0] == 1 and d["out"][0, 1, 1, 1] == 1
    with pytest.raises(ValueError, match="score_median: calibrated 3, used 1"):
        label_free_transforms("conformal", cal, score={"score_median": 1})


def test_label_free_volume(cal):
    (t,) = label_free_transforms("volume", cal, **KW)
    assert isinstance(t, VolumeThresholdd) and t.calibration is cal and t.keys == ("s",) and t.mask_key == "roi"
    assert t.alpha == 0.1 and t.threshold == 19.0 and t.output_key == "out" and t.p_key is None
    out = t(_maps_item())["out"]  # above 19 inside the ROI: 1000, 97.5 and 19.5
    assert out.sum() == 3 and out[0, 2, 2, 0] == 1 and out[0, 3, 3, 1] == 0
    with pytest.raises(ValueError, match="score_median"):
        label_free_transforms("volume", cal, score={"score_median": 1})


def test_label_free_cluster(cal):
    (t,) = label_free_transforms("cluster", cal, **KW)
    assert isinstance(t, ClusterThresholdd) and t.calibration is cal and t.keys == ("s",) and t.mask_key == "roi"
    assert t.alpha == 0.1 and t.min_size == 2 and t.output_key == "out"
    item = _maps_item()
    item["s"][0, 0, 1, 0] = 1.0  # a face neighbour of the 1000: a cluster of 2
    item["s"][0, 3, 2, 1] = 1.0  # with the 1000 outside the ROI it would be another
    out = t(item)["out"]
    assert out.sum() == 2 and out[0, 0, 0:2, 0].sum() == 2
    with pytest.raises(ValueError, match="score_median"):
        label_free_transforms("cluster", cal, score={"score_median": 1})


@pytest.mark.parametrize(
    "threshold, mode, alpha, kept", [("lesion", "fdr", 0.2, [2]), ("lesion-volume", "volume", 0.1, [1, 2])]
)
def test_label_free_lesion(cal, threshold, mode, alpha, kept):
    (t,) = label_free_transforms(threshold, cal, statistic="peak", **dict(KW, alpha=alpha))
    assert isinstance(t, LesionThresholdd) and t.calibration is cal and t.keys == ("s",) and t.mask_key == "roi"
    assert t.alpha == alpha and t.mode == mode and t.statistic == "peak" and t.output_key == "out" and t.p_key == "pv"
    d = t(_lesion_item("s", "roi"))
    assert [e["label"] for e in d["lesion_stats"]["lesions"]] == kept and d["lesion_stats"]["candidates"] == 3
    assert float(d["pv"][0, 1, 4, 4]) == pytest.approx(1 / 20 if mode == "fdr" else 1 / 21)
    assert d["out"].sum() == sum({1: 2, 2: 3}[label] for label in kept)  # A has 2 voxels, C 3
    with pytest.raises(ValueError, match="score_median"):
        label_free_transforms(threshold, cal, score={"score_median": 1})


def test_outputs_carry_the_score_maps_metadata(cal):
    affine = torch.diag(torch.tensor([2.0, 1.5, 3.0, 1.0]))
    d = LesionThresholdd("z", cal, alpha=0.5, statistic="peak", p_key="p")(_lesion_item(affine=affine))
    for key in ("lesion", "lesion_labels", "p"):
        assert isinstance(d[key], MetaTensor) and torch.equal(d[key].affine, affine.double()), key
    c = ClusterThresholdd("z", cal, alpha=0.1)(_lesion_item(affine=affine))["lesion"]
    assert isinstance(c, MetaTensor) and torch.equal(c.affine, affine.double())
    v = VolumeThresholdd("z", cal, alpha=0.1, p_key="p_fwer")(_lesion_item(affine=affine))
    for key in ("lesion", "p_fwer"):
        assert isinstance(v[key], MetaTensor) and torch.equal(v[key].affine, affine.double()), key


def test_an_item_without_its_brain_mask_is_scored_everywhere(cal):
    item = _lesion_item()
    item.pop("brain_mask")  # the 9.0 at (5, 5, 5) now counts
    d = VolumeThresholdd("z", cal, alpha=0.5, p_key="p_fwer")(item)  # threshold: the 11th smallest maximum, 11
    assert d["lesion"].sum() == 0 and float(d["p_fwer"][0, 5, 5, 5]) == pytest.approx(13 / 21)
    assert LesionThresholdd("z", cal, alpha=0.5, statistic="peak")(item)["lesion_stats"]["candidates"] == 4


def test_cluster_connectivity_comes_from_the_calibration(cal):
    corner = _calibration()
    corner.score["cluster_connectivity"] = 2  # clusters were counted with edge neighbours
    s = torch.zeros(1, 6, 6, 1)
    s[0, 3, 3, 0] = s[0, 4, 4, 0] = 1.0  # corner neighbours: one cluster of 2 with connectivity 2
    t = ClusterThresholdd("z", corner, alpha=0.1, mask_key=None)
    assert t.connectivity == 2 and t({"z": s})["lesion"].sum() == 2
    assert ClusterThresholdd("z", cal, alpha=0.1, mask_key=None)({"z": s})["lesion"].sum() == 0


def test_lesion_fdr_reports_the_fitted_tail_and_p_from_tail_strictly_beyond_the_healthy_max():
    tailed = _calibration()
    # 40 healthy peaks (float32 values, as the score maps'): enough for a fitted tail
    peaks = (2.0 + torch.arange(1, 41, dtype=torch.float32) ** 1.5 / 100).double()
    tailed.lesion_stats["peak"] = peaks
    tail = tailed.lesion_tail("peak")
    assert tail is not None
    s = torch.zeros(1, 6, 6, 6)
    s[0, 1, 1, 1] = float(peaks.max())  # equal to the largest healthy peak: not from the tail
    s[0, 4, 4, 4] = 40.0  # far beyond it
    d = LesionThresholdd("z", tailed, alpha=0.9, statistic="peak", mask_key=None)({"z": s})["lesion_stats"]
    assert d["calibration"]["tail"] == dataclasses.asdict(tail)
    at_max, beyond = d["lesions"]
    assert at_max["value"] == float(peaks.max()) and at_max["p_from_tail"] is False
    assert beyond["p_from_tail"] is True and beyond["p"] < 1 / 41  # the tail's p beyond the healthy range
    volume = LesionThresholdd("z", tailed, alpha=0.1, mode="volume", statistic="peak", mask_key=None)({"z": s})
    assert volume["lesion_stats"]["calibration"]["tail"] is None  # the volume mode uses no tail


def test_lesion_threshold_without_healthy_clusters():
    empty = _calibration()
    empty.lesion_stats = {k: torch.zeros(0, dtype=torch.float64) for k in ("extent", "mass", "peak")}
    d = LesionThresholdd("z", empty, alpha=0.5, statistic="peak")(_lesion_item())["lesion_stats"]
    # every candidate's p is (1 + 0) / (0 + 1) = 1: nothing kept, and no healthy maximum to compare with
    assert d["candidates"] == 3 and d["lesions"] == []
    assert d["calibration"]["healthy_clusters"] == 0 and d["calibration"]["healthy_max"] == float("inf")


def test_site_check_looks_at_the_brain_only_and_needs_ten_voxels(cal):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 6, 6, 2, generator=g)
    mask = torch.zeros(1, 6, 6, 2)
    mask[0, :4, :4] = 1  # 32 brain voxels
    t = ConformalPValued("z", cal)
    site = t({"z": s, "brain_mask": mask})["site"]
    assert {"centre", "width"} <= set(site) and site["width"] > 0
    outside = s.clone()
    outside[mask == 0] = 50.0  # what lies outside the brain does not move the comparison
    assert t({"z": outside, "brain_mask": mask})["site"] == site
    assert t({"z": outside, "brain_mask": torch.ones_like(mask)})["site"] != site
    tiny = torch.zeros_like(mask)
    tiny[0, 0, :3, 0] = 1  # 3 brain voxels: too few for an empirical null
    assert "site" not in t({"z": s, "brain_mask": tiny})
    with pytest.raises(ValueError, match="does not match the score map"):
        t({"z": s, "brain_mask": torch.ones(1, 6, 6, 3)})
