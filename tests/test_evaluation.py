"""Whole-volume scoring on the input grid: lesion-wise counts, pooled figures, unanalysed voxels count as missed."""

from __future__ import annotations

import json
import math
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_qrvae.evaluation import (
    NO_DETECTION_SCORE,
    InputGridCollector,
    VolumeRecord,
    lesion_wise_counts,
    summarise,
)
from monai_qrvae.tables import format_headline, read_doc_block, update_doc_block


def _two_lesions() -> np.ndarray:
    label = np.zeros((12, 12, 12), dtype=bool)
    label[1:4, 1:4, 1:4] = True  # 27 voxels
    label[8:10, 8:10, 8:10] = True  # 8 voxels
    return label


def test_lesion_wise_counts_overlap_rule_and_false_positives():
    label = _two_lesions()
    pred = np.zeros_like(label)
    pred[1, 1, 1:3] = True  # 2 of 27 voxels: 7 % < 10 %, not detected
    pred[8, 8, 8] = True  # 1 of 8 voxels: 12.5 %, detected
    pred[5, 5, 5] = True  # touches no lesion: a false positive component
    pred[6, 11, 0] = True  # another one
    counts = lesion_wise_counts(pred, label)
    assert counts == {"lesions": 2, "detected": 1, "pred_components": 4, "false_positive_components": 2}
    pred[1, 1, 3] = True  # 3 of 27 = 11 %: now detected, and still the same component
    assert lesion_wise_counts(pred, label)["detected"] == 2
    # the 10 % boundary itself: 1 of 10 voxels (exactly 10 %) is detected, 1 of 20 (5 %) is not; min_overlap is used
    edge = np.zeros((12, 12, 12), dtype=bool)
    edge[0, 0, :10] = True  # 10 voxels
    edge[5:7, 5, :10] = True  # 20 voxels
    hits = np.zeros_like(edge)
    hits[0, 0, 4] = hits[5, 5, 0] = True
    expected = {"lesions": 2, "detected": 1, "pred_components": 2, "false_positive_components": 0}
    assert lesion_wise_counts(hits, edge) == expected
    assert lesion_wise_counts(hits, edge, min_overlap=0.05)["detected"] == 2
    assert lesion_wise_counts(hits, edge, min_overlap=0.11)["detected"] == 0
    # diagonal neighbours belong to one lesion (26-connectivity)
    diagonal = np.zeros((4, 4, 4), dtype=bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True
    assert lesion_wise_counts(np.zeros_like(diagonal), diagonal)["lesions"] == 1
    with pytest.raises(ValueError, match="same shape"):
        lesion_wise_counts(pred[:5], label)


def _record(name, score, label, pred, analysed=None, stratum="typical"):
    label = np.asarray(label, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    analysed = np.ones_like(label) if analysed is None else np.asarray(analysed, dtype=bool)
    counts = lesion_wise_counts(pred[None, None], label[None, None])
    return VolumeRecord(name, stratum, np.asarray(score, dtype=np.float32), label, pred, analysed, counts)


def test_summarise_pools_volumes_and_counts_unanalysed_lesions_as_missed():
    # volume a: lesion voxels 0-1 analysed and ranked first; voxel 2 is a lesion the method never looked at
    a = _record(
        "a",
        [5.0, 4.0, NO_DETECTION_SCORE, 1.0, 0.0, 0.5],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 0, 0, 0],
        analysed=[1, 1, 0, 1, 1, 1],
    )
    healthy = _record("h", [3.0, 0.1, 0.2], [0, 0, 0], [0, 1, 0], stratum="healthy")
    result = summarise([a, healthy])
    assert result["volumes"] == 2
    assert result["coverage"] == pytest.approx(2 / 3)
    # pooled: lesions 5, 4, -1e4; non-lesions 1, 0, 0.5, 3, 0.1, 0.2 -> best cut at 4: tp 2, pred 2 -> 2*2/(2+3)
    assert result["best_dice"] == pytest.approx(4 / 5)
    # AUROC: pairs (lesion > non-lesion): 5 and 4 beat all 6; the unanalysed lesion beats none -> 12 / 18
    assert result["auroc"] == pytest.approx(12 / 18)
    # label-free masks: volume a predicts voxel 0 (a hit), the healthy volume one false voxel
    assert result["dice_fdr"] == pytest.approx(2 * 1 / (2 + 3))
    assert result["healthy_volumes"] == 1 and result["healthy_any_detection"] == 1.0
    assert set(result["strata"]) == {"typical"}
    assert result["strata"]["typical"]["coverage"] == pytest.approx(2 / 3)
    names = [v["name"] for v in result["per_volume"]]
    assert names == ["a", "h"]
    assert math.isnan(result["per_volume"][1]["dice_fdr"]) is False  # one false voxel, no lesion: Dice 0
    assert result["per_volume"][1]["dice_fdr"] == 0.0
    # lesion-wise: volume a's one lesion (voxels 0-2) is hit by voxel 0; the healthy volume has one false component
    assert result["lesions"] == 1 and result["lesion_recall"] == 1.0
    assert result["fp_per_volume"] == pytest.approx(0.5)
    # AUPRC: ranked 5 (lesion), 4 (lesion), 3, 1, 0.5, 0.2, 0.1, 0, then -1e4 (lesion): (1 + 1 + 3/9) / 3
    assert result["auprc"] == pytest.approx(7 / 9)
    with pytest.raises(ValueError, match="at least one"):
        summarise([])


def _reference_average_precision(score: np.ndarray, label: np.ndarray) -> float:
    """Mean over lesion voxels of the precision at their rank (distinct scores)."""
    order = np.argsort(-score, kind="stable")
    hits = label[order].astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def test_summarise_lesion_recall_false_components_lesion_fdr_and_auprc():
    rng = np.random.default_rng(3)
    label = np.zeros(40, dtype=bool)
    label[:10] = True  # lesion of 10 voxels: voxel 0 hits exactly 10 % of it, detected
    label[11:31] = True  # lesion of 20 voxels: voxel 11 hits 5 % of it, missed
    pred = np.zeros(40, dtype=bool)
    pred[[0, 11, 35, 38]] = True  # voxels 35 and 38: two false components
    score = rng.normal(size=40) + 2.0 * label
    b = _record("b", score, label, pred, stratum="subtle")
    assert b.counts == {"lesions": 2, "detected": 1, "pred_components": 4, "false_positive_components": 2}
    h_pred = np.zeros(10, dtype=bool)
    h_pred[3] = True
    h_score = rng.normal(size=10)
    h = _record("h", h_score, np.zeros(10), h_pred, stratum="healthy")
    result = summarise([b, h])
    assert result["lesions"] == 2 and result["lesion_recall"] == pytest.approx(0.5)
    assert result["fp_per_volume"] == pytest.approx((2 + 1) / 2)
    assert result["lesion_fdr"] == pytest.approx((2 / 4 + 1 / 1) / 2)
    assert result["voxel_fdr"] == pytest.approx(3 / 5)  # 5 detected voxels, 3 outside the lesions
    all_score, all_label = np.r_[score, h_score].astype(np.float32), np.r_[label, np.zeros(10, dtype=bool)]
    assert result["auprc"] == pytest.approx(_reference_average_precision(all_score, all_label), rel=1e-6)
    assert result["auprc"] < 1.0 and result["healthy_any_detection"] == 1.0
    subtle = result["strata"]["subtle"]
    assert subtle["lesion_recall"] == pytest.approx(0.5) and subtle["fp_per_volume"] == 2.0
    assert subtle["auprc"] == pytest.approx(_reference_average_precision(score.astype(np.float32), label), rel=1e-6)


def _nifti(path, data) -> str:
    nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(str(path))
    return str(path)


def test_input_grid_collector_keeps_brain_voxels_only(tmp_path):
    """Scores, labels and detections outside the brain mask (read from its file) are left out of every figure; with
    no brain mask file the image's non-zero voxels are the brain."""
    shape = (6, 5, 4)
    brain = np.zeros(shape, dtype=bool)
    brain[1:5, 1:4, :] = True  # 48 voxels
    label = np.zeros(shape)
    label[2:4, 2, 1:3] = 1  # 4 lesion voxels inside the brain
    label[0, 0, 0] = 1  # a label voxel outside the brain: ignored
    lesion = np.zeros(shape)
    lesion[2, 2, 1] = 1  # a hit
    lesion[5, 4, 3] = 1  # a detection outside the brain: ignored (no false component)
    score = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    image = np.where(brain, 1.0, 0.0)
    label_t = MetaTensor(torch.tensor(label)[None], meta={"filename_or_obj": _nifti(tmp_path / "label.nii.gz", label)})
    mask_t = MetaTensor(torch.tensor(brain)[None], meta={"filename_or_obj": _nifti(tmp_path / "mask.nii.gz", brain)})
    image_t = MetaTensor(torch.tensor(image)[None], meta={"filename_or_obj": _nifti(tmp_path / "t1.nii.gz", image)})
    out = {"z": torch.tensor(score)[None], "lesion": torch.tensor(lesion)[None]}
    collector = InputGridCollector(preprocessing=None)  # maps already on the input grid
    rec = collector.record(out, {"image": image_t, "label": label_t, "brain_mask": mask_t, "stratum": "typical"})
    assert rec.stratum == "typical" and rec.name == tmp_path.name  # .../<subject>/t1.nii.gz: the subject
    assert rec.score.shape == (48,) and np.array_equal(np.sort(rec.score), np.sort(score[brain]))
    assert rec.label.sum() == 4 and rec.pred.sum() == 1 and rec.analysed.all()
    assert rec.counts == {"lesions": 1, "detected": 1, "pred_components": 1, "false_positive_components": 0}
    assert rec.near_lesion is not None and rec.near_lesion.shape == (48,)
    # without a brain mask file: the image's non-zero voxels (the same box here)
    rec2 = collector.record(out, {"image": image_t, "label": label_t})
    assert rec2.score.shape == (48,) and rec2.counts == rec.counts
    healthy = collector.record(
        out,
        {
            "image": image_t,
            "label": MetaTensor(
                torch.zeros(1, *shape), meta={"filename_or_obj": _nifti(tmp_path / "healthy.nii.gz", np.zeros(shape))}
            ),
            "brain_mask": mask_t,
        },
    )
    assert healthy.stratum == "healthy" and healthy.counts["false_positive_components"] == 1


def test_headline_table_mean_sd_and_doc_block_round_trip(tmp_path):
    runs = [
        {"auprc": 0.5, "auroc": 0.9, "strata": {"subtle": {"auprc": 0.1}}},
        {"auprc": 0.7, "auroc": 0.8, "strata": {"subtle": {"auprc": 0.3}}},
    ]
    table = format_headline({"qrvae": runs})
    assert "| QR-VAE (ours) | 0.600 ± 0.141 | 0.850 ± 0.071 |" in table
    assert "subtle lesions only | 0.200 ± 0.141 |" in table
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- headline:start -->\nold\n<!-- headline:end -->\noutro\n")
    update_doc_block(doc, "headline", table)
    assert read_doc_block(doc, "headline") == table
    assert doc.read_text().startswith("intro\n") and doc.read_text().endswith("outro\n")
    with pytest.raises(ValueError, match="no block"):
        update_doc_block(doc, "missing", table)


def test_lesion_wise_counts_lesions_not_hit_and_diagonal_predictions():
    """A lesion without any predicted voxel is missed even when it comes after the hit ones; diagonal predicted
    voxels are one component (26-connectivity), like the lesions."""
    label = np.zeros((10, 10, 10), dtype=bool)
    label[1:3, 1:3, 1:3] = True  # 8 voxels, first in scan order
    label[5, 5, 5] = label[8, 8, 8] = True  # two 1-voxel lesions
    pred = np.zeros_like(label)
    pred[1, 1, 1] = True  # 1 of 8 voxels of the first lesion: detected; the other two are missed
    pred[5, 8, 1] = pred[6, 7, 2] = True  # diagonal neighbours: one false component
    expected = {"lesions": 3, "detected": 1, "pred_components": 2, "false_positive_components": 1}
    assert lesion_wise_counts(pred, label) == expected


def _mt(data, path):
    """A MetaTensor as a loader gives it: channel first, ``filename_or_obj`` naming its file (or ``path`` itself when
    it is a list)."""
    return MetaTensor(torch.as_tensor(np.asarray(data, dtype=np.float32))[None], meta={"filename_or_obj": path})


def _brain_box(shape):
    brain = np.zeros(shape, dtype=bool)
    brain[1:-1, 1:-1, 1:-1] = True
    return brain


@pytest.fixture
def two_volumes(tmp_path):
    """A lesion volume (``sub-a``: lesions of 8, 1 and 1 voxels) and a healthy one (``sub-h``) on a 10 x 10 x 10 grid,
    brain = the inner 8 x 8 x 8 box, maps already on the input grid; the engine's items as an evaluator gives them.

    ``sub-a``: the image is non-zero everywhere, its brain mask file is the box; the label's file name comes as a
    list; its stratum only in the output. Predicted: 2 of the 8-voxel lesion's voxels (25 %), one false voxel
    touching them (boundary spill), a false component of two diagonal voxels, a soft 0.5 voxel (not a detection) and
    a voxel outside the brain (ignored). ``sub-h``: the image only in the output, non-zero on the brain box; its
    brain mask made in memory (no file: the image's non-zero voxels are the brain); no stratum (healthy: no lesion).
    """
    shape = (10, 10, 10)
    brain = _brain_box(shape)
    for name in ("sub-a", "sub-h"):
        (tmp_path / name).mkdir()
    label = np.zeros(shape)
    label[2:4, 2:4, 2:4] = 1
    label[7, 7, 7] = label[2, 7, 7] = 1
    lesion = np.zeros(shape)
    lesion[2, 2, 2] = lesion[3, 3, 3] = 1  # hits
    lesion[4, 2, 2] = 1  # false, touching the hits: spill within the margin, not a false component
    lesion[7, 2, 2] = lesion[8, 3, 3] = 1  # a false component
    lesion[5, 5, 8] = 0.5  # soft: not a detection
    lesion[0, 0, 0] = 1  # outside the brain
    score = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 100.0
    a_image = _nifti(tmp_path / "sub-a" / "image.nii.gz", np.ones(shape + (3,)))
    a_label = _nifti(tmp_path / "sub-a" / "label.nii.gz", label)
    a_mask = _nifti(tmp_path / "sub-a" / "brain_mask.nii.gz", brain)
    h_image = _nifti(tmp_path / "sub-h" / "image.nii.gz", np.repeat(brain[..., None], 3, axis=-1))
    h_label = _nifti(tmp_path / "sub-h" / "label.nii.gz", np.zeros(shape))
    batch_a = {"image": _mt(np.ones(shape), a_image), "label": _mt(label, [a_label]), "brain_mask": _mt(brain, a_mask)}
    out_a = {"z": torch.tensor(score)[None], "lesion": torch.tensor(lesion)[None], "stratum": "typical"}
    batch_h = {"label": _mt(np.zeros(shape), h_label), "brain_mask": _mt(brain, [])}
    out_h = {"z": torch.tensor(score)[None], "lesion": torch.zeros(1, *shape), "image": _mt(brain, h_image)}
    return [(batch_a, out_a), (batch_h, out_h)], brain


def _engine(steps, wrap=lambda items: items):
    """A real Ignite engine whose iteration ``i`` has ``wrap(batch)`` as batch and ``wrap(output)`` as output."""
    from ignite.engine import Engine

    data = [wrap([batch]) for batch, _ in steps]
    return Engine(lambda engine, batch: wrap([steps[engine.state.iteration - 1][1]])), data


def test_input_grid_collector_on_an_engine_records_each_volume_and_writes_the_summary(tmp_path, two_volumes):
    """Attached (twice: no duplicate handlers) to a real engine, the collector records every item once per run (the
    records are reset when a run starts) and writes ``summarise`` of them to its summary file when the run ends;
    every figure is the hand-computed one."""
    from ignite.engine import Events

    steps, brain = two_volumes
    summary_file = tmp_path / "out" / "evaluate.json"
    collector = InputGridCollector(preprocessing=None, summary_file=summary_file)
    assert collector.records == [] and collector.summary is None
    engine, data = _engine(steps)
    collector.attach(engine)
    collector.attach(engine)
    assert engine.has_event_handler(collector.write_summary, Events.EPOCH_COMPLETED)
    for _ in range(2):
        engine.run(data, max_epochs=1)
        assert [(r.name, r.stratum) for r in collector.records] == [("sub-a", "typical"), ("sub-h", "healthy")]
    a, h = collector.records
    assert a.score.shape == h.score.shape == (brain.sum(),)  # the mask file for sub-a, the image's voxels for sub-h
    assert a.label.sum() == 10 and a.pred.sum() == 5 and not h.pred.any()
    assert a.counts == {"lesions": 3, "detected": 1, "pred_components": 2, "false_positive_components": 1}
    # near_lesion: within 2 voxels (26-neighbourhood) of a lesion voxel, inside the brain
    near = np.zeros_like(brain)
    near[0:6, 0:6, 0:6] = near[5:10, 5:10, 5:10] = near[0:5, 5:10, 5:10] = True
    assert np.array_equal(a.near_lesion, near[brain]) and not h.near_lesion.any()
    summary = collector.summary
    assert summary_file.read_text() == json.dumps(summary, indent=2)
    assert summary["lesions"] == 3 and summary["lesion_recall"] == pytest.approx(1 / 3)
    assert summary["dice_fdr"] == pytest.approx(2 * 2 / (5 + 10)) and summary["fp_per_volume"] == 0.5
    assert summary["voxel_fdr"] == pytest.approx(3 / 5) and summary["voxel_fdr_margin"] == pytest.approx(2 / 4)
    # lesion-level FDP: 1/2 and 0 (no component); s.e. = std(ddof=1) / sqrt(2)
    assert summary["lesion_fdr"] == pytest.approx(0.25) and summary["lesion_fdr_se"] == pytest.approx(0.25)
    assert summary["healthy_volumes"] == 1 and summary["healthy_any_detection"] == 0.0
    assert math.isnan(summary["per_volume"][1]["dice_fdr"])  # nothing predicted, no lesion
    # stricter detection rule: 25 % of the lesion is not 30 %
    strict = InputGridCollector(preprocessing=None, min_overlap=0.3)
    assert strict.record(steps[0][1], steps[0][0]).counts["detected"] == 0
    # without a summary file: nothing is written at the end of a run
    quiet = InputGridCollector(preprocessing=None)
    engine, data = _engine(steps)
    quiet.attach(engine)
    assert not engine.has_event_handler(quiet.write_summary, Events.EPOCH_COMPLETED)
    engine.run(data, max_epochs=1)
    assert quiet.summary is None and len(quiet.records) == 2
    assert json.dumps(quiet.write_summary()) == json.dumps(summary) and quiet.summary is not None


def test_input_grid_collector_picks_items_with_its_transforms_or_a_single_dict(two_volumes):
    """``output_transform``/``batch_transform`` pick the items from the engine's output and batch; a single dict
    output is one item."""
    steps, _ = two_volumes
    picked = InputGridCollector(
        preprocessing=None, output_transform=lambda o: o["items"], batch_transform=lambda b: b["items"]
    )
    engine, data = _engine(steps, wrap=lambda items: {"items": items})
    picked.attach(engine)
    engine.run(data, max_epochs=1)
    single = InputGridCollector(preprocessing=None)
    engine, data = _engine(steps, wrap=lambda items: items[0])
    single.attach(engine)
    engine.run(data, max_epochs=1)
    for collector in (picked, single):
        assert [r.name for r in collector.records] == ["sub-a", "sub-h"]
        assert collector.records[0].counts["pred_components"] == 2


def test_summarise_of_a_healthy_volume_without_detection(two_volumes):
    """No lesion and no detection: the ratios without a denominator are NaN (Dice, coverage, recall, the s.e. of
    one volume) or 0 (the FDRs: nothing detected, nothing false)."""
    steps, _ = two_volumes
    record = InputGridCollector(preprocessing=None).record(steps[1][1], steps[1][0])
    result = summarise([record])
    for key in ("dice_fdr", "best_dice", "auroc", "auprc", "coverage", "lesion_recall", "lesion_fdr_se"):
        assert math.isnan(result[key]), key
    assert result["voxel_fdr"] == result["voxel_fdr_margin"] == result["lesion_fdr"] == 0.0
    assert result["healthy_any_detection"] == 0.0 and result["fp_per_volume"] == 0.0 and result["strata"] == {}
    assert math.isnan(result["per_volume"][0]["dice_fdr"])


def test_input_grid_collector_refuses_incomplete_outputs_and_label_files_of_another_grid(tmp_path, two_volumes):
    """An output without the lesion mask, a label of another grid or with several channels, a brain mask of another
    grid: refused with what and which file."""
    steps, brain = two_volumes
    batch, out = steps[0]
    collector = InputGridCollector(preprocessing=None)
    with pytest.raises(KeyError, match=r"missing \['lesion'\]"):
        collector.record({"z": out["z"]}, batch)
    small = _nifti(tmp_path / "small.nii.gz", np.zeros((8, 8, 8)))
    two = _nifti(tmp_path / "two.nii.gz", np.zeros(brain.shape + (2,)))
    for path in (small, two):
        with pytest.raises(ValueError, match=rf"^label {re.escape(path)} has shape"):
            collector.record(out, {**batch, "label": _mt(np.zeros(3), path)})
    with pytest.raises(ValueError, match=rf"^brain mask {re.escape(small)} has shape"):
        collector.record(out, {**batch, "brain_mask": _mt(np.zeros(3), small)})


@pytest.mark.parametrize(
    "file, name",
    [
        ("sub-x/image.nii.gz", "sub-x"),
        ("sub-x/flair.nii", "sub-x"),
        ("sub-x/t2.nii.gz", "sub-x"),
        ("sub-x/sub-x_T1w.nii.gz", "sub-x_T1w"),
    ],
)
def test_input_grid_collector_names_a_volume_by_its_subject_folder_or_file(tmp_path, two_volumes, file, name):
    """``.../<subject>/image|flair|t1|t2.nii[.gz]`` is named by the subject's folder, other files by their stem."""
    steps, _ = two_volumes
    batch, out = steps[0]
    image = MetaTensor(batch["image"], meta={"filename_or_obj": str(tmp_path / file)})
    assert InputGridCollector(preprocessing=None).record(out, {**batch, "image": image}).name == name


def test_input_grid_collector_inverts_through_the_preprocessing(tmp_path):
    """Maps of the preprocessed grid (brain crop, in-plane resize 6 -> 12, the 4 central of 8 brain slices) are put
    back on the input grid with nearest-neighbour interpolation: every analysed score is one of the map's values;
    the brain voxels outside the analysed slices get the no-detection score and are never detected."""
    from monai_qrvae.preprocessing import volume_transforms

    shape = (10, 10, 10)
    brain = np.zeros(shape, dtype=bool)
    brain[2:8, 2:8, 1:9] = True  # 6 x 6 x 8
    label = np.zeros(shape)
    label[4, 4, 2] = label[5, 5, 5] = 1  # slice 2 is not analysed, slice 5 is
    image = np.random.default_rng(0).uniform(50, 150, shape + (3,)) * brain[..., None]
    item = {
        "image": _nifti(tmp_path / "image.nii.gz", image),
        "brain_mask": _nifti(tmp_path / "brain_mask.nii.gz", brain),
        "label": _nifti(tmp_path / "label.nii.gz", label),
    }
    pre = volume_transforms(image_size=12, num_slices=4)
    batch = pre(item)
    assert tuple(batch["image"].shape) == (3, 12, 12, 4)
    # distinct random scores: an average of neighbours (the "area" interpolation of the resize) is none of them
    z = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 12, 12, 4)).astype(np.float32))
    lesion = torch.zeros(1, 12, 12, 4)
    lesion[..., 0] = 1  # the first analysed slice (input slice 3)
    rec = InputGridCollector(pre).record({"z": z, "lesion": lesion}, batch)
    assert rec.name == tmp_path.name and rec.stratum == ""  # lesions but no stratum given
    analysed = np.zeros(shape, dtype=bool)
    analysed[:, :, 3:7] = True
    assert np.array_equal(rec.analysed, analysed[brain])
    assert (rec.score[~rec.analysed] == NO_DETECTION_SCORE).all()
    assert set(rec.score[rec.analysed].tolist()) <= set(z.flatten().tolist())
    pred = np.zeros(shape, dtype=bool)
    pred[:, :, 3] = True
    assert np.array_equal(rec.pred, pred[brain])
    assert rec.counts == {"lesions": 2, "detected": 0, "pred_components": 1, "false_positive_components": 1}
    assert summarise([rec])["coverage"] == 0.5
