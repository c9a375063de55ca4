"""The score read from the predicted quantile function (anomaly.quantile_function_score)."""

from __future__ import annotations

import os

import pytest
import torch
from scipy.stats import expon, norm

from monai_qrvae.anomaly import quantile_function_score, quantiles_to_mu_sigma, z_score
from monai_qrvae.networks import QRVAE

TAILS = (0.025, 0.15, 0.5, 0.85, 0.975)


def _pred(values_per_quantile, shape=(1, 1, 2, 3)):
    """A quantile-major prediction (B, Q*C, H, W) with every voxel of quantile k equal to values_per_quantile[k]."""
    return torch.cat([torch.full(shape, float(v)) for v in values_per_quantile], dim=1)


def test_two_quantiles_give_the_gaussian_z_score():
    gen = torch.Generator().manual_seed(0)
    q = (0.15, 0.5)
    median = torch.randn(2, 3, 4, 4, generator=gen)
    pred = torch.cat([median - torch.rand(2, 3, 4, 4, generator=gen) - 0.01, median], dim=1)
    x = 3 * torch.randn(2, 3, 4, 4, generator=gen)
    mu, sigma = quantiles_to_mu_sigma(pred, q)
    assert torch.allclose(quantile_function_score(x, pred, q), z_score(x, mu, sigma), atol=1e-5)


def test_gaussian_quantiles_give_the_z_score_everywhere():
    mu, s = 0.4, 0.1
    pred = _pred([mu + s * norm.ppf(t) for t in TAILS])
    x = torch.tensor([-1.0, 0.2, 0.35, 0.4, 0.55, 2.0]).view(1, 1, 2, 3)
    assert torch.allclose(quantile_function_score(x, pred, TAILS), (x - mu) / s, atol=1e-4)


def test_skewed_quantiles_are_followed_not_extrapolated():
    # exponential distribution: at each predicted quantile the score is exactly Phi^-1(tau)
    qs = [float(expon.ppf(t)) for t in TAILS]
    pred = _pred(qs, shape=(1, 1, 1, 5))
    x = torch.tensor(qs).view(1, 1, 1, 5)
    score = quantile_function_score(x, pred, TAILS)
    assert torch.allclose(score.flatten(), torch.tensor(norm.ppf(TAILS), dtype=torch.float32), atol=1e-5)
    # between q_0.85 and q_0.975 it interpolates; beyond q_0.975 it continues with the last segment's slope
    mid = torch.tensor([(qs[3] + qs[4]) / 2]).view(1, 1, 1, 1)
    p = _pred(qs, shape=(1, 1, 1, 1))
    assert float(quantile_function_score(mid, p, TAILS)) == pytest.approx((norm.ppf(0.85) + norm.ppf(0.975)) / 2)
    slope = (norm.ppf(0.975) - norm.ppf(0.85)) / (qs[4] - qs[3])
    far = torch.tensor([qs[4] + 1.0]).view(1, 1, 1, 1)
    assert float(quantile_function_score(far, p, TAILS)) == pytest.approx(norm.ppf(0.975) + slope, rel=1e-5)
    # the Gaussian z from the same quantiles puts q_0.975 of this right-skewed law much further out
    mu, sigma = quantiles_to_mu_sigma(p, TAILS)
    assert float(z_score(torch.tensor(qs[4]).view(1, 1, 1, 1), mu, sigma)) > norm.ppf(0.975) + 0.3


def test_degenerate_and_crossing_predictions_stay_finite():
    pred = _pred([0.5, 0.5, 0.5, 0.5, 0.5])  # all quantiles equal
    x = torch.full((1, 1, 2, 3), 0.6)
    score = quantile_function_score(x, pred, TAILS, sigma_floor=1e-3)
    assert torch.isfinite(score).all()
    # the last segment starts at q_0.85 = 0.5 with the floored spacing: 1 normal score per sigma_floor
    assert float(score.max()) == pytest.approx(norm.ppf(0.85) + 0.1 / 1e-3, rel=1e-5)
    crossing = _pred([0.3, 0.1, 0.5, 0.6, 0.7])  # sorted before use
    assert torch.allclose(
        quantile_function_score(x, crossing, TAILS), quantile_function_score(x, _pred([0.1, 0.3, 0.5, 0.6, 0.7]), TAILS)
    )
    # x = 0.2 lies between the crossing pair: sorted, it is on the segment q_0.025 = 0.1 .. q_0.15 = 0.3 (unsorted,
    # the segment 0.3 .. 0.1 would be read backwards)
    x = torch.full((1, 1, 2, 3), 0.2)
    n1, n2 = norm.ppf(0.025), norm.ppf(0.15)
    score = quantile_function_score(x, crossing, TAILS)
    assert (
        float(score.max()) == pytest.approx(float(score.min())) == pytest.approx(n1 + 0.1 * (n2 - n1) / 0.2, rel=1e-5)
    )


