"""``fit_calibration`` end to end on a tiny untrained model and a 3-volume healthy section: what it stores equals what
the same Pipeline's z-maps give when recomputed here (maxima, pooled and stratified voxel scores, cluster and lesion
statistics, the file); its refusals (too few volumes, lesion labels); ``CalibrationCollector`` on an Ignite engine."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from scipy import ndimage

from monai_qrvae.anomaly.null import empirical_null, standardise
from monai_qrvae.calibration import CALIBRATION_FILE, Calibration
from monai_qrvae.workflows import CalibrationCollector, ModelConfig, Pipeline, build_networks, fit_calibration
from monai_qrvae.workflows.calibration import _check_healthy, _short


class _Keep:
    """Keeps every output item's z-map and analysis mask (at the end of each iteration)."""

    def __init__(self):
        self.z, self.roi = [], []

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine):
        for out in engine.state.output:
            self.z.append(out["z"])
            self.roi.append(np.asarray(out["roi"][0]) > 0)


def _threshold(pooled, p):
    """Smallest pooled score ``t`` with conformal p ``(1 + #{c > t}) / (n + 1) <= p`` (all scores above ``t`` pass)."""
    c = np.sort(np.asarray(pooled, dtype=np.float64))
    above = c.size - np.searchsorted(c, c, side="right")
    return float(c[np.argmax((1 + above) / (c.size + 1) <= p)])


@pytest.fixture(scope="module")
def fitted(cohort_factory):
    """A tiny untrained QR-VAE folder, a cohort with 3 healthy calibration volumes (and one training subject),
    the z-maps of the calibration volumes through the model's own Pipeline (score median 1 and 3)."""
    datalist = cohort_factory("fit", n_healthy=4, n_lesion=0, seed=3, spacing=4.0, n_calibration=3, n_validation=0)
    model = datalist.parent / "model"
    model.mkdir()
    config = ModelConfig(image_size=32, num_slices=8)
    torch.manual_seed(0)
    _, net = build_networks(config)
    config.save(model / "model_config.json")
    torch.save(net.state_dict(), model / "model.pt")
    pipeline = Pipeline.from_model_dir(model)
    items = [{k: v for k, v in e.items() if k != "stratum"} for e in json.loads(datalist.read_text())["calibration"]]
    items = [{k: str(datalist.parent / v) for k, v in e.items()} for e in items]
    refs = {}
    for median in (1, 3):
        keep = _Keep()
        pipeline.run(items, [pipeline.score_handler(median), keep])
        refs[median] = keep
    return datalist, model, refs


