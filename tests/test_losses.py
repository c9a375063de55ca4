"""Tests for monai_qrvae.losses: values by hand, gradients, quantile recovery, masks, KL, Gaussian NLL, errors."""

from __future__ import annotations

import math

import pytest
import torch

from monai_qrvae.anomaly import PPF_085, quantiles_to_mu_sigma
from monai_qrvae.losses import GaussianVAELoss, QRVAELoss, QuantileLoss, kl_divergence, pinball_loss

QUANTILES = (0.15, 0.5)


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample, one channel, two pixels, quantiles (0.15, 0.5), and the elementwise loss worked out by hand.

    target = [1, -2]; q_0.15 = [0, 0] -> u = [1, -2] -> [0.15 * 1, 0.85 * 2] = [0.15, 1.7];
    q_0.5 = [2, -1] -> u = [-1, -1] -> [0.5, 0.5].
    """
    pred = torch.tensor([[[[0.0, 0.0]], [[2.0, -1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[1.0, -2.0]]]])  # (1, 1, 1, 2)
    expected = torch.tensor([[[[0.15, 1.7]], [[0.5, 0.5]]]])
    return pred, target, expected


def test_pinball_loss_hand_computed():
    pred, target, expected = _hand_case()
    out = pinball_loss(pred, target, QUANTILES)
    assert out.shape == pred.shape
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "reduction, mask, expected",
    [
        ("mean", None, (0.15 + 1.7) / 2 + (0.5 + 0.5) / 2),
        ("sum", None, 0.15 + 1.7 + 0.5 + 0.5),
        ("mean", [1.0, 0.0], 0.15 + 0.5),
        ("sum", [1.0, 0.0], 0.15 + 0.5),
        ("mean", [0.0, 1.0], 1.7 + 0.5),
    ],
)
def test_quantile_loss_reductions(reduction, mask, expected):
    pred, target, _ = _hand_case()
    m = None if mask is None else torch.tensor(mask).view(1, 1, 1, 2)
    out = QuantileLoss(QUANTILES, reduction=reduction)(pred, target, m)
    assert out.ndim == 0
    assert out.item() == pytest.approx(expected, abs=1e-6)


def test_quantile_loss_none_reduction_zeroes_background():
    pred, target, expected = _hand_case()
    out = QuantileLoss(QUANTILES, reduction="none")(pred, target)
    torch.testing.assert_close(out, expected)
    out = QuantileLoss(QUANTILES, reduction="none")(pred, target, torch.tensor([True, False]).view(1, 1, 1, 2))
    torch.testing.assert_close(out, torch.tensor([[[[0.15, 0.0]], [[0.5, 0.0]]]]))


@pytest.mark.parametrize("tau", [0.15, 0.5, 0.9])
def test_pinball_gradient_sign(tau):
    q = torch.zeros(1, 1, 2, requires_grad=True)
    target = torch.tensor([[[1.0, -1.0]]])  # u = +1 on the left, u = -1 on the right
    pinball_loss(q, target, (tau,)).sum().backward()
    torch.testing.assert_close(q.grad, torch.tensor([[[-tau, 1.0 - tau]]]))


def test_quantile_loss_recovers_gaussian_quantiles_and_sigma():
    torch.manual_seed(0)
    n, mean, std = 20000, 2.0, 3.0
    x = mean + std * torch.randn(n, 1, 1)
    param = torch.zeros(1, 2, 1, requires_grad=True)  # one free value per quantile
    loss_fn = QuantileLoss(QUANTILES)
    opt = torch.optim.Adam([param], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=200, gamma=0.1)
    for _ in range(600):
        opt.zero_grad()
        loss_fn(param.expand(n, 2, 1), x).backward()
        opt.step()
        sched.step()
    fitted = param.detach().flatten()
    empirical = torch.quantile(x.flatten(), torch.tensor(QUANTILES))
    torch.testing.assert_close(fitted, empirical, atol=5e-3, rtol=0)  # the optimum is the sample quantile
    true = torch.tensor([mean - std * PPF_085, mean])
    torch.testing.assert_close(fitted, true, atol=0.1, rtol=0)
    mu, sigma = quantiles_to_mu_sigma(param.detach(), QUANTILES)
    assert mu.item() == pytest.approx(mean, abs=0.1)
    assert sigma.item() == pytest.approx(std, rel=0.02)


def _masked_batch(num_q: int = 2, channels: int = 3, mask_channels: int = 1):
    torch.manual_seed(1)
    pred = torch.randn(2, num_q * channels, 6, 5)
    target = torch.randn(2, channels, 6, 5)
    mask = torch.rand(2, mask_channels, 6, 5) > 0.5
    return pred, target, mask


def _perturb_outside(x: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    outside = ~mask.expand(x.shape[0], x.shape[1] // groups, *x.shape[2:]).repeat(1, groups, 1, 1)
    return torch.where(outside, x + 100.0 * torch.randn_like(x), x)


@pytest.mark.parametrize("mask_channels", [1, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_losses_ignore_background(reduction, mask_channels):
    pred, target, mask = _masked_batch(mask_channels=mask_channels)
    mu, logvar = torch.randn(2, 4), torch.randn(2, 4)
    pred2, target2 = _perturb_outside(pred, mask, 2), _perturb_outside(target, mask, 1)
    assert not torch.equal(pred, pred2) and not torch.equal(target, target2)

    ql = QuantileLoss(QUANTILES, reduction=reduction)
    torch.testing.assert_close(ql(pred, target, mask), ql(pred2, target2, mask))
    assert not torch.allclose(ql(pred, target), ql(pred2, target2))
    qv = QRVAELoss(QUANTILES, reduction=reduction)
    torch.testing.assert_close(qv(pred, target, mu, logvar, mask), qv(pred2, target2, mu, logvar, mask))
    gv = GaussianVAELoss(reduction=reduction)
    torch.testing.assert_close(gv(pred[:, :6], target, mu, logvar, mask), gv(pred2[:, :6], target2, mu, logvar, mask))


def test_kl_divergence_closed_form():
    # mu = (1, 0), var = (1, 4): 0.5 * 1 + 0.5 * (4 - 1 - log 4)
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 + 0.5 * (3.0 - math.log(4.0)), abs=1e-6)
    torch.manual_seed(2)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(1)
    out = kl_divergence(mu, logvar)
    assert out.shape == (5,)
    torch.testing.assert_close(out, reference)


def test_qrvae_loss_value_reductions_and_parts():
    pred, target, expected = _hand_case()
    pred, target = torch.cat([pred, 2 * pred]), torch.cat([target, 2 * target])  # sample 2: loss doubles
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    kl = torch.tensor([0.5 + 0.5 * (3.0 - math.log(4.0)), 0.0])
    recon = torch.tensor([expected.sum(), 2 * expected.sum()])  # 2.85, 5.7
    beta = 0.5
    none = QRVAELoss(QUANTILES, beta=beta, reduction="none")(pred, target, mu, logvar)
    torch.testing.assert_close(none, recon + beta * kl)
    loss = QRVAELoss(QUANTILES, beta=beta)
    torch.testing.assert_close(loss(pred, target, mu, logvar), (recon + beta * kl).mean())
    assert set(loss.parts) == {"recon", "kl", "q0.15", "q0.5"}
    assert loss.parts["recon"].item() == pytest.approx(recon.mean().item(), abs=1e-6)
    assert loss.parts["kl"].item() == pytest.approx(kl.mean().item(), abs=1e-6)
    assert loss.parts["q0.15"].item() == pytest.approx(1.5 * (0.15 + 1.7), abs=1e-6)
    assert loss.parts["q0.5"].item() == pytest.approx(1.5 * 1.0, abs=1e-6)
    assert not loss.parts["recon"].requires_grad
    total = QRVAELoss(QUANTILES, beta=beta, reduction="sum")(pred, target, mu, logvar)
    assert total.item() == pytest.approx((recon + beta * kl).sum().item(), abs=1e-5)


def test_qrvae_loss_gradient_flows():
    torch.manual_seed(3)
    pred = torch.randn(2, 6, 4, 4, requires_grad=True)
    mu = torch.randn(2, 8, requires_grad=True)
    logvar = torch.randn(2, 8, requires_grad=True)
    QRVAELoss()(pred, torch.randn(2, 3, 4, 4), mu, logvar).backward()
    assert pred.grad.abs().sum() > 0 and mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_gaussian_vae_loss_nll_value():
    torch.manual_seed(4)
    mean, out_logvar, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mu, logvar = torch.randn(2, 5), torch.randn(2, 5)
    nll = -torch.distributions.Normal(mean, (0.5 * out_logvar).exp()).log_prob(target).reshape(2, -1).sum(1)
    kl = kl_divergence(mu, logvar)
    loss = GaussianVAELoss(beta=2.0, reduction="none")
    out = loss(torch.cat([mean, out_logvar], 1), target, mu, logvar)
    torch.testing.assert_close(out, nll + 2.0 * kl)
    assert set(GaussianVAELoss().parts) == set()  # filled by a call
    mean_loss = GaussianVAELoss(beta=2.0)
    mean_loss(torch.cat([mean, out_logvar], 1), target, mu, logvar)
    assert set(mean_loss.parts) == {"recon", "kl"}
    assert mean_loss.parts["recon"].item() == pytest.approx(nll.mean().item(), rel=1e-5)


def test_gaussian_vae_loss_min_logvar_and_mse():
    target = torch.ones(1, 1, 1, 2)
    mean = torch.tensor([[[[0.0, 1.0]]]])
    mu, logvar = torch.zeros(1, 2), torch.zeros(1, 2)  # KL = 0
    clamped = GaussianVAELoss(min_logvar=-2.0)(torch.cat([mean, torch.full_like(mean, -50.0)], 1), target, mu, logvar)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    expected = 0.5 * (-2.0 + 1.0 * math.exp(2.0)) + 0.5 * (-2.0) + 2 * half_log_2pi
    assert clamped.item() == pytest.approx(expected, rel=1e-6)
    mse = GaussianVAELoss(learn_variance=False)(torch.tensor([[[[0.0, 3.0]]]]), target, mu, logvar)
    assert mse.item() == pytest.approx(1.0 + 4.0, abs=1e-6)


def test_errors():
    pred, target, _ = _hand_case()
    mu = logvar = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"\(1, 2, 1, 3\).*\(1, 1, 1, 2\)"):
        pinball_loss(torch.zeros(1, 2, 1, 3), target, QUANTILES)
    with pytest.raises(ValueError, match="Q \\* C channels"):
        QuantileLoss(QUANTILES)(torch.zeros(1, 3, 1, 2), target)
    with pytest.raises(ValueError, match="2C channels"):
        GaussianVAELoss()(torch.zeros(1, 1, 1, 2), target, mu, logvar)
    with pytest.raises(ValueError, match="NaN"):
        QuantileLoss(QUANTILES)(torch.tensor([[[[float("nan"), 0.0]], [[0.0, 0.0]]]]), target)
    with pytest.raises(ValueError, match="NaN"):
        QRVAELoss(QUANTILES)(pred, target.clone().fill_(float("nan")), mu, logvar)
    with pytest.raises(ValueError, match="NaN"):
        kl_divergence(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="open interval"):
        QuantileLoss((0.0, 0.5))
    with pytest.raises(ValueError, match="open interval"):
        QRVAELoss((0.5, 1.2))
    with pytest.raises(ValueError, match="increasing"):
        QuantileLoss((0.5, 0.15))
    with pytest.raises(ValueError, match="empty brain mask"):
        QuantileLoss(QUANTILES)(pred, target, torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match="empty brain mask"):
        QRVAELoss(QUANTILES)(pred, target, mu, logvar, torch.zeros(1, 1, 1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty brain mask"):
        GaussianVAELoss(learn_variance=False)(target, target, mu, logvar, torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match=r"mask has shape \(1, 1, 2, 2\)"):
        QuantileLoss(QUANTILES)(pred, target, torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"mu has shape \(2, 2\)"):
        QRVAELoss(QUANTILES)(pred, target, torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(1, 2\) and \(1, 3\)"):
        kl_divergence(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError):
        QuantileLoss(QUANTILES, reduction="median")


def test_check_finite_serves_transforms_and_losses():
    from monai_qrvae.utils import check_finite

    inf = torch.tensor([1.0, float("inf"), float("nan")])
    with pytest.raises(ValueError, match=r"^Norm: the input of shape \(3,\) contains 2 NaN/Inf values"):
        check_finite(inf, "Norm")
    with pytest.raises(ValueError, match=r"^x contains NaN values \(shape \(3,\)\); expected finite numbers\.$"):
        check_finite(inf, "x", nan_only=True)
    check_finite(torch.tensor([1.0, float("inf")]), "x", nan_only=True)  # Inf passes in the losses
    check_finite(torch.tensor([1, 2]), "ints")  # integers hold neither
