"""Tests of monai_qrvae.data: the synthetic cohort, datalist helpers, montage and the data subcommands."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_qrvae.data import (
    CONTRASTS,
    ImageInfo,
    SyntheticBrainGenerator,
    check_datalist,
    choose_levels,
    cli,
    find_subjects,
    load_datalist,
    make_cohort,
    make_datalist,
    read_image,
    read_image_info,
    save_montage,
    synthetic,
)

SPACING = 3.0  # coarse grid keeps every test fast


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 healthy + 2 lesion subjects at 3 mm; returns the datalist path."""
    return make_cohort(tmp_path_factory.mktemp("cohort"), n_healthy=2, n_lesion=2, seed=7, spacing=SPACING)


@pytest.fixture(scope="module")
def generator() -> SyntheticBrainGenerator:
    return SyntheticBrainGenerator(spacing=SPACING, seed=3)


def _save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(array, np.eye(4) if affine is None else affine).to_filename(str(path))
    return path


# ----------------------------------------------------------------------------- synthetic cohort


def test_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted during data generation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    synthetic._load_template.cache_clear()  # force nilearn to load its files again, sockets disabled
    path = make_cohort(tmp_path, n_healthy=1, n_lesion=1, seed=0, spacing=4.0)
    assert path.is_file()
    assert (tmp_path / "sub-002" / "label.nii.gz").is_file()


def test_deterministic_byte_identical(cohort: Path, tmp_path: Path) -> None:
    again = make_cohort(tmp_path / "again", n_healthy=2, n_lesion=2, seed=7, spacing=SPACING)
    first, second = _hashes(cohort.parent), _hashes(again.parent)
    assert len(first) == 2 * 2 + 2 * 4 + 1  # image + mask (healthy); + label + lesions.json (lesion); datalist
    assert first == second
    other = make_cohort(tmp_path / "other", n_healthy=2, n_lesion=2, seed=8, spacing=SPACING)
    assert _hashes(other.parent)["sub-001/image.nii.gz"] != first["sub-001/image.nii.gz"]
    with gzip.open(cohort.parent / "sub-001" / "image.nii.gz") as f:  # no timestamp in the gzip header
        f.read(1)
        assert f.mtime == 0


def test_layout_and_datalist(cohort: Path) -> None:
    from monai.data import load_decathlon_datalist

    content = json.loads(cohort.read_text())
    assert [len(content[k]) for k in ("training", "validation", "test")] == [1, 1, 2]
    assert content["numTraining"] == 1 and content["numTest"] == 2
    assert content["modality"] == {"0": "T1", "1": "T2", "2": "FLAIR"}
    meta = content["metadata"]
    assert (meta["seed"], meta["spacing_mm"], meta["generator_version"]) == (7, SPACING, synthetic.GENERATOR_VERSION)
    assert content["test"][0] == {
        "image": "sub-003/image.nii.gz",
        "brain_mask": "sub-003/brain_mask.nii.gz",
        "label": "sub-003/label.nii.gz",
    }
    for section in ("training", "validation", "test"):
        items = load_decathlon_datalist(cohort, data_list_key=section)
        for item in items:
            assert Path(item["image"]).is_file() and Path(item["brain_mask"]).is_file()
            assert ("label" in item) == (section == "test")
    image = nib.load(cohort.parent / "sub-003" / "image.nii.gz")
    mask = nib.load(cohort.parent / "sub-003" / "brain_mask.nii.gz")
    label = nib.load(cohort.parent / "sub-003" / "label.nii.gz")
    assert image.shape == (*meta["shape"], 3) and image.get_data_dtype() == np.float32
    assert mask.get_data_dtype() == np.uint8 and label.get_data_dtype() == np.uint8
    assert np.array_equal(image.affine, mask.affine) and np.array_equal(image.affine, label.affine)
    np.testing.assert_allclose(np.diag(image.affine)[:3], SPACING)
    data = np.asarray(image.dataobj)
    brain = np.asarray(mask.dataobj) > 0
    assert np.all(data[~brain] == 0) and np.all(data[brain].max(-1) > 0)  # skull stripped


