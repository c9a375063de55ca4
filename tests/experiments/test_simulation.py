"""Tests of monai_qrvae.experiments: the variance-shrinkage simulation, calibration and FDR measurements, the CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from monai_qrvae.cli import experiments as cli
from monai_qrvae.defaults import method_defaults
from monai_qrvae.experiments import calibration, common, fdr, simulation
from monai_qrvae.experiments.common import VolumePrediction
from monai_qrvae.losses import QRVAELoss
from monai_qrvae.tables import markdown_table
from monai_qrvae.utils import write_json

PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- simulation


def test_manifold_data_has_the_stated_noise():
    data = simulation.make_manifold_data(20000, seed=3, sigma_min=0.05, sigma_max=0.30)
    assert data["x"].shape == (20000, 4) and data["t"].shape == (20000, 2)
    sigma = data["sigma"]
    assert float(sigma.min()) >= 0.05 - 1e-6 and float(sigma.max()) <= 0.30 + 1e-6
    expected = 0.05 + 0.25 * (1 + data["t"][:, 0]) / 2
    torch.testing.assert_close(sigma[:, 2], expected, rtol=1e-5, atol=1e-6)
    standardised = (data["x"] - data["clean"]) / sigma
    assert abs(float(standardised.std()) - 1.0) < 0.02
    assert abs(float(standardised.mean())) < 0.02
    # the clean points lie on the 2-D manifold f(t)
    t1, t2 = data["t"][:, 0], data["t"][:, 1]
    torch.testing.assert_close(data["clean"][:, 2], 0.5 * torch.sin(math.pi * t1) + 0.5 * t2**2, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sigma_min"):
        simulation.make_manifold_data(10, sigma_min=0.3, sigma_max=0.1)
    with pytest.raises(ValueError, match="positive integer"):
        simulation.make_manifold_data(0)


def test_mlp_vae_quantiles_never_cross_and_shapes():
    torch.manual_seed(0)
    model = simulation.MLPVAE(4, latent_size=2, hidden_size=16, quantiles=(0.05, 0.15, 0.5, 0.9))
    out, mu, logvar, z = model(torch.randn(64, 4) * 5)
    assert out.shape == (64, 16, 1) and mu.shape == (64, 2) and z.shape == (64, 2)
    q = out.view(64, 4, 4)
    assert bool((q[:, 1:] >= q[:, :-1]).all())
    gaussian = simulation.MLPVAE(4, 2, 16)
    x = torch.randn(8, 4)
    # training: z is a draw from the posterior, not its mean
    out, mu, logvar, z = gaussian.train()(x)
    assert not torch.allclose(z, mu) and out.shape == (8, 8, 1)
    torch.testing.assert_close(out, gaussian.decode(z))
    # eval: z is the posterior mean itself and the output its decoding
    out, mu, logvar, z = gaussian.eval()(x)
    assert torch.equal(z, mu)
    torch.testing.assert_close(out, gaussian.decode(mu), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        gaussian(torch.randn(8, 3))


def test_sigma_summary_of_the_truth_is_calibrated():
    data = simulation.make_manifold_data(50000, seed=1)
    row = simulation.sigma_summary(data["x"], data["clean"], data["sigma"], data["sigma"])
    assert row["sigma_ratio_median"] == pytest.approx(1.0)
    assert row["sigma_corr"] == pytest.approx(1.0)
    assert row["z_std"] == pytest.approx(1.0, abs=0.01)
    assert row["coverage_15"] == pytest.approx(0.15, abs=0.005)
    assert row["coverage_50"] == pytest.approx(0.5, abs=0.005)
    assert row["residual_ratio"] == pytest.approx(1.0, abs=0.01)
    halved = simulation.sigma_summary(data["x"], data["clean"], data["sigma"] / 2, data["sigma"])
    assert halved["sigma_ratio_geomean"] == pytest.approx(0.5)
    assert halved["z_std"] == pytest.approx(2.0, abs=0.02)
    assert halved["coverage_15"] == pytest.approx(norm.cdf(norm.ppf(0.15) / 2), abs=0.005)  # 0.30, not 0.15


def test_qrvae_recovers_the_known_sigma_ordering():
    """A QR-VAE trained briefly predicts sigma close to the truth and growing with it (the heteroscedasticity)."""
    torch.set_num_threads(1)  # restored after the test by conftest's _torch_global_state
    train = simulation.make_manifold_data(1000, seed=0)
    test = simulation.make_manifold_data(1000, seed=100)
    torch.manual_seed(0)
    model = simulation.MLPVAE(4, 2, 64, quantiles=(0.15, 0.5))
    loss = QRVAELoss((0.15, 0.5), beta=0.1)
    history = simulation.train_mlp_vae(model, loss, train["x"], epochs=80, lr=3e-3, batch_size=64)
    assert history[-1] < history[0]
    _, sigma = simulation.predict_mu_sigma(model, test["x"])
    true = test["sigma"]
    low, high = true[:, 0] < 0.12, true[:, 0] > 0.23  # the quietest and the noisiest part of the manifold
    # true ratio of the means is about 3; a briefly trained QR-VAE gets about 1.7 (seeds 0-2)
    assert float(sigma[high].mean()) > 1.4 * float(sigma[low].mean())
    ratio = float((sigma / true).median())
    assert 0.7 < ratio < 1.4


def test_run_simulation_quick_writes_figure_and_table(tmp_path):
    result = simulation.run_simulation(tmp_path, quick=True)
    main = result["main"]
    qr, gauss = main["qrvae"], main["gaussian"]
    assert main["ratio_qrvae_over_true"] == qr["sigma_ratio_median"]
    assert 0.7 < qr["sigma_ratio_median"] < 1.4
    assert qr["sigma_corr"] > 0.4
    assert qr["sigma_corr"] > gauss["sigma_corr"]  # the Gaussian VAE's sigma does not follow the true noise
    assert Path(result["files"]["figure"]).read_bytes()[:8] == PNG
    assert "| QR-VAE | 0.1 |" in Path(result["files"]["table"]).read_text()
    saved = json.loads(Path(result["files"]["json"]).read_text())
    assert saved["main"]["qrvae"]["sigma_ratio_median"] == pytest.approx(qr["sigma_ratio_median"])
    with pytest.raises(ValueError, match="main_beta"):
        simulation.run_simulation(None, quick=True, betas=(1.0,), main_beta=0.1)


@pytest.mark.slow
def test_gaussian_vae_variance_shrinks_with_default_training():
    """The paper's claim at the default settings (one beta): the Gaussian VAE's sigma falls far below the truth."""
    result = simulation.run_simulation(None, betas=(0.1,), main_beta=0.1)
    assert result["main"]["ratio_gaussian_over_true"] < 0.5
    assert 0.7 < result["main"]["ratio_qrvae_over_true"] < 1.4


# ----------------------------------------------------------------------------- calibration


def _prediction(
    rng: np.random.Generator, sigma_scale: float = 1.0, shape=(4, 3, 16, 16), lesion=False, name="sub"
) -> VolumePrediction:
    n, c, h, w = shape
    mu = torch.as_tensor(rng.uniform(0.2, 0.8, size=shape), dtype=torch.float32)
    sigma = torch.as_tensor(rng.uniform(0.02, 0.1, size=shape), dtype=torch.float32)
    image = mu + sigma * torch.as_tensor(rng.standard_normal(shape), dtype=torch.float32)
    brain = torch.zeros(n, 1, h, w, dtype=torch.bool)
    brain[:, :, 2:-2, 2:-2] = True
    label = None
    if lesion:
        label = torch.zeros(n, 1, h, w, dtype=torch.bool)
        label[1:3, :, 6:10, 6:10] = True
        image[:, 2:3][label] += 10 * sigma[:, 2:3][label]  # a bright FLAIR lesion, z = 10 above the noise
    pred_sigma = sigma * sigma_scale
    z = (image - mu) / pred_sigma
    return VolumePrediction(name, image, brain, mu, pred_sigma, z, label=label)


def test_calibration_stats_of_a_calibrated_and_a_shrunk_model():
    rng = np.random.default_rng(0)
    good = [_prediction(rng, shape=(8, 3, 32, 32)) for _ in range(3)]
    stats = calibration.calibration_stats(good, levels=(0.05, 0.15, 0.5, 0.95))
    cov = np.asarray(stats["coverage"])
    assert cov.shape == (4, 3)
    np.testing.assert_allclose(cov, np.array([[0.05], [0.15], [0.5], [0.95]]).repeat(3, 1), atol=0.02)
    z = stats["z"]["FLAIR"]
    assert z["mean"] == pytest.approx(0.0, abs=0.03) and z["std"] == pytest.approx(1.0, abs=0.03)
    assert z["tail_1.645"] == pytest.approx(0.05, abs=0.01)
    assert z["ks"] < 0.03
    assert stats["voxels"] == 3 * 8 * 28 * 28
    # sigma half the truth: z twice too wide, the 0.15 quantile covers Phi(Phi^-1(0.15) / 2) = 0.30
    shrunk = [VolumePrediction(p.name, p.image, p.brain_mask, p.mu, p.sigma / 2, p.z * 2) for p in good]
    stats = calibration.calibration_stats(shrunk, levels=(0.15, 0.5))
    assert stats["coverage"][0][2] == pytest.approx(norm.cdf(norm.ppf(0.15) / 2), abs=0.01)
    assert stats["z"]["FLAIR"]["std"] == pytest.approx(2.0, abs=0.06)
    assert stats["z"]["FLAIR"]["tail_1.645"] > 0.15


def test_calibration_uses_the_networks_own_quantile_heads():
    rng = np.random.default_rng(1)
    p = _prediction(rng)
    heads = torch.cat([torch.full_like(p.mu, 1e3), p.mu], dim=1)  # q_0.15 above everything: coverage 1
    pred = VolumePrediction(p.name, p.image, p.brain_mask, p.mu, p.sigma, p.z, quantiles=heads)
    stats = calibration.calibration_stats([pred], levels=(0.15, 0.85), network_quantiles=(0.15, 0.5))
    assert stats["direct"] == [True, False]
    assert stats["coverage"][0] == [1.0, 1.0, 1.0]
    assert stats["coverage"][1][0] == pytest.approx(0.85, abs=0.05)


def test_gaussian_quantiles_layout():
    mu = torch.zeros(2, 3, 4, 4)
    sigma = torch.ones(2, 3, 4, 4) * 2
    q = calibration.gaussian_quantiles(mu, sigma, (0.15, 0.5, 0.85))
    assert q.shape == (2, 9, 4, 4)
    groups = q.view(2, 3, 3, 4, 4)
    torch.testing.assert_close(groups[:, 0], torch.full((2, 3, 4, 4), 2 * float(norm.ppf(0.15))))
    torch.testing.assert_close(groups[:, 1], torch.zeros(2, 3, 4, 4))


# ----------------------------------------------------------------------------- FDR


def test_fdr_stats_counts_false_discoveries_per_family():
    shape = (1, 1, 8, 8, 2)
    brain = torch.ones(shape, dtype=torch.bool)
    label = torch.zeros(shape, dtype=torch.bool)
    label[..., 1:3, 1:3, 0] = True  # 4 lesion voxels, all in slice 0
    detected = torch.zeros(shape, dtype=torch.bool)
    detected[..., 1:3, 1:3, 0] = True  # 4 true detections
    detected[..., 3, 1, 0] = True  # 1 false detection next to the lesion (border)
    detected[..., 7, 7, 1] = True  # 1 false detection alone in slice 1 (a lesion-free slice)
    per_slice = fdr.fdr_stats(detected, brain, label, "slice")
    assert per_slice["families"] == 2 and per_slice["families_with_lesion"] == 1
    assert per_slice["fdr"] == pytest.approx((1 / 5 + 1 / 1) / 2)
    assert per_slice["fdp_pooled"] == pytest.approx(2 / 6)
    assert per_slice["sensitivity"] == 1.0
    assert per_slice["dice"] == pytest.approx(2 * 4 / (6 + 4))
    assert per_slice["border_fp"] == pytest.approx(0.5)
    assert per_slice["fdr_no_border"] == pytest.approx((0 / 4 + 1 / 1) / 2)
    per_volume = fdr.fdr_stats(detected, brain, label, "volume")
    assert per_volume["families"] == 1 and per_volume["fdr"] == pytest.approx(2 / 6)
    healthy = fdr.fdr_stats(detected, brain, None, "volume")
    assert healthy["fdr"] == 1.0 and healthy["any_detection"] == 1.0
    assert healthy["voxel_rate"] == pytest.approx(6 / 128)


def test_bh_on_exact_null_keeps_the_familywise_rate_and_finds_planted_lesions():
    rng = np.random.default_rng(0)
    null = [_prediction(rng, shape=(4, 3, 16, 16), name=f"h{i}") for i in range(150)]
    detected, brain, label = fdr.bh_detections(null, alpha=0.1, per="volume")
    assert label is None and detected.shape == (150, 1, 16, 16, 4)
    stats = fdr.fdr_stats(detected, brain, None, "volume")
    # independent exact N(0, 1) null: P(any detection) = alpha for BH under the complete null
    assert stats["any_detection"] == pytest.approx(0.1, abs=0.06)
    # planted z = 10 lesions in 2 of 4 slices: everything found, and the FDR is alpha * m0 / m (independent nulls);
    # per slice, half the families are lesion-free, where any detection makes FDP = 1 (FDR = alpha there)
    lesions = [_prediction(rng, shape=(4, 3, 16, 16), lesion=True, name=f"l{i}") for i in range(200)]
    for per, expected in (("volume", 0.05 * (576 - 32) / 576), ("slice", 0.5 * 0.05 + 0.5 * 0.05 * 128 / 144)):
        detected, brain, label = fdr.bh_detections(lesions, alpha=0.05, per=per)
        stats = fdr.fdr_stats(detected, brain, label, per)
        assert stats["sensitivity"] == 1.0
        assert abs(stats["fdr"] - expected) < 3 * stats["fdr_sem"]
    assert stats["families"] == 800 and stats["families_with_lesion"] == 400


def test_bh_verdict_states_what_was_measured():
    rows = [
        {"model": "qrvae", "per": "slice", "alpha": 0.05, "fdr": 0.03, "null_any": 0.0, "detections": 10},
        {"model": "qrvae", "per": "slice", "alpha": 0.1, "fdr": 0.2, "null_any": 0.5, "detections": 10},
        {"model": "gaussian", "per": "volume", "alpha": 0.05, "fdr": 0.0, "null_any": 0.0, "detections": 0},
    ]
    lines = fdr.bh_verdict(rows)
    assert lines[1].startswith("QR-VAE, BH per slice: controlled only at alpha [0.05]")
    assert "1 of 2 levels" in lines[1]
    assert "no detections" in lines[0]


# ----------------------------------------------------------------------------- shared helpers and CLI


def test_quick_from_env(monkeypatch):
    monkeypatch.delenv(common.QUICK_ENV, raising=False)
    assert common.quick_from_env() is False
    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(common.QUICK_ENV, value)
        assert common.quick_from_env() is expected


def test_markdown_table_and_json(tmp_path):
    text = markdown_table([{"a": 0.12345, "b": "x"}, {"a": float("nan"), "b": 2}], ["a", "b"])
    assert text.splitlines()[2] == "| 0.123 | x |" and "nan" in text
    path = write_json(tmp_path / "r.json", {"v": np.float32(1.5), "t": torch.tensor([1, 2]), "n": math.nan})
    assert json.loads(path.read_text()) == {"v": 1.5, "t": [1, 2], "n": None}


def test_cli_registers_experiment_subcommands():
    parser = argparse.ArgumentParser(prog="qrvae")
    cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["experiment", "fdr", "--quick", "--alphas", "0.05", "--out", "x"])
    assert args.func is cli.run_fdr_cmd and args.quick and args.alphas == [0.05]
    args = parser.parse_args(["experiment", "simulation", "--out", "y", "--betas", "1", "0.1"])
    assert args.func is cli.run_simulation_cmd and args.betas == [1.0, 0.1]
    args = parser.parse_args(["experiment", "calibration", "--demo-dir", "outputs/demo"])
    datalist, models = cli._models_from_args(args)
    assert datalist == str(Path("outputs/demo/data/datalist.json"))
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment"])


def test_cli_simulation_runs_and_reports_errors(tmp_path, capsys):
    rc = cli.main(["simulation", "--quick", "--epochs", "3", "--n-train", "300", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "median predicted / true sigma" in out and (tmp_path / "simulation.png").is_file()
    rc = cli.main(["calibration", "--datalist", str(tmp_path / "missing.json"), "--out", str(tmp_path)])
    assert rc == 2
    assert "missing.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end on the synthetic cohort


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A 3 healthy + 1 lesion cohort at 3 mm and a QR-VAE and a Gaussian VAE trained for one epoch."""
    work = tmp_path_factory.mktemp("experiments")
    datalist = common.ensure_cohort(work / "data", common.CohortSettings(n_healthy=3, n_lesion=1, spacing=3.0))
    datalist, models = common.prepare_models(work, datalist=datalist, epochs=1)
    return work, datalist, models


