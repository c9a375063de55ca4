"""Tests of monai_qrvae.metrics: best Dice, Dice, masked AUROC/AUPRC, cumulative metrics, quantile coverage."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.stats import mannwhitneyu, norm

from monai_qrvae.metrics.average_precision import MaskedAveragePrecisionMetric, compute_masked_average_precision
from monai_qrvae.metrics.coverage import QuantileCoverageMetric, compute_quantile_coverage
from monai_qrvae.metrics.detection import compute_detection_metrics, compute_per_volume_metrics
from monai_qrvae.metrics.dice import BestDiceMetric, DiceScoreMetric, compute_best_dice, compute_dice_score
from monai_qrvae.metrics.rocauc import MaskedROCAUCMetric, compute_masked_roc_auc

# six voxels, hand-computed values in the tests below
SCORES = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.7, 0.2]).view(1, 1, 2, 3)
LABELS = torch.tensor([0, 0, 1, 1, 0, 0]).view(1, 1, 2, 3)
MASK = torch.tensor([1, 1, 1, 1, 0, 1]).view(1, 1, 2, 3)  # drops the 0.7 background voxel


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_case(seed: int, shape=(3, 1, 7, 6, 4)):
    g = _gen(seed)
    labels = torch.rand(shape, generator=g) < 0.2
    scores = torch.round((torch.rand(shape, generator=g) + 0.6 * labels) * 10) / 10  # many ties
    mask = torch.rand(shape, generator=g) > 0.25
    return scores, labels, mask


def _brute_force_best_dice(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        best = max(best, 2 * np.sum(pred & labels) / (pred.sum() + labels.sum()))
    return best


def _numpy_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over the distinct thresholds, highest first."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.sum(pred & labels)
        recall = tp / labels.sum()
        ap += (recall - prev_recall) * tp / pred.sum()
        prev_recall = recall
    return ap


# ---------------------------------------------------------------- hand-computed values


def test_hand_computed_six_voxels():
    # positives 0.35, 0.8; negatives 0.1, 0.4, 0.7, 0.2: 6 of 8 pairs ordered -> AUROC 0.75
    assert compute_masked_roc_auc(SCORES, LABELS) == pytest.approx(0.75)
    # ranking 0.8+ 0.7 0.4 0.35+: AP = 0.5 * 1 + 0.5 * 2/4
    assert compute_masked_average_precision(SCORES, LABELS) == pytest.approx(0.75)
    # Dice 2/3 at 0.8 (1 of 1) and at 0.35 (2 of 4): ties go to the higher threshold
    dice, threshold = compute_best_dice(SCORES, LABELS)
    assert dice == pytest.approx(2 / 3) and threshold == pytest.approx(0.8)
    # inside the mask: negatives 0.1, 0.4, 0.2 -> 5 of 6 pairs; AP = 0.5 + 0.5 * 2/3; best Dice 4/5 at 0.35
    assert compute_masked_roc_auc(SCORES, LABELS, MASK) == pytest.approx(5 / 6)
    assert compute_masked_average_precision(SCORES, LABELS, MASK) == pytest.approx(5 / 6)
    dice, threshold = compute_best_dice(SCORES, LABELS, MASK)
    assert dice == pytest.approx(0.8) and threshold == pytest.approx(0.35)
    # the threshold reproduces the Dice
    assert compute_dice_score(SCORES >= threshold, LABELS, MASK) == pytest.approx(0.8)
    # binary Dice: pred {0.4, 0.35, 0.8, 0.7} vs labels {0.35, 0.8}: 2*2 / (4 + 2); masked: 2*2 / (3 + 2)
    assert compute_dice_score(SCORES > 0.3, LABELS) == pytest.approx(2 / 3)
    assert compute_dice_score(SCORES > 0.3, LABELS, MASK) == pytest.approx(0.8)


def test_empty_conventions():
    empty = torch.zeros(1, 1, 2, 3)
    assert math.isnan(compute_dice_score(empty, empty))
    assert compute_dice_score(empty, empty, empty_score=1.0) == 1.0
    assert compute_dice_score(torch.ones(1, 1, 2, 3), empty) == 0.0
    dice, threshold = compute_best_dice(SCORES, empty)
    assert math.isnan(dice) and threshold == math.inf
    assert compute_best_dice(SCORES, empty, empty_score=1.0) == (1.0, math.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for one-class volumes
        assert math.isnan(compute_masked_roc_auc(SCORES, empty))
        assert math.isnan(compute_masked_average_precision(SCORES, torch.ones(1, 1, 2, 3)))
        assert math.isnan(compute_masked_roc_auc(SCORES, LABELS, mask=empty))


def test_errors():
    bad = SCORES.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compute_best_dice(bad, LABELS)
    no_nan_inside = torch.ones_like(MASK)
    no_nan_inside[0, 0, 0, 0] = 0
    # NaN outside the mask is ignored: negatives 0.4, 0.7, 0.2 -> 4 of 6 pairs ordered
    assert compute_masked_roc_auc(bad, LABELS, no_nan_inside) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        compute_masked_roc_auc(SCORES, torch.zeros(1, 1, 3, 2))
    with pytest.raises(ValueError, match="mask"):
        compute_best_dice(SCORES, LABELS, torch.ones(2, 1, 2, 3))


# ---------------------------------------------------------------- exactness against independent computations


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_dice_equals_brute_force_sweep(seed):
    scores, labels, mask = _random_case(seed)
    dice, threshold = compute_best_dice(scores, labels, mask)
    expected = _brute_force_best_dice(scores[mask].numpy(), labels[mask].numpy())
    assert dice == pytest.approx(expected, abs=1e-12)
    assert compute_dice_score(scores >= threshold, labels, mask) == pytest.approx(dice, abs=1e-12)


def test_best_dice_continuous_scores_match_sweep():
    g = _gen(3)
    labels = torch.rand(2, 1, 20, 20, generator=g) < 0.1
    scores = torch.randn(2, 1, 20, 20, generator=g) + 1.5 * labels
    dice, threshold = compute_best_dice(scores, labels)
    assert dice == pytest.approx(_brute_force_best_dice(scores.numpy(), labels.numpy()), abs=1e-12)
    assert compute_dice_score(scores >= threshold, labels) == pytest.approx(dice, abs=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_auroc_equals_mann_whitney(seed):
    scores, labels, mask = _random_case(seed)
    s, y = scores[mask].numpy(), labels[mask].numpy()
    u = mannwhitneyu(s[y], s[~y]).statistic  # ties count one half
    assert compute_masked_roc_auc(scores, labels, mask) == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)


@pytest.mark.parametrize("seed", [6, 7])
def test_average_precision_equals_numpy_definition(seed):
    scores, labels, mask = _random_case(seed)
    expected = _numpy_average_precision(scores[mask].numpy(), labels[mask].numpy())
    assert compute_masked_average_precision(scores, labels, mask) == pytest.approx(expected, abs=1e-12)


def test_inputs_numpy_metatensor_and_broadcast_mask():
    scores, labels, mask = _random_case(8, shape=(2, 1, 6, 6))
    brain = mask[:, :, :, :1]  # (B, 1, H, 1) broadcasts along the last axis
    expected = compute_masked_roc_auc(scores, labels, brain.expand_as(scores))
    assert compute_masked_roc_auc(scores.numpy(), labels.numpy().astype(np.uint8), brain.numpy()) == expected
    assert compute_masked_roc_auc(MetaTensor(scores), MetaTensor(labels.float()), MetaTensor(brain.float())) == expected


# ---------------------------------------------------------------- per volume and cumulative metrics


def test_detection_and_per_volume_metrics():
    scores, labels, mask = _random_case(9)
    pooled = compute_detection_metrics(scores, labels, mask, threshold=0.8)
    assert (pooled["best_dice"], pooled["best_threshold"]) == compute_best_dice(scores, labels, mask)
    assert pooled["auroc"] == compute_masked_roc_auc(scores, labels, mask)
    assert pooled["auprc"] == compute_masked_average_precision(scores, labels, mask)
    assert pooled["dice"] == compute_dice_score(scores >= 0.8, labels, mask)
    assert pooled["lesion_voxels"] == float((labels & mask).sum())
    per = compute_per_volume_metrics(scores, labels, mask, threshold=0.8)
    assert len(per) == 3
    for i, row in enumerate(per):
        assert row["auroc"] == compute_masked_roc_auc(scores[i], labels[i], mask[i])
        assert row["best_dice"] == compute_best_dice(scores[i], labels[i], mask[i])[0]
        assert row["dice"] == compute_dice_score(scores[i] >= 0.8, labels[i], mask[i])


def test_cumulative_metrics_two_iterations_equal_pooled():
    scores, labels, mask = _random_case(10, shape=(4, 1, 8, 8))
    cases = [
        (BestDiceMetric(), lambda s, y, m: compute_best_dice(s, y, m)[0], scores),
        (MaskedROCAUCMetric(), compute_masked_roc_auc, scores),
        (MaskedAveragePrecisionMetric(), compute_masked_average_precision, scores),
        (DiceScoreMetric(), compute_dice_score, scores > 0.7),
    ]
    for metric, fn, pred in cases:
        metric(y_pred=pred[:2], y=labels[:2], mask=mask[:2])  # a batch-first iteration
        metric(list(pred[2:]), list(labels[2:]), mask=list(mask[2:]))  # a list of channel-first items
        assert metric.aggregate() == pytest.approx(fn(pred, labels, mask), abs=1e-12), type(metric).__name__
        per_volume = metric.get_buffer()
        assert per_volume.shape == (4, 1)
        if not isinstance(metric, BestDiceMetric):
            expected = [fn(pred[i], labels[i], mask[i]) for i in range(4)]
            np.testing.assert_allclose(per_volume[:, 0].numpy(), expected, atol=1e-12)
        metric.reset()
        assert metric.get_buffer() is None


def test_best_dice_metric_threshold_and_per_volume_dice():
    scores, labels, mask = _random_case(11)
    metric = BestDiceMetric()
    metric(scores[:1], labels[:1], mask=mask[:1])
    metric(scores[1:], labels[1:], mask=mask[1:])
    dice, threshold = metric.aggregate(return_threshold=True)
    assert (dice, threshold) == compute_best_dice(scores, labels, mask)
    # per volume: each volume's Dice at the pooled best threshold
    expected = [compute_dice_score(scores[i] >= threshold, labels[i], mask[i]) for i in range(3)]
    np.testing.assert_allclose(metric.get_buffer()[:, 0].numpy(), expected, atol=1e-12)


def test_voxel_metrics_pool_volumes_of_different_shapes():
    a_scores, a_labels, a_mask = _random_case(12, shape=(1, 1, 6, 5, 4))
    b_scores, b_labels, b_mask = _random_case(13, shape=(1, 1, 9, 7, 3))
    metric = MaskedROCAUCMetric()
    metric(a_scores, a_labels, mask=a_mask)
    metric(MetaTensor(b_scores), b_labels, mask=b_mask)
    s = torch.cat([a_scores[a_mask], b_scores[b_mask]])
    y = torch.cat([a_labels[a_mask], b_labels[b_mask]])
    assert metric.aggregate() == pytest.approx(compute_masked_roc_auc(s, y), abs=1e-12)


# ---------------------------------------------------------------- quantile coverage


def test_quantile_coverage_of_true_gaussian_quantiles():
    quantiles = (0.05, 0.15, 0.5, 0.85, 0.95)
    g = _gen(14)
    mu = torch.randn(2, 2, 64, 64, generator=g)
    sigma = 0.1 + torch.rand(2, 2, 64, 64, generator=g)
    target = mu + sigma * torch.randn(2, 2, 64, 64, generator=g)
    pred = torch.cat([mu + sigma * float(norm.ppf(t)) for t in quantiles], dim=1)
    mask = torch.ones(2, 1, 64, 64)
    mask[:, :, :8] = 0
    target_outside = target.clone()
    target_outside[:, :, :8] = 1e6  # would pull coverage down if counted
    metric = QuantileCoverageMetric(quantiles)
    metric(pred[:1], target_outside[:1], mask=mask[:1])
    metric(list(pred[1:]), list(target_outside[1:]), mask=list(mask[1:]))
    coverage = metric.aggregate()
    assert coverage.shape == (5, 2)
    # 2 * 56 * 64 = 7168 voxels per channel: binomial standard error <= 0.006
    np.testing.assert_allclose(coverage.numpy(), np.repeat(np.array(quantiles)[:, None], 2, axis=1), atol=0.02)
    torch.testing.assert_close(coverage, compute_quantile_coverage(pred, target_outside, quantiles, mask))
    per_volume = metric.get_buffer()
    assert per_volume.shape == (2, 5, 2)
    torch.testing.assert_close(per_volume, compute_quantile_coverage(pred, target, quantiles, mask, per_volume=True))


def test_quantile_coverage_exact_small_case():
    pred = torch.tensor([[[[0.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0]]]])  # q0.15 = 0, q0.5 = 1; C = 1
    target = torch.tensor([[[[-1.0, 0.5, 0.5, 2.0]]]])
    coverage = compute_quantile_coverage(pred, target, (0.15, 0.5))
    torch.testing.assert_close(coverage, torch.tensor([[0.25], [0.75]], dtype=torch.float64))
    with pytest.raises(ValueError, match="y must be"):
        compute_quantile_coverage(pred, torch.zeros(1, 2, 1, 4), (0.15, 0.5))


def test_quantile_coverage_pools_items_of_different_sizes_and_counts_strictly_below():
    # Q = 2 levels (q0.15 = 0, q0.5 = 1), C = 1, two items: the first with 4 voxels, the second with 2 in its mask
    pred = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(2, 2, 1, 4).clone()
    target = torch.tensor([[[[-1.0, 0.0, 0.5, 1.0]]], [[[-1.0, 2.0, -5.0, -5.0]]]])  # a tie is not below
    mask = torch.tensor([[[[1, 1, 1, 1]]], [[[1, 1, 0, 0]]]])
    # below q0.15: 1 + 1 of 4 + 2 voxels; below q0.5: 3 + 1
    expected = torch.tensor([[2 / 6], [4 / 6]], dtype=torch.float64)
    torch.testing.assert_close(compute_quantile_coverage(pred, target, (0.15, 0.5), mask), expected)
    per_volume = torch.tensor([[[0.25], [0.75]], [[0.5], [0.5]]], dtype=torch.float64)
    torch.testing.assert_close(compute_quantile_coverage(pred, target, (0.15, 0.5), mask, per_volume=True), per_volume)
    metric = QuantileCoverageMetric()
    assert metric.get_buffer() is None
    with pytest.raises(ValueError, match="no data"):
        metric.aggregate()
    metric(pred[:1], target[:1])  # no mask: every voxel of the first item
    metric(pred[1:], target[1:], mask=mask[1:])
    torch.testing.assert_close(metric.aggregate(), expected)
    torch.testing.assert_close(metric.get_buffer(), per_volume)


def test_dice_metric_per_item_conventions_on_flat_batches():
    # (B, N) batches are batch-first too: one item per row. Item 0: nothing predicted, no lesion (empty_score);
    # item 1: one false positive (Dice 0, not empty); item 2: 2 |{0}| / (2 + 1)
    pred = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0]])
    labels = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    metric = DiceScoreMetric()
    metric(pred, labels)
    per_item = metric.get_buffer()[:, 0]
    assert math.isnan(per_item[0]) and per_item[1] == 0.0 and per_item[2] == pytest.approx(2 / 3)
    assert metric.aggregate() == pytest.approx(2 * 1 / (3 + 1))
    counted_perfect = DiceScoreMetric(empty_score=1.0)
    counted_perfect(pred, labels)
    assert counted_perfect.get_buffer()[:, 0].tolist() == pytest.approx([1.0, 0.0, 2 / 3])
    best = BestDiceMetric()
    best(torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1]]), torch.tensor([[1, 0, 0], [1, 0, 0]]))
    assert best.aggregate(return_threshold=True) == (1.0, pytest.approx(0.8))
    for metric in (DiceScoreMetric(), BestDiceMetric()):
        with pytest.raises(ValueError, match="batch-first"):
            metric(torch.ones(3), torch.ones(3))


def test_best_dice_metric_empty_score_reaches_the_pooled_and_per_item_values():
    metric = BestDiceMetric(empty_score=0.0)
    metric(torch.tensor([[0.9, 0.1, 0.2]]), torch.tensor([[1, 0, 0]]))  # the lesion, found at 0.9
    metric(torch.tensor([[0.5, 0.3, 0.4]]), torch.tensor([[0, 0, 0]]))  # no lesion, nothing above 0.9
    # pooled: the best cut is 0.9 (Dice 1); per item at 0.9: 1.0, and empty_score for the empty item
    assert metric.aggregate(return_threshold=True) == (1.0, pytest.approx(0.9))
    buffer = metric.get_buffer()
    assert buffer.dtype == torch.float64 and buffer[:, 0].tolist() == [1.0, 0.0]
    healthy = BestDiceMetric(empty_score=0.0)
    healthy(torch.tensor([[0.5, 0.3, 0.4]]), torch.tensor([[0, 0, 0]]))
    assert healthy.aggregate() == 0.0 and healthy.get_buffer()[:, 0].tolist() == [0.0]


def test_list_items_without_labels_or_masks_and_with_channel_less_masks():
    preds = [torch.tensor([[[0.9, 0.1, 0.2], [0.3, 0.8, 0.0]]])]  # one (1, 2, 3) item
    labels = [torch.tensor([[[1, 0, 0], [0, 1, 0]]])]
    for metric in (BestDiceMetric(), DiceScoreMetric()):
        with pytest.raises(ValueError, match="lesion labels"):
            metric(preds)
    metric = BestDiceMetric()
    metric(preds, labels)  # no mask: every voxel
    assert metric.aggregate(return_threshold=True) == (1.0, pytest.approx(0.8))
    masked = BestDiceMetric()
    masked(preds, labels, mask=[torch.tensor([[1, 1, 1], [1, 0, 1]])])  # (H, W) mask of a (1, H, W) item
    assert masked.aggregate(return_threshold=True) == (1.0, pytest.approx(0.9))
    nan = torch.tensor([[[float("nan"), 0.1, 0.2], [0.3, 0.8, 0.0]]])
    with pytest.raises(ValueError, match="NaN"):
        BestDiceMetric()(nan[None], labels[0][None])
    with pytest.raises(ValueError, match="labels"):
        DiceScoreMetric()(preds[0][None] > 0.5, torch.ones(1, 1, 3, 2))
