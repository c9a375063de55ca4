"""Healthy-calibrated thresholds: conformal p-values, conformal BH, volume-level and cluster-size thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.stats import false_discovery_control

from monai_qrvae.anomaly.null import empirical_null, standardise
from monai_qrvae.calibration import (
    CALIBRATION_FILE,
    Calibration,
    conformal_bh,
    conformal_p_values,
    load_calibration,
    max_cluster_size,
    min_volumes,
    order_statistic_index,
    slice_strata,
    stratified_p_values,
    subsample_sorted,
    volume_threshold,
)
from monai_qrvae.transforms import (
    ClusterThresholdd,
    ConformalPValued,
    FDRMaskd,
    VolumeThresholdd,
    label_free_transforms,
)
from monai_qrvae.workflows import CalibrationCollector


def _cal(scores, maxima, **kw) -> Calibration:
    scores = torch.sort(torch.as_tensor(scores, dtype=torch.float32)).values
    return Calibration(scores, torch.tensor([0, scores.numel()]), torch.as_tensor(maxima), **kw)


def test_conformal_p_values_count_calibration_scores_at_or_above():
    cal = torch.tensor([1.0, 2.0, 2.0, 3.0])  # n = 4
    p = conformal_p_values(torch.tensor([0.5, 1.0, 2.0, 2.5, 3.0, 9.0, float("nan")]), cal)
    # (1 + #{c >= s}) / 5: s=0.5 -> 5/5, 1 -> 5/5, 2 -> 4/5, 2.5 -> 2/5, 3 -> 2/5, 9 -> 1/5, NaN -> 1
    assert torch.allclose(p, torch.tensor([1.0, 1.0, 0.8, 0.4, 0.4, 0.2, 1.0]))
    assert p.dtype == torch.float32
    # float64 in, float64 out; shape kept
    p64 = conformal_p_values(torch.tensor([[2.5, 9.0]], dtype=torch.float64), cal)
    assert p64.dtype == torch.float64 and p64.shape == (1, 2)
    assert p64.tolist() == [[0.4, 0.2]]


def test_conformal_p_values_are_uniform_on_exchangeable_data():
    # marginally over calibration draws, P(p <= a) = floor(a (n + 1)) / (n + 1): exactly 0.05 and 0.1 for n = 99
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(2)
    for _ in range(2000):
        cal = torch.sort(torch.randn(99, generator=gen)).values
        p = conformal_p_values(torch.randn(100, generator=gen), cal)
        hits += torch.stack([(p <= 0.05).float().mean(), (p <= 0.1).float().mean()])
    rate = hits / 2000
    assert abs(float(rate[0]) - 0.05) < 0.002 and abs(float(rate[1]) - 0.1) < 0.003
    # a shifted test distribution (anomalies) gets small p-values
    assert float(conformal_p_values(torch.full((10,), 4.0), cal).max()) == pytest.approx(0.01)


def test_stratified_p_values_use_each_stratum_alone():
    sorted_scores = torch.tensor([0.0, 1.0, 10.0, 20.0, 30.0])  # stratum 0: [0, 1]; stratum 1: [10, 20, 30]
    offsets = torch.tensor([0, 2, 5])
    scores = torch.tensor([1.0, 1.0, 25.0, 25.0])
    strata = torch.tensor([0, 1, 0, 1])
    p = stratified_p_values(scores, strata, sorted_scores, offsets)
    assert torch.allclose(p, torch.tensor([2 / 3, 1.0, 1 / 3, 2 / 4]))
    with pytest.raises(ValueError, match="stratum indices"):
        stratified_p_values(scores, torch.tensor([0, 1, 2, 0]), sorted_scores, offsets)


def test_slice_strata_bins_the_last_axis():
    ids = slice_strata((1, 2, 2, 5), 2)
    assert ids[0, 0, 0].tolist() == [0, 0, 0, 1, 1]
    assert ids.shape == (1, 2, 2, 5)


@pytest.mark.parametrize(
    "n, alpha, k", [(19, 0.05, 19), (20, 0.05, 20), (39, 0.05, 38), (9, 0.1, 9), (99, 0.01, 99), (4, 0.5, 3)]
)
def test_order_statistic_index(n, alpha, k):
    assert order_statistic_index(n, alpha) == k


def test_min_volumes_is_one_over_alpha_minus_one():
    assert [min_volumes(a) for a in (0.1, 0.05, 0.01, 0.2)] == [9, 19, 99, 4]


def test_volume_threshold_picks_the_k_th_smallest_maximum():
    maxima = torch.arange(20, 0, -1).float()  # 20..1, n = 20
    assert volume_threshold(maxima, 0.05) == 20.0  # k = ceil(21 * 0.95) = 20
    assert volume_threshold(maxima, 0.1) == 19.0  # k = ceil(21 * 0.9) = 19
    assert volume_threshold(maxima[:9], 0.1) == 20.0  # n = 9, k = 9: the largest of 20..12


def test_volume_threshold_refuses_too_few_volumes():
    with pytest.raises(ValueError, match=r"at least 19 healthy calibration volumes for alpha 0\.05 .*got 18"):
        volume_threshold(torch.arange(18).float(), 0.05)
    with pytest.raises(ValueError, match="at least 99"):
        volume_threshold(torch.arange(98).float(), 0.01)


def test_volume_threshold_controls_healthy_any_detection():
    # exchangeable maxima: the fraction of new volumes whose maximum exceeds the threshold is at most alpha
    gen = torch.Generator().manual_seed(1)
    rates = []
    for _ in range(400):
        maxima = torch.randn(19, generator=gen)
        t = volume_threshold(maxima, 0.05)
        rates.append(float((torch.randn(200, generator=gen) > t).float().mean()))
    assert 0.035 < np.mean(rates) <= 0.05 + 0.005  # exactly 1 / 20 in expectation


def test_subsample_sorted_keeps_evenly_spaced_order_statistics():
    x = torch.arange(10).float()
    assert subsample_sorted(x, 20) is x
    assert subsample_sorted(x, 5).tolist() == [1.0, 3.0, 5.0, 7.0, 9.0]


def test_max_cluster_size():
    m = torch.zeros(6, 6, 2, dtype=torch.bool)
    m[0:2, 0:2, 0] = True  # 4 voxels
    m[4, 4, :] = True  # 2 voxels, connected through the slices
    assert max_cluster_size(m) == 4
    assert max_cluster_size(torch.zeros(3, 3)) == 0


def test_from_scores_pools_brain_voxels_and_keeps_volume_maxima():
    v1 = torch.tensor([[1.0, 5.0], [2.0, 100.0]])
    m1 = torch.tensor([[1, 1], [1, 0]])  # 100 is outside the brain
    v2 = torch.tensor([[3.0, 4.0], [0.0, 7.0]])
    cal = Calibration.from_scores([v1, v2], [m1, torch.ones(2, 2)], score={"method": "qrvae", "score_median": 3})
    assert cal.voxel_scores.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0]
    assert cal.volume_maxima.tolist() == [5.0, 7.0]
    assert cal.n_volumes == 2 and cal.n_voxels == 7 and cal.num_strata == 1
    assert torch.allclose(cal.p_values(torch.tensor([4.5, 7.0, 8.0])), torch.tensor([3 / 8, 2 / 8, 1 / 8]))
    with pytest.raises(ValueError, match="brain mask is empty"):
        Calibration.from_scores([v1], [torch.zeros(2, 2)])


def test_from_scores_stratified_by_slice():
    vol = torch.zeros(1, 1, 4)
    vol[..., 2:] = 10.0  # upper half of the stack is brighter
    cal = Calibration.from_scores([vol, vol + 1], stratify="slice", num_strata=2)
    assert cal.offsets.tolist() == [0, 4, 8]
    assert cal.voxel_scores.tolist() == [0.0, 0.0, 1.0, 1.0, 10.0, 10.0, 11.0, 11.0]
    # 10.5 is extreme in the lower stratum, ordinary in the upper one
    p = cal.p_values(torch.full((1, 1, 4), 10.5))
    assert torch.allclose(p[0, 0], torch.tensor([0.2, 0.2, 0.6, 0.6]))


def test_save_load_round_trip(tmp_path):
    cal = Calibration.from_scores(
        [torch.randn(4, 4, 3), torch.randn(4, 4, 3)],
        score={"method": "qrvae", "score_median": 3, "score_name": "z[FLAIR]"},
        stratify="slice",
        num_strata=3,
        cluster_p=0.2,
        names=["a", "b"],
    )
    path = cal.save(tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    raw = torch.load(path, weights_only=True)  # plain tensors and Python values only
    assert raw["format_version"] == 1
    back = load_calibration(tmp_path)
    assert torch.equal(back.voxel_scores, cal.voxel_scores) and torch.equal(back.offsets, cal.offsets)
    assert torch.equal(back.volume_maxima, cal.volume_maxima)
    assert torch.equal(back.max_cluster_sizes, cal.max_cluster_sizes)
    assert back.score == cal.score and back.stratify == "slice" and back.names == ["a", "b"]
    assert back.cluster_threshold == cal.cluster_threshold and back.n_voxels == 96
    assert load_calibration(tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError, match="qrvae calibrate"):
        load_calibration(tmp_path / "nothing", required=True)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a calibration"):
        Calibration.load(tmp_path / "other.pt")


def test_subsampling_above_max_voxels():
    cal = Calibration.from_scores([torch.arange(1000).float()], max_voxels=100)
    assert cal.voxel_scores.numel() == 100 and cal.n_voxels == 1000
    assert cal.voxel_scores[0] == 5.0 and cal.voxel_scores[-1] == 995.0
    assert cal.volume_maxima.tolist() == [999.0]


def test_check_score_names_the_difference():
    cal = _cal([0.0, 1.0], [1.0], score={"method": "qrvae", "score_median": 3})
    cal.check_score(method="qrvae", score_median=3, unknown_key=1)
    with pytest.raises(ValueError, match="score_median: calibrated 3, used 1"):
        cal.check_score(score_median=1)


def test_conformal_bh_equals_scipy_bh_on_conformal_p_values():
    gen = torch.Generator().manual_seed(2)
    cal = _cal(torch.randn(5000, generator=gen), [3.0])
    scores = torch.randn(1, 1, 8, 8, 4, generator=gen)
    scores[0, 0, :3, :3] += 6.0  # 36 outliers
    scores[0, 0, 5:, 5:, 0] += torch.linspace(1.5, 3.5, 9).reshape(3, 3)  # graded: more of them pass as alpha grows
    p = conformal_p_values(scores, cal.voxel_scores).flatten().double().numpy()
    counts = []
    for alpha in (0.01, 0.05, 0.1, 0.3):  # BH must use the alpha it is given: the detections differ between them
        detected = conformal_bh(scores, cal, alpha=alpha)
        expected = false_discovery_control(p) <= alpha
        assert np.array_equal(detected.flatten().numpy(), expected), alpha
        assert detected[0, 0, :3, :3].all()
        counts.append(int(detected.sum()))
    assert counts == sorted(counts) and len(set(counts)) >= 3, counts


def _item(score: torch.Tensor, mask: torch.Tensor) -> dict:
    affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0]))
    meta = {"filename_or_obj": "sub-001/image.nii.gz"}
    return {"z": MetaTensor(score, affine=affine, meta=meta), "brain_mask": MetaTensor(mask, affine=affine)}


def test_conformal_p_transform_on_a_metatensor_then_fdr():
    cal = _cal(torch.arange(99).float(), torch.arange(20).float())  # n = 99: p = (1 + #{c >= s}) / 100
    score = torch.zeros(1, 4, 4, 2)
    score[0, 0, 0, 0] = 1000.0
    score[0, 1, 1, 1] = 97.5
    score[0, 3, 3, 1] = 1000.0  # outside the brain
    mask = torch.ones(1, 4, 4, 2)
    mask[0, 3, 3, 1] = 0
    d = ConformalPValued(calibration=cal)(_item(score, mask))
    p = d["p"]
    assert isinstance(p, MetaTensor) and torch.equal(p.affine, d["z"].affine)
    assert p.meta["filename_or_obj"] == "sub-001/image.nii.gz"
    assert float(p[0, 0, 0, 0]) == pytest.approx(0.01)  # above every calibration score
    assert float(p[0, 1, 1, 1]) == pytest.approx(0.02)  # only 98 is >= 97.5
    assert float(p[0, 0, 1, 0]) == pytest.approx(1.0)  # 0 <= every score: (1 + 99) / 100
    assert float(p[0, 3, 3, 1]) == 1.0  # outside the brain
    lesion = FDRMaskd(alpha=0.5)(d)["lesion"]  # m = 31 tests: p_(1) = 0.01 <= 0.5/31, p_(2) = 0.02 <= 2 * 0.5/31
    assert lesion.sum() == 2 and lesion[0, 0, 0, 0] == 1 and lesion[0, 1, 1, 1] == 1


def test_volume_threshold_transform():
    cal = _cal([0.0, 1.0], torch.arange(1, 21).float())  # maxima 1..20, n = 20
    score = torch.zeros(1, 3, 3, 2)
    score[0, 0, 0, 0] = 20.5  # above t(0.05) = 20
    score[0, 1, 1, 0] = 19.5  # above t(0.1) = 19 only
    score[0, 2, 0, 1] = 20.0  # at t(0.05) = 20: not above it (the guarantee needs score > t)
    score[0, 0, 2, 1] = 19.0  # at t(0.1) = 19: not above it either
    score[0, 2, 2, 1] = 50.0  # outside the brain
    mask = torch.ones(1, 3, 3, 2)
    mask[0, 2, 2, 1] = 0
    d = VolumeThresholdd(calibration=cal, alpha=0.05, p_key="p_fwer")(_item(score, mask))
    assert d["lesion"].sum() == 1 and d["lesion"][0, 0, 0, 0] == 1
    assert isinstance(d["lesion"], MetaTensor)
    assert float(d["p_fwer"][0, 0, 0, 0]) == pytest.approx(1 / 21)
    assert torch.equal(d["p_fwer"] <= 0.05, d["lesion"] > 0)
    assert float(d["p_fwer"][0, 2, 0, 1]) == pytest.approx(2 / 21)  # maxima >= 20: one, and the voxel itself
    d = VolumeThresholdd(calibration=cal, alpha=0.1)(_item(score, mask))
    assert d["lesion"].sum() == 3 and d["lesion"][0, 0, 2, 1] == 0  # 20.5, 19.5 and 20.0 are above 19; 19.0 is not
    with pytest.raises(ValueError, match="at least 99 healthy calibration volumes"):
        VolumeThresholdd(calibration=cal, alpha=0.01)


def test_cluster_threshold_transform():
    maps = []
    for size in range(1, 11):  # healthy volume i has one cluster of i voxels above the cluster-forming threshold
        m = torch.zeros(1, 12, 12, 1)
        m[0, 0, :size, 0] = 5.0
        maps.append(m)
    cal = Calibration.from_scores(maps, cluster_p=0.05)
    assert cal.cluster_threshold == 0.0
    assert cal.max_cluster_sizes.tolist() == list(range(1, 11))
    assert cal.cluster_size_threshold(0.1) == 10  # n = 10, k = ceil(11 * 0.9) = 10
    score = torch.zeros(1, 12, 12, 1)
    score[0, 5, 0:11, 0] = 5.0  # 11 voxels: kept
    score[0, 8, 0:10, 0] = 5.0  # 10 voxels: as large as the largest healthy one, dropped
    d = ClusterThresholdd(calibration=cal, alpha=0.1)(_item(score, torch.ones(1, 12, 12, 1)))
    assert d["lesion"].sum() == 11 and d["lesion"][0, 5].sum() == 11


def test_label_free_transforms(tmp_path):
    cal = _cal(torch.arange(99).float(), torch.arange(20).float(), score={"score_median": 3})
    cal.save(tmp_path)
    assert [type(t).__name__ for t in label_free_transforms("gaussian")] == ["FDRMaskd"]
    names = [type(t).__name__ for t in label_free_transforms("conformal", tmp_path)]
    assert names == ["ConformalPValued", "FDRMaskd"]
    assert [type(t).__name__ for t in label_free_transforms("volume", cal)] == ["VolumeThresholdd"]
    with pytest.raises(ValueError, match="needs a healthy calibration"):
        label_free_transforms("volume")
    with pytest.raises(ValueError, match="score_median: calibrated 3, used 1"):
        label_free_transforms("conformal", cal, score={"score_median": 1})
    with pytest.raises(ValueError, match="threshold must be one of"):
        label_free_transforms("bonferroni", cal)


def test_collector_on_an_engine():
    from ignite.engine import Engine

    outputs = [
        [
            {
                "z": MetaTensor(torch.full((1, 2, 2, 1), float(i)), meta={"filename_or_obj": f"s{i}/image.nii.gz"}),
                "roi": torch.ones(1, 2, 2, 1),
            }
        ]
        for i in range(3)
    ]
    engine = Engine(lambda e, batch: outputs[batch])
    collector = CalibrationCollector()
    collector.attach(engine)
    engine.run([0, 1, 2], max_epochs=1)
    cal = collector.calibration()
    assert cal.volume_maxima.tolist() == [0.0, 1.0, 2.0]
    assert cal.n_voxels == 12
    assert collector.names == ["s0/image.nii.gz", "s1/image.nii.gz", "s2/image.nii.gz"]


@pytest.fixture(scope="module")
def calibration_cohort(cohort_factory):
    """A tiny cohort with a 3-subject healthy ``calibration`` section and a FLAIR-threshold model (no training)."""
    import json

    from monai_qrvae.workflows import train

    datalist = cohort_factory("calib", "data", n_healthy=6, n_lesion=1, seed=3, spacing=3.0)
    root = datalist.parent.parent
    content = json.loads(datalist.read_text())
    content["calibration"] = content["training"][-3:]
    content["training"] = content["training"][:-3]
    datalist.write_text(json.dumps(content))
    train(datalist, root / "model", method="flair", num_slices=8, progress=False)
    return datalist, root / "model"


@pytest.mark.slow
def test_calibrate_command_writes_calibration_beside_the_weights(calibration_cohort, capsys):
    from monai_qrvae.cli import main

    datalist, model = calibration_cohort
    code = main(["calibrate", "--model", str(model), "--datalist", str(datalist), "--alpha", "0.25"])
    assert code == 0
    out = capsys.readouterr().out
    assert "n = 3 healthy volumes" in out
    cal = load_calibration(model, required=True)
    from monai_qrvae.defaults import method_defaults

    shipped = method_defaults("flair").score_median  # the post-processing that ships for this method
    assert cal.n_volumes == 3 and cal.score["method"] == "flair" and cal.score["score_median"] == shipped
    assert cal.score["score_name"] == "z[FLAIR]"
    # 3 volumes of 8 analysed slices each: every brain voxel of the analysed grid is in the calibration
    assert 3 * 8 * 100 < cal.n_voxels < 3 * 8 * 64 * 64
    assert cal.volume_threshold(0.25) == float(cal.volume_maxima.max())  # k = ceil(4 * 0.75) = 3 = n
    assert float(cal.volume_maxima.max()) == float(cal.voxel_scores.max())  # the maxima are of the same voxels


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--section", "nothing"], "has no 'nothing' section"),
        ([], "at least 19 healthy calibration volumes for alpha 0.05"),
        (["--section", "test", "--alpha", "0.5"], "must hold healthy subjects only"),
    ],
)
def test_calibrate_command_errors(calibration_cohort, capsys, extra, message):
    from monai_qrvae.cli import main

    datalist, model = calibration_cohort
    assert main(["calibrate", "--model", str(model), "--datalist", str(datalist), *extra]) == 2
    assert message in capsys.readouterr().err


def test_threshold_stats_counts_false_discoveries_and_healthy_detections():
    from monai_qrvae.experiments.thresholds import healthy_loo, threshold_stats

    cal = _cal(torch.zeros(100), torch.tensor([1.0] * 19))  # healthy maxima all 1: volume threshold 1 at 0.05
    brain = torch.ones(4, 4, 2, dtype=torch.bool)
    lesion_score = torch.zeros(4, 4, 2)
    lesion_score[0, 0:2, 0] = 5.0  # two true detections
    lesion_score[3, 3, 1] = 5.0  # one false detection
    label = torch.zeros(4, 4, 2, dtype=torch.bool)
    label[0, 0:3, 0] = True  # 3 lesion voxels, 2 detected
    healthy_score = torch.zeros(4, 4, 2)
    healthy_score[2, 2, 0] = 1.5  # a false alarm in a healthy volume
    row = threshold_stats(
        [lesion_score, healthy_score, torch.zeros(4, 4, 2)],
        [brain] * 3,
        [label, torch.zeros_like(label), torch.zeros_like(label)],
        "volume",
        cal,
        0.05,
    )
    assert row["fdr_lesion"] == pytest.approx(1 / 3)
    assert row["fdr"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert row["sensitivity"] == pytest.approx(2 / 3)
    assert row["healthy_any"] == pytest.approx(0.5) and row["healthy_volumes"] == 2
    assert row["detections"] == 4
    # leave-one-out: 20 healthy volumes with maxima 1..20; each is tested against the other 19 at alpha 0.05
    vols = [torch.full((2, 2, 1), float(i)) for i in range(1, 21)]
    loo = healthy_loo(vols, [torch.ones(2, 2, 1, dtype=torch.bool)] * 20, ["volume"], [0.05], cluster_p=None)
    rate, _, n = loo[("volume", 0.05)]
    assert n == 20 and rate == pytest.approx(1 / 20)  # only the largest exceeds the others' maximum


@pytest.mark.slow
def test_threshold_handler_in_the_shipped_pipeline(calibration_cohort):
    from monai_qrvae.handlers import ThresholdHandler
    from monai_qrvae.workflows import Pipeline, checked_section, fit_calibration

    datalist, model = calibration_cohort
    cal = fit_calibration(model, datalist, alpha=0.25, save=False)

    class Keep:
        def __init__(self):
            self.items = []

        def attach(self, engine):
            from ignite.engine import Events

            engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.items.extend(e.state.output))

    from monai_qrvae.defaults import method_defaults

    shipped = method_defaults("flair").score_median
    other = 3 if shipped == 1 else 1
    items = checked_section(datalist, "calibration")
    volume, conformal = Keep(), Keep()
    score = {"method": "flair", "score_median": shipped}
    pipeline = Pipeline.from_model_dir(model)
    pipeline.run(items, [pipeline.score_handler(), ThresholdHandler("volume", cal, alpha=0.25, score=score), volume])
    pipeline.run(
        items, [pipeline.score_handler(), ThresholdHandler("conformal", cal, alpha=0.25, score=score), conformal]
    )
    # the threshold at n = 3, alpha 0.25 is the largest calibration maximum: no calibration volume exceeds it
    assert all(float(item["lesion"].sum()) == 0 for item in volume.items) and len(volume.items) == 3
    # the conformal p-map of a calibration volume: p = 1 outside the brain, >= 1 / (n + 1) inside, exact counts
    item = conformal.items[0]
    brain = item["roi"] > 0  # the brain mask on the analysed grid
    assert bool((~brain).any()) and torch.all(item["p"][~brain] == 1.0)
    expected = conformal_p_values(item["z"][brain], cal.voxel_scores)
    assert torch.allclose(item["p"][brain], expected)
    assert float(item["p"][brain].min()) >= 1 / (cal.voxel_scores.numel() + 1) - 1e-9
    with pytest.raises(ValueError, match=f"score_median: calibrated {shipped}, used {other}"):
        ThresholdHandler("conformal", cal, score={"score_median": other})


def test_cli_parsers_for_calibrate_and_the_threshold_experiment():
    from monai_qrvae.cli import build_parser
    from monai_qrvae.cli import experiments as experiment_cli

    parser = build_parser()
    args = parser.parse_args(["calibrate", "--model", "m", "--datalist", "d.json", "--stratify", "slice"])
    assert args.section == "calibration" and args.alpha is None and args.stratify == "slice" and args.num_strata == 4
    args = parser.parse_args(
        ["experiment", "thresholds", "--model", "m", "--datalist", "d", "--alphas", "0.1", "--quantile-score"]
    )
    assert args.func is experiment_cli.run_thresholds_cmd and args.alphas == [0.1] and args.quantile_score
    assert args.section == "test" and args.calibration_section == "calibration" and args.cluster_p == 0.001


# --- the Calibration value: validation, thresholds, lesion/cluster fits, site check, file, summary --------------------


@pytest.mark.parametrize(
    "offsets, stratify, message",
    [
        ([1, 3], "none", "offsets must run from 0"),  # starts after 0, ends right
        ([0, 2], "none", "offsets must run from 0"),  # starts at 0, ends short
        ([3], "none", "offsets must run from 0"),  # one boundary only
        ([0, 3, 1, 3], "slice", "non-decreasing"),  # starts and ends right, a stratum runs backwards
    ],
)
def test_calibration_refuses_bad_offsets(offsets, stratify, message):
    with pytest.raises(ValueError, match=message):
        Calibration(torch.tensor([0.0, 1.0, 2.0]), torch.tensor(offsets), torch.tensor([2.0]), stratify=stratify)


def test_calibration_accepts_an_empty_stratum():
    cal = Calibration(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0, 2, 2, 3]), torch.tensor([2.0]), stratify="slice")
    assert cal.num_strata == 3 and cal.offsets.tolist() == [0, 2, 2, 3]


def _brute_threshold(n, p):
    """The smallest of the scores 1..n above which every score has conformal p (1 + #{c >= s}) / (n + 1) <= p."""
    for t in range(1, n + 1):
        if all((1 + sum(c >= s for c in range(1, n + 1))) / (n + 1) <= p + 1e-12 for s in range(t + 1, n + 1)):
            return float(t)


@pytest.mark.parametrize(
    "n, p",
    [
        (9, 0.3),  # p (n + 1) = 3: 2 calibration scores may lie above the threshold, 7 (p of 8 is 3 / 10)
        (99, 0.29),  # 0.29 * 100 is 28.999999999999996 in floating point: still 29 calibration scores allowed
        (9, 0.05),  # below 1 / (n + 1): nothing may exceed it, the largest score
        (9, 0.1),  # exactly 1 / (n + 1): still the largest score
        (9, 0.95),  # nearly every score may exceed it: the smallest
        (9, 0.55),
    ],
)
def test_primary_threshold_is_the_conformal_cut(n, p):
    values = torch.randperm(n).float() + 1.0  # 1..n, shuffled: the threshold sorts them
    cal = _cal(values, [float(n)])
    expected = _brute_threshold(n, p)
    assert cal.primary_threshold(p) == expected
    if n == 99:
        assert expected == 71.0  # 28 scores above 71: (1 + 28) / 100 = 0.29


@pytest.mark.parametrize("p", [0.0, 1.0, 1.5, -0.1])
def test_primary_threshold_and_fit_clusters_refuse_p_outside_the_unit_interval(p):
    cal = _cal([1.0, 2.0, 3.0], [3.0])
    with pytest.raises(ValueError, match="primary p-value must be in"):
        cal.primary_threshold(p)
    with pytest.raises(ValueError, match="cluster_p must be in"):
        cal.fit_clusters([torch.ones(2, 2, 2)], p)


def test_from_scores_defaults_and_options():
    """The score definition is kept; 'slice' without num_strata is one stratum; clusters are 6-connected by default,
    formed inside the mask only; a volume too small for an empirical null leaves no null_params."""
    vol = torch.zeros(4, 4, 3)
    vol[0, 0, 0] = vol[1, 1, 0] = 5.0  # two voxels touching by an edge only
    vol[3, 3, 2] = vol[3, 2, 2] = vol[2, 3, 2] = 4.0  # an L of 3 voxels outside the mask
    mask = torch.ones_like(vol, dtype=torch.bool)
    mask[2:, 2:, 2] = False
    cal = Calibration.from_scores([vol], [mask], score={"method": "m"}, stratify="slice", cluster_p=0.1)
    assert cal.score == {"method": "m", "cluster_p": 0.1, "cluster_connectivity": 1}
    assert cal.num_strata == 1 and cal.stratify == "slice" and cal.n_voxels == 44
    assert cal.cluster_threshold == 0.0 and cal.max_cluster_sizes.tolist() == [1]  # the masked L does not count
    corner = Calibration.from_scores([vol], [mask], cluster_p=0.1, connectivity=2)
    assert corner.max_cluster_sizes.tolist() == [2]  # edge neighbours with 18-connectivity
    cal.fit_clusters([torch.where(mask, vol, torch.tensor(-torch.inf))], 0.1)  # default connectivity: 6
    assert cal.max_cluster_sizes.tolist() == [1]
    small = torch.arange(8.0).reshape(2, 2, 2)
    assert Calibration.from_scores([vol, small]).null_params is None  # 8 voxels: too few for the second's null
    assert Calibration.from_scores([vol]).null_params.shape == (1, 2)
    assert Calibration.from_scores([vol, small], null="none").score == {}
    # a null standardises each volume by its own centre and width
    rng = np.random.default_rng(0)
    vols = [torch.tensor(rng.normal(c, w, (6, 6, 4)), dtype=torch.float32) for c, w in ((3.0, 2.0), (-1.0, 0.5))]
    std = Calibration.from_scores(vols, null="median")
    expected = torch.cat([standardise(v, None, "median")[0].flatten() for v in vols])
    assert torch.allclose(std.voxel_scores, torch.sort(expected).values, atol=1e-5)
    raw = Calibration.from_scores(vols)
    assert torch.allclose(raw.null_params, torch.tensor([empirical_null(v, None, "central") for v in vols]))
    assert torch.allclose(raw.voxel_scores, torch.sort(torch.cat([v.flatten() for v in vols])).values)


def test_fit_lesions_statistics_and_an_empty_volume():
    """One voxel size for all maps (the default 1 mm3 or a float) or one per map; a volume without a cluster has
    extent and mass 0 and the threshold as its peak."""
    lesion = torch.zeros(5, 5, 5)
    lesion[1:3, 1, 1] = torch.tensor([3.0, 5.0])  # one 2-voxel cluster
    lesion[4, 4, 4] = 4.0  # and a 1-voxel one
    flat = torch.zeros(5, 5, 5)
    cal = _cal(torch.cat([lesion.flatten(), flat.flatten()]), [5.0, 0.0])
    cal.fit_lesions([lesion, flat])  # the default p 1e-4: nothing of 250 scores may exceed it, the largest
    assert cal.lesion_threshold == 5.0 and cal.lesion_stats["extent"].numel() == 0
    assert cal.lesion_volume_max["extent"].tolist() == [0.0, 0.0] and cal.lesion_volume_max["mass"].tolist() == [0, 0]
    cal.fit_lesions([lesion, flat], lesion_p=0.02)  # 250 scores, 4 may exceed it: threshold 0
    assert cal.lesion_threshold == 0.0 and cal.score["lesion_p"] == 0.02
    assert cal.lesion_stats["extent"].tolist() == pytest.approx([2e-3, 1e-3])
    assert cal.lesion_stats["mass"].tolist() == pytest.approx([8e-3, 4e-3])
    assert cal.lesion_stats["peak"].tolist() == [5.0, 4.0]
    assert cal.lesion_volume_max["extent"].tolist() == pytest.approx([2e-3, 0.0])
    assert cal.lesion_volume_max["mass"].tolist() == pytest.approx([8e-3, 0.0])
    assert cal.lesion_volume_max["peak"].tolist() == [5.0, 0.0]  # the empty volume: the threshold
    cal.fit_lesions([lesion, flat], lesion_p=0.02, voxel_ml=0.5)
    assert cal.lesion_stats["extent"].tolist() == [1.0, 0.5]
    cal.fit_lesions([lesion, flat], lesion_p=0.02, voxel_ml=[0.25, 2.0])
    assert cal.lesion_stats["mass"].tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="got 1 voxel volumes for 2 maps"):
        cal.fit_lesions([lesion, flat], voxel_ml=[0.5])
    shifted = _cal(torch.cat([lesion.flatten(), flat.flatten()]) + 1.0, [6.0, 1.0])
    shifted.fit_lesions([lesion + 1.0, flat + 1.0], lesion_p=0.02)
    assert shifted.lesion_threshold == 1.0 and shifted.lesion_volume_max["peak"].tolist() == [6.0, 1.0]
    assert shifted.lesion_volume_max["extent"].tolist() == [2e-3, 0.0]  # no cluster: extent 0, not the threshold
    for values in (*shifted.lesion_stats.values(), *shifted.lesion_volume_max.values()):
        assert values.dtype == torch.float64  # as the class documents (and a loaded calibration has)