def test_prepare_models_reuses_what_it_trained(tiny_models):
    work, datalist, models = tiny_models
    stamp = {m: (p / "model.pt").stat().st_mtime_ns for m, p in models.items()}
    again, models2 = common.prepare_models(work, datalist=datalist, epochs=1)
    assert models2 == models and {m: (p / "model.pt").stat().st_mtime_ns for m, p in models2.items()} == stamp
    assert common.ensure_cohort(work / "data", common.CohortSettings(3, 1, 0, 3.0)) == datalist
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        common.prepare_models(work, datalist=datalist, models={"qrvae": work / "nowhere"}, methods=("qrvae",))


def _reference_bh(preds: list[VolumePrediction], alpha: float, per: str) -> tuple[float, int, float]:
    """BH written out with scipy: p = 1 - Phi((x - mu) / sigma) of FLAIR in the brain of each family (slice or volume).

    Returns:
        the mean false discovery proportion over families, the number of detections, the fraction of families with
        any detection.
    """
    from scipy.stats import false_discovery_control

    fdp, detections, any_detection = [], 0, []
    for pred in preds:
        x, mu, sigma = pred.image[:, 2], pred.mu[:, 2], pred.sigma[:, 2].clamp_min(1e-3)
        p = norm.sf(((x - mu) / sigma).double().numpy())
        brain = pred.brain_mask[:, 0].numpy().astype(bool)
        label = np.zeros_like(brain) if pred.label is None else pred.label[:, 0].numpy().astype(bool)
        slices = np.arange(len(brain))[:, None, None]
        for family in [np.ones_like(brain)] if per == "volume" else [slices == s for s in range(len(brain))]:
            inside = brain & family
            if inside.any():
                found = np.zeros_like(inside)
                found[inside] = false_discovery_control(p[inside]) <= alpha
                fdp.append((found & ~label).sum() / max(found.sum(), 1))
                detections += int(found.sum())
                any_detection.append(found.any())
    return float(np.mean(fdp)), detections, float(np.mean(any_detection))


