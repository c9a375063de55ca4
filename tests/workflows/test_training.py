"""The train / evaluate / infer / demo jobs and the ``qrvae`` command, end to end on small embedded data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_qrvae.cli import main
from monai_qrvae.tables import METHOD_NAMES
from monai_qrvae.workflows import METHODS, ModelConfig, build_networks, load_model, train, write_table


def test_model_config_round_trip_and_errors(tmp_path):
    config = ModelConfig(method="gaussian", preset="paper", quantiles=[0.05, 0.5, 0.95])
    config.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="method must be one of"):
        ModelConfig(method="vae")
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_one_anomaly_tensor(method):
    vae, net = build_networks(ModelConfig(method=method, image_size=32))
    assert (vae is None) == (method == "flair")
    net.eval()
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 9, 32, 32)
    assert torch.isfinite(out).all()
    assert (out[:, 3:6] > 0).all(), "sigma must be positive"


def test_write_table(tmp_path):
    rows = [{"method": "qrvae", "dice_fdr": 0.5, "best_dice": 0.6, "auroc": 0.9, "auprc": 0.4, "train_seconds": 12.0}]
    csv_path, md_path, text = write_table(rows, tmp_path)
    assert csv_path.read_text().splitlines()[0].startswith("method,auprc,auroc,best_dice,dice_fdr")
    assert csv_path.read_text().splitlines()[1].startswith("qrvae,0.4,0.9,0.6,0.5")
    assert "| QR-VAE (ours) | 0.400 | 0.900 | 0.600 | 0.500 | n/a |" in text
    assert "Training time: qrvae 12 s." in text
    assert md_path.read_text() == text


@pytest.fixture(scope="module")
def small_cohort(cohort_factory):
    return cohort_factory("wf", "data", n_healthy=5, n_lesion=2, seed=1, spacing=3.0, n_tuning=0)


@pytest.mark.slow
def test_train_evaluate_infer_on_embedded_data(small_cohort, tmp_path, capsys):
    model = tmp_path / "model"
    summary = train(small_cohort, model, epochs=2, batch_size=16, num_slices=8, progress=False)
    n_training = len(json.loads(small_cohort.read_text())["training"])
    assert summary["epochs"] == 2 and summary["train_slices"] == n_training * 8
    assert (model / "model.pt").is_file() and (model / "training_curve.png").is_file()
    history = json.loads((model / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and all("val_loss" in row for row in history)
    # running the same command again finds the finished checkpoint and does not train further
    again = train(small_cohort, model, epochs=2, batch_size=16, num_slices=8, progress=False)
    assert again["epochs"] == 2

    rc = main(["evaluate", "--model", str(model), "--datalist", str(small_cohort), "--out", str(tmp_path / "eval")])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    test_items = json.loads(small_cohort.read_text())["test"]
    assert metrics["volumes"] == len(test_items) == len(metrics["per_volume"])
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == len(test_items)
    # the figures are whole-brain figures on the input grid: recompute the label-free Dice and the lesion counts
    # from the saved lesion maps and the label files, independently of the evaluator
    inter = total = lesions = 0
    for item, volume in zip(test_items, metrics["per_volume"]):
        subject = (small_cohort.parent / item["image"]).parent.name
        assert volume["name"] == subject
        pred = nib.load(tmp_path / "eval" / "maps" / f"{subject}_lesion.nii.gz").get_fdata() > 0
        label = nib.load(small_cohort.parent / item["label"]).get_fdata() > 0
        brain = nib.load(small_cohort.parent / item["brain_mask"]).get_fdata() > 0
        pred, label = pred & brain, label & brain
        assert volume["lesion_voxels"] == label.sum() and volume["detected_voxels"] == pred.sum()
        inter, total = inter + (pred & label).sum(), total + pred.sum() + label.sum()
        lesions += volume["lesions"]
    assert metrics["dice_fdr"] == pytest.approx(2 * inter / total)
    assert metrics["lesions"] == lesions > 0
    # 8 central slices of a 3 mm cohort cannot see every lesion voxel: coverage is reported and below 1
    assert 0.0 < metrics["coverage"] < 1.0

    test_item = json.loads(small_cohort.read_text())["test"][0]
    image = small_cohort.parent / test_item["image"]
    rc = main(["infer", "--model", str(model), "--out", str(tmp_path / "infer"), str(image)])
    assert rc == 0, capsys.readouterr().err
    subject = image.parent.name
    for postfix in ("zmap", "pmap", "lesion"):
        out = nib.load(tmp_path / "infer" / f"{subject}_{postfix}.nii.gz")
        ref = nib.load(image)
        assert out.shape == ref.shape[:3]
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    p = nib.load(tmp_path / "infer" / f"{subject}_pmap.nii.gz").get_fdata()
    assert p.min() >= 0 and p.max() <= 1


@pytest.mark.slow
def test_same_seed_same_weights_and_metrics(small_cohort, tmp_path):
    results = []
    for run in ("a", "b"):
        train(small_cohort, tmp_path / run, epochs=1, batch_size=16, num_slices=6, progress=False, seed=3)
        rc = main(
            [
                "evaluate",
                "--model",
                str(tmp_path / run),
                "--datalist",
                str(small_cohort),
                "--out",
                str(tmp_path / f"eval_{run}"),
                "--no-maps",
                "--no-png",
            ]
        )
        assert rc == 0
        results.append(json.loads((tmp_path / f"eval_{run}" / "metrics.json").read_text()))
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("dice_fdr", "best_dice", "auroc", "auprc"):
        assert results[0][key] == results[1][key]


@pytest.mark.slow
def test_demo_command_runs_all_methods(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--epochs", "1", "--healthy", "4", "--lesion", "2", "--spacing", "3"]
    rc = main([*argv, "--methods", *METHODS, "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    table = (out / "metrics.md").read_text()
    for method in METHODS:
        assert f"| {METHOD_NAMES[method]} |" in table
    assert (out / "qrvae" / "eval" / "maps").is_dir()
    assert any((out / "qrvae" / "eval" / "overlays").glob("*.png"))
    printed = capsys.readouterr().out
    assert "metrics.md" in printed


def test_shipped_model_is_the_bundle_and_loads():
    """``qrvae infer`` without --model uses bundle/models: the bundle's weights with the bundle's architecture."""
    from monai.bundle import ConfigParser

    from monai_qrvae.workflows import SHIPPED_MODEL_DIR, shipped_model_dir

    config, net = load_model(shipped_model_dir())
    parser = ConfigParser()
    parser.read_config(str(SHIPPED_MODEL_DIR.parent / "configs" / "inference.json"))
    assert config.image_size == parser["image_size"] and config.num_slices == parser["num_slices"]
    assert list(config.quantiles) == parser["quantiles"] and config.method == "qrvae"
    bundle_net = parser.get_parsed_content("network_def")
    bundle_net.load_state_dict(torch.load(SHIPPED_MODEL_DIR / "model.pt", weights_only=True))  # float16 on disk
    x = torch.rand(2, 3, config.image_size, config.image_size)
    torch.testing.assert_close(net(x), bundle_net.eval()(x))


@pytest.mark.slow
def test_infer_needs_nothing_but_a_scan(small_cohort, tmp_path, monkeypatch, capsys):
    image = small_cohort.parent / json.loads(small_cohort.read_text())["test"][0]["image"]
    monkeypatch.chdir(tmp_path)
    assert main(["infer", str(image), "--no-png"]) == 0, capsys.readouterr().err
    subject = image.parent.name
    for postfix in ("zmap", "pmap", "lesion"):
        out = nib.load(tmp_path / "qrvae_output" / f"{subject}_{postfix}.nii.gz")
        assert out.shape == nib.load(image).shape[:3]
