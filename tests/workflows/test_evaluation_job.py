"""The evaluation job end to end: ``evaluate`` on a hand-built labelled section with the FLAIR-thresholding baseline (a
pointwise model whose healthy statistics are set by hand), every written figure recomputed independently from the
written maps, the labels and the brain masks; ``write_table``'s CSV and Markdown."""

import csv
import json
import math
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from monai_qrvae.evaluation import NO_DETECTION_SCORE
from monai_qrvae.tables import format_headline
from monai_qrvae.workflows import ModelConfig, build_networks, infer
from monai_qrvae.workflows.evaluation import evaluate, write_table

SHAPE = (20, 20, 12)
BRAIN = (slice(2, 18), slice(2, 18), slice(1, 11))  # 16 x 16 x 10 voxels, slices 1-10
NUM_SLICES = 6  # the model analyses the 6 central brain slices (3-8): lesions in slices 1-2 and 9-10 are missed
# per subject: stratum and lesions (box, FLAIR intensity); the healthy background is N(100, 10) in every contrast.
# Lesions are under 1 % of the brain, so the 99th percentile that scales the intensities is healthy tissue.
SUBJECTS = {
    "sub-t": (
        "typical",
        [
            ((slice(4, 6), slice(4, 6), slice(5, 7)), 170.0),  # 8 voxels, bright: detected
            ((slice(12, 14), slice(12, 14), slice(4, 6)), 170.0),  # 8 voxels, bright: detected
            ((slice(10, 11), slice(4, 6), slice(1, 3)), 170.0),  # 4 voxels in slices 1-2: never analysed, missed
        ],
    ),
    "sub-s": (
        "subtle",
        [
            ((slice(4, 6), slice(10, 12), slice(4, 7)), 150.0),  # 12 fainter voxels: detected
            ((slice(14, 16), slice(5, 7), slice(7, 8)), 120.0),  # 4 faint voxels (z about 2): missed
        ],
    ),
    "sub-h": ("healthy", []),
}
ARTEFACT = (slice(12, 14), slice(8, 9), slice(5, 6))  # a bright spot in the healthy subject: a false detection
SPILL = (6, 4, 5)  # a bright unlabelled voxel touching the first typical lesion: a false voxel within the margin