def test_standardise_without_a_null_needs_ten_brain_voxels():
    cal = _cal([0.0, 1.0], [1.0])
    scores = torch.arange(20.0)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[:10] = True
    same, params = cal.standardise(scores, mask)
    assert torch.equal(same, scores) and params == pytest.approx(empirical_null(scores, mask, "central"))
    mask[9] = False  # 9 brain voxels of 20
    assert cal.standardise(scores, mask)[1] is None
    assert cal.standardise(scores, mask.float())[1] is None  # a 0/1 mask: the zeros are outside
    assert cal.standardise(scores)[1] == pytest.approx(empirical_null(scores, None, "central"))
    assert cal.standardise(scores[:9])[1] is None


def test_site_limits_and_site_check():
    """Limits from null_params [[0, 1], [1, 2], [3, 4]]: median centre 1, median width 2, shifts 0.5, 0, 1 and ratios
    0.5, 1, 2, widened by 1.5; a scan exactly on a limit matches."""
    cal = _cal([0.0, 1.0], [1.0, 2.0, 3.0], null_params=[[0.0, 1.0], [1.0, 2.0], [3.0, 4.0]])
    assert cal.site_limits() == pytest.approx((1.5, 0.5 / 1.5, 3.0))
    on_limits = cal.site_check(4.0, 6.0)  # shift (4 - 1) / 2 = 1.5, ratio 3
    assert on_limits["matches_calibration"] is True and on_limits["warning"] is None
    assert cal.site_check(-2.0, 2.0)["matches_calibration"] is True  # shift -1.5
    assert cal.site_check(1.0, 2.0 * (0.5 / 1.5))["matches_calibration"] is True  # the smallest ratio
    out = cal.site_check(1.123456, 2.654321)
    assert out == {
        "centre": 1.1235,
        "width": 2.6543,
        "calibration_centre": 1.0,
        "calibration_width": 2.0,
        "shift": 0.062,
        "width_ratio": 1.327,
        "limits": {"shift": 1.5, "width_ratio": [0.333, 3.0]},
        "matches_calibration": True,
        "warning": None,
    }
    off = cal.site_check(4.2, 2.0)
    assert off["matches_calibration"] is False and off["shift"] == 1.6 and "qrvae calibrate" in off["warning"]
    assert cal.site_check(1.0, 6.2)["matches_calibration"] is False and cal.site_check(1.0, 0.6)["warning"]
    # centres 0, 1, 5 and widths 1, 7, 10: shifts 1/7, 0, 4/7, ratios 1/7, 1, 10/7; limits rounded to 3 digits
    odd = _cal([0.0, 1.0], [1.0, 2.0, 3.0], null_params=[[0.0, 1.0], [1.0, 7.0], [5.0, 10.0]])
    assert odd.site_limits() == pytest.approx((6 / 7, 1 / 7 / 1.5, 10 / 7 * 1.5))
    assert odd.site_check(1.0, 7.0)["limits"] == {"shift": 0.857, "width_ratio": [0.095, 2.143]}
    # identical volumes (float32-exact 0.03125 and 1.03125): the smallest shift limit 0.1; centres rounded to 4 digits
    exact = _cal([0.0, 1.0], [1.0, 2.0, 3.0], null_params=[[0.03125, 1.03125]] * 3)
    assert exact.site_limits() == pytest.approx((0.1, 1 / 1.5, 1.5))
    check = exact.site_check(0.03125 + 0.05 * 1.03125, 1.03125)
    assert check["calibration_centre"] == 0.0312 and check["calibration_width"] == 1.0312
    assert check["limits"] == {"shift": 0.1, "width_ratio": [0.667, 1.5]} and check["matches_calibration"] is True
    assert check["shift"] == 0.05 and check["width_ratio"] == 1.0
    assert exact.site_check(0.03125 + 0.1004 * 1.03125, 1.03125)["shift"] == 0.1  # shift rounded to 3 digits