def test_fit_calibration_stores_the_pipeline_scores(fitted):
    """Default null ('none'), pooled: maxima, sorted voxel scores, null params, score, names and the written file are
    the recomputed ones; the cluster-size and lesion calibrations follow their definitions on those maps."""
    datalist, model, refs = fitted
    ref = refs[1]
    cal = fit_calibration(model, datalist, alpha=0.25, cluster_p=0.02, lesion_p=0.01)
    z = [np.asarray(m[0], dtype=np.float64) for m in ref.z]
    inside = [zi[r] for zi, r in zip(z, ref.roi)]
    pooled = np.concatenate(inside)
    assert cal.n_volumes == 3 and cal.names == ["sub-002", "sub-003", "sub-004"]  # datalist order, short names
    assert np.allclose(cal.volume_maxima.numpy(), [v.max() for v in inside])
    assert cal.n_voxels == pooled.size == cal.voxel_scores.numel() and cal.offsets.tolist() == [0, pooled.size]
    assert np.allclose(cal.voxel_scores.numpy(), np.sort(pooled))
    assert cal.null == "none" and cal.stratify == "none"
    # the raw scores' centre and width of each volume: the site-check reference
    expected_params = [empirical_null(torch.as_tensor(zi), torch.as_tensor(r), "central") for zi, r in zip(z, ref.roi)]
    assert np.allclose(cal.null_params.numpy(), expected_params, atol=1e-5)
    assert cal.score == {
        **Pipeline.from_model_dir(model).score_definition(1),
        "cluster_p": 0.02,
        "cluster_connectivity": 1,
        "lesion_p": 0.01,
    }
    assert cal.score["method"] == "qrvae" and cal.score["score_name"] == "z[FLAIR]"
    # cluster-size calibration: largest 6-connected component above the pooled threshold at p 0.02, per volume
    t = _threshold(pooled, 0.02)
    assert cal.cluster_threshold == pytest.approx(t)
    six = ndimage.generate_binary_structure(3, 1)
    sizes = []
    for zi, r in zip(z, ref.roi):
        labels, n = ndimage.label((zi > t) & r, structure=six)
        sizes.append(int(np.bincount(labels.ravel())[1:].max()) if n else 0)
    assert cal.max_cluster_sizes.tolist() == sizes and max(sizes) > 1
    # lesion calibration: every 26-connected cluster above the p 0.01 threshold, extent/mass in mL of the analysed grid
    t = _threshold(pooled, 0.01)
    assert cal.lesion_threshold == pytest.approx(t)
    extent, mass, peak, vmax = [], [], [], {"extent": [], "mass": [], "peak": []}
    for zi, r, m in zip(z, ref.roi, ref.z):
        ml = abs(np.linalg.det(np.asarray(m.affine)[:3, :3])) / 1000.0
        labels, n = ndimage.label((zi > t) & r, structure=np.ones((3, 3, 3)))
        ids = range(1, n + 1)
        e = [float((labels == i).sum()) * ml for i in ids]
        s = [float((zi[labels == i] - t).sum()) * ml for i in ids]
        k = [float(zi[labels == i].max()) for i in ids]
        extent += e
        mass += s
        peak += k
        vmax["extent"].append(max(e, default=0.0))
        vmax["mass"].append(max(s, default=0.0))
        vmax["peak"].append(max(k, default=t))
    assert ml != pytest.approx(1e-3)  # the analysed grid is not 1 mm: the voxel volume is read from the maps
    assert len(extent) > 3  # several healthy clusters
    assert np.allclose(cal.lesion_stats["extent"].numpy(), extent)
    assert np.allclose(cal.lesion_stats["mass"].numpy(), mass)
    assert np.allclose(cal.lesion_stats["peak"].numpy(), peak)
    for key, values in vmax.items():
        assert np.allclose(cal.lesion_volume_max[key].numpy(), values), key
    # written beside the weights, read back identical
    loaded = Calibration.load(model / CALIBRATION_FILE)
    assert torch.equal(loaded.voxel_scores, cal.voxel_scores) and torch.equal(loaded.volume_maxima, cal.volume_maxima)
    assert loaded.names == cal.names and loaded.score == cal.score and loaded.lesion_threshold == cal.lesion_threshold
    summary = cal.summary(alphas=(0.25, 0.2))
    assert summary["n_volumes"] == 3 and summary["n_voxels"] == pooled.size
    assert summary["volume_thresholds"] == {"0.25": pytest.approx(max(v.max() for v in inside)), "0.2": None}
    assert summary["max_cluster_sizes"] == sizes and summary["lesion_clusters"] == len(extent)


