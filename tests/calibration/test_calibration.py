"""Healthy-calibrated thresholds: conformal p-values, conformal BH, volume-level and cluster-size thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.stats import false_discovery_control

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