class _NotACalibration:
    """A pickled object a weights-only load refuses."""


def test_load_refuses_other_files(tmp_path):
    torch.save({"format_version": 99}, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match=r"not a calibration of format 1 \(found 99\)"):
        Calibration.load(tmp_path / "v99.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"not a calibration of format 1 \(found 'list'\)"):
        Calibration.load(tmp_path / "list.pt")
    torch.save(_NotACalibration(), tmp_path / "object.pt")
    with pytest.raises(ValueError, match="cannot read calibration"):  # weights only: no arbitrary objects
        Calibration.load(tmp_path / "object.pt")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(ValueError, match="cannot read calibration"):
        Calibration.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Calibration.load(tmp_path / "missing.pt")
    assert load_calibration(tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError):
        load_calibration(tmp_path / "nothing", required=True)


def test_save_load_keeps_every_field(tmp_path):
    maps = [torch.arange(27.0).reshape(3, 3, 3), torch.arange(27.0).reshape(3, 3, 3).flip(0) * 0.5]
    cal = Calibration.from_scores(maps, score={"method": "m"}, cluster_p=0.2, lesion_p=0.2, names=["a", "b"])
    cal.save(tmp_path)
    back = Calibration.load(tmp_path / CALIBRATION_FILE)
    assert back.score == cal.score and back.names == ["a", "b"] and back.n_voxels == 54 and back.null == "none"
    assert back.cluster_threshold == cal.cluster_threshold and torch.equal(
        back.max_cluster_sizes, cal.max_cluster_sizes
    )
    assert back.lesion_threshold == cal.lesion_threshold and torch.equal(back.null_params, cal.null_params)
    for key in ("extent", "mass", "peak"):
        assert torch.equal(back.lesion_stats[key], cal.lesion_stats[key])
        assert torch.equal(back.lesion_volume_max[key], cal.lesion_volume_max[key])
    assert back.lesion_stats["extent"].numel() > 0 and float(back.lesion_volume_max["extent"].max()) > 0


def test_conformal_bh_default_alpha_and_mask():
    """99 calibration scores 0..98: a voxel above them all has p = 1/100, one at 50 has p = 49/100. BH at the default
    alpha 0.05 keeps the first only; masking the first out leaves nothing."""
    cal = _cal(torch.arange(99.0), [98.0])
    scores = torch.tensor([[[[100.0, 50.0]]]])  # (1, 1, 1, 2)
    assert conformal_bh(scores, cal).tolist() == [[[[True, False]]]]
    assert conformal_bh(scores, cal, alpha=0.5).tolist() == [[[[True, True]]]]
    assert conformal_bh(scores, cal, mask=torch.tensor([[[[False, True]]]])).tolist() == [[[[False, False]]]]


def test_conformal_bh_per_slice_and_given_strata():
    """Per slice, a p = 0.02 voxel among three p = 0.49 ones is not kept (BH with m = 4) though it is in the whole
    volume (m = 8, four p = 0.01 voxels in the other slice). With two strata (0..98, 100..198), a score of 100 is
    significant in the first only: the default strata are the slice bins, given strata replace them."""
    cal = _cal(torch.arange(99.0), [98.0])
    scores = torch.tensor([[98.0, 100.0], [50.0, 100.0], [50.0, 100.0], [50.0, 100.0]]).reshape(1, 1, 1, 4, 2)
    assert conformal_bh(scores, cal)[0, 0, 0, :, 0].tolist() == [True, False, False, False]
    assert conformal_bh(scores, cal, per="slice")[0, 0, 0, :, 0].tolist() == [False, False, False, False]
    assert bool(conformal_bh(scores, cal, per="slice")[..., 1].all())
    strata = Calibration(
        torch.cat([torch.arange(99.0), torch.arange(100.0, 199.0)]), [0, 99, 198], [198.0], stratify="slice"
    )
    two = torch.full((1, 1, 1, 1, 2), 100.0)
    assert conformal_bh(two, strata).flatten().tolist() == [True, False]
    assert conformal_bh(two, strata, strata=torch.zeros(1, 1, 1, 1, 2, dtype=torch.int64)).flatten().tolist() == [
        True,
        True,
    ]


def test_summary_describes_the_calibration():
    """Sizes, the smallest p, quantiles of the pooled scores (strata sorted together), maxima rounded to 4 digits,
    the volume thresholds where n allows them, and the cluster and lesion parts when fitted."""
    evens, odds = torch.arange(0.0, 1000.0, 2.0), torch.arange(1.0, 1000.0, 2.0)
    maxima = [1.234567 + i for i in range(19)]
    cal = Calibration(
        torch.cat([evens, odds]),
        torch.tensor([0, 500, 1000]),
        torch.tensor(maxima),
        score={"method": "m"},
        stratify="slice",
        n_voxels=5000,
        null="median",
    )
    out = cal.summary()
    assert out["n_volumes"] == 19 and out["n_voxels"] == 5000 and out["voxel_scores_kept"] == 1000
    assert out["smallest_p"] == 1 / 1001 and out["stratify"] == "slice" and out["num_strata"] == 2
    assert out["null"] == "median" and out["score"] == {"method": "m"}
    out["score"]["method"] = "changed"  # a copy
    assert cal.score == {"method": "m"}
    assert out["voxel_quantiles"] == {"0.5": 499.0, "0.99": 989.0, "0.999": 998.0}
    assert out["volume_maxima"] == [round(m, 4) for m in maxima] and out["volume_maxima"][0] == 1.2346
    # n = 19: alpha 0.01 needs 99 volumes; 0.05 the largest maximum (k = 19), 0.1 the 18th
    assert out["volume_thresholds"] == {
        "0.01": None,
        "0.05": pytest.approx(maxima[18]),
        "0.1": pytest.approx(maxima[17]),
    }
    assert "cluster_threshold" not in out and "lesion_threshold" not in out and "lesion_clusters" not in out
    assert cal.summary(alphas=(0.5,))["volume_thresholds"] == {"0.5": pytest.approx(maxima[9])}  # k = ceil(10)
    assert cal.summary(alphas=(0.05,))["volume_thresholds"]["0.05"] == pytest.approx(maxima[18])
    fitted = Calibration.from_scores(
        [torch.tensor([[[0.0, 3.0, 2.5]]]), torch.tensor([[[0.0, 0.0, 1.0]]])],
        cluster_p=0.6,
        lesion_p=0.6,
        voxel_ml=[0.0123456, 0.001],
    )
    out = fitted.summary()
    assert out["volume_thresholds"] == {"0.01": None, "0.05": None, "0.1": None}
    assert out["cluster_threshold"] == 0.0 and out["max_cluster_sizes"] == [2, 1]
    assert out["lesion_threshold"] == 0.0 and out["lesion_clusters"] == 2
    assert out["lesion_volume_max"] == {"extent": [0.0247, 0.001], "mass": [0.0679, 0.001], "peak": [3.0, 1.0]}
    stats_only = _cal([0.0, 1.0], [1.0], lesion_stats={"extent": [1.0]}, lesion_threshold=0.5)
    assert "lesion_threshold" not in stats_only.summary() and "lesion_clusters" not in stats_only.summary()
    assert out["voxel_quantiles"] == {"0.5": 0.0, "0.99": 2.5, "0.999": 2.5}


def test_calibration_value_checks_and_conversions():
    """'none' holds one stratum, at least one voxel score is needed (one is enough), lesion statistics become float64
    tensors."""
    with pytest.raises(ValueError, match="stratify 'none' needs one stratum, got 2"):
        Calibration(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0, 1, 3]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="at least one voxel score"):
        Calibration(torch.zeros(0), torch.tensor([0, 0]), torch.tensor([2.0]))
    one = Calibration(torch.tensor([1.5]), torch.tensor([0, 1]), torch.tensor([1.5]))
    assert one.primary_threshold(0.5) == 1.5
    cal = _cal([0.0, 1.0], [1.0], lesion_stats={"extent": [1, 2]}, lesion_volume_max={"extent": [[2]]})
    assert cal.lesion_stats["extent"].dtype == torch.float64 and cal.lesion_stats["extent"].tolist() == [1.0, 2.0]
    assert cal.lesion_volume_max["extent"].dtype == torch.float64 and cal.lesion_volume_max["extent"].shape == (1,)


