"""The MONAI bundle in ``bundle/``: configs, metadata, shipped weights, MONAI's bundle tools and real runs.

Fast tests parse and instantiate the configs in-process and call the functions behind
``python -m monai.bundle verify_metadata / verify_net_in_out / ckpt_export``. Tests marked ``slow`` run the
commands of ``bundle/docs/README.md`` as subprocesses (train, evaluate, inference, torchrun with gloo) on tiny
synthetic cohorts and on two of the embedded lesion subjects.

Tests that depend on the SHIPPED weights (bundle/models: model.pt + model_config.json + calibration.pt) are listed in
``SHIPPED_WEIGHT_TESTS`` and pin the figures of ``SHIPPED_FIGURES`` below; the others train or make their own model.
Set ``QRVAE_BUNDLE_MODELS`` to another model folder of the same architecture to run the shipped-weight tests on it
(the pinned figures then do not hold; the mechanics are checked).
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from monai_qrvae.handlers.checkpoint import AtomicCheckpointSaver, load_state_dict_file
from monai_qrvae.networks import QRVAE, AnomalyMapNet
from monai_qrvae.preprocessing import volume_transforms
from monai_qrvae.workflows import ModelConfig

REPO = Path(__file__).parents[2]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
MODELS = Path(os.environ.get("QRVAE_BUNDLE_MODELS", BUNDLE / "models"))
WEIGHTS = MODELS / "model.pt"

# ---------------------------------------------------------------------------------------------------------------------
# FIGURES OF THE SHIPPED WEIGHTS (bundle/models), re-measured whenever the weights change (the lead swaps them in):
# run `pytest tests/integration/test_bundle.py -m slow -k "shipped"` and copy the figures its failures print.
# What the shipped weights give on CPU for the lesion subjects sub-041 and sub-042 of generator seed 0 (2 mm; not in
# the default seed-1 cohort, so never trained or calibrated on; sub-042 stored LPI), with the bundle's default
# post-processing (conformal BH at alpha 0.05 per volume, FLAIR+T2 score):
#   METRICS          evaluate.json's metrics.csv (pooled over both volumes, on the analysed slices)
#   SUBJECT_METRICS  evaluate.json's per-volume best_dice / dice_fdr (sub-041, sub-042)
#   MAP_DICE         Dice of the lesion masks written on each input grid (inference.json and evaluate.json)
#   NUM_PARAMETERS   parameters of network_def (architecture, not weights: changes only with the configs)
# ---------------------------------------------------------------------------------------------------------------------
METRICS = {"best_dice": 0.808, "dice_fdr": 0.807, "auroc": 0.997, "auprc": 0.850}
SUBJECT_METRICS = {"best_dice": [0.7387, 0.8473], "dice_fdr": [0.7368, 0.8453]}
MAP_DICE = {"sub-041": 0.722, "sub-042": 0.792}
NUM_PARAMETERS = 7_623_951
#: the tests that load bundle/models and fail until it holds weights of the configs' architecture (and, for the
#: last three, until the figures above are re-measured for them)
SHIPPED_WEIGHT_TESTS = (
    "test_shipped_weights",
    "test_bundle_inference_finds_lesions_with_shipped_weights",
    "test_bundle_evaluate_run_with_shipped_weights",
)
# CI clones the repository with ../shared beside it
SCHEMA = Path(__file__).parents[2].parent / "shared" / "reference" / "meta_schema_20240725.json"
#: the configs of each job, layered as `--config_file "['configs/inference.json','configs/evaluate.json']"` layers them
RUN_CONFIGS = {
    "train.json": ("train.json",),
    "evaluate.json": ("inference.json", "evaluate.json"),
    "inference.json": ("inference.json",),
}


def _parser(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    for key, value in overrides.items():
        parser[key.replace("__", "#")] = value
    return parser


def _write_subject(folder: Path, shape=(22, 26, 24), seed: int = 0, affine: np.ndarray | None = None) -> dict:
    """A small 4D (X, Y, Z, 3) 'brain' (an ellipsoid of noisy tissue), its mask and a lesion label, as NIfTI."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    mask = ((grid**2).sum(0) < 0.8).astype(np.uint8)
    image = (rng.uniform(0.2, 1.0, (*shape, 3)) * mask[..., None]).astype(np.float32)
    label = (((grid - 0.3) ** 2).sum(0) < 0.05).astype(np.uint8) * mask
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    item = {}
    for key, array in (("image", image), ("brain_mask", mask), ("label", label)):
        path = folder / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(path))
        item[key] = str(path)
    return item


# ----------------------------------------------------------------------------------------------- layout and configs


def test_bundle_layout():
    for name in ("metadata.json", *RUN_CONFIGS, "multi_gpu_train.json", "logging.conf"):
        assert (CONFIGS / name).is_file(), name
    assert (BUNDLE / "docs" / "README.md").is_file()
    assert "Apache License" in (BUNDLE / "LICENSE").read_text() and "Version 2.0" in (BUNDLE / "LICENSE").read_text()
    log = configparser.ConfigParser()
    log.read(CONFIGS / "logging.conf")
    assert log["logger_root"]["level"] == "INFO" and log["handlers"]["keys"] == "consoleHandler"


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_configs_have_the_usual_keys(name):
    parser = _parser(*RUN_CONFIGS[name])
    for key in ("imports", "bundle_root", "device", "dataset_dir", "network_def", "network", "preprocessing"):
        assert key in parser, f"{name} lacks {key}"
    assert "$import monai_qrvae" in parser["imports"]
    if name == "train.json":
        for key in ("train#dataset", "train#trainer#max_epochs", "train#inferer", "validate#evaluator", "loss"):
            assert key in parser, key
        assert parser["train#trainer#_target_"] == "SupervisedTrainer"
    else:
        for key in ("dataset", "inferer", "postprocessing", "evaluator", "datalist"):
            assert key in parser, f"{name} lacks {key}"
        assert parser["inferer#_target_"] == "SliceInferer"


