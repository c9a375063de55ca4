"""Tests of monai_qrvae.anomaly: quantiles -> mu/sigma, z, p, Benjamini-Hochberg, filters, anomaly maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.stats import false_discovery_control, norm

from monai_qrvae.anomaly import (
    FLAIR_CHANNEL,
    PPF_085,
    anomaly_maps,
    benjamini_hochberg,
    check_quantiles,
    median_filter,
    p_value,
    quantiles_to_mu_sigma,
    remove_small_components,
    split_quantiles,
    z_score,
)

FIVE = (0.05, 0.15, 0.5, 0.85, 0.95)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian_quantiles(mu: torch.Tensor, sigma: torch.Tensor, quantiles: tuple[float, ...]) -> torch.Tensor:
    """Quantile-major ``(B, Q*C, ...)`` true quantiles of N(mu, sigma)."""
    return torch.cat([mu + sigma * float(norm.ppf(t)) for t in quantiles], dim=1)


# ---------------------------------------------------------------- quantiles -> mu, sigma


def test_ppf_085_value():
    assert PPF_085 == pytest.approx(1.0364333894937898, abs=1e-12)
    assert FLAIR_CHANNEL == 2


def test_check_quantiles_rejects_bad_values():
    assert check_quantiles([0.15, 0.5]) == (0.15, 0.5)
    for bad in ([], [0.5, 0.15], [0.5, 0.5], [0.0, 0.5], [0.5, 1.0]):
        with pytest.raises(ValueError):
            check_quantiles(bad)


def test_split_quantiles_is_quantile_major():
    pred = torch.arange(2 * 6 * 4, dtype=torch.float32).view(2, 6, 2, 2)  # Q=2, C=3
    groups = split_quantiles(pred, 2)
    assert groups.shape == (2, 2, 3, 2, 2)
    assert torch.equal(groups[:, 1, 0], pred[:, 3])  # quantile 1 of channel 0 is channel index 1*C + 0
    with pytest.raises(ValueError, match="multiple"):
        split_quantiles(pred, 4)


def test_mu_sigma_two_quantiles_exact():
    pred = torch.randn(2, 6, 5, 4, generator=_gen(1))
    q15, q50 = pred[:, :3], pred[:, 3:]
    pred[:, 3:] = q15 + torch.rand(2, 3, 5, 4, generator=_gen(2)) + 0.1  # non-crossing
    q50 = pred[:, 3:]
    mu, sigma = quantiles_to_mu_sigma(pred, (0.15, 0.5))
    assert mu.shape == sigma.shape == (2, 3, 5, 4)
    torch.testing.assert_close(mu, q50)
    torch.testing.assert_close(sigma, (q50 - q15) / PPF_085, rtol=1e-6, atol=1e-7)


def test_mu_sigma_two_quantiles_float64_exact():
    pred = torch.tensor([[[0.2], [0.2 + 1.0364333894937898 * 0.3]]], dtype=torch.float64)  # q0.15, q0.5
    mu, sigma = quantiles_to_mu_sigma(pred, (0.15, 0.5))
    assert mu.dtype == torch.float64
    assert float(sigma) == pytest.approx(0.3, abs=1e-14)
    assert float(mu) == pytest.approx(0.2 + PPF_085 * 0.3, abs=1e-14)


def test_mu_sigma_five_gaussian_quantiles_recover_truth():
    true_mu = torch.randn(3, 2, 8, 8, generator=_gen(3))
    true_sigma = 0.05 + torch.rand(3, 2, 8, 8, generator=_gen(4))
    mu, sigma = quantiles_to_mu_sigma(_gaussian_quantiles(true_mu, true_sigma, FIVE), FIVE)
    torch.testing.assert_close(mu, true_mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(sigma, true_sigma, rtol=1e-5, atol=1e-6)


def test_mu_sigma_without_median_uses_intercept():
    true_mu = torch.full((1, 1, 3), 2.0)
    true_sigma = torch.tensor([[[0.5, 1.0, 3.0]]])
    quantiles = (0.05, 0.15, 0.85)  # asymmetric, no 0.5: mu is the least-squares intercept
    mu, sigma = quantiles_to_mu_sigma(_gaussian_quantiles(true_mu, true_sigma, quantiles), quantiles)
    torch.testing.assert_close(mu, true_mu, rtol=0, atol=1e-5)
    torch.testing.assert_close(sigma, true_sigma, rtol=1e-5, atol=1e-6)


def test_mu_sigma_crossing_and_equal_quantiles_are_floored():
    q15 = torch.tensor([[[1.0, 0.5, 0.0]]])
    q50 = torch.tensor([[[0.2, 0.5, float("nan")]]])  # crossing, equal, NaN
    _, sigma = quantiles_to_mu_sigma(torch.cat([q15, q50], dim=1), (0.15, 0.5), sigma_floor=1e-3)
    torch.testing.assert_close(sigma, torch.full((1, 1, 3), 1e-3))
    with pytest.raises(ValueError, match="two quantiles"):
        quantiles_to_mu_sigma(q15, (0.5,))
    with pytest.raises(ValueError, match="sigma_floor"):
        quantiles_to_mu_sigma(torch.cat([q15, q50], dim=1), (0.15, 0.5), sigma_floor=0.0)


# ---------------------------------------------------------------- z and p


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_z_score_reduced_precision_is_finite(dtype):
    x = torch.tensor([60000.0, -60000.0, 1.0, 0.5, 0.0]).to(dtype)
    mu = torch.tensor([-60000.0, 60000.0, 1.0, 0.0, 0.0]).to(dtype)
    sigma = torch.tensor([0.0, 0.0, 0.0, 0.5, -1.0]).to(dtype)  # zero and negative sigma: floored
    z = z_score(x, mu, sigma)
    assert z.dtype == torch.float32
    assert torch.isfinite(z).all()
    assert z[2] == 0.0  # constant voxel: x == mu
    assert float(z[3]) == pytest.approx(1.0)
    assert z[0] > 1e6 - 1 and z[1] < -(1e6 - 1)


def test_z_score_of_crossing_quantiles_is_finite():
    pred = torch.tensor([[[[3.0, 0.0]], [[1.0, 0.0]]]], dtype=torch.float16)  # q0.15 > q0.5, then a constant voxel
    mu, sigma = quantiles_to_mu_sigma(pred, (0.15, 0.5))
    z = z_score(torch.tensor([[[[1.5, 0.0]]]], dtype=torch.float16), mu, sigma)
    assert torch.isfinite(z).all()
    assert float(z[0, 0, 0, 0]) == pytest.approx(0.5 / 1e-3)
    assert float(z[0, 0, 0, 1]) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        z_score(torch.zeros(2), torch.zeros(3), torch.ones(3))


def test_p_value_matches_scipy():
    z = np.linspace(-9.0, 9.0, 181)
    torch.testing.assert_close(p_value(torch.from_numpy(z)), torch.from_numpy(norm.sf(z)), rtol=1e-10, atol=1e-300)
    p32 = p_value(torch.from_numpy(z).float())
    assert p32.dtype == torch.float32
    np.testing.assert_allclose(p32.numpy(), norm.sf(z), rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(p_value(torch.from_numpy(z), "less").numpy(), norm.cdf(z), rtol=1e-10)
    np.testing.assert_allclose(p_value(torch.from_numpy(z), "two-sided").numpy(), 2 * norm.sf(np.abs(z)), rtol=1e-10)
    assert p_value(torch.tensor([1.959963984540054], dtype=torch.float64), "two-sided").item() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="alternative"):
        p_value(torch.zeros(1), "bigger")


# ---------------------------------------------------------------- Benjamini-Hochberg


def _scipy_bh(p: np.ndarray, alpha: float) -> np.ndarray:
    return false_discovery_control(p.astype(np.float64)) <= alpha


def test_bh_hand_example():
    p = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.5, 0.041]).view(1, 1, 2, 3)
    # m = 6: critical values k * 0.05 / 6; p_(5) = 0.041 <= 5/6 * 0.05 = 0.0417 -> 5 rejections
    assert benjamini_hochberg(p, 0.05).flatten().tolist() == [True, True, True, True, False, True]
    # alpha 0.03: critical values k * 0.005 lie below every p_(k) -> no rejection
    assert not benjamini_hochberg(p, 0.03).any()


def test_bh_matches_scipy_per_volume():
    p = (torch.rand(3, 1, 16, 16, 6, generator=_gen(5)) ** 4).double()
    out = benjamini_hochberg(p, alpha=0.05)
    assert out.dtype == torch.bool and out.shape == p.shape
    for b in range(3):
        expected = _scipy_bh(p[b].flatten().numpy(), 0.05)
        np.testing.assert_array_equal(out[b].flatten().numpy(), expected)
    assert out.sum() > 0


def test_bh_matches_scipy_with_mask_per_slice():
    p = torch.rand(2, 1, 12, 10, 5, generator=_gen(6)) ** 3
    mask = torch.rand(2, 1, 12, 10, 5, generator=_gen(7)) > 0.4
    mask[1, ..., 3] = False  # an empty slice: no detections
    out = benjamini_hochberg(p, alpha=0.1, mask=mask, per="slice")
    assert not out[~mask].any()
    assert not out[1, ..., 3].any()
    for b in range(2):
        for k in range(5):
            inside = mask[b, 0, ..., k]
            if inside.any():
                expected = _scipy_bh(p[b, 0, ..., k][inside].numpy(), 0.1)
                np.testing.assert_array_equal(out[b, 0, ..., k][inside].numpy(), expected)
    # per volume differs from per slice, and matches scipy on all masked voxels of the volume
    vol = benjamini_hochberg(p, alpha=0.1, mask=mask, per="volume")
    np.testing.assert_array_equal(vol[0][mask[0]].numpy(), _scipy_bh(p[0][mask[0]].numpy(), 0.1))


def test_bh_mask_changes_m_and_2d_slice_equals_volume():
    p = torch.tensor([0.01, 0.02, 0.03, 0.9, 0.9, 0.9]).view(1, 1, 1, 6)
    assert benjamini_hochberg(p, 0.05).sum() == 0  # m = 6: p_(k) > k * 0.05 / 6 for k = 1, 2, 3
    mask = torch.tensor([1, 1, 1, 0, 0, 0]).view(1, 1, 1, 6)
    assert benjamini_hochberg(p, 0.05, mask=mask).sum() == 3  # m = 3: p_(k) <= k * 0.05 / 3
    assert benjamini_hochberg(p, 0.05, mask=torch.zeros(1, 1, 1, 6)).sum() == 0
    p2 = torch.rand(4, 1, 9, 9, generator=_gen(8)) ** 5
    assert torch.equal(benjamini_hochberg(p2, per="slice"), benjamini_hochberg(p2, per="volume"))


def test_bh_types_and_errors():
    p = np.random.default_rng(0).random((1, 1, 8, 8)) ** 4
    out = benjamini_hochberg(p, mask=np.ones((1, 1, 8, 8)))
    assert isinstance(out, np.ndarray) and out.dtype == bool
    np.testing.assert_array_equal(out.ravel(), _scipy_bh(p.ravel(), 0.05))
    meta = benjamini_hochberg(MetaTensor(torch.from_numpy(p), affine=torch.eye(4) * 2))
    assert isinstance(meta, MetaTensor) and meta.dtype == torch.bool and float(meta.affine[0, 0]) == 2.0
    bad = torch.rand(1, 1, 4, 4, generator=_gen(9))
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        benjamini_hochberg(bad)
    ok_mask = torch.ones(1, 1, 4, 4)
    ok_mask[0, 0, 0, 0] = 0
    assert benjamini_hochberg(bad, mask=ok_mask).shape == (1, 1, 4, 4)  # NaN outside the mask is ignored
    with pytest.raises(ValueError, match="alpha"):
        benjamini_hochberg(torch.rand(1, 1, 4, 4), alpha=1.5)
    with pytest.raises(ValueError, match="per"):
        benjamini_hochberg(torch.rand(1, 1, 4, 4), per="row")
    with pytest.raises(ValueError, match="shape"):
        benjamini_hochberg(torch.rand(4, 4))
    with pytest.raises(ValueError, match="broadcast"):
        benjamini_hochberg(torch.rand(2, 1, 4, 4), mask=torch.ones(3, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg(torch.full((1, 1, 2, 2), 1.5))


# ---------------------------------------------------------------- filters


def test_median_filter_removes_salt_keeps_edges():
    x = torch.zeros(2, 1, 9, 9)
    x[0, 0, 4, 4] = 5.0  # salt
    x[1, 0, :, 5:] = 1.0  # a straight edge
    out = median_filter(x, 3)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out[0], torch.zeros(1, 9, 9))
    assert torch.equal(out[1], x[1])
    vol = torch.zeros(1, 1, 6, 6, 6, dtype=torch.float16)
    vol[0, 0, 2, 3, 3] = 1.0
    out3 = median_filter(vol)
    assert out3.dtype == torch.float16 and out3.sum() == 0
    np_out = median_filter(x.numpy())
    assert isinstance(np_out, np.ndarray) and np_out.sum() == x[1].sum()
    assert median_filter(x > 0).dtype == torch.bool
    with pytest.raises(ValueError, match="odd"):
        median_filter(x, 2)


def test_remove_small_components_drops_exactly_the_small_blob():
    mask = np.zeros((2, 1, 10, 10), dtype=np.uint8)
    mask[0, 0, 1:4, 1:4] = 1  # 9 voxels: kept
    mask[0, 0, 7, 7:9] = 1  # 2 voxels: dropped
    mask[1, 0, 5:8, 5:8] = 1  # 9 voxels in the second item: kept
    out = remove_small_components(mask, min_size=5)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    expected = mask.copy()
    expected[0, 0, 7, 7:9] = 0
    np.testing.assert_array_equal(out, expected)
    torch_out = remove_small_components(torch.from_numpy(mask).float(), min_size=5)
    assert isinstance(torch_out, torch.Tensor) and torch_out.dtype == torch.float32
    np.testing.assert_array_equal(torch_out.numpy(), expected)
    assert remove_small_components(mask, min_size=2).sum() == mask.sum()  # exactly min_size is kept


def test_remove_small_components_connectivity():
    diag = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    diag[0, 0, 1, 1] = diag[0, 0, 2, 2] = True
    assert remove_small_components(diag, 2, connectivity=1).sum() == 0  # two single voxels
    assert torch.equal(remove_small_components(diag, 2, connectivity=2), diag)  # one 8-connected pair
    vol = torch.zeros(1, 1, 4, 4, 4)
    vol[0, 0, 1, 1, 1] = vol[0, 0, 2, 2, 2] = 1
    assert remove_small_components(vol, 2, connectivity=3).sum() == 2
    with pytest.raises(ValueError, match="connectivity"):
        remove_small_components(diag, 2, connectivity=3)
    with pytest.raises(ValueError, match="batched"):
        remove_small_components(np.ones((4, 4)), 2)


# ---------------------------------------------------------------- anomaly maps


def test_anomaly_maps_flair_channel_and_mask():
    image = torch.zeros(1, 3, 2, 2)
    image[:, FLAIR_CHANNEL] = torch.tensor([[3.0, 1.0], [0.0, 9.0]])
    mu = torch.zeros(1, 3, 2, 2)
    sigma = torch.full((1, 3, 2, 2), 2.0)
    sigma[:, 0] = 0.0  # T1 channel ignored: no effect
    mask = torch.tensor([[[[1, 1], [1, 0]]]])
    maps = anomaly_maps(image, mu, sigma, mask=mask)
    assert set(maps) == {"z", "p"}
    torch.testing.assert_close(maps["z"], torch.tensor([[[[1.5, 0.5], [0.0, 0.0]]]]))
    expected_p = torch.tensor([[[[norm.sf(1.5), norm.sf(0.5)], [0.5, 1.0]]]], dtype=torch.float32)
    torch.testing.assert_close(maps["p"], expected_p)
    two = anomaly_maps(image, mu, sigma, mask=mask, alternative="two-sided")
    assert float(two["p"][0, 0, 0, 0]) == pytest.approx(2 * norm.sf(1.5), rel=1e-5)
    assert anomaly_maps(image, mu, sigma, channel=None)["z"].shape == (1, 3, 2, 2)
    # one-channel mu/sigma (e.g. already the FLAIR channel) are used as they are
    one = anomaly_maps(image, mu[:, :1], sigma[:, 2:], mask=mask)
    torch.testing.assert_close(one["z"], maps["z"])


def test_anomaly_maps_reduced_precision_crossing_and_metatensor():
    image = MetaTensor(torch.rand(2, 3, 4, 4, generator=_gen(10)).half(), affine=torch.eye(4) * 3)
    pred = torch.rand(2, 6, 4, 4, generator=_gen(11)).half()  # random: about half the quantiles cross
    mu, sigma = quantiles_to_mu_sigma(pred, (0.15, 0.5))
    maps = anomaly_maps(image, mu.half(), sigma.half(), mask=torch.ones(2, 1, 4, 4))
    assert isinstance(maps["z"], MetaTensor) and float(maps["z"].affine[0, 0]) == 3.0
    assert maps["z"].dtype == torch.float32 and maps["z"].shape == (2, 1, 4, 4)
    assert isinstance(maps["p"], MetaTensor) and maps["p"].dtype == torch.float32  # not the image's float16
    assert torch.isfinite(maps["z"]).all() and torch.isfinite(maps["p"]).all()
    assert ((maps["p"] >= 0) & (maps["p"] <= 1)).all()
    with pytest.raises(ValueError, match="channel 5 is out of range for image with 3 channels"):
        anomaly_maps(image, mu, sigma, channel=5)
    with pytest.raises(ValueError, match="mu must be batched"):
        anomaly_maps(image, mu[0, 0], sigma)
    with pytest.raises(ValueError, match="sigma must be batched"):
        anomaly_maps(image, mu, sigma[0, 0])


def test_the_shipped_flair_t2_score_weights_t2_and_flair_not_t1():
    """The score every shipped config uses (bundle configs, the shipped model's model_config.json, the VAE defaults)
    is ``flair_t2``: the Stouffer sum of the T2 and FLAIR z-maps, channels 1 and 2 of (T1, T2, FLAIR)."""
    import json
    from pathlib import Path

    from monai_qrvae.anomaly import SCORES, combine_z, score_weights
    from monai_qrvae.data.io import _CONTRASTS
    from monai_qrvae.defaults import DEFAULTS
    from monai_qrvae.transforms import AnomalyMapsd

    repo = Path(__file__).parents[2]
    assert json.loads((repo / "bundle" / "models" / "model_config.json").read_text())["score"] == "flair_t2"
    for config in ("train.json", "inference.json"):
        assert json.loads((repo / "bundle" / "configs" / config).read_text())["score"] == "flair_t2"
    assert _CONTRASTS == ("T1", "T2", "FLAIR")
    assert SCORES["flair_t2"] == (0.0, 1.0, 1.0) and torch.equal(
        score_weights("flair_t2", 3), torch.tensor([0, 1, 1.0])
    )
    assert SCORES["flair"] == (0.0, 0.0, 1.0) and SCORES["all"] == (-1.0, 1.0, 1.0)
    z = torch.tensor([5.0, 2.0, 1.0]).reshape(3, 1, 1, 1)  # T1, T2, FLAIR
    assert float(combine_z(z, score_weights("flair_t2", 3))) == pytest.approx(3.0 / np.sqrt(2.0))
    assert float(combine_z(z, score_weights("all", 3))) == pytest.approx(-2.0 / np.sqrt(3.0))
    # through the transform the shipped configs use: mu, sigma, z per contrast -> one score map
    pred = torch.cat([torch.zeros(3, 2, 2, 1), torch.ones(3, 2, 2, 1), z.expand(3, 2, 2, 1)])
    out = AnomalyMapsd(score="flair_t2", mask_key=None)({"pred": pred})
    assert torch.allclose(out["z"], torch.full((1, 2, 2, 1), 3.0 / np.sqrt(2.0)))
    assert all(DEFAULTS[m].score == "flair_t2" for m in ("qrvae", "gaussian", "mse"))


# ---------------------------------------------------------------- edges of the Gaussian model


def test_mu_is_the_predicted_median_not_the_regression_intercept():
    """With 0.5 among the quantiles mu is that quantile itself, even when the three predictions are not on a line
    (the least-squares intercept would be their mean, 5/6 here); sigma is the slope about it."""
    pred = torch.tensor([0.0, 1.0, 1.5]).view(1, 3, 1, 1)  # quantiles 0.15, 0.5, 0.85 of one voxel
    mu, sigma = quantiles_to_mu_sigma(pred, (0.15, 0.5, 0.85))
    assert float(mu) == 1.0
    assert float(sigma) == pytest.approx((-PPF_085 * -1.0 + PPF_085 * 0.5) / (2 * PPF_085**2), rel=1e-6)


def test_z_score_non_finite_inputs_and_floor_checks():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.0])
    z = z_score(x, torch.zeros(4), torch.full((4,), 2.0))
    assert z.tolist() == [0.0, 1e6, -1e6, 1.5]  # NaN -> 0, +-inf -> +-1e6 exactly
    assert z.dtype == torch.float32  # float32 in, float32 out; float64 in any input: float64
    assert z_score(x, torch.zeros(4, dtype=torch.float64), torch.ones(4)).dtype == torch.float64
    for floor in (0.0, -1.0):
        with pytest.raises(ValueError, match="sigma_floor must be > 0"):
            z_score(x, torch.zeros(4), torch.ones(4), sigma_floor=floor)


def test_anomaly_maps_floor_sigma_at_one_thousandth_by_default():
    image = torch.full((1, 1, 2, 2), 0.5)
    sigma = torch.full((1, 1, 2, 2), 1e-5)  # below the default floor 1e-3
    z = anomaly_maps(image, torch.zeros(1, 1, 2, 2), sigma)["z"]
    assert torch.allclose(z, torch.full((1, 1, 2, 2), 500.0))
    z = anomaly_maps(image, torch.zeros(1, 1, 2, 2), sigma, sigma_floor=0.1)["z"]
    assert torch.allclose(z, torch.full((1, 1, 2, 2), 5.0))