def test_from_scores_nulls_use_the_brain_voxels_only():
    """Outside the mask the map is 1000: neither the standardising null nor the raw (site-check) null sees it; a
    volume of exactly 10 brain voxels still gets its raw null."""
    rng = np.random.default_rng(1)
    vol = torch.full((6, 6, 2), 1000.0)
    mask = torch.zeros_like(vol, dtype=torch.bool)
    mask[:3] = True
    vol[mask] = torch.tensor(rng.normal(2.0, 3.0, int(mask.sum())), dtype=torch.float32)
    std = Calibration.from_scores([vol], [mask], null="robust")
    z, params = standardise(vol[mask], None, "robust")
    assert std.null_params[0].tolist() == pytest.approx(params) and params[0] == pytest.approx(2.0, abs=1.5)
    assert torch.allclose(std.voxel_scores, torch.sort(z).values)
    raw = Calibration.from_scores([vol], [mask])
    assert raw.null_params[0].tolist() == pytest.approx(empirical_null(vol[mask], None, "central"))
    ten = torch.zeros(6, 6, 2, dtype=torch.bool)
    ten.view(-1)[:10] = True
    assert Calibration.from_scores([vol], [ten]).null_params.shape == (1, 2)
    ten.view(-1)[9] = False
    assert Calibration.from_scores([vol], [ten]).null_params is None


