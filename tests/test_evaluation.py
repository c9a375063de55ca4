"""Whole-volume scoring on the input grid: lesion-wise counts, pooled figures, unanalysed voxels count as missed."""

from __future__ import annotations

import math

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