def test_loadimaged_gives_channel_first(cohort: Path) -> None:
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    items = load_decathlon_datalist(cohort, data_list_key="test")
    keys = ["image", "brain_mask", "label"]
    load = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS")])
    out = load(items[0])
    shape = tuple(json.loads(cohort.read_text())["metadata"]["shape"])
    assert tuple(out["image"].shape) == (3, *shape)
    assert tuple(out["label"].shape) == (1, *shape) and tuple(out["brain_mask"].shape) == (1, *shape)
    assert float(out["label"].sum()) > 0


def test_tissue_contrast_ordering(generator: SyntheticBrainGenerator) -> None:
    for index in range(3):
        subject = generator.generate(index)
        brain = subject.brain_mask > 0
        means = {}
        for c, contrast in enumerate(CONTRASTS):
            channel = subject.image[..., c]
            means[contrast] = tuple(float(channel[brain & (subject.tissues[..., t] > 0.9)].mean()) for t in range(3))
        csf, gm, wm = means["T1"]
        assert wm > gm > csf, means
        csf, gm, wm = means["T2"]
        assert csf > gm > wm, means
        csf, gm, wm = means["FLAIR"]
        assert gm >= wm > csf, means
        np.testing.assert_allclose(subject.tissues[brain].sum(-1), 1.0, atol=1e-5)


def test_subjects_differ(generator: SyntheticBrainGenerator) -> None:
    a, b = generator.generate(0), generator.generate(1)
    assert a.image.shape == b.image.shape and np.array_equal(a.affine, b.affine)
    assert (a.brain_mask != b.brain_mask).mean() > 0.005  # deformation changes the anatomy
    assert a.params["intensities"] != b.params["intensities"]


def test_label_is_where_intensities_changed(generator: SyntheticBrainGenerator) -> None:
    for index in range(3):
        healthy = generator.generate(index, lesions=False)
        patient = generator.generate(index, lesions=True)
        assert healthy.label is None and patient.label is not None
        assert 1 <= len(patient.lesions) <= 6
        label = patient.label.astype(bool)
        changed = (healthy.image != patient.image).any(-1)
        assert np.array_equal(changed, label)
        assert np.array_equal(healthy.brain_mask, patient.brain_mask)
        assert np.all(patient.brain_mask[label] == 1)  # lesions lie inside the brain
        flair, t2, t1 = (patient.image[..., c][label] - healthy.image[..., c][label] for c in (2, 1, 0))
        assert flair.mean() > 0 and t2.mean() > 0 and t1.mean() < 0  # FLAIR/T2 hyper, T1 hypo
        assert sum(les.n_voxels for les in patient.lesions) >= label.sum()


def test_lesion_count_sizes_and_locations(generator: SyntheticBrainGenerator) -> None:
    sizes, subtle, white = [], [], []
    for index in range(8):
        subject = generator.generate(index, lesions=4)
        assert len(subject.lesions) == 4
        label = subject.label.astype(bool)
        white.append(float((subject.tissues[..., 2][label] > 0.5).mean()))
        sizes += [les.n_voxels for les in subject.lesions]
        subtle += [les.contrast["FLAIR"] for les in subject.lesions if les.subtle]
        for les in subject.lesions:
            assert les.contrast["T1"] < 0 < les.contrast["FLAIR"] and les.contrast["T2"] > 0
    assert min(sizes) <= 10 and max(sizes) * SPACING**3 >= 2000  # a few voxels to a few cm across
    assert np.mean(white) > 0.5  # mostly white matter
    assert subtle and max(subtle) <= 0.3  # subtle lesions: FLAIR within the grey-matter range