def test_standardise_with_a_null_uses_the_mask_and_the_calibration_method():
    rng = np.random.default_rng(2)
    cal = _cal([0.0, 1.0], [1.0], null="median")
    scores = torch.tensor(rng.normal(5.0, 2.0, 40), dtype=torch.float32)
    scores[30:] = 100.0
    mask = torch.arange(40) < 30
    out, params = cal.standardise(scores, mask)
    expected, expected_params = standardise(scores, mask, "median")
    assert params == pytest.approx(expected_params) and torch.allclose(out, expected)
    assert params != pytest.approx(empirical_null(scores, mask, "central"))  # the calibration's own method


def test_fits_are_required_before_use():
    """A cluster-size threshold needs both the sizes and the cluster threshold; lesion inference needs the statistics,
    the per-volume maxima and the threshold."""
    sizes_only = _cal([0.0, 1.0], [1.0, 1.0, 1.0], max_cluster_sizes=[1, 2, 3])
    with pytest.raises(ValueError, match="no cluster-size calibration"):
        sizes_only.cluster_size_threshold(0.25)
    both = _cal([0.0, 1.0], [1.0, 1.0, 1.0], max_cluster_sizes=[1, 2, 3], cluster_threshold=0.5)
    assert both.cluster_size_threshold(0.25) == 3
    stats = {"extent": [1.0], "mass": [1.0], "peak": [1.0]}
    for missing in ("lesion_threshold", "lesion_volume_max", "lesion_stats"):
        kw = {"lesion_threshold": 0.5, "lesion_volume_max": stats, "lesion_stats": stats}
        kw.pop(missing)
        with pytest.raises(ValueError, match="no lesion-level calibration"):
            _cal([0.0, 1.0], [1.0], **kw).lesion_volume_threshold("extent", 0.5)