def test_fit_calibration_options_reach_the_calibration(fitted):
    """score_median, null, stratify (4 slice bins by default), max_voxels, lesion_p=None, save=False, a preloaded model:
    each changes what is stored as recomputed here (median-3 maps standardised by each volume's median null)."""
    datalist, model, refs = fitted
    ref = refs[3]
    (model / CALIBRATION_FILE).unlink(missing_ok=True)
    config = ModelConfig.load(model / "model_config.json")
    _, net = build_networks(config)
    net.load_state_dict(torch.load(model / "model.pt", weights_only=True))
    net.eval()
    cal = fit_calibration(
        model,
        datalist,
        alpha=0.25,
        score_median=3,
        null="median",
        stratify="slice",
        max_voxels=10**6,
        lesion_p=None,
        save=False,
        model=(config, net),
    )
    assert not (model / CALIBRATION_FILE).exists()
    assert cal.lesion_threshold is None and cal.lesion_stats is None and cal.cluster_threshold is None
    assert cal.score["score_median"] == 3 and cal.null == "median" and cal.stratify == "slice"
    bins, maxima, params = [[], [], [], []], [], []
    for m, r in zip(ref.z, ref.roi):
        z = torch.as_tensor(np.asarray(m[0]), dtype=torch.float32)
        s, centre_width = standardise(z, torch.as_tensor(r), "median")
        params.append(centre_width)
        s = s.numpy()
        depth = s.shape[-1]
        for d in range(depth):  # the default 4 slice bins: quarters of the stack
            bins[d * 4 // depth].append(s[..., d][r[..., d]])
        maxima.append(s[r].max())
    bins = [np.concatenate(b) for b in bins]
    assert cal.num_strata == 4 and cal.offsets.tolist() == np.cumsum([0] + [b.size for b in bins]).tolist()
    assert all(b.size > 0 for b in bins)
    assert np.allclose(cal.voxel_scores.numpy(), np.concatenate([np.sort(b) for b in bins]), atol=1e-5)
    assert np.allclose(cal.volume_maxima.numpy(), maxima, atol=1e-5)
    assert np.allclose(cal.null_params.numpy(), params, atol=1e-5)
    # max_voxels thins the kept scores, not the count of calibration voxels; the given network is the one used (its
    # quantile score switched on, unlike the folder's configuration: the score definition records it)
    net.quantile_score = True
    thin = fit_calibration(model, datalist, alpha=0.25, max_voxels=100, lesion_p=None, save=False, model=(config, net))
    assert thin.n_voxels == sum(int(r.sum()) for r in refs[1].roi) and 95 <= thin.voxel_scores.numel() <= 100
    assert thin.score["score_median"] == 1 and thin.null == "none" and thin.stratify == "none"
    assert thin.score["quantile_score"] is True and thin.score["score_name"] == "qf[FLAIR]"


def test_fit_calibration_refusals(fitted):
    """Too few volumes for the method's alpha (0.05 needs 19), and a section with a lesion label, are refused."""
    datalist, model, _ = fitted
    with pytest.raises(ValueError, match=r"at least 19 healthy calibration volumes for alpha 0.05 .* got 3;"):
        fit_calibration(model, datalist, save=False)
    with pytest.raises(ValueError, match="at least 4 healthy .* alpha 0.2 .* smallest possible with 3 is 0.25"):
        fit_calibration(model, datalist, alpha=0.2, save=False)
    content = json.loads(datalist.read_text())
    content["lesional"] = [dict(e) for e in content["calibration"]]
    content["lesional"][1]["label"] = content["lesional"][1]["brain_mask"]  # a non-empty label of the same grid
    lesional = datalist.parent / "lesional.json"
    lesional.write_text(json.dumps(content))
    with pytest.raises(
        ValueError, match=r"section 'lesional' must hold healthy .* 1 have lesions: \['brain_mask.nii.gz'\]"
    ):
        fit_calibration(model, lesional, section="lesional", alpha=0.5, save=False)


def _label(path, value):
    data = np.zeros((3, 3, 2), dtype=np.uint8)
    data[1, 1, 1] = value
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return str(path)


def test_check_healthy_names_the_lesional_labels(tmp_path):
    """All-zero and missing labels pass; the label files with a lesion voxel are named (at most 5, then '...')."""
    zero = _label(tmp_path / "zero.nii.gz", 0)
    _check_healthy([{"label": zero}, {"image": "x"}, {"label": ""}, {"label": None}], "calibration")
    sick = [_label(tmp_path / f"s{i}.nii.gz", 1) for i in range(7)]
    with pytest.raises(ValueError, match=r"section 'cal' .* 2 have lesions: \['s0.nii.gz', 's1.nii.gz'\]\.$"):
        _check_healthy([{"label": sick[0]}, {"label": zero}, {"label": sick[1]}], "cal")
    with pytest.raises(ValueError, match=r"7 have lesions: \['s0.nii.gz', .*'s4.nii.gz'\] \.\.\.\.$"):
        _check_healthy([{"label": s} for s in sick], "cal")
    # another label key
    _check_healthy([{"seg": zero, "label": sick[0]}], "cal", label_key="seg")
    with pytest.raises(ValueError, match="1 have lesions"):
        _check_healthy([{"seg": sick[0], "label": zero}], "cal", label_key="seg")


@pytest.mark.parametrize(
    "path, name",
    [
        ("/d/sub-001/image.nii.gz", "sub-001"),
        ("/d/sub-001/flair.nii.gz", "sub-001"),
        ("/d/sub-001/t1.nii", "sub-001"),
        ("/d/sub-001/t2.mha", "sub-001"),
        ("/d/sub-001/other.nii.gz", "other"),
        ("/d/case_7.nii.gz", "case_7"),
        ("image.nii.gz", "image"),  # no parent folder to name it
    ],
)
def test_short_names_a_volume_by_its_subject_folder(path, name):
    assert _short(path) == name


def _engine(outputs):
    engine = Engine(lambda e, batch: outputs[batch])
    return engine


def test_collector_keeps_labels_masks_voxel_volumes_and_names():
    """On a real engine: masks are ``> 0``, labels kept when asked (zeros without one), the voxel volume read from the
    score's affine, names from the meta (first of a list) or numbered; a new run forgets the previous one."""
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    mask = torch.tensor([[[[1.0], [0.0]], [[0.5], [-1.0]]]])  # (1, 2, 2, 1): two voxels > 0
    label = torch.tensor([[[[0.0], [1.0]], [[0.0], [0.0]]]])  # a lesion label is 1
    outputs = [
        [
            {
                "z": MetaTensor(torch.full((1, 2, 2, 1), 4.0), affine=affine, meta={"filename_or_obj": ["a/b.nii"]}),
                "roi": mask,
            }
        ],
        [{"z": torch.full((1, 2, 2, 1), 2.0), "roi": mask, "label": label}],
        {"z": torch.full((1, 2, 2, 1), 3.0), "roi": mask},  # one dict, not a list of items
    ]
    engine = _engine(outputs)
    collector = CalibrationCollector(label_key="label")
    collector.attach(engine)
    collector.attach(engine)  # twice: still one handler each
    engine.run([0, 1, 2], max_epochs=1)
    assert len(collector.scores) == 3 and collector.names == ["a/b.nii", "volume_0001", "volume_0002"]
    assert collector.voxel_ml == [pytest.approx(0.012), 1e-3, 1e-3]
    assert collector.masks[0].tolist() == [[[True], [False]], [[True], [False]]]
    assert collector.labels[0].tolist() == [[[False], [False]], [[False], [False]]]
    assert collector.labels[1].tolist() == [[[False], [True]], [[False], [False]]]
    assert collector.scores[1].shape == (2, 2, 1) and float(collector.scores[2].sum()) == 12.0
    assert not isinstance(collector.scores[0], MetaTensor)  # plain CPU tensors
    cal = collector.calibration(lesion_p=0.5)
    assert cal.volume_maxima.tolist() == [4.0, 2.0, 3.0] and cal.n_voxels == 6  # brain voxels only
    assert cal.names == ["a/b.nii", "volume_0001", "volume_0002"]
    # threshold 3 (2 of 6 scores may exceed it): only the first volume's 2 brain voxels (4.0) form a cluster, of the
    # collected voxel volume 2 x 12 mm3
    assert cal.lesion_threshold == 3.0 and cal.lesion_stats["extent"].tolist() == [pytest.approx(0.024)]
    engine.run([1], max_epochs=1)  # a new run: the previous volumes are forgotten
    assert len(collector.scores) == 1 and collector.names == ["volume_0000"]
    collector.reset()
    assert collector.scores == collector.masks == collector.labels == collector.names == collector.voxel_ml == []


def test_collector_called_directly():
    """As a plain handler (no attach, no run), it appends to the lists it starts with."""
    from types import SimpleNamespace

    collector = CalibrationCollector()
    collector(
        SimpleNamespace(state=SimpleNamespace(output=[{"z": torch.ones(1, 2, 1, 1), "roi": torch.ones(1, 2, 1, 1)}]))
    )
    assert len(collector.scores) == len(collector.masks) == len(collector.voxel_ml) == len(collector.names) == 1
    assert collector.labels == []


def test_collector_without_labels_and_with_an_output_transform():
    outputs = [{"items": [{"s": torch.ones(1, 2, 1, 1), "m": torch.ones(1, 2, 1, 1), "label": torch.ones(1, 2, 1, 1)}]}]
    engine = _engine(outputs)
    collector = CalibrationCollector(score_key="s", mask_key="m", output_transform=lambda o: o["items"])
    collector.attach(engine)
    engine.run([0], max_epochs=1)
    assert len(collector.scores) == 1 and collector.labels == []
    missing = CalibrationCollector()
    missing.attach(engine)
    with pytest.raises(KeyError, match=r"missing \['z', 'roi'\]"):
        engine.run([0], max_epochs=1)
