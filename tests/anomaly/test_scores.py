"""Score weights of the named scores and explicit weights, the Stouffer combination and the lesion direction."""

from __future__ import annotations

import pytest
import torch

from monai_qrvae.anomaly.scores import combine_z, score_weights, signed_z


def test_score_weights_of_the_named_scores_and_flair_beyond_three_channels():
    assert score_weights("flair_t2", 3).tolist() == [0.0, 1.0, 1.0]
    assert score_weights("all", 3).tolist() == [-1.0, 1.0, 1.0]
    # "flair" serves any prediction that has a FLAIR channel: weight 1 on channel 2 only
    assert score_weights("flair", 3).tolist() == [0.0, 0.0, 1.0]
    assert score_weights("flair", 5).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    for score, channels in (("flair", 2), ("flair_t2", 4), ("all", 1)):
        with pytest.raises(ValueError, match=r"combines the \(T1, T2, FLAIR\) z-maps"):
            score_weights(score, channels)


def test_explicit_score_weights_one_per_channel():
    w = score_weights((0.5, -2, 1), 3)
    assert w.dtype == torch.float32 and w.tolist() == [0.5, -2.0, 1.0]
    assert score_weights([3.0], 1).tolist() == [3.0]
    with pytest.raises(ValueError, match="got 3 score weights for a prediction of 2 channel"):
        score_weights((1.0, 1.0, 1.0), 2)
    assert score_weights((1.0, 0.0, 0.0), 3).tolist() == [1.0, 0.0, 0.0]  # unit norm is fine
    for bad in ((0.0, 0.0), (float("inf"), 1.0), (float("nan"), 0.0)):
        with pytest.raises(ValueError, match="must be finite and not all zero"):
            score_weights(bad, 2)


def test_combine_z_is_the_weighted_stouffer_sum():
    z = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]])  # (C=3, 2 voxels)
    out = combine_z(z, torch.tensor([-1.0, 1.0, 2.0]))
    assert out.shape == (1, 2)
    expected = torch.tensor([[-1.0 + 3.0 + 1.0, -2.0 - 1.0 + 8.0]]) / 6**0.5
    assert torch.allclose(out, expected)


def test_signed_z_negates_t1_only_and_leaves_other_channel_counts():
    z = torch.arange(24.0).reshape(3, 2, 4) - 10  # (T1, T2, FLAIR) over a 2 x 4 slice
    signed = signed_z(z)
    assert torch.equal(signed[0], -z[0]) and torch.equal(signed[1:], z[1:])
    one = torch.arange(6.0).reshape(1, 2, 3)  # one contrast (e.g. FLAIR only): as it is
    assert signed_z(one) is one
    four = torch.ones(4, 3, 3)
    assert signed_z(four) is four