def test_lesion_tail_and_p_values_beyond_the_healthy_clusters():
    """200 healthy cluster extents (exponential quantiles): the tail is the one fitted to them; a candidate far beyond
    the largest gets the tail's p-value (below the floor 1 / 201) by default, the floor without the tail."""
    from monai_qrvae.anomaly.lesions import fit_lesion_tail

    extent = -np.log(1.0 - (np.arange(200) + 0.5) / 200)
    stats = {"extent": extent, "mass": extent, "peak": extent}
    cal = _cal([0.0, 1.0], [1.0], lesion_threshold=0.5, lesion_stats=stats, lesion_volume_max=stats)
    tail = cal.lesion_tail("extent")
    assert tail is not None and tail == fit_lesion_tail(extent)
    p = cal.lesion_p_values([20.0, 0.0], "extent")
    assert p[0] < 1 / 201 and p[0] == pytest.approx(tail.sf(np.array([20.0]))[0]) and p[1] == 1.0
    assert cal.lesion_p_values([20.0], "extent", tail=False).tolist() == [1 / 201]


def test_check_score_lists_every_difference():
    cal = _cal([0.0, 1.0], [1.0], score={"method": "qrvae", "score_median": 1})
    cal.check_score(method="qrvae", channel=2)  # equal, or not recorded: nothing to say
    with pytest.raises(
        ValueError, match=r"\(method: calibrated 'qrvae', used 'mse', score_median: calibrated 1, used 3\)"
    ):
        cal.check_score(method="mse", score_median=3)