def test_configs_share_network_and_preprocessing():
    """One network and one preprocessing chain, written out the same way in train.json and inference.json."""
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    assert inference["network_def"] == train["network_def"]
    assert inference["preprocessing"] == train["preprocessing"]


def test_evaluate_is_an_override_of_inference():
    """evaluate.json holds only what differs from inference.json: labelled datalist, savers and metrics."""
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    assert set(evaluate) == {
        "datalist",
        "save_png",
        "handlers",
        "key_metric",
        "additional_metrics",
        "evaluator#key_val_metric",
        "evaluator#additional_metrics",
    }
    merged = ConfigParser.load_config_files([str(CONFIGS / n) for n in RUN_CONFIGS["evaluate.json"]])
    inference = json.loads((CONFIGS / "inference.json").read_text())
    for key in ("network_def", "preprocessing", "postprocessing", "inferer", "dataloader", "initialize", "run"):
        assert merged[key] == inference[key], key
    assert merged["evaluator"] == {
        **inference["evaluator"],
        "key_val_metric": "@key_metric",
        "additional_metrics": "@additional_metrics",
    }
    assert merged["save_png"] is True and merged["datalist"].startswith("$monai_qrvae.data.load_datalist(")
    parser = _parser(*RUN_CONFIGS["evaluate.json"])
    assert [h["_target_"] for h in parser["handlers"]] == [
        "CheckpointLoader",
        "StatsHandler",
        "InputGridCollector",
        "AnomalyMapSaver",
        "OverlaySaver",
        "MetricsSaver",
    ]


def test_configs_mirror_the_command_line_defaults():
    """The bundle trains and scores like ``qrvae train`` / ``qrvae evaluate`` / ``qrvae infer`` with their defaults."""
    import inspect

    from monai_qrvae import workflows
    from monai_qrvae.defaults import method_defaults

    train = inspect.signature(workflows.train).parameters
    shipped = method_defaults("qrvae")  # the bundle ships QR-VAE with its tuned defaults
    parser = _parser("train.json")
    assert parser["learning_rate"] == shipped.lr
    assert parser["batch_size"] == shipped.batch_size
    assert parser["train#trainer#max_epochs"] == shipped.epochs
    assert parser["seed"] == train["seed"].default and parser["num_slices"] == shipped.num_slices is None
    assert parser["image_size"] == shipped.image_size == 96
    assert tuple(parser["quantiles"]) == shipped.quantiles and parser["context"] == shipped.context
    assert parser["network_def#quantile_score"] is shipped.quantile_score is True
    assert parser["prepare_batch#target_channels"] == "@target_channels" and parser["target_channels"] == 3
    for name, job in (("evaluate.json", workflows.evaluate), ("inference.json", workflows.infer)):
        defaults = inspect.signature(job).parameters
        parser = _parser(*RUN_CONFIGS[name])
        for key, arg in (("alpha", "alpha"), ("fdr_per", "per"), ("median_size", "median_size")):
            assert parser[key] == defaults[arg].default, (name, key)
        assert parser["min_size"] == defaults["min_size"].default
        assert parser["threshold"] == defaults["threshold"].default == "conformal", name
        assert parser["score_median"] == shipped.score_median, name
        assert parser["score"] == shipped.score == "flair_t2", name
        assert parser["postprocessing#transforms#0#median_size"] == "@score_median"
        assert parser["postprocessing#transforms#0#score"] == "@score"
        assert parser["postprocessing#transforms#0#contrast_key"] == "zc"


def test_network_def_instantiates_the_shipped_architecture():
    """network_def is the network ``qrvae train`` builds with the defaults (same state dict keys and shapes)."""
    from monai_qrvae.workflows import ModelConfig, build_networks

    net = _parser("inference.json").get_parsed_content("network_def")
    assert isinstance(net, AnomalyMapNet) and isinstance(net.network, QRVAE) and net.quantile_score
    assert net.network.quantiles == (0.025, 0.15, 0.5, 0.85, 0.975)
    assert sum(p.numel() for p in net.parameters()) == NUM_PARAMETERS
    out = net.eval()(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 9, 96, 96)
    config = ModelConfig.from_defaults()
    _, cli = build_networks(config)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in cli.state_dict().items()}
    # the through-plane context stays a config option: 2.5D input (3 x 3 channels), 3 reconstructed contrasts
    net = _parser("inference.json", context="neighbours").get_parsed_content("network_def")
    assert net.eval()(torch.rand(1, 9, 96, 96)).shape == (1, 9, 96, 96)


@pytest.mark.parametrize("context", ["none", "neighbours"])
def test_config_preprocessing_equals_volume_transforms(tmp_path, context):
    """The chain written out in the configs gives exactly what the model's ``volume_transforms`` gives: every axial
    slice of the brain's bounding box at 96 x 96 (and the context channels when asked)."""
    from monai_qrvae.defaults import method_defaults

    d = method_defaults("qrvae")
    item = _write_subject(tmp_path / "sub")
    pre = _parser("train.json", context=context).get_parsed_content("preprocessing")
    spacing = _parser("train.json").get_parsed_content("spacing")  # the grid the shipped model analyses
    assert tuple(spacing) == ModelConfig.load(REPO / "bundle" / "models" / "model_config.json").spacing
    ref_chain = volume_transforms(image_size=d.image_size, num_slices=d.num_slices, context=context, spacing=spacing)
    ours, ref = pre(dict(item)), ref_chain(dict(item))
    names = [type(t).__name__ for t in pre.transforms]
    if context == "none":  # the context step is an identity then
        assert names[-1] == "Identityd"
        names = names[:-1]
    assert names == [type(t).__name__ for t in ref_chain.transforms]
    mask = np.asarray(nib.load(item["brain_mask"]).dataobj)
    depth = int(mask.any(axis=(0, 1)).sum()) + 2  # every axial slice with brain, and the crop margin (1)
    channels = 3 if context == "none" else 9
    assert ours["image"].shape == (channels, 96, 96, depth) and ours["label"].shape == (1, 96, 96, depth)
    for key in ("image", "brain_mask", "label"):
        assert torch.equal(ours[key].as_tensor(), ref[key].as_tensor()), key


