"""Bad inputs get one clear error at the CLI and leave no output; odd but valid inputs work; safe loading."""

from __future__ import annotations

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_qrvae.cli import main
from monai_qrvae.handlers.checkpoint import load_state_dict_file
from monai_qrvae.workflows import load_model


@pytest.fixture(scope="module")
def cohort(cohort_factory):
    """A tiny cohort and a FLAIR-threshold model (no training: fitted in seconds), shared by the tests."""
    datalist = cohort_factory("robust", "data", n_healthy=4, n_lesion=1, seed=0, spacing=3.0)
    root = datalist.parent.parent
    assert (
        main(
            [
                "train",
                "--datalist",
                str(datalist),
                "--out",
                str(root / "model"),
                "--method",
                "flair",
                "--no-progress",
                "--num-slices",
                "8",
            ]
        )
        == 0
    )
    test = json.loads(datalist.read_text())["test"][0]
    image = root / "data" / test["image"]
    return root, datalist, image


def _infer(root, image, capsys, name: str):
    out = root / f"out_{name}"
    rc = main(["infer", "--model", str(root / "model"), "--out", str(out), "--no-png", str(image)])
    err = capsys.readouterr().err
    return rc, err, out


def _save_like(reference, data, path, affine=None):
    ref = nib.load(reference)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), ref.affine if affine is None else affine), path)
    return path


def _assert_clean_error(rc, err, out, *needles):
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1, f"expected one line, got: {err!r}"
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists() or not any(out.iterdir()), "output written despite the error"


def test_missing_file(cohort, capsys):
    root, _, _ = cohort
    rc, err, out = _infer(root, root / "nope.nii.gz", capsys, "missing")
    _assert_clean_error(rc, err, out, "nope.nii.gz", "not found")


def test_truncated_nifti(cohort, capsys):
    root, _, image = cohort
    bad = root / "truncated.nii.gz"
    bad.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    rc, err, out = _infer(root, bad, capsys, "truncated")
    _assert_clean_error(rc, err, out, "truncated.nii.gz", "cannot read")


def test_not_a_nifti(cohort, capsys):
    root, _, _ = cohort
    bad = root / "garbage.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not an image"))
    rc, err, out = _infer(root, bad, capsys, "garbage")
    _assert_clean_error(rc, err, out, "garbage.nii.gz")


def test_2d_image(cohort, capsys):
    root, _, image = cohort
    bad = _save_like(image, np.ones((30, 30)), root / "flat.nii.gz")
    rc, err, out = _infer(root, bad, capsys, "2d")
    _assert_clean_error(rc, err, out, "flat.nii.gz", "expected a 3D volume")


def test_wrong_number_of_contrasts(cohort, capsys):
    root, _, image = cohort
    data = nib.load(image).get_fdata()[..., :2]
    bad = _save_like(image, data, root / "two.nii.gz")
    rc, err, out = _infer(root, bad, capsys, "channels")
    _assert_clean_error(rc, err, out, "two.nii.gz", "2 channel", "expected 3")


def test_nan_voxels(cohort, capsys):
    root, _, image = cohort
    data = nib.load(image).get_fdata()
    data[10, 10, 10, 2] = np.nan
    data[11, 10, 10, 0] = np.inf
    bad = _save_like(image, data, root / "nan.nii.gz")
    rc, err, out = _infer(root, bad, capsys, "nan")
    _assert_clean_error(rc, err, out, "nan.nii.gz", "2 NaN or Inf")


def test_all_zero_volume(cohort, capsys):
    root, _, image = cohort
    bad = _save_like(image, np.zeros(nib.load(image).shape), root / "zero.nii.gz")
    rc, err, out = _infer(root, bad, capsys, "zero")
    _assert_clean_error(rc, err, out, "zero.nii.gz", "empty")