def _write(path, data):
    nib.Nifti1Image(np.asarray(data), np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(str(path))


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    """A datalist whose ``test`` section holds the three hand-built subjects, and a FLAIR-thresholding model folder
    (z = (FLAIR - 0.5) / 0.215 after the brain's 1-99 percentile scaling: about N(0, 1) on healthy tissue)."""
    root = tmp_path_factory.mktemp("eval_section")
    rng = np.random.default_rng(7)
    brain = np.zeros(SHAPE, dtype=np.uint8)
    brain[BRAIN] = 1
    entries = []
    for name, (stratum, lesions) in SUBJECTS.items():
        (root / name).mkdir()
        image = rng.normal(100.0, 10.0, SHAPE + (3,)).astype(np.float32)
        label = np.zeros(SHAPE, dtype=np.uint8)
        for box, flair in lesions:
            image[box + (2,)] = flair + rng.normal(0.0, 2.0, image[box + (2,)].shape)
            label[box] = 1
        if stratum == "healthy":
            image[ARTEFACT + (2,)] = 170.0
        if stratum == "typical":
            image[SPILL + (2,)] = 170.0
        image *= brain[..., None]
        _write(root / name / "image.nii.gz", image)
        _write(root / name / "brain_mask.nii.gz", brain)
        _write(root / name / "label.nii.gz", label)
        entries.append({k: f"{name}/{k}.nii.gz" for k in ("image", "brain_mask", "label")} | {"stratum": stratum})
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": entries[2:], "test": entries}))
    model = root / "model"
    model.mkdir()
    config = ModelConfig(method="flair", image_size=None, num_slices=NUM_SLICES, score="flair")
    _, net = build_networks(config)
    net.mean.copy_(torch.tensor([0.5, 0.5, 0.5]))
    net.std.copy_(torch.tensor([0.215, 0.215, 0.215]))
    config.save(model / "model_config.json")
    torch.save(net.state_dict(), model / "model.pt")
    return root, datalist, model


@pytest.fixture(scope="module")
def default_run(section, tmp_path_factory):
    """``evaluate`` with its defaults but the threshold (no calibration: the paper's N(0, 1) p-values), into a folder
    whose parent does not exist yet; the wall time around the call."""
    _, datalist, model = section
    out = tmp_path_factory.mktemp("eval_default") / "nested" / "run"
    start = time.perf_counter()
    result = evaluate(model, datalist, out, threshold="gaussian")
    return result, out, time.perf_counter() - start


def _read(path):
    return np.asarray(nib.load(str(path)).dataobj)


def _best_dice(score, label):
    """Best Dice of ``score >= t`` over every distinct score t (ties in Dice: the highest threshold)."""
    best, best_t = -1.0, math.inf
    for t in np.unique(score)[::-1]:
        pred = score >= t
        dice = 2.0 * (pred & label).sum() / (pred.sum() + label.sum())
        if dice > best:
            best, best_t = dice, t
    return best, best_t


def _components(mask):
    return ndimage.label(mask, structure=np.ones((3, 3, 3)))


def _reference(volumes):
    """The figures of ``volumes`` (dicts of full-grid ``score``, ``label``, ``pred``, ``analysed``, ``brain``),
    computed here from their definitions."""
    brain_of = [v["brain"] for v in volumes]
    score = np.concatenate([v["score"][b] for v, b in zip(volumes, brain_of)])
    label = np.concatenate([v["label"][b] for v, b in zip(volumes, brain_of)])
    pred = np.concatenate([v["pred"][b] for v, b in zip(volumes, brain_of)])
    analysed = np.concatenate([v["analysed"][b] for v, b in zip(volumes, brain_of)])
    lesions = detected = 0
    fdp, fp = [], []
    for v in volumes:
        lab, n = _components(v["label"])
        lesions += n
        detected += sum((v["pred"] & (lab == i)).sum() >= 0.1 * (lab == i).sum() for i in range(1, n + 1))
        comp, n_pred = _components(v["pred"])
        false = sum(not (v["label"] & (comp == i)).any() for i in range(1, n_pred + 1))
        fp.append(false)
        fdp.append(false / n_pred if n_pred else 0.0)
    near = np.concatenate(
        [ndimage.binary_dilation(v["label"], np.ones((3, 3, 3)), iterations=2)[b] for v, b in zip(volumes, brain_of)]
    )
    spill = (pred & ~label & near).sum()
    best_dice, best_threshold = _best_dice(score, label)
    return {
        "volumes": len(volumes),
        "dice_fdr": 2.0 * (pred & label).sum() / (pred.sum() + label.sum()),
        "best_dice": best_dice,
        "best_threshold": best_threshold,
        "auroc": roc_auc_score(label, score),
        "auprc": average_precision_score(label, score),
        "coverage": (label & analysed).sum() / label.sum(),
        "lesions": lesions,
        "lesion_recall": detected / lesions,
        "fp_per_volume": np.mean(fp),
        "lesion_fdr": np.mean(fdp),
        "lesion_fdr_se": np.std(fdp, ddof=1) / math.sqrt(len(fdp)) if len(fdp) > 1 else math.nan,
        "voxel_fdr": (pred & ~label).sum() / pred.sum() if pred.any() else 0.0,
        "voxel_fdr_margin": ((pred & ~label).sum() - spill) / (pred.sum() - spill) if pred.sum() > spill else 0.0,
        "lesion_voxels": label.sum(),
    }


def _assert_figures(got, expected):
    assert set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def _volumes(root, maps):
    """Each test subject's figures' inputs, read from the written maps, its label and its brain mask."""
    volumes = {}
    for name, (stratum, _) in SUBJECTS.items():
        brain = _read(root / name / "brain_mask.nii.gz") > 0
        z, p, lesion = (_read(maps / f"{name}_{kind}.nii.gz") for kind in ("zmap", "pmap", "lesion"))
        # the analysed slices: those with a tested (p < 1) brain voxel; elsewhere the no-detection score
        tested = np.array([(p[..., k][brain[..., k]] < 1).any() for k in range(SHAPE[2])])
        analysed = np.broadcast_to(tested, SHAPE) & brain
        volumes[name] = {
            "stratum": stratum,
            "brain": brain,
            "label": (_read(root / name / "label.nii.gz") > 0) & brain,
            "pred": (lesion > 0.5) & brain,
            "analysed": analysed,
            "score": np.where(analysed, z, NO_DETECTION_SCORE).astype(np.float32),
        }
    return volumes


def test_evaluate_writes_the_figures_of_its_maps_labels_and_brain_masks(section, default_run):
    """Every figure of ``evaluate`` (pooled, per stratum, per volume) equals its definition applied to the maps it
    wrote, the labels and the brain masks; unanalysed slices count as missed; the settings are recorded."""
    root, _, _ = section
    result, out, wall = default_run
    volumes = _volumes(root, out / "maps")
    t, s, h = volumes["sub-t"], volumes["sub-s"], volumes["sub-h"]
    # the scene is what it is meant to be: 6 analysed slices; the two bright lesions found, the unanalysed one
    # missed; the healthy subject's bright spot is a false detection
    assert [t["analysed"][8, 8, k] for k in range(SHAPE[2])] == [False] * 3 + [True] * 6 + [False] * 3
    assert t["pred"][4, 4, 5] and t["pred"][12, 12, 4] and not t["pred"][10, 4:6, 1:3].any()
    assert t["pred"][SPILL] and not t["label"][SPILL]
    assert h["pred"][12, 8, 5] and not h["label"].any()
    expected = _reference([t, s, h])
    expected |= {"healthy_volumes": 1, "healthy_any_detection": 1.0}
    assert 0.0 < expected["coverage"] < 1.0 and 0.0 < expected["dice_fdr"] < 1.0
    assert 0.0 < expected["lesion_recall"] < 1.0 and expected["voxel_fdr_margin"] < expected["voxel_fdr"]
    settings = {
        "method": "flair",
        "section": "test",
        "alpha": 0.05,
        "per": "volume",
        "score_median": 1,
        "score": "flair",
        "threshold": "gaussian",
    }
    assert set(result) == set(settings) | set(expected) | {"strata", "per_volume", "seconds"}
    assert {k: result[k] for k in settings} == settings
    _assert_figures({k: result[k] for k in expected}, expected)
    assert set(result["strata"]) == {"typical", "subtle"}
    _assert_figures(result["strata"]["typical"], _reference([t]))
    _assert_figures(result["strata"]["subtle"], _reference([s]))
    per_volume = []
    for name, v in volumes.items():
        lab, n = _components(v["label"])
        comp, n_pred = _components(v["pred"])
        both = (v["pred"] & v["label"]).sum()
        per_volume.append(
            {
                "name": name,
                "stratum": v["stratum"],
                "lesion_voxels": int(v["label"].sum()),
                "detected_voxels": int(v["pred"].sum()),
                "dice_fdr": 2.0 * both / (v["pred"].sum() + v["label"].sum()),
                "lesions": n,
                "detected": sum((v["pred"] & (lab == i)).sum() >= 0.1 * (lab == i).sum() for i in range(1, n + 1)),
                "pred_components": n_pred,
                "false_positive_components": sum(not (v["label"] & (comp == i)).any() for i in range(1, n_pred + 1)),
            }
        )
    assert result["per_volume"] == [pytest.approx(row) for row in per_volume]
    assert 0.0 < result["seconds"] < wall
    # metrics.json is the returned result; the maps and overlays are written by default
    assert (out / "metrics.json").read_text() == json.dumps(result, indent=2)
    assert sorted(p.name for p in (out / "maps").iterdir()) == sorted(
        f"{name}_{kind}.nii.gz" for name in SUBJECTS for kind in ("zmap", "pmap", "lesion")
    )
    assert {p.name.split("_")[0] for p in (out / "overlays").glob("*.png")} == set(SUBJECTS)


def test_evaluate_maps_are_those_of_infer_with_the_same_settings(section, default_run, tmp_path):
    """``evaluate`` applies its threshold settings as ``infer`` does: the same z, p and lesion maps, with the
    defaults and with other settings (per-slice BH at 0.2, a score median filter, lesion filters)."""
    root, datalist, model = section
    lesioned = ("sub-t", "sub-s")  # infer on the two lesion subjects is enough to compare the maps (and quicker)
    images = [{k: str(root / name / f"{k}.nii.gz") for k in ("image", "brain_mask")} for name in lesioned]
    settings = dict(alpha=0.05, per="volume", median_size=1, min_size=0, score_median=1)
    other = dict(alpha=0.2, per="slice", median_size=3, min_size=3, score_median=3)
    infer(model, images, tmp_path / "infer", threshold="gaussian", save_png=False, **settings)
    infer(model, images, tmp_path / "infer_other", threshold="gaussian", save_png=False, **other)
    out = tmp_path / "other"
    out.mkdir()  # an existing folder is fine
    result = evaluate(
        model, datalist, out, section="test", threshold="gaussian", save_maps=True, save_png=False, **other
    )
    assert {k: result[k] for k in ("alpha", "per", "score_median")} == {"alpha": 0.2, "per": "slice", "score_median": 3}
    assert not (out / "overlays").exists()
    differ = False
    for name in lesioned:
        for kind in ("zmap", "pmap", "lesion"):
            default = _read(default_run[1] / "maps" / f"{name}_{kind}.nii.gz")
            assert np.array_equal(default, _read(tmp_path / "infer" / f"{name}_{kind}.nii.gz")), (name, kind)
            changed = _read(out / "maps" / f"{name}_{kind}.nii.gz")
            assert np.array_equal(changed, _read(tmp_path / "infer_other" / f"{name}_{kind}.nii.gz")), (name, kind)
            differ |= not np.array_equal(default, changed)
    assert differ
    # and the figures are those of the maps written with these settings
    assert sum(v["detected_voxels"] for v in result["per_volume"]) == sum(
        int((_read(out / "maps" / f"{name}_lesion.nii.gz") > 0).sum()) for name in SUBJECTS
    )


def test_evaluate_refuses_before_writing_anything(section, tmp_path):
    """A missing calibration (the default conformal threshold) and a corrupt input (a NaN voxel) are refused before
    the output folder is made."""
    root, datalist, model = section
    with pytest.raises(FileNotFoundError, match="calibration"):
        evaluate(model, datalist, tmp_path / "conformal")
    assert not (tmp_path / "conformal").exists()
    image = nib.load(str(root / "sub-h" / "image.nii.gz"))
    data = np.asarray(image.dataobj).copy()
    data[9, 9, 5, 2] = np.nan
    (tmp_path / "sub-h").mkdir()
    nib.Nifti1Image(data, image.affine).to_filename(str(tmp_path / "sub-h" / "image.nii.gz"))
    entry = {
        "image": str(tmp_path / "sub-h" / "image.nii.gz"),
        "brain_mask": str(root / "sub-h" / "brain_mask.nii.gz"),
        "label": str(root / "sub-h" / "label.nii.gz"),
    }
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(json.dumps({"test": [entry]}))
    with pytest.raises(ValueError, match="(?i)nan"):
        evaluate(model, corrupt, tmp_path / "nan", threshold="gaussian")
    assert not (tmp_path / "nan").exists()


def test_write_table_csv_and_markdown(tmp_path):
    """One CSV row per result with the headline columns and training seconds (empty when unknown); the Markdown is
    the headline table plus the training times of the results that have one."""
    results = [
        {"method": "qrvae", "auprc": 0.5, "auroc": 0.9, "dice_fdr": 0.25, "train_seconds": 12.4, "extra": 1},
        {"method": "mse", "auprc": 0.25, "coverage": 1.0, "strata": {"subtle": {"auprc": 0.125}}},
        {"method": "gaussian", "auroc": 0.75, "train_seconds": 7.6},
    ]
    csv_path, md_path, text = write_table(results, tmp_path / "tables")
    assert csv_path == tmp_path / "tables" / "metrics.csv" and md_path == tmp_path / "tables" / "metrics.md"
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    header = [
        "method",
        "auprc",
        "auroc",
        "best_dice",
        "dice_fdr",
        "lesion_recall",
        "fp_per_volume",
        "healthy_any_detection",
        "coverage",
        "train_seconds",
    ]
    assert rows == [
        header,
        ["qrvae", "0.5", "0.9", "", "0.25", "", "", "", "", "12.4"],
        ["mse", "0.25", "", "", "", "", "", "", "1.0", ""],
        ["gaussian", "", "0.75", "", "", "", "", "", "", "7.6"],
    ]
    headline = format_headline({"qrvae": [results[0]], "mse": [results[1]], "gaussian": [results[2]]})
    assert text == headline + "\nTraining time: qrvae 12 s, gaussian 8 s.\n"
    assert "subtle lesions only | 0.125 |" in text
    assert md_path.read_text() == text
    _, _, untimed = write_table(results[1:2], tmp_path / "untimed")
    assert untimed == format_headline({"mse": [results[1]]}) and "Training time" not in untimed