def test_inference_datalist_from_a_folder_or_the_datalist(tmp_path):
    for i in range(2):
        _write_subject(tmp_path / "scans", seed=i)
        (tmp_path / "scans" / "image.nii.gz").rename(tmp_path / "scans" / f"case{i}.nii.gz")
    parser = _parser("inference.json", input_dir=str(tmp_path / "scans"), input_pattern="case*.nii.gz")
    assert parser.get_parsed_content("datalist") == [
        {"image": str(tmp_path / "scans" / f"case{i}.nii.gz")} for i in range(2)
    ]
    item = _write_subject(tmp_path / "a")  # the datalist's test section: labels are dropped for inference
    datalist = {"test": [{k: str(Path(v).relative_to(tmp_path)) for k, v in item.items()}]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    items = _parser("inference.json", dataset_dir=str(tmp_path)).get_parsed_content("datalist")
    assert items == [{"image": item["image"], "brain_mask": item["brain_mask"]}]


def test_inference_dataset_errors_are_one_line_naming_the_file(tmp_path):
    """A scan the bundle's preprocessing cannot read or use is one InputError line: the file, and what was expected
    (not MONAI's ``applying transform <...Orientationd object at 0x...>``)."""
    from monai_qrvae.workflows import InputError

    corrupt = tmp_path / "scans" / "case0.nii.gz"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a NIfTI file")
    nan = tmp_path / "scans" / "case1.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 20, 3), np.nan, np.float32), np.eye(4)), nan)
    two_channels = tmp_path / "scans" / "case2.nii.gz"  # readable and finite, but not the model's three contrasts
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20, 2), np.float32), np.eye(4)), two_channels)
    flat = tmp_path / "scans" / "case3.nii.gz"  # one 2D slice
    nib.save(nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4)), flat)
    paths = (corrupt, nan, two_channels, flat)
    # past the datalist's own up-front check (a datalist given on the command line, or a file changed since)
    parser = _parser("inference.json", datalist=[{"image": str(p)} for p in paths])
    dataset = parser.get_parsed_content("dataset")
    for index, path in enumerate(paths):
        with pytest.raises(InputError) as info:
            dataset[index]
        message = str(info.value)
        assert "\n" not in message and str(path) in message and "expected" in message, message
        assert "applying transform" not in message and " object at 0x" not in message, message
    assert "has 2 channel(s)" in str(_raised(dataset, 2)) and "expected 3 (T1, T2, FLAIR)" in str(_raised(dataset, 2))
    assert "3D" in str(_raised(dataset, 3)), str(_raised(dataset, 3))


def _raised(dataset: Any, index: int) -> BaseException:
    try:
        dataset[index]
    except Exception as err:  # noqa: BLE001 - the error is the result
        return err
    raise AssertionError(f"item {index} was accepted")


@pytest.mark.parametrize("folder", ["empty", "missing", "other_files"])
def test_inference_refuses_an_input_folder_without_scans(tmp_path, capsys, folder):
    """``--input_dir`` without a matching scan: a one-line error naming the folder and the pattern, exit status 2."""
    from monai_qrvae.bundle_inputs import check_input_dir

    scans = tmp_path / "scans"
    if folder != "missing":
        scans.mkdir()
    if folder == "other_files":
        (scans / "notes.txt").write_text("not a scan")
        (scans / "scan.nii").write_bytes(b"")  # the pattern asks for *.nii.gz
    parser = _parser("inference.json", input_dir=str(scans))
    expected = "no such folder" if folder == "missing" else "has no file matching '*.nii.gz'"
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the error of a config expression
        parser.get_parsed_content("datalist")
    assert isinstance(info.value.__cause__, FileNotFoundError) and expected in str(info.value.__cause__)
    with pytest.raises(SystemExit) as exit_info:  # the bundle's first `initialize` step
        check_input_dir(str(scans), "*.nii.gz")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"monai.bundle run: error: input_dir {scans}"), err
    assert expected in err and "NIfTI" in err
    assert parser["initialize"][0] == "$monai_qrvae.bundle_inputs.check_input_dir(@input_dir, @input_pattern)"
    check_input_dir(None)  # without --input_dir the datalist is used: nothing to check


def _fake_calibration(folder: Path, n: int = 19, **score: Any) -> Path:
    """``folder/calibration.pt``: ``n`` healthy volumes of N(0, 1) scores, for the bundle's default score."""
    from monai_qrvae.calibration import Calibration

    g = torch.Generator().manual_seed(0)
    definition = {"method": "qrvae", "score_median": 1, "score": "flair_t2", "score_key": "z", **score}
    cal = Calibration.from_scores(
        [torch.randn(1, 8, 8, 4, generator=g) for _ in range(n)], score=definition, lesion_p=0.01
    )
    folder.mkdir(parents=True, exist_ok=True)
    return cal.save(folder / "calibration.pt")