def test_mismatched_contrast_files(cohort, capsys):
    root, _, image = cohort
    data = nib.load(image).get_fdata()
    t1 = _save_like(image, data[..., 0], root / "t1.nii.gz")
    t2 = _save_like(image, data[..., 1], root / "t2.nii.gz")
    shifted = nib.load(image).affine.copy()
    shifted[0, 3] += 5
    flair = _save_like(image, data[..., 2], root / "flair.nii.gz", affine=shifted)
    datalist = root / "mismatch.json"
    datalist.write_text(json.dumps({"test": [{"image": [str(t1), str(t2), str(flair)]}]}))
    out = root / "out_mismatch"
    rc = main(["infer", "--model", str(root / "model"), "--out", str(out), "--datalist", str(datalist)])
    _assert_clean_error(rc, capsys.readouterr().err, out, "flair.nii.gz", "affine")


def test_non_ras_anisotropic_large_image_works(cohort, capsys):
    """An LPS-oriented, anisotropic, upsampled copy is reoriented and resampled; maps come back on its grid."""
    root, _, image = cohort
    img = nib.load(image)
    data = img.get_fdata()
    data = np.repeat(data[::-1, ::-1], 2, axis=2)  # flip x/y (LPS-like) and double z (1.5 mm slices)
    affine = img.affine @ np.diag([-1.0, -1.0, 0.5, 1.0])
    affine[:3, 3] = img.affine[:3, :3] @ np.array([img.shape[0] - 1, img.shape[1] - 1, 0]) + img.affine[:3, 3]
    odd = root / "odd.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), odd)
    rc, err, out = _infer(root, odd, capsys, "odd")
    assert rc == 0, err
    zmap = nib.load(out / "odd_zmap.nii.gz")
    assert zmap.shape == data.shape[:3]
    np.testing.assert_allclose(zmap.affine, affine, atol=1e-4)
    # the same voxels as the original scan's z-map: flipped back, every second slice (the copy analyses half of the
    # original's slices, 8 of its 1.5 mm slices, so only those are compared)
    rc, err, ref = _infer(root, image, capsys, "odd_reference")
    assert rc == 0, err
    reference = nib.load(next(ref.glob("*_zmap.nii.gz"))).get_fdata()
    back = zmap.get_fdata()[::-1, ::-1, ::2]
    both = (reference != 0) & (back != 0)
    assert both.sum() > 0.4 * (reference != 0).sum(), (both.sum(), (reference != 0).sum())
    # equal up to the intensity normalisation's percentiles, which the resampled copy estimates on other voxels
    # (measured: within 0.5 %); a flipped or shifted map differs by whole z units
    np.testing.assert_allclose(back[both], reference[both], rtol=0.01, atol=0.01)
    # and that z-map lies on the scan: the FLAIR-threshold model's z follows the scan's FLAIR voxel for voxel
    # (correlation 0.89; 0.76 one slice off, 0.18-0.37 flipped in x or y)
    flair = nib.load(image).get_fdata()[..., 2]
    inside = (reference != 0) & (flair != 0)
    assert np.corrcoef(reference[inside], flair[inside])[0, 1] > 0.85