def test_subtle_lesions_overlap_grey_matter(generator: SyntheticBrainGenerator) -> None:
    found = False
    for index in range(12):
        subject = generator.generate(index, lesions=True)
        brain = subject.brain_mask > 0
        gm_flair = subject.image[..., 2][brain & (subject.tissues[..., 1] > 0.9)]
        label = subject.label.astype(bool)
        if any(les.subtle for les in subject.lesions):
            lesion_flair = subject.image[..., 2][label]
            found = found or bool(np.mean(lesion_flair < np.percentile(gm_flair, 99)) > 0.2)
    assert found  # some lesion voxels are no brighter than grey matter on FLAIR


def test_bad_arguments(generator: SyntheticBrainGenerator) -> None:
    with pytest.raises(ValueError, match="spacing"):
        SyntheticBrainGenerator(spacing=0.1)
    with pytest.raises(ValueError, match="seed"):
        SyntheticBrainGenerator(seed=-1)
    with pytest.raises(ValueError, match="lesions"):
        generator.generate(0, lesions=-2)
    with pytest.raises(ValueError, match="empty"):
        make_cohort("unused", n_healthy=0, n_lesion=0)


# ----------------------------------------------------------------------------- datalists for a user's own data


def _user_folder(root: Path, n: int = 3, shape: tuple[int, int, int] = (6, 7, 5)) -> Path:
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for i in range(n):
        sub = f"case{i}"
        for name in ("t1", "t2", "flair"):
            _save(rng.random(shape, dtype=np.float32), root / sub / f"{sub}_{name}.nii.gz", affine)
        _save(np.ones(shape, np.uint8), root / sub / f"{sub}_mask.nii.gz", affine)
        if i == n - 1:
            _save((rng.random(shape) > 0.8).astype(np.uint8), root / sub / f"{sub}_seg.nii.gz", affine)
    return root


PATTERNS = ["{subject}/{subject}_t1.nii.gz", "{subject}/{subject}_t2.nii.gz", "{subject}/{subject}_flair.nii.gz"]


def test_make_datalist_per_contrast_files(tmp_path: Path) -> None:
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    root = _user_folder(tmp_path / "scans")
    out = tmp_path / "lists" / "datalist.json"
    datalist = make_datalist(
        root, PATTERNS, out, brain_mask="{subject}/{subject}_mask.nii.gz", label="{subject}/{subject}_seg.nii.gz"
    )
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [1, 1, 1]
    written = json.loads(out.read_text())
    assert written["test"][0]["image"] == [f"../scans/case2/case2_{n}.nii.gz" for n in ("t1", "t2", "flair")]
    assert written["test"][0]["label"] == "../scans/case2/case2_seg.nii.gz"
    items = load_datalist(out, "test")
    data = EnsureChannelFirstd(["image", "label"])(LoadImaged(["image", "label"])(items[0]))
    assert tuple(data["image"].shape) == (3, 6, 7, 5)  # the list of files is stacked as channels
    original = nib.load(root / "case2" / "case2_flair.nii.gz").get_fdata()
    np.testing.assert_allclose(data["image"][2].numpy(), original, rtol=1e-6)
    everything = make_datalist(root, PATTERNS, None, section="test")
    assert len(everything["test"]) == 3 and Path(everything["test"][0]["image"][0]).is_absolute()


def test_make_datalist_one_4d_file_and_update(tmp_path: Path) -> None:
    _save(np.zeros((4, 4, 4, 3), np.float32), tmp_path / "a.nii.gz")
    _save(np.zeros((4, 4, 4, 3), np.float32), tmp_path / "b.nii.gz")
    out = tmp_path / "dl.json"
    make_datalist(tmp_path, "{subject}.nii.gz", out, section="training", val_fraction=0.0)
    make_datalist(tmp_path, "{subject}.nii.gz", out, section="test", update=True)
    content = json.loads(out.read_text())
    assert content["training"] == [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}] and len(content["test"]) == 2
    assert len(load_datalist(out, "training")) == 2


