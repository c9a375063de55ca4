"""Median filter and small-component removal: windows, sizes, dtypes and the component rules on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_qrvae.anomaly.filters import median_filter, remove_small_components


def test_median_filter_one_spatial_axis_and_per_axis_sizes():
    x = torch.tensor([[[0.0, 0.0, 5.0, 0.0, 1.0, 1.0, 1.0, 0.0]]])  # (B, C, L)
    # window 3, edges replicated: the spike goes, the plateau of three stays, its end is kept
    assert median_filter(x, 3).tolist() == [[[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]]]
    vol = torch.zeros(1, 1, 5, 5, 3)
    vol[0, 0, 1:4, 1:4, 1] = 1.0  # a 3 x 3 square in the middle slice only
    in_plane = median_filter(vol, (3, 3, 1))  # each slice alone: the square shrinks to its centre
    expected = torch.zeros_like(vol)
    expected[0, 0, 1:4, 1:4, 1] = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    assert torch.equal(in_plane, expected)
    assert median_filter(vol, 3).sum() == 0  # across slices: one slice in three, gone


def test_median_filter_size_one_returns_the_input_and_bad_sizes_are_refused():
    x = torch.rand(1, 1, 4, 4)
    assert median_filter(x, 1) is x and median_filter(x, (1, 1)) is x
    for size in (2, 0, -1, 2.5, (3, 3, 3), (3, 2)):
        with pytest.raises(ValueError, match="size must be an odd integer"):
            median_filter(x, size)
    with pytest.raises(ValueError, match="1-3 spatial axes"):
        median_filter(torch.ones(3, 4), 3)


def test_median_filter_of_a_boolean_mask_is_boolean():
    mask = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    mask[0, 0, :, 4:] = True  # a half plane
    mask[0, 0, 3, 0] = True  # one stray voxel
    out = median_filter(mask, 3)
    expected = torch.zeros_like(mask)
    expected[0, 0, :, 4:] = True
    assert out.dtype == torch.bool and torch.equal(out, expected)


def test_remove_small_components_defaults_one_axis_and_zero_min_size():
    diag = np.zeros((1, 1, 3, 3), np.uint8)
    diag[0, 0, 0, 0] = diag[0, 0, 1, 1] = 1
    assert remove_small_components(diag, 2).sum() == 0  # default connectivity 1: two single voxels
    line = np.array([[[1, 1, 0, 1, 0, 2, 2, 2]]], np.int16)  # (B, C, L) with one spatial axis
    assert remove_small_components(line, 2).tolist() == [[[1, 1, 0, 0, 0, 2, 2, 2]]]
    assert remove_small_components(line, 0).tolist() == line.tolist()  # min_size 0 keeps everything
    with pytest.raises(ValueError, match="min_size must be >= 0"):
        remove_small_components(line, -1)