def test_postprocessing_thresholds_like_the_command_line(tmp_path):
    """``threshold``: conformal (default), volume, gaussian, lesion or lesion-volume, with the CLI's transforms,
    errors and the maps' convention outside the brain (z = 0, p = 1, lesion = 0)."""
    from monai_qrvae.transforms import FDRMaskd
    from monai_qrvae.transforms.anomaly.thresholds import ConformalPValued, LesionThresholdd, VolumeThresholdd

    _fake_calibration(tmp_path / "models")
    kinds = {
        "conformal": [ConformalPValued, FDRMaskd],
        "volume": [VolumeThresholdd],
        "gaussian": [FDRMaskd],
        "lesion": [LesionThresholdd],
        "lesion-volume": [LesionThresholdd],
    }
    g = torch.Generator().manual_seed(1)
    brain = torch.zeros(1, 16, 16, 5)
    brain[:, 4:12, 4:12, 1:4] = 1
    pred = torch.randn(9, 16, 16, 5, generator=g)
    pred[3:6] = pred[3:6].abs() + 0.1  # sigma
    pred[6:, 6:8, 6:8, 2] = 8.0  # a bright spot in T1, T2 and FLAIR z inside the brain
    pred[6:, 0:2, 0:2, 0] = 8.0  # and one outside
    for threshold, types in kinds.items():
        parser = _parser("inference.json", ckpt_dir=str(tmp_path / "models"), threshold=threshold)
        post = parser.get_parsed_content("postprocessing")
        names = [type(t).__name__ for t in post.transforms]
        assert names == ["AnomalyMapsd", "Compose", "LesionFilterd"], names
        assert [type(t) for t in post.transforms[1].transforms] == types, threshold
        out = post({"pred": pred.clone(), "brain_mask": brain})
        outside = brain[0] == 0
        assert float(out["z"][0][outside].abs().max()) == 0.0 and float(out["p"][0][outside].min()) == 1.0
        assert float(out["lesion"][0][outside].max()) == 0.0 and float(out["lesion"][0, 6:8, 6:8, 2].min()) == 1.0
        assert out["zc"].shape == (3, 16, 16, 5)  # per-contrast scores for the lesion report
    with pytest.raises(RuntimeError) as info:  # no calibration.pt: the CLI's message
        _parser("inference.json", ckpt_dir=str(tmp_path / "none")).get_parsed_content("postprocessing")
    assert isinstance(info.value.__cause__, FileNotFoundError) and "run 'qrvae calibrate" in str(info.value.__cause__)
    assert "--threshold gaussian" in str(info.value.__cause__)
    post = _parser("inference.json", ckpt_dir=str(tmp_path / "none"), threshold="gaussian")
    assert [type(t) for t in post.get_parsed_content("postprocessing").transforms[1].transforms] == [FDRMaskd]
    with pytest.raises(RuntimeError) as info:
        _parser("inference.json", ckpt_dir=str(tmp_path / "models"), threshold="max").get_parsed_content(
            "postprocessing"
        )
    assert "threshold must be one of ('conformal', 'volume', 'gaussian', 'lesion', 'lesion-volume')" in str(
        info.value.__cause__
    )
    _fake_calibration(tmp_path / "other", score_median=3)  # calibrated for another score: refused
    with pytest.raises(RuntimeError) as info:
        _parser("inference.json", ckpt_dir=str(tmp_path / "other")).get_parsed_content("postprocessing")
    assert "score_median: calibrated 3, used 1" in str(info.value.__cause__)


def test_multi_gpu_config_wires_ddp():
    parser = _parser("train.json", "multi_gpu_train.json")
    assert parser["train#trainer#network"] == "@ddp_network"
    assert parser["ddp_network#_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert parser["train#dataloader#sampler"] == "@train#sampler"
    assert parser["train#sampler#_target_"] == "DistributedSampler"
    assert parser["validate#dataloader#sampler"] == "@validate#sampler"
    assert "gloo" in parser["ddp_backend"] and "write_logs" in parser
    assert any("init_process_group" in e for e in parser["initialize"])
    assert parser["run"][-1] == "$torch.distributed.get_rank() == 0 and @save_model_folder()"  # rank 0 calibrates
    assert any("destroy_process_group" in e for e in parser["finalize"])


# ---------------------------------------------------------------------------------------------- metadata and tools


@pytest.mark.filterwarnings("ignore:No hash value provided")
def test_verify_metadata():
    assert SCHEMA.is_file(), f"schema copy missing: {SCHEMA}"
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["required_packages_version"]["monai-qrvae"]
    assert meta["version"] in meta["changelog"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 3 and image["spatial_shape"] == [96, 96]
    assert list(image["channel_def"].values()) == ["T1", "T2", "FLAIR"]
    (pred,) = meta["network_data_format"]["outputs"].values()
    assert pred["num_channels"] == 9 and len(pred["channel_def"]) == 9 and pred["spatial_shape"] == [96, 96]
    assert "0.025, 0.15, 0.5, 0.85" in meta["description"] and "conformal" in meta["changelog"][meta["version"]]


@pytest.mark.filterwarnings("ignore:No hash value provided")
def test_verify_metadata_rejects_a_bad_file(tmp_path):
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    del meta["network_data_format"]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "bad.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_verify_net_in_out(name):
    files = [str(CONFIGS / n) for n in RUN_CONFIGS[name]]
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=files, n=2)


def test_shipped_weights():
    """[shipped weights] bundle/models holds weights of network_def, their model_config.json and calibration.pt."""
    from monai_qrvae.calibration import Calibration
    from monai_qrvae.workflows import ModelConfig, load_model

    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 25 * 2**20
    state = load_state_dict_file(WEIGHTS)
    assert all(k.startswith("network.") for k in state)
    net = _parser("inference.json").get_parsed_content("network_def")
    net.load_state_dict(state)  # strict: the shipped file fits network_def exactly
    config = ModelConfig.load(MODELS / "model_config.json")  # what qrvae infer reads: the same model as the bundle
    assert (config.image_size, config.num_slices, config.quantiles) == (96, None, (0.025, 0.15, 0.5, 0.85, 0.975))
    assert (config.score, config.quantile_score, config.context) == ("flair_t2", True, "none")
    load_model(MODELS)
    calibration = Calibration.load(MODELS / "calibration.pt")
    calibration.check_score(method="qrvae", score_median=1, score="flair_t2")


def _random_weights(folder: Path) -> Path:
    """A plain state dict of network_def with its random initial weights (seed 0), like model.pt."""
    torch.manual_seed(0)
    net = _parser("inference.json").get_parsed_content("network_def")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "model.pt")
    return folder / "model.pt"


