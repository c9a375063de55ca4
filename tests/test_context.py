"""Through-plane context channels (2.5D neighbours, slice position) and networks that reconstruct part of the input."""

import pytest
import torch

from monai_qrvae.context import (
    AdjacentSlices,
    AdjacentSlicesd,
    SlicePosition,
    SlicePositiond,
    context_channels,
    context_transform,
)
from monai_qrvae.engines import VAEPrepareBatch
from monai_qrvae.networks import QRVAE, AnomalyMapNet, GaussianVAE


def _stack(c=2, depth=4):
    # value = 10 * channel + slice index, so every slice is recognisable
    return torch.arange(depth).float().reshape(1, 1, 1, depth).expand(c, 3, 3, depth) + 10 * torch.arange(c).reshape(
        c, 1, 1, 1
    )


def test_adjacent_slices_values_and_replicated_ends():
    out = AdjacentSlices(1)(_stack())
    assert out.shape == (6, 3, 3, 4)
    # blocks: [slice n (2 ch), n-1 (2 ch), n+1 (2 ch)]
    assert out[0, 0, 0].tolist() == [0, 1, 2, 3]
    assert out[1, 0, 0].tolist() == [10, 11, 12, 13]
    assert out[2, 0, 0].tolist() == [0, 0, 1, 2]  # below, the first slice replicated
    assert out[4, 0, 0].tolist() == [1, 2, 3, 3]  # above, the last slice replicated
    assert AdjacentSlices(2)(_stack()).shape == (10, 3, 3, 4)


def test_slice_position_channel():
    out = SlicePosition()(_stack(depth=5))
    assert out.shape == (3, 3, 3, 5)
    assert torch.allclose(out[2, 1, 1], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.equal(out[:2], _stack(depth=5))
    assert SlicePosition()(_stack(depth=1))[2].unique().tolist() == [0.5]


def test_dictionary_forms_and_helpers():
    d = AdjacentSlicesd("image")({"image": _stack(), "brain_mask": torch.ones(1, 3, 3, 4)})
    assert d["image"].shape == (6, 3, 3, 4) and d["brain_mask"].shape == (1, 3, 3, 4)
    assert SlicePositiond("image")({"image": _stack()})["image"].shape == (3, 3, 3, 4)
    assert context_channels("none", 3) == 3
    assert context_channels("neighbours", 3) == 9
    assert context_channels("position", 3) == 4
    assert context_transform("none") is None
    with pytest.raises(ValueError, match="context must be one of"):
        context_channels("2.5d", 3)
    with pytest.raises(ValueError, match=r"\(C, H, W, N\)"):
        AdjacentSlices()(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="positive int"):
        AdjacentSlices(0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: QRVAE(
            in_shape=(9, 16, 16),
            channels=(4, 8),
            strides=(2, 2),
            latent_size=4,
            quantiles=(0.15, 0.5),
            target_channels=3,
        ),
        lambda: GaussianVAE(in_shape=(9, 16, 16), channels=(4, 8), strides=(2, 2), latent_size=4, target_channels=3),
    ],
)
def test_networks_predict_only_the_target_channels(make):
    net = make().eval()
    x = torch.randn(2, 9, 16, 16)
    out = net(x)[0]
    assert out.shape == (2, 6, 16, 16)  # 2 quantiles x 3 contrasts, or mean + logvar of 3 contrasts
    maps = AnomalyMapNet(net).eval()(x)
    assert maps.shape == (2, 9, 16, 16)  # [mu, sigma, z] of the 3 target contrasts
    mu, sigma, z = maps[:, :3], maps[:, 3:6], maps[:, 6:]
    assert torch.allclose(z, (x[:, :3] - mu) / sigma, atol=1e-5)
    with pytest.raises(ValueError, match="target_channels"):
        QRVAE(in_shape=(3, 16, 16), channels=(4, 8), strides=(2, 2), target_channels=4)


def test_prepare_batch_targets_the_leading_channels():
    image = torch.randn(2, 9, 4, 4)
    x, (target, mask) = VAEPrepareBatch(target_channels=3)({"image": image, "brain_mask": torch.ones(2, 1, 4, 4)})
    assert x.shape == (2, 9, 4, 4) and torch.equal(target, image[:, :3]) and mask.shape == (2, 1, 4, 4)