def test_itk_formats(tmp_path: Path) -> None:
    import itk
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    rng = np.random.default_rng(1)
    for name, suffix in (("t1", "nrrd"), ("t2", "mha"), ("flair", "nrrd")):
        img = itk.image_from_array(rng.random((5, 6, 7), dtype=np.float32))  # ITK arrays are (z, y, x)
        img.SetSpacing([2.0, 2.0, 2.0])
        (tmp_path / "s1").mkdir(exist_ok=True)
        itk.imwrite(img, str(tmp_path / "s1" / f"{name}.{suffix}"))
    out = tmp_path / "dl.json"
    make_datalist(tmp_path, ["{subject}/t1.nrrd", "{subject}/t2.mha", "{subject}/flair.nrrd"], out, section="test")
    items = load_datalist(out, "test", read_data=True)
    data = EnsureChannelFirstd("image")(LoadImaged("image")(items[0]))
    assert tuple(data["image"].shape) == (3, 7, 6, 5)
    volume, affine = read_image(items[0]["image"])
    assert volume.shape == (3, 7, 6, 5) and np.allclose(np.abs(np.diag(affine))[:3], 2.0)


def test_error_missing_file(tmp_path: Path, cohort: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        check_datalist([{"image": str(tmp_path / "nope.nii.gz")}])
    root = _user_folder(tmp_path / "scans")
    (root / "case1" / "case1_flair.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case1.*contrast 2 \(FLAIR\)"):
        make_datalist(root, PATTERNS, tmp_path / "dl.json")
    skipped = make_datalist(root, PATTERNS, None, skip_incomplete=True, val_fraction=0.0)
    assert len(skipped["training"]) == 2
    (tmp_path / "broken").mkdir()
    path = tmp_path / "broken" / "datalist.json"
    path.write_text(json.dumps({"training": [{"image": str(cohort.parent / "sub-001" / "image.nii.gz")}]}))
    assert len(load_datalist(path)) == 1
    path.write_text(json.dumps({"training": [{"image": "sub-009/image.nii.gz"}]}))
    with pytest.raises(FileNotFoundError, match=r"sub-009/image.nii.gz"):
        load_datalist(path)
    with pytest.raises(ValueError, match="no list 'test'"):
        load_datalist(path, "test")


def test_error_shape_mismatch(tmp_path: Path) -> None:
    a = _save(np.zeros((4, 4, 4), np.float32), tmp_path / "t1.nii.gz")
    b = _save(np.zeros((4, 4, 5), np.float32), tmp_path / "t2.nii.gz")
    with pytest.raises(ValueError, match=r"t2.nii.gz has spatial shape \(4, 4, 5\)"):
        check_datalist([{"image": [str(a), str(b), str(a)]}])
    mask = _save(np.zeros((4, 5, 4), np.uint8), tmp_path / "mask.nii.gz")
    with pytest.raises(ValueError, match="brain_mask file .*mask.nii.gz"):
        check_datalist([{"image": [str(a)] * 3, "brain_mask": str(mask)}])


def test_error_affine_mismatch(tmp_path: Path) -> None:
    a = _save(np.zeros((4, 4, 4), np.float32), tmp_path / "t1.nii.gz")
    b = _save(np.zeros((4, 4, 4), np.float32), tmp_path / "flair.nii.gz", np.diag([1.0, 1.0, 1.2, 1.0]))
    with pytest.raises(ValueError, match="flair.nii.gz has affine"):
        check_datalist([{"image": [str(a), str(a), str(b)]}])


def test_error_wrong_channel_count(tmp_path: Path) -> None:
    a = _save(np.zeros((4, 4, 4), np.float32), tmp_path / "t1.nii.gz")
    with pytest.raises(ValueError, match=r"lists 2 file\(s\).*expected 3 \(T1, T2, FLAIR\)"):
        check_datalist([{"image": [str(a), str(a)]}])
    four_d = _save(np.zeros((4, 4, 4, 2), np.float32), tmp_path / "two.nii.gz")
    with pytest.raises(ValueError, match=r"two.nii.gz has 2 channel\(s\)"):
        check_datalist([{"image": str(four_d)}])
    with pytest.raises(ValueError, match="two.nii.gz has 2 channels; each file of a per-contrast list"):
        check_datalist([{"image": [str(four_d), str(a), str(a)]}])
    assert check_datalist([{"image": [str(a), str(a)]}], num_channels=2)


def test_error_corrupt_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image" * 20)
    with pytest.raises(ValueError, match="cannot read image file .*garbage.nii.gz"):
        check_datalist([{"image": str(garbage)}])
    good = _save(np.random.default_rng(0).random((8, 8, 8, 3), dtype=np.float32), tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:-200])
    check_datalist([{"image": str(truncated)}])  # the header alone is intact ...
    with pytest.raises(ValueError, match="cannot read image file .*truncated.nii.gz"):
        check_datalist([{"image": str(truncated)}], read_data=True)  # ... the voxels are not
    bad_itk = tmp_path / "bad.mha"
    bad_itk.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="cannot read image file .*bad.mha"):
        read_image_info(bad_itk)
    with pytest.raises(ValueError, match="unsupported image file"):
        (tmp_path / "x.png").write_bytes(b"")
        read_image_info(tmp_path / "x.png")


