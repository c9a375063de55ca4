"""Whole-volume scoring on the input grid: lesion-wise counts, pooled figures, unanalysed voxels count as missed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_qrvae.evaluation import NO_DETECTION_SCORE, VolumeRecord, lesion_wise_counts, summarise
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
    with pytest.raises(ValueError, match="at least one"):
        summarise([])


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