def test_ckpt_export_torchscript_matches_eager(tmp_path):
    ts_path = tmp_path / "model.ts"
    weights = _random_weights(tmp_path / "models")
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(weights),
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
    )
    scripted = torch.jit.load(str(ts_path))
    eager = _parser("inference.json").get_parsed_content("network_def")
    eager.load_state_dict(load_state_dict_file(weights))
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = eager.eval()(x), scripted.eval()(x)
    assert got.shape == (4, 9, 96, 96)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_atomic_checkpoint_saver_save_final(tmp_path):
    """``save_final`` (used by train.json for models/model.pt): one plain state dict, written on completion only."""
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    AtomicCheckpointSaver(tmp_path, {"model": net}, save_interval=0, save_final=True).attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append((tmp_path / "model.pt").exists()))
    engine.run([0, 1], max_epochs=2)
    assert seen == [False, False]
    state = load_state_dict_file(tmp_path / "model.pt")
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], net.weight)
    assert not list(tmp_path.glob("checkpoint_*"))
    with pytest.raises(ValueError, match="save_interval"):
        AtomicCheckpointSaver(tmp_path, {"model": net}, save_interval=-1)


# ------------------------------------------------------------------------------------------- real runs (slow tests)


def _bundle_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", *args]


def _run_cmd(*configs: str, **overrides: Any) -> list[str]:
    """``python -m monai.bundle run`` of the layered ``configs`` with the bundle's root and ``--key value`` overrides
    (``__`` in a key stands for ``#``), as bundle/docs/README.md writes them."""
    files = [str(CONFIGS / n) for n in configs]
    config_file = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = _bundle_cmd("run", "--config_file", config_file, "--bundle_root", str(BUNDLE))
    for key, value in overrides.items():
        cmd += [f"--{key.replace('__', '#')}", str(value)]
    return cmd


def _run(cmd: list[str], timeout: int = 300) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def tiny_cohort(cohort_factory):
    """Four healthy subjects at 3 mm (two for training, one for validation, one for calibration)."""
    return cohort_factory("tiny", n_healthy=4, n_lesion=0, seed=3, spacing=3.0).parent


@pytest.fixture(scope="module")
def trained_model(cohort_factory, tmp_path_factory):
    """A model folder of the bundle's architecture written by ``qrvae train`` (1 epoch; model.pt, model_config.json,
    calibration.pt on one healthy volume) and its cohort (2 lesion subjects in ``tuning`` and ``test``, 3 mm)."""
    from monai_qrvae.workflows import train

    datalist = cohort_factory("bundle_model", n_healthy=6, n_lesion=2, seed=3, spacing=3.0)
    model = tmp_path_factory.mktemp("bundle_model") / "model"
    train(datalist, model, epochs=1, progress=False)
    assert {p.name for p in model.iterdir()} >= {"model.pt", "model_config.json", "calibration.pt"}
    return model, datalist