def test_stratified_p_values_skip_unused_strata_and_refuse_an_empty_one_in_use():
    sorted_scores = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0, 20.0])
    offsets = torch.tensor([0, 2, 5, 6])  # strata 0: {0, 1}, 1: {10, 11, 12}, 2: {20}
    s = torch.tensor([11.0, 11.0, 21.0, 0.0])
    strata = torch.tensor([1, 1, 2, 2])  # stratum 0 unused: the later ones must still be computed
    p = stratified_p_values(s, strata, sorted_scores, offsets)
    torch.testing.assert_close(p, torch.tensor([3 / 4, 3 / 4, 1 / 2, 1.0]))
    with pytest.raises(ValueError, match="calibration stratum 1 has no score"):
        stratified_p_values(s, strata, sorted_scores[:2], torch.tensor([0, 2, 2, 2]))


def test_thinning_keeps_at_least_one_score_of_a_small_stratum():
    # 100 brain voxels in slice 0, 3 in slice 1, at most 10 kept: 9 for the big stratum, 1 (the median) for the small
    vol = torch.zeros(10, 10, 2)
    vol[..., 0] = torch.arange(100.0).view(10, 10)
    vol[0, :3, 1] = torch.tensor([5.0, 6.0, 7.0])
    mask = torch.zeros(10, 10, 2)
    mask[..., 0] = 1
    mask[0, :3, 1] = 1
    cal = Calibration.from_scores([vol], [mask], stratify="slice", num_strata=2, max_voxels=10)
    assert cal.offsets.tolist() == [0, 9, 10] and cal.n_voxels == 103
    assert cal.voxel_scores[-1] == 6.0
