"""Shared helpers of the anomaly maps: quantile checks, the quantile-major layout, channel selection, masks."""

from __future__ import annotations

import pytest
import torch

from monai_qrvae.anomaly.utils import _select_channel, broadcast_mask, check_quantiles, split_quantiles


def test_check_quantiles_needs_every_pair_increasing():
    assert check_quantiles([0.1, 0.5, 0.9]) == (0.1, 0.5, 0.9)
    assert check_quantiles((0.5,)) == (0.5,)
    for bad in ((0.1, 0.5, 0.3), (0.1, 0.5, 0.5), (0.2, 0.1)):  # a later pair out of order is refused too
        with pytest.raises(ValueError, match="strictly increasing"):
            check_quantiles(bad)


def test_split_quantiles_one_quantile_and_bad_counts():
    pred = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)  # one spatial axis
    one = split_quantiles(pred, 1)
    assert one.shape == (2, 1, 3, 4) and torch.equal(one[:, 0], pred)
    three = split_quantiles(pred, 3)
    assert three.shape == (2, 3, 1, 4) and torch.equal(three[:, 2, 0], pred[:, 2])
    for q in (0, 2, -1):
        with pytest.raises(ValueError, match="multiple of the"):
            split_quantiles(pred, q)
    with pytest.raises(ValueError, match="batched"):
        split_quantiles(torch.ones(3, 4), 1)


def test_select_channel_range_and_one_spatial_axis():
    x = torch.arange(1 * 3 * 5.0).reshape(1, 3, 5)  # (B, C, L): one spatial axis is batched data too
    assert torch.equal(_select_channel(x, 2, "x"), x[:, 2:3])
    assert torch.equal(_select_channel(x, -3, "x"), x[:, 0:1])  # negative channels count from the end
    assert torch.equal(_select_channel(x, -1, "x"), x[:, 2:3])
    assert _select_channel(x, None, "x") is x
    for channel in (3, -4):
        with pytest.raises(ValueError, match=f"channel {channel} is out of range for x with 3 channels"):
            _select_channel(x, channel, "x")
    with pytest.raises(ValueError, match="must be batched"):
        _select_channel(torch.ones(3, 5), 0, "x")


def test_broadcast_mask_non_zero_is_inside():
    m = broadcast_mask(torch.tensor([[0.0, 2.0, -1.0]]), (2, 3), torch.device("cpu"))
    assert m.dtype == torch.bool and m.tolist() == [[False, True, True], [False, True, True]]
    b = torch.tensor([True, False])
    assert broadcast_mask(b, (3, 2), torch.device("cpu")).tolist() == [[True, False]] * 3
    with pytest.raises(ValueError, match=r"^mask of shape \(2, 3\) cannot be broadcast to the data shape \(3,\)"):
        broadcast_mask(torch.ones(2, 3), (3,), torch.device("cpu"))