def test_find_subjects_patterns(tmp_path: Path) -> None:
    root = _user_folder(tmp_path, n=2)
    subjects = find_subjects(root, PATTERNS, label="{subject}/*_seg.nii.gz")
    assert [s["subject"] for s in subjects] == ["case0", "case1"] and "label" in subjects[1]
    with pytest.raises(ValueError, match="must be a string containing"):
        find_subjects(root, ["*/t1.nii.gz"])
    with pytest.raises(ValueError, match="matches 2 files"):
        find_subjects(root, ["{subject}/{subject}_t1.nii.gz", "{subject}/*_t*.nii.gz"])
    with pytest.raises(FileNotFoundError, match="no file under"):
        find_subjects(root, ["{subject}/{subject}_dwi.nii.gz"])
    info = read_image_info(root / "case0" / "case0_t1.nii.gz")
    assert isinstance(info, ImageInfo) and info.spatial_shape == (6, 7, 5) and info.n_channels == 1


# ----------------------------------------------------------------------------- montage and command line


def test_montage(tmp_path: Path, generator: SyntheticBrainGenerator) -> None:
    subject = generator.generate(0, lesions=3)
    png = save_montage(subject.image, tmp_path / "m.png", label=subject.label, brain_mask=subject.brain_mask)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    levels = choose_levels(subject.brain_mask > 0, subject.label > 0, levels=5)
    assert int(np.argmax(subject.label.sum((0, 1)))) in levels and len(levels) <= 5


def test_cli(tmp_path: Path, cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="qrvae")
    cli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["make-data", "--out", str(tmp_path / "d"), "--healthy", "1", "--lesion", "1"])
    assert args.func is cli.run_make_data and (args.seed, args.spacing) == (0, 2.0)

    out = tmp_path / "d"
    code = cli.main(["make-data", "--out", str(out), "--healthy", "1", "--lesion", "1", "--spacing", "4"])
    assert code == 0 and (out / "datalist.json").is_file()
    png = tmp_path / "m.png"
    assert cli.main(["montage", "--subject", str(cohort.parent / "sub-003"), "--out", str(png)]) == 0
    assert png.is_file()
    assert cli.main(["check-datalist", str(cohort)]) == 0
    root = _user_folder(tmp_path / "scans", n=2)
    dl = tmp_path / "user.json"
    assert cli.main(["make-datalist", "--root", str(root), "--image", *PATTERNS, "--out", str(dl)]) == 0
    assert len(json.loads(dl.read_text())["training"]) == 1
    capsys.readouterr()
    assert cli.main(["montage", "--subject", str(tmp_path / "nowhere")]) == 2
    assert "qrvae montage: error: no image.nii.gz" in capsys.readouterr().err