def test_one_channel_of_a_multichannel_prediction():
    gen = torch.Generator().manual_seed(1)
    pred = torch.sort(torch.randn(1, 5, 3, 4, 4, generator=gen), dim=1).values.reshape(1, 15, 4, 4)
    x = torch.randn(1, 3, 4, 4, generator=gen)
    full = quantile_function_score(x, pred, TAILS)
    assert full.shape == (1, 3, 4, 4)
    assert torch.equal(quantile_function_score(x, pred, TAILS, channel=2), full[:, 2:3])
    assert torch.equal(quantile_function_score(x[:, 2:3], pred, TAILS, channel=2), full[:, 2:3])
    with pytest.raises(ValueError, match="does not match"):
        quantile_function_score(x[:, :2], pred, TAILS)
    with pytest.raises(ValueError, match="at least two quantiles"):
        quantile_function_score(x, pred[:, :3], (0.5,))


def test_on_a_five_quantile_qrvae():
    torch.manual_seed(0)
    net = QRVAE(in_shape=(3, 16, 16), quantiles=TAILS, channels=(4, 8), strides=(2, 2), latent_size=8).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        pred = net(x)[0]
    score = quantile_function_score(x, pred, TAILS, channel=2)
    assert score.shape == (2, 1, 16, 16) and torch.isfinite(score).all()
    groups = pred.view(2, 5, 3, 16, 16)[:, :, 2:3]
    # the score is monotone in x: a voxel above its predicted 0.975 quantile scores above Phi^-1(0.975)
    above = x[:, 2:3] > groups[:, 4]
    assert bool((score[above] > norm.ppf(0.975) - 1e-5).all()) and bool((score[~above] <= norm.ppf(0.975) + 1e-5).all())


def test_anomaly_map_net_quantile_score_matches_the_function_and_scripts():
    from monai_qrvae.networks import AnomalyMapNet

    torch.manual_seed(0)
    qr = QRVAE(in_shape=(3, 16, 16), quantiles=TAILS, channels=(4, 8), strides=(2, 2), latent_size=8).eval()
    x = torch.rand(2, 3, 16, 16)
    plain = AnomalyMapNet(qr).eval()
    wrapper = AnomalyMapNet(qr, quantile_score=True).eval()
    assert wrapper.state_dict().keys() == plain.state_dict().keys()  # no new weights: old files still load
    with torch.no_grad():
        out = wrapper(x)
        expected = quantile_function_score(x, qr(x)[0], TAILS)
        gaussian = plain(x)
    torch.testing.assert_close(out[:, 6:], expected)
    torch.testing.assert_close(out[:, :6], gaussian[:, :6])  # mu and sigma unchanged
    assert not torch.allclose(out[:, 6:], gaussian[:, 6:])
    if "MUTANT_UNDER_TEST" in os.environ:  # `make mutation`: TorchScript cannot compile mutmut's trampolines
        return
    scripted = torch.jit.script(wrapper)
    torch.testing.assert_close(scripted(x), out)


def test_channel_is_selected_from_x_with_one_row():
    """``channel`` picks that channel of a multi-channel ``x`` also when a spatial axis has size 1."""
    gen = torch.Generator().manual_seed(2)
    pred = torch.sort(torch.randn(1, 5, 3, 1, 4, generator=gen), dim=1).values.reshape(1, 15, 1, 4)
    x = torch.randn(1, 3, 1, 4, generator=gen)
    full = quantile_function_score(x, pred, TAILS)
    assert torch.equal(quantile_function_score(x, pred, TAILS, channel=1), full[:, 1:2])


def test_a_bad_channel_names_the_input_it_is_out_of_range_for():
    pred = torch.zeros(1, 5 * 4, 2, 2)  # five quantiles of four channels
    with pytest.raises(ValueError, match="channel 4 is out of range for pred with 4 channels"):
        quantile_function_score(torch.zeros(1, 4, 2, 2), pred, TAILS, channel=4)
    with pytest.raises(ValueError, match="channel 3 is out of range for x with 2 channels"):
        quantile_function_score(torch.zeros(1, 2, 2, 2), pred, TAILS, channel=3)