def test_calibration_and_fdr_end_to_end(tiny_models, tmp_path, monkeypatch):
    work, datalist, models = tiny_models
    result = calibration.run_calibration(tmp_path, datalist=datalist, models=models)
    for method in ("qrvae", "gaussian"):
        cov = np.asarray(result["models"][method]["coverage"])
        assert cov.shape == (len(calibration.CALIBRATION_LEVELS), 3)
        assert np.all(np.diff(cov, axis=0) >= 0)  # coverage never decreases with tau
        assert result["models"][method]["subjects"] == 1
    quantiles = method_defaults("qrvae").quantiles  # levels the QR-VAE predicts directly
    assert result["models"]["qrvae"]["direct"] == [t in quantiles for t in calibration.CALIBRATION_LEVELS]
    assert "0.15*" not in result["coverage_table"] and "*" in result["coverage_table"]
    assert Path(result["files"]["figure"]).read_bytes()[:8] == PNG

    result = fdr.run_fdr(tmp_path, datalist=datalist, models=models, alphas=(0.05, 0.1))
    assert len(result["rows"]) == 2 * 2 * 2
    for row in result["rows"]:
        assert row["families"] == (1 if row["per"] == "volume" else 52)  # per slice: every brain slice (3 mm)
    # BH at a larger alpha detects a superset
    for method in ("qrvae", "gaussian"):
        for per in ("slice", "volume"):
            d = {r["alpha"]: r["detections"] for r in result["rows"] if r["model"] == method and r["per"] == per}
            assert d[0.1] >= d[0.05]
    assert Path(result["files"]["figure"]).read_bytes()[:8] == PNG
    assert "pooled FDP" in Path(result["files"]["table"]).read_text()

    # every figure of every row, on predictions where BH finds something (planted z = 10 lesions; the Gaussian
    # VAE's sigma too small, so it also detects healthy voxels), is what BH written out gives
    rng = np.random.default_rng(5)
    planted = {}
    for method, scale in (("qrvae", 1.0), ("gaussian", 0.6)):
        planted[method, "test"] = [_prediction(rng, scale, lesion=True, name=f"l{i}") for i in range(3)]
        planted[method, "validation"] = [_prediction(rng, scale, name=f"h{i}") for i in range(3)]
    method_of = {str(path): method for method, path in models.items()}
    monkeypatch.setattr(fdr, "predict_volumes", lambda path, _, section: planted[method_of[str(path)], section])
    result = fdr.run_fdr(None, datalist=datalist, models=models, alphas=(0.05, 0.2))
    assert len(result["rows"]) == 2 * 2 * 2
    for row in result["rows"]:
        fdr_ref, detections, _ = _reference_bh(planted[row["model"], "test"], row["alpha"], row["per"])
        null_any = _reference_bh(planted[row["model"], "validation"], row["alpha"], row["per"])[2]
        assert row["families"] == (3 if row["per"] == "volume" else 12), row
        assert row["detections"] == detections and row["fdr"] == pytest.approx(fdr_ref, abs=1e-6), row
        assert row["null_any"] == pytest.approx(null_any, abs=1e-6), row
        assert row["sensitivity"] == 1.0, row  # every z = 10 lesion voxel is found
    print(result["table"])