@pytest.fixture(scope="module")
def embedded_lesion_subjects(tmp_path_factory):
    """Subjects sub-041 and sub-042 of the embedded default cohort (``qrvae make-data``: seed 0, 2 mm), with labels.

    The second is stored in LPI orientation (x and z flipped) so that the inversion to the input grid is tested.
    The images are also copied to ``scans/<subject>.nii.gz``, a folder of scans without labels or brain masks.
    """
    from monai_qrvae.data import SyntheticBrainGenerator

    root = tmp_path_factory.mktemp("embedded")
    gen = SyntheticBrainGenerator(spacing=2.0, seed=0)
    entries = []
    for index in (40, 41):
        subject = gen.generate(index, lesions=True)
        folder = root / f"sub-{index + 1:03d}"
        folder.mkdir()
        entry = {}
        for key, array in (("image", subject.image), ("brain_mask", subject.brain_mask), ("label", subject.label)):
            img = nib.Nifti1Image(array, subject.affine)
            if index == 41:
                img = img.as_reoriented(np.array([[0, -1], [1, 1], [2, -1]]))
            nib.save(img, str(folder / f"{key}.nii.gz"))
            entry[key] = f"{folder.name}/{key}.nii.gz"
            if key == "image":  # also as a user's folder of scans: no datalist, no brain mask
                (root / "scans").mkdir(exist_ok=True)
                nib.save(img, str(root / "scans" / f"{folder.name}.nii.gz"))
        entries.append(entry)
    (root / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": entries}))
    return root


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def _check_maps(out_dir: Path, data_dir: Path, names=("sub-041", "sub-042")) -> dict[str, float]:
    """Every map has the input's shape and affine; return the Dice of each lesion mask against the label."""
    dices = {}
    for name in names:
        image = nib.load(str(data_dir / name / "image.nii.gz"))
        label = nib.load(str(data_dir / name / "label.nii.gz"))
        for postfix in ("zmap", "pmap", "lesion"):
            out = nib.load(str(out_dir / f"{name}_{postfix}.nii.gz"))
            assert out.shape == image.shape[:3], (name, postfix, out.shape)
            np.testing.assert_allclose(out.affine, image.affine, atol=1e-4)
        lesion = np.asarray(nib.load(str(out_dir / f"{name}_lesion.nii.gz")).dataobj) > 0
        pmap = np.asarray(nib.load(str(out_dir / f"{name}_pmap.nii.gz")).dataobj)
        assert pmap.min() >= 0 and pmap.max() <= 1
        dices[name] = _dice(lesion, np.asarray(label.dataobj) > 0)
    return dices


@pytest.mark.slow
def test_bundle_train_run(tiny_cohort, tmp_path):
    models, logs = tmp_path / "models", tmp_path / "eval"
    cmd = _run_cmd(
        "train.json", dataset_dir=tiny_cohort, ckpt_dir=models, output_dir=logs, train__trainer__max_epochs=1
    )
    out = _run(cmd)
    assert "Epoch[1] Metrics -- val_loss" in out and "loss_q0.025" in out and "loss_q0.975" in out
    state = load_state_dict_file(tmp_path / "models" / "model.pt")
    net = _parser("train.json").get_parsed_content("network_def")
    net.load_state_dict(state)
    # like qrvae train: model_config.json describes the trained net (qrvae infer loads the folder), calibration.pt
    from monai_qrvae.calibration import Calibration
    from monai_qrvae.defaults import method_defaults
    from monai_qrvae.workflows import load_model

    config, loaded = load_model(models)
    d = method_defaults("qrvae")
    assert (config.image_size, config.num_slices, config.quantiles, config.score, config.quantile_score) == (
        d.image_size,
        d.num_slices,
        d.quantiles,
        d.score,
        d.quantile_score,
    )
    torch.testing.assert_close(loaded.state_dict(), state)
    calibration = Calibration.load(models / "calibration.pt")
    assert calibration.n_volumes == 1 and calibration.score["score"] == "flair_t2"
    assert calibration.score["quantile_score"] is True and "calibrated" in out
    assert (tmp_path / "models" / "checkpoints" / "checkpoint_epoch=1.pt").is_file()
    assert list((tmp_path / "eval").glob("events.out.tfevents.*"))
    # run again for one more epoch: it resumes from the checkpoint (network, optimizer, trainer state)
    args = cmd[:-1] + ["2"]
    out = _run(args)
    assert "resumed from" in out and "checkpoint_epoch=1.pt at epoch 1" in out
    assert "Epoch[2] Metrics -- loss" in out and "Epoch[1] Metrics -- loss" not in out
    assert (tmp_path / "models" / "checkpoints" / "checkpoint_epoch=2.pt").is_file()


@pytest.mark.slow
def test_bundle_multi_gpu_train_with_torchrun_on_cpu(tiny_cohort, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    job = dict(dataset_dir=tiny_cohort, ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval")
    cmd = _run_cmd("train.json", "multi_gpu_train.json", **job, train__trainer__max_epochs=1)
    out = _run([*launcher, "--standalone", "--nproc_per_node=2", *cmd[1:]])  # cmd[0] is the interpreter
    # two processes trained, one (rank 0) logged and saved
    assert out.count("SupervisedTrainer - INFO - Engine run finished") == 2
    assert out.count("Epoch[1] Metrics -- loss") == 1
    assert len(list((tmp_path / "eval").glob("events.out.tfevents.*"))) == 2  # trainer + validator of rank 0
    state = load_state_dict_file(tmp_path / "models" / "model.pt")
    assert all(k.startswith("network.") for k in state)  # the plain network, not the DDP wrapper
    assert [p.name for p in (tmp_path / "models" / "checkpoints").iterdir()] == ["checkpoint_epoch=1.pt"]
    # rank 0 wrote the model folder of qrvae train, once
    assert {p.name for p in (tmp_path / "models").iterdir()} == {
        "model.pt",
        "model_config.json",
        "calibration.pt",
        "checkpoints",
    }
    assert out.count("calibrated ") == 1, out[-3000:]


@pytest.mark.slow
def test_bundle_inference_finds_lesions_with_shipped_weights(embedded_lesion_subjects, tmp_path):
    """[shipped weights] A folder of scans (no labels, no brain masks): maps on each input's grid that overlap the
    lesions, and the lesion reports."""
    cmd = _run_cmd("inference.json", input_dir=embedded_lesion_subjects / "scans", output_dir=tmp_path / "infer")
    out = _run(cmd + ["--ckpt_dir", str(MODELS)])
    assert sorted(p.name for p in (tmp_path / "infer").iterdir()) == sorted(
        [f"{s}_{m}.nii.gz" for s in ("sub-041", "sub-042") for m in ("lesion", "pmap", "zmap")]
        + [f"{s}_lesions.{e}" for s in ("sub-041", "sub-042") for e in ("json", "csv")]
    )
    dices = _check_maps(tmp_path / "infer", embedded_lesion_subjects)
    # the brain masks it derives itself give the same maps as evaluate's given masks
    assert dices == pytest.approx(MAP_DICE, abs=0.03), dices
    # no warning the user cannot act on (MONAI's Orientationd default-labels deprecation: labels are given)
    assert "Orientationd" not in out and "deprecat" not in out.lower(), out[-3000:]


@pytest.mark.slow
def test_bundle_inference_on_an_empty_folder_fails_cleanly(tmp_path):
    """The real command on an empty ``--input_dir``: exit status 2, the reason on one line, nothing written."""
    (tmp_path / "scans").mkdir()
    out_dir = tmp_path / "infer"
    cmd = _run_cmd("inference.json", input_dir=tmp_path / "scans", output_dir=out_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert error == (
        f"monai.bundle run: error: input_dir {tmp_path / 'scans'} has no file matching '*.nii.gz' "
        "(expected NIfTI images, e.g. sub-001.nii.gz)."
    )
    assert not out_dir.exists() and list(tmp_path.iterdir()) == [tmp_path / "scans"]


@pytest.mark.slow
def test_bundle_evaluate_run_with_shipped_weights(embedded_lesion_subjects, tmp_path):
    """[shipped weights] evaluate.json's figures (pinned above) and the same whole-brain figures as qrvae evaluate."""
    out_dir = tmp_path / "evaluate"
    cmd = _run_cmd(*RUN_CONFIGS["evaluate.json"], dataset_dir=embedded_lesion_subjects, output_dir=out_dir)
    _run(cmd + ["--ckpt_dir", str(MODELS)])
    metrics = dict(line.split(",") for line in (out_dir / "metrics.csv").read_text().split())
    assert set(metrics) == {"best_dice", "dice_fdr", "auroc", "auprc"}
    assert {k: float(v) for k, v in metrics.items()} == pytest.approx(METRICS, abs=0.01), metrics
    for name, per_subject in SUBJECT_METRICS.items():  # the per-volume figures and their summaries agree
        raw = [float(line.split(",")[1]) for line in (out_dir / f"{name}_raw.csv").read_text().split()[1:]]
        assert raw == pytest.approx(per_subject, abs=0.01), (name, raw)
        summary = dict(line.split(",", 1) for line in (out_dir / f"{name}_summary.csv").read_text().split())
        assert float(summary["class0"].split(",")[0]) == pytest.approx(np.mean(raw), abs=1e-4)
    assert (out_dir / "best_dice_raw.csv").is_file() and (out_dir / "dice_fdr_summary.csv").is_file()
    assert len(list((out_dir / "overlays").glob("*_overlay.png"))) == 2
    dices = _check_maps(out_dir / "maps", embedded_lesion_subjects)
    assert dices == pytest.approx(MAP_DICE, abs=0.03), dices
    # the bundle reports the same whole-brain, input-grid figures as `qrvae evaluate` with the same weights
    _same_whole_brain_figures(out_dir, MODELS, embedded_lesion_subjects / "datalist.json", tmp_path / "cli")


def _same_whole_brain_figures(out_dir: Path, model: Path, datalist: Path, cli_dir: Path) -> dict:
    """evaluate.json's whole_brain_metrics.json equals ``qrvae evaluate`` with the same model folder; every lesion
    voxel of the brain is analysed (coverage 1)."""
    from monai_qrvae.workflows import evaluate

    whole = json.loads((out_dir / "whole_brain_metrics.json").read_text())
    cli = evaluate(model, datalist, cli_dir, save_maps=False, save_png=False)
    for key in ("dice_fdr", "best_dice", "auroc", "auprc", "coverage", "lesion_recall", "fp_per_volume"):
        assert whole[key] == pytest.approx(cli[key], abs=1e-6), (key, whole[key], cli[key])
    assert whole["coverage"] == 1.0  # every axial slice with brain is analysed
    return whole


def _read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.slow
def test_bundle_evaluate_matches_qrvae_evaluate(trained_model, tmp_path):
    """evaluate.json with a model folder of the new architecture: metrics files, maps on each input grid, and the
    whole-brain figures of ``qrvae evaluate`` with the same folder."""
    model, datalist = trained_model
    out_dir = tmp_path / "evaluate"
    cmd = _run_cmd(*RUN_CONFIGS["evaluate.json"], dataset_dir=datalist.parent, output_dir=out_dir, ckpt_dir=model)
    _run(cmd)
    metrics = dict(line.split(",") for line in (out_dir / "metrics.csv").read_text().split())
    assert set(metrics) == {"best_dice", "dice_fdr", "auroc", "auprc"}
    assert 0.5 < float(metrics["auroc"]) <= 1.0, metrics
    (name,) = [Path(e["image"]).parent.name for e in json.loads(datalist.read_text())["test"]]
    assert len(list((out_dir / "overlays").glob("*_overlay.png"))) == 1
    _check_maps(out_dir / "maps", datalist.parent, names=(name,))
    _same_whole_brain_figures(out_dir, model, datalist, tmp_path / "cli")


@pytest.mark.slow
@pytest.mark.parametrize("threshold", ["conformal", "gaussian"])
def test_bundle_inference_matches_qrvae_infer(trained_model, tmp_path, threshold):
    """inference.json and ``qrvae infer`` with the same model folder write the same files, bit for bit: maps on the
    input grid with z = 0, p = 1 and lesion = 0 wherever nothing was analysed, and the same lesion reports."""
    from monai_qrvae.workflows import infer

    model, datalist = trained_model
    scans = tmp_path / "scans"  # a user's folder of scans: no datalist, no brain masks
    scans.mkdir()
    entries = [e for section in ("tuning", "test") for e in json.loads(datalist.read_text())[section]]
    for entry in entries:
        (scans / f"{Path(entry['image']).parent.name}.nii.gz").symlink_to(datalist.parent / entry["image"])
    cmd = _run_cmd("inference.json", input_dir=scans, output_dir=tmp_path / "bundle", ckpt_dir=model)
    _run(cmd + ["--threshold", threshold])
    infer(model, sorted(scans.glob("*.nii.gz")), tmp_path / "cli", save_png=False, threshold=threshold)
    files = sorted(p.name for p in (tmp_path / "bundle").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "cli").iterdir()) and len(files) == 5 * len(entries)
    detected = 0
    for name in files:
        ours, theirs = tmp_path / "bundle" / name, tmp_path / "cli" / name
        if name.endswith(".nii.gz"):
            np.testing.assert_array_equal(_read(ours), _read(theirs), err_msg=name)
            np.testing.assert_array_equal(nib.load(str(ours)).affine, nib.load(str(theirs)).affine)
        else:
            assert ours.read_text() == theirs.read_text(), name
    for entry in entries:
        stem = Path(entry["image"]).parent.name
        z, p, lesion = (_read(tmp_path / "bundle" / f"{stem}_{m}.nii.gz") for m in ("zmap", "pmap", "lesion"))
        brain = _read(datalist.parent / entry["brain_mask"]) > 0
        # the analysed region: the brain's bounding box (crop margin 1 in-plane); outside it nothing was tested
        box = np.zeros_like(brain)
        lo, hi = np.argwhere(brain).min(0), np.argwhere(brain).max(0)
        box[lo[0] - 1 : hi[0] + 2, lo[1] - 1 : hi[1] + 2, lo[2] : hi[2] + 1] = True
        assert (z[~box] == 0).all() and (p[~box] == 1).all() and (lesion[~box] == 0).all(), stem
        assert (lesion[~brain] == 0).all() and 0 <= p.min() and p.max() <= 1, stem
        assert (p[brain] < 1).mean() > 0.5, stem  # tested inside the brain
        report = json.loads((tmp_path / "bundle" / f"{stem}_lesions.json").read_text())
        assert report["n_lesions"] == len(report["lesions"]), stem
        detected += int(lesion.sum())
    assert detected > 0


@pytest.mark.slow
def test_bundle_inference_is_zero_everywhere_outside_the_brain(trained_model, tmp_path):
    """The documented convention taken literally: z = 0 and p = 1 at EVERY voxel outside the brain mask (no leak
    past the brain's edge from inverting the resize)."""
    model, datalist = trained_model
    (entry,) = json.loads(datalist.read_text())["test"]
    out_dir = tmp_path / "bundle"
    _run(_run_cmd("inference.json", dataset_dir=datalist.parent, output_dir=out_dir, ckpt_dir=model))
    stem = Path(entry["image"]).parent.name
    brain = _read(datalist.parent / entry["brain_mask"]) > 0
    z, p = _read(out_dir / f"{stem}_zmap.nii.gz"), _read(out_dir / f"{stem}_pmap.nii.gz")
    assert (z[~brain] == 0).all() and (p[~brain] == 1).all()


@pytest.mark.slow
def test_bundle_tool_commands(tmp_path):
    """The README's verify_metadata, verify_net_in_out and ckpt_export command lines."""
    meta, config = str(CONFIGS / "metadata.json"), str(CONFIGS / "inference.json")
    out = _run(_bundle_cmd("verify_metadata", "--meta_file", meta, "--filepath", str(SCHEMA)))
    assert "metadata is verified with no error" in out
    out = _run(_bundle_cmd("verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", config))
    assert "data shape of network is verified with no error" in out
    ts = tmp_path / "model.ts"
    weights = _random_weights(tmp_path / "models")
    _run(
        _bundle_cmd(
            "ckpt_export",
            "network_def",
            "--filepath",
            str(ts),
            "--ckpt_file",
            str(weights),
            "--meta_file",
            meta,
            "--config_file",
            config,
        )
    )
    assert torch.jit.load(str(ts))(torch.rand(1, 3, 96, 96)).shape == (1, 9, 96, 96)


def test_bundle_folder_has_no_run_outputs():
    """Runs inside the bundle write eval/ and models/checkpoints/; they are ignored, never shipped."""
    ignored = (BUNDLE / ".gitignore").read_text().split()
    assert "models/checkpoints/" in ignored and "eval/" in ignored


@pytest.mark.slow
def test_bundle_card_figures_on_the_default_test_split(tmp_path):
    """[shipped weights] The model card's evaluation (bundle/docs/README.md and metadata.json ``eval_metrics``) is
    what ``evaluate.json`` gives on the test split of ``qrvae make-data``'s default cohort, within 0.01."""
    from monai_qrvae.data import make_cohort

    if MODELS != BUNDLE / "models":
        pytest.skip("the card's figures are those of the shipped weights")
    datalist = make_cohort(tmp_path / "synth")  # the default cohort (generator seed 1, 2 mm), as `qrvae make-data`
    out_dir = tmp_path / "evaluate"
    _run(_run_cmd(*RUN_CONFIGS["evaluate.json"], dataset_dir=Path(datalist).parent, output_dir=out_dir), timeout=600)
    whole = json.loads((out_dir / "whole_brain_metrics.json").read_text())
    card = json.loads((CONFIGS / "metadata.json").read_text())["eval_metrics"]
    # 0.002: across 9 emulated CPUs and thread counts the card's figures did not move (docs/benchmarks.md)
    assert {k: whole[k] for k in card} == pytest.approx(card, abs=0.002), whole
    readme = (BUNDLE / "docs" / "README.md").read_text()
    for key in ("auprc", "dice_fdr", "lesion_recall"):
        assert f"{whole[key]:.3f}" in readme, (key, whole[key])
    _check_documented_lesion_table(datalist)


#: docs/experiments.md's lesion-level table on the default test split: (row name, alpha) -> benchmark configuration
_LESION_ROWS = {"conformal (voxel BH)": "conformal@{}", "lesion, mass": "lesion[mass]@{}"}
_LESION_ROWS["lesion-volume, mass"] = "lesion-volume[mass]@{}"
#: (column of the table, key of benchmarks.lesion_inference, tolerance): figures counted in lesions or components may
#: move by one (1 of 97 lesions, 1 component over 15 volumes); the others as the card's 0.002
_LESION_COLUMNS = (
    (2, "lesion_recall", 0.011),
    (3, "fp_per_volume", 0.07),
    (4, "lesion_fdr", 0.07),
    (6, "voxel_fdr", 0.002),
    (7, "voxel_fdr_margin", 0.002),
    (8, "dice_fdr", 0.002),
)


def _check_documented_lesion_table(datalist: str) -> None:
    """docs/experiments.md's "`test` (10 lesion + 5 healthy volumes ...)" table is what
    ``benchmarks/lesion_inference.py`` gives with the shipped weights and calibration."""
    from benchmarks.lesion_inference import run

    text = (REPO / "docs" / "experiments.md").read_text()
    table = text[text.index("### `test` (10 lesion + 5 healthy volumes") :].split("\n\n")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert len(rows) == 8, table
    fresh = run(str(MODELS), datalist, "test", [0.01, 0.05, 0.1], ["mass"])["results"]
    for row in rows:
        result = fresh[_LESION_ROWS[row[0]].format(row[1])]
        for column, key, tolerance in _LESION_COLUMNS:
            documented = float(row[column].split()[0])
            assert result[key] == pytest.approx(documented, abs=tolerance), (row[0], row[1], key, result[key])