def test_tampered_and_pickled_checkpoints_are_refused(cohort, tmp_path):
    root, _, _ = cohort
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    # a checkpoint carrying an arbitrary pickled object must not be unpickled
    torch.save({"network.mean": torch.zeros(3), "payload": _Payload()}, model / "model.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model(model)
    (model / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_state_dict_file(model / "model.pt")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--datalist",
                str(root / "data" / "datalist.json"),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "eval").exists()


class _Payload:
    """An object whose unpickling would run code in a full-pickle load."""

    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["train", "--datalist", "d.json", "--out", "m", "--method", "unet"], ["--method", "'unet'", "qrvae"]),
        (["train", "--datalist", "d.json", "--out", "m", "--preset", "huge"], ["--preset", "'huge'", "small"]),
        (["infer", "--alpha", "many", "x.nii.gz"], ["--alpha", "'many'", "float"]),
    ],
)
def test_unknown_option_value(tmp_path, capsys, monkeypatch, argv, needles):
    """An unknown --method / --preset (or a value of the wrong type) is one line and exit status 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("qrvae "), f"expected one line, got: {err!r}"
    assert "usage:" not in err and captured.out == ""
    for needle in needles:
        assert needle in err, (needle, err)
    assert list(tmp_path.iterdir()) == []


def _datalist_infer(root, datalist, capsys, name: str, command: str = "infer"):
    out = root / f"out_{name}"
    argv = [command, "--model", str(root / "model"), "--out", str(out), "--datalist", str(datalist)]
    rc = main(argv + (["--no-png"] if command == "infer" else []))
    return rc, capsys.readouterr().err, out


@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_malformed_datalist_json(cohort, capsys, command):
    root, _, _ = cohort
    bad = root / f"broken_{command}.json"
    bad.write_text('{"test": [{"image": "sub-001/image.nii.gz"},')  # cut short
    rc, err, out = _datalist_infer(root, bad, capsys, f"json_{command}", command)
    _assert_clean_error(rc, err, out, f"broken_{command}.json", "JSONDecodeError", "expected a Decathlon-style JSON")
    bad.write_text('["sub-001/image.nii.gz"]')  # valid JSON, but a list instead of an object of sections
    rc, err, out = _datalist_infer(root, bad, capsys, f"json_list_{command}", command)
    _assert_clean_error(rc, err, out, f"broken_{command}.json", "JSON list", "expected an object of sections")


@pytest.mark.parametrize("command", ["infer", "evaluate"])
def test_datalist_without_or_with_empty_section(cohort, capsys, command):
    root, _, _ = cohort
    empty = root / f"empty_{command}.json"
    empty.write_text("{}")
    rc, err, out = _datalist_infer(root, empty, capsys, f"nosection_{command}", command)
    _assert_clean_error(rc, err, out, f"empty_{command}.json", "has no 'test' section", "expected the sections")
    empty.write_text('{"training": [], "test": []}')
    rc, err, out = _datalist_infer(root, empty, capsys, f"emptysection_{command}", command)
    _assert_clean_error(rc, err, out, f"empty_{command}.json", "'test'", "empty", "expected at least one")


def _labelled_datalist(root, cohort_datalist, name: str, label_data, affine=None):
    """A one-subject datalist whose test entry carries ``label_data`` as its label."""
    entry = json.loads(cohort_datalist.read_text())["test"][0]
    image = root / "data" / entry["image"]
    label = _save_like(image, label_data, root / f"{name}_label.nii.gz", affine=affine)
    datalist = root / f"{name}.json"
    datalist.write_text(json.dumps({"test": [{"image": str(image), "label": str(label)}]}))
    return datalist, label


def test_label_grid_differs_from_image(cohort, capsys):
    root, datalist, image = cohort
    shape = nib.load(image).shape[:3]
    small, _ = _labelled_datalist(root, datalist, "label_shape", np.zeros((shape[0] - 2, shape[1], shape[2])))
    rc, err, out = _datalist_infer(root, small, capsys, "label_shape", "evaluate")
    _assert_clean_error(rc, err, out, "label_shape_label.nii.gz", "spatial shape", "must share one grid")
    shifted = nib.load(image).affine.copy()
    shifted[1, 3] += 6.0
    moved, _ = _labelled_datalist(root, datalist, "label_affine", np.zeros(shape), affine=shifted)
    rc, err, out = _datalist_infer(root, moved, capsys, "label_affine", "evaluate")
    _assert_clean_error(rc, err, out, "label_affine_label.nii.gz", "affine", "must share one affine")


def test_non_binary_label(cohort, capsys):
    root, datalist, image = cohort
    data = np.zeros(nib.load(image).shape[:3])
    data[10:14, 10:14, 5:7] = 2.0  # a second class (e.g. BraTS-style labels)
    data[20:22, 20:22, 5:7] = 1.0
    multi, _ = _labelled_datalist(root, datalist, "label_multi", data)
    rc, err, out = _datalist_infer(root, multi, capsys, "label_multi", "evaluate")
    _assert_clean_error(rc, err, out, "label_multi_label.nii.gz", "[0, 1, 2]", "expected a binary lesion mask")


def _model_folder(tmp_path, name: str, **config):
    """A model folder with ``config`` (a small QR-VAE by default) and no weights yet."""
    from monai_qrvae.workflows import ModelConfig

    model = tmp_path / name
    model.mkdir()
    ModelConfig(**{"method": "qrvae", "image_size": 16, "num_slices": 8, **config}).save(model / "model_config.json")
    return model


def _infer_with(model, image, out, capsys):
    rc = main(["infer", "--model", str(model), "--out", str(out), "--no-png", str(image)])
    return rc, capsys.readouterr().err, out


def test_model_folder_without_or_with_broken_config(cohort, capsys, tmp_path):
    root, _, image = cohort
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    (model / "model_config.json").unlink()
    rc, err, out = _infer_with(model, image, tmp_path / "out_noconfig", capsys)
    _assert_clean_error(rc, err, out, str(model / "model_config.json"), "does not exist", "expected model_config.json")
    (model / "model_config.json").write_text('{"method": "qrvae", ')
    rc, err, out = _infer_with(model, image, tmp_path / "out_badconfig", capsys)
    _assert_clean_error(rc, err, out, "model_config.json", "JSONDecodeError", "expected the JSON object")
    (model / "model_config.json").write_text('{"method": "qrvae", "layers": 7}')
    rc, err, out = _infer_with(model, image, tmp_path / "out_oddconfig", capsys)
    _assert_clean_error(rc, err, out, "model_config.json", "['layers']", "expected keys among")


def test_model_folder_without_calibration(cohort, capsys, tmp_path):
    """The default (conformal) threshold needs the model's healthy calibration; the paper's needs none."""
    root, _, image = cohort
    assert (root / "model" / "calibration.pt").is_file()  # train calibrated on the cohort's healthy section
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    (model / "calibration.pt").unlink()
    rc, err, out = _infer_with(model, image, tmp_path / "out_nocal", capsys)
    _assert_clean_error(rc, err, out, str(model), "has no calibration.pt", "qrvae calibrate", "--threshold gaussian")
    rc = main(
        [
            "infer",
            "--model",
            str(model),
            "--out",
            str(tmp_path / "out_gauss"),
            "--no-png",
            "--threshold",
            "gaussian",
            str(image),
        ]
    )
    assert rc == 0 and len(list((tmp_path / "out_gauss").glob("*_lesion.nii.gz"))) == 1


@pytest.mark.parametrize(
    "written_with, needles",
    [
        ({"preset": "paper"}, ["preset 'small'", "of another shape", "expected"]),
        ({"quantiles": (0.1, 0.5, 0.9)}, ["2 quantile(s) [0.15, 0.5]", "of another shape", "expected"]),
    ],
)
def test_checkpoint_of_another_preset_or_quantiles(cohort, capsys, tmp_path, written_with, needles):
    """model.pt written for another preset / number of quantiles than model_config.json says."""
    from monai_qrvae.workflows import ModelConfig, build_networks

    root, _, image = cohort
    model = _model_folder(tmp_path, "model")
    other = ModelConfig(**{"method": "qrvae", "image_size": 16, "num_slices": 8, **written_with})
    torch.save(build_networks(other)[1].state_dict(), model / "model.pt")
    before = (model / "model.pt").read_bytes()
    rc, err, out = _infer_with(model, image, tmp_path / "out", capsys)
    _assert_clean_error(rc, err, out, str(model / "model.pt"), *needles)
    assert (model / "model.pt").read_bytes() == before


@pytest.mark.parametrize("kind", ["text", "truncated", "list", "pickled_object"])
def test_foreign_or_truncated_model_file(cohort, capsys, tmp_path, kind):
    root, _, image = cohort
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    weights = model / "model.pt"
    if kind == "text":
        weights.write_text("model weights are on the shared drive\n")
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif kind == "list":
        torch.save([torch.zeros(3)], weights)
    else:
        torch.save({"network.mean": torch.zeros(3), "payload": _Payload()}, weights)
    before = weights.read_bytes()
    rc, err, out = _infer_with(model, image, tmp_path / "out", capsys)
    expected = "expected a dictionary (state dict)" if kind == "list" else "Expected a plain state dict"
    _assert_clean_error(rc, err, out, str(weights), expected)
    assert "unpickled!" not in err and weights.read_bytes() == before


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("failure", ["disk_full", "not_writable"])
def test_output_folder_full_or_not_writable(cohort, capsys, tmp_path, monkeypatch, failure):
    """A full disk or a read-only output folder: one line naming the file, earlier results kept byte for byte."""
    import errno
    import os
    import tempfile

    root, _, image = cohort
    out = tmp_path / "out"
    rc, err, _ = _infer_with(root / "model", image, out, capsys)
    assert rc == 0, err
    before = _snapshot(out)
    assert len(before) >= 3  # z-map, p-map, lesion mask of the earlier run
    if failure == "disk_full":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).startswith(str(out)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        needles = ["No space left on device", "expected a writable output folder with free space"]
    elif os.geteuid() == 0:  # root writes through chmod 0o500: simulate the refusal where the file is created
        real_mkstemp = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if str(dir).startswith(str(out)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        needles = ["Permission denied", "expected a writable output folder"]
    else:  # pragma: no cover - CI runs as root
        out.chmod(0o500)
        needles = ["Permission denied", "expected a writable output folder"]
    rc, err, _ = _infer_with(root / "model", image, out, capsys)
    out.chmod(0o700)
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, f"expected one line, got: {err!r}"
    assert f"cannot write {out}" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert _snapshot(out) == before, "an earlier result was overwritten or a partial file was left"


def test_image_too_large_for_memory(cohort, capsys, tmp_path, monkeypatch):
    """Refused from the header, before the voxels are allocated: a real 768 GB header, then a lowered limit."""
    root, _, image = cohort
    huge = tmp_path / "huge.nii"
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000, 3))
    header.set_data_dtype(np.float32)
    with open(huge, "wb") as f:  # the header alone: reading the voxels would fail (or exhaust memory)
        header.write_to(f)
    rc, err, out = _infer_with(root / "model", huge, tmp_path / "out_huge", capsys)
    _assert_clean_error(rc, err, out, "huge.nii", "(4000, 4000, 4000, 3)", "715.3 GiB as float32", "expected at most")
    monkeypatch.setenv("QRVAE_MAX_IMAGE_BYTES", "100000")
    rc, err, out = _infer_with(root / "model", image, tmp_path / "out_limit", capsys)
    _assert_clean_error(rc, err, out, image.name, "expected at most 0.0 GiB", "QRVAE_MAX_IMAGE_BYTES")


def test_datalist_paths_outside_its_folder_are_accepted(cohort, capsys):
    """A decision, not an omission: entries may point outside the datalist's folder (``../``), as MONAI's
    ``load_decathlon_datalist`` allows and ``qrvae make-datalist`` writes; they are read, not refused."""
    root, datalist, _ = cohort
    entry = json.loads(datalist.read_text())["test"][0]
    elsewhere = root / "lists" / "site-a"
    elsewhere.mkdir(parents=True)
    outside = elsewhere / "outside.json"
    outside.write_text(json.dumps({"test": [{"image": f"../../data/{entry['image']}"}]}))
    rc, err, out = _datalist_infer(root, outside, capsys, "outside")
    assert rc == 0, err
    assert len(list(out.glob("*_zmap.nii.gz"))) == 1
