"""Raw series: geometry, the raw-like writer, maps back on a series' grid, input errors, end-to-end preprocessing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_qrvae.raw.errors import MissingSeriesError, RawInputError, RegistrationError
from monai_qrvae.raw.geometry import (
    ants_params_to_ras,
    dice,
    mean_displacement,
    ras_to_ants_params,
    resample_to_grid,
    rigid_matrix,
    rotation_angle_deg,
)
from monai_qrvae.raw.inverse import lesion_report, maps_to_series, series_to_analysis
from monai_qrvae.raw.series import load_series, normalised_mutual_information


# ---------------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------------
def test_rigid_matrix_rotates_about_centre():
    m = rigid_matrix((0.0, 0.0, 90.0), (1.0, 2.0, 3.0), centre_mm=(10.0, 0.0, 0.0))
    assert np.allclose(m @ [10.0, 0.0, 0.0, 1.0], [11.0, 2.0, 3.0, 1.0])  # the centre only moves by the shift
    assert np.allclose(m @ [11.0, 0.0, 0.0, 1.0], [11.0, 3.0, 3.0, 1.0])  # +x turns into +y
    assert rotation_angle_deg(m) == pytest.approx(90.0)


def test_ants_params_round_trip_and_lps_flip():
    m = rigid_matrix((5.0, -7.0, 3.0), (4.0, -2.0, 8.0), centre_mm=(3.0, 1.0, -2.0))
    params, fixed = ras_to_ants_params(m)
    assert np.allclose(ants_params_to_ras(params, fixed), m)
    # a pure LPS shift of +1 mm in x is -1 mm in RAS x; a non-zero ITK centre gives the same map
    shift = ants_params_to_ras([1, 0, 0, 0, 1, 0, 0, 0, 1, 1.0, 0.0, 0.0], [5.0, 6.0, 7.0])
    assert np.allclose(shift[:3, 3], [-1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="12 affine parameters"):
        ants_params_to_ras([1.0] * 6, [0.0] * 3)


def test_resample_to_grid_shift_and_mean_displacement():
    data = np.zeros((10, 10, 10), np.float32)
    data[4, 5, 6] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted = np.eye(4)
    shifted[0, 3] = 2.0  # output world x -> source world x + 2 mm = one voxel further
    out = resample_to_grid(data, affine, (10, 10, 10), affine, shifted, order=0)
    assert out[3, 5, 6] == 1.0 and out.sum() == 1.0
    pts = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    assert mean_displacement(shifted, np.eye(4), pts) == pytest.approx(2.0)
    assert dice(np.ones(4), np.r_[1, 1, 0, 0]) == pytest.approx(2 * 2 / 6)


def test_normalised_mutual_information_ranks_alignment():
    rng = np.random.default_rng(0)
    a = rng.random((30, 30, 30)).astype(np.float32)
    assert normalised_mutual_information(a, a) == pytest.approx(2.0, abs=1e-6)
    assert normalised_mutual_information(a, 1.0 - a) == pytest.approx(2.0, abs=1e-6)  # contrast-inverted
    assert normalised_mutual_information(a, rng.random((30, 30, 30))) < 1.05


def _smooth_volume(seed: int, shape: tuple[int, int, int] = (40, 40, 30)) -> np.ndarray:
    """Smooth random anatomy (Gaussian-filtered noise, 1.5 voxels) inside a zero background."""
    from scipy import ndimage

    vol = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 1.5).astype(np.float32)
    return vol - vol.min()


def test_alignment_sharpness_aligned_pair_is_a_sharp_peak_unrelated_pair_is_not():
    from monai_qrvae.raw.preprocess import DEFAULT_THRESHOLDS
    from monai_qrvae.raw.series import alignment_sharpness

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed = _smooth_volume(0)
    mask = np.zeros(fixed.shape, bool)
    mask[5:-5, 5:-5, 5:-5] = True
    rng = np.random.default_rng(1)
    other_contrast = (fixed.max() - fixed) ** 2 + 0.002 * rng.random(fixed.shape).astype(np.float32)
    limit = DEFAULT_THRESHOLDS["sharpness"]
    nmi, perturbed, sharp = alignment_sharpness(fixed, affine, other_contrast, affine, np.eye(4), mask)
    assert nmi > perturbed > 1.0 and sharp > limit  # same anatomy, another contrast: a sharp peak
    # the same image moved by 3 mm and registered back (the found map) is as sharp as the aligned one
    moved = rigid_matrix((0.0, 0.0, 0.0), (3.0, 0.0, 0.0))
    moving = resample_to_grid(other_contrast, affine, fixed.shape, affine, np.linalg.inv(moved), order=1)
    assert alignment_sharpness(fixed, affine, moving, affine, moved, mask)[2] > limit
    _, _, unrelated = alignment_sharpness(fixed, affine, _smooth_volume(7), affine, np.eye(4), mask)
    assert unrelated < 0.2  # another "patient": no sharp peak at the found pose
    # scale-free: the contrast and intensity scale of either image does not change the figure
    again = alignment_sharpness(fixed * 50.0 + 3.0, affine, other_contrast * 0.01, affine, np.eye(4), mask)[2]
    assert again == pytest.approx(sharp, abs=1e-3)


def test_outline_sharpness_same_anatomy_is_sharper_than_its_outline_and_than_other_anatomy():
    from monai_qrvae.raw.series import outline_sharpness

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = np.indices((40, 40, 30)).astype(float)
    ball = ((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 + (grid[2] - 15) ** 2) <= 11**2
    fixed = np.where(ball, 1.0 + _smooth_volume(0), 0.0).astype(np.float32)
    same = np.where(ball, 1.0 + (_smooth_volume(0).max() - _smooth_volume(0)) ** 2, 0.0).astype(np.float32)
    other = np.where(ball, 1.0 + _smooth_volume(7), 0.0).astype(np.float32)  # same outline, other anatomy
    image, outline = outline_sharpness(fixed, affine, same, affine, np.eye(4), ball, ball)
    assert image > outline > 0.0  # fine anatomy aligns: sharper than the outline alone
    other_image, other_outline = outline_sharpness(fixed, affine, other, affine, np.eye(4), ball, ball)
    assert other_outline == pytest.approx(outline)  # the same outlines
    # only the outline aligns: less sharp than the same anatomy, but not below the outline's own sharpness (0.41
    # vs 0.35 here, same anatomy 0.47): the outline null is not a bound, so it only warns (docs/raw.md)
    assert outline < other_image < image


def test_skull_stripped_series_is_detected():
    from monai_qrvae.raw.preprocess import _skull_stripped

    grid = np.indices((40, 40, 30)).astype(float)
    ball = ((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 + (grid[2] - 15) ** 2) <= 12**2
    brain = np.where(ball, 100.0 + _smooth_volume(3), 0.0)
    assert _skull_stripped(brain)
    head = brain + 5.0 * np.random.default_rng(0).random(brain.shape)  # noisy background: not stripped
    assert not _skull_stripped(head)
    two = brain.copy()
    two[:3, :3, :3] = 50.0  # a small speck beside the brain does not matter
    assert _skull_stripped(two)


def test_alignment_refusal_is_one_line_naming_the_files_and_the_option():
    from monai_qrvae.raw.preprocess import _check_alignment

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    work = {"T1": (_smooth_volume(0), affine), "T2": (_smooth_volume(7), affine)}
    mask = np.ones((40, 40, 30), bool)
    paths = {"T1": Path("a/t1.nii.gz"), "T2": Path("b/t2.nii.gz")}
    with pytest.raises(RegistrationError) as err:
        _check_alignment("T2", work, np.eye(4), mask, 0.5, paths)
    text = str(err.value)
    assert "\n" not in text and "b/t2.nii.gz does not align with the T1 series a/t1.nii.gz" in text
    assert "--no-alignment-check" in text and "expected > 0.50" in text
    warnings: list[str] = []
    figures = _check_alignment("T2", work, np.eye(4), mask, None, paths, warnings)  # no limit: no refusal
    assert set(figures) == {"nmi", "perturbed_nmi", "sharpness", "image_sharpness", "outline_sharpness"}
    assert figures["sharpness"] < 0.5


def test_no_alignment_check_option_reaches_preprocess():
    from monai_qrvae.cli import build_parser
    from monai_qrvae.cli.raw import _preprocess_kwargs

    series = ["--t1", "a", "--t2", "b", "--flair", "c"]
    for argv in (["preprocess", *series, "--out", "o"], ["infer", *series]):
        args = build_parser().parse_args(argv)
        assert _preprocess_kwargs(args)["alignment_check"] is True
        args = build_parser().parse_args([*argv, "--no-alignment-check"])
        assert _preprocess_kwargs(args)["alignment_check"] is False


# ---------------------------------------------------------------------------------------------------------------
# maps back on a series' grid
# ---------------------------------------------------------------------------------------------------------------
def _fake_prep(tmp_path: Path) -> tuple[Path, dict]:
    """A transforms.json with known maps: analysis 2 mm grid, FLAIR 1 x 1.5 x 3 mm LAS grid, rotated and moved."""
    analysis_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    analysis_affine[:3, 3] = (-20.0, -22.0, -18.0)
    flair_affine = np.array([[-1.0, 0, 0, 14.0], [0, 1.5, 0, -12.0], [0, 0, 3.0, -9.0], [0, 0, 0, 1.0]])
    mni_to_t1 = rigid_matrix((3.0, -2.0, 4.0), (1.5, -2.0, 0.5)) @ np.diag([1.05, 0.97, 1.02, 1.0])
    t1_to_flair = rigid_matrix((-6.0, 4.0, 2.0), (3.0, 1.0, -4.0))
    info = {
        "series": {"FLAIR": {"shape": [28, 20, 10], "affine": flair_affine.tolist()}},
        "analysis": {"shape": [21, 23, 19], "affine": analysis_affine.tolist()},
        "mni_to_t1": mni_to_t1.tolist(),
        "t1_to_series": {"T1": np.eye(4).tolist(), "FLAIR": t1_to_flair.tolist()},
    }
    (tmp_path / "transforms.json").write_text(json.dumps(info))
    return tmp_path, info


def test_maps_to_series_linear_map_is_exact(tmp_path):
    prep, info = _fake_prep(tmp_path)
    a_aff = np.asarray(info["analysis"]["affine"])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (21, 23, 19)], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ a_aff[:3, :3].T + a_aff[:3, 3]
    coef = np.array([0.3, -0.2, 0.5])
    zmap = (world @ coef + 7.0).reshape(21, 23, 19).astype(np.float32)  # linear in MNI world: trilinear is exact
    img = maps_to_series(zmap, prep, reference="flair", kind="continuous", cval=np.nan)
    assert img.shape == (28, 20, 10) and np.allclose(img.affine, info["series"]["FLAIR"]["affine"])
    out = np.asarray(img.dataobj)
    f_idx = np.stack(np.meshgrid(*[np.arange(n) for n in (28, 20, 10)], indexing="ij"), -1).reshape(-1, 3)
    f_world = np.c_[f_idx, np.ones(len(f_idx))] @ np.asarray(info["series"]["FLAIR"]["affine"]).T
    # forward chain: an MNI point p lies at t1_to_flair @ mni_to_t1 @ p in the FLAIR world
    forward = np.asarray(info["t1_to_series"]["FLAIR"]) @ np.asarray(info["mni_to_t1"])
    mni = np.linalg.solve(forward, f_world.T).T
    assert np.allclose(series_to_analysis(info, "FLAIR"), np.linalg.inv(forward))
    expected = (mni[:, :3] @ coef + 7.0).reshape(28, 20, 10)
    inside = np.isfinite(out)
    assert inside.mean() > 0.5  # most of the FLAIR grid sees the analysis grid
    assert np.allclose(out[inside], expected[inside], atol=1e-3)


def test_maps_to_series_mask_is_nearest_uint8_and_checks_shape(tmp_path):
    prep, _ = _fake_prep(tmp_path)
    mask = np.zeros((21, 23, 19), np.uint8)
    mask[8:14, 9:15, 7:12] = 1
    img = maps_to_series(mask, prep)  # auto: 0/1 values -> nearest neighbour
    out = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.uint8 and set(np.unique(out).tolist()) == {0, 1}
    box_ml = mask.sum() * 8 / 1000
    out_ml = out.sum() * 1.0 * 1.5 * 3.0 / 1000
    assert out_ml == pytest.approx(box_ml, rel=0.25)
    with pytest.raises(ValueError, match=r"expected the analysis grid \(21, 23, 19\)"):
        maps_to_series(np.zeros((5, 5, 5)), prep)
    with pytest.raises(ValueError, match="reference must be one of"):
        maps_to_series(mask, prep, reference="dwi")
    with pytest.raises(FileNotFoundError, match="qrvae preprocess"):
        maps_to_series(mask, tmp_path / "nothing")


def test_series_maps_fill_values_where_the_series_sees_beyond_the_analysis_grid(tmp_path):
    """write_series_maps: z 0, p 1 (nothing tested) and lesion 0 where a FLAIR voxel maps outside the analysis grid;
    the analysis values inside; every map on the FLAIR grid, with the lesion report of the lesion map."""
    from monai_qrvae.raw.inverse import write_series_maps

    prep, info = _fake_prep(tmp_path)
    a_aff = np.asarray(info["analysis"]["affine"])
    lesion = np.zeros((21, 23, 19), np.uint8)
    lesion[8:14, 9:15, 7:12] = 1
    maps = {}
    for key, value in (("z", np.full((21, 23, 19), 3.0, np.float32)), ("p", np.full((21, 23, 19), 0.2, np.float32))):
        maps[key] = tmp_path / f"case_{key}map.nii.gz"
        nib.Nifti1Image(value, a_aff).to_filename(str(maps[key]))
    maps["lesion"] = tmp_path / "case_lesion.nii.gz"
    nib.Nifti1Image(lesion, a_aff).to_filename(str(maps["lesion"]))
    out = tmp_path / "out"
    out.mkdir()
    written = write_series_maps(maps, prep, out, tmp_path / "flair.nii.gz")
    f_aff = np.asarray(info["series"]["FLAIR"]["affine"])
    f_idx = np.stack(np.meshgrid(*[np.arange(n) for n in (28, 20, 10)], indexing="ij"), -1).reshape(-1, 3)
    to_analysis = np.linalg.inv(a_aff) @ series_to_analysis(info, "FLAIR") @ f_aff
    a_vox = (np.c_[f_idx, np.ones(len(f_idx))] @ to_analysis.T)[:, :3]
    beyond = np.any((a_vox < -1.0) | (a_vox > np.array([21, 23, 19])), axis=1).reshape(28, 20, 10)
    within = np.all((a_vox > 0.01) & (a_vox < np.array([20, 22, 18]) - 0.01), axis=1).reshape(28, 20, 10)
    assert beyond.any() and within.any()
    z, p, les = (nib.load(written["maps"][k]) for k in ("z", "p", "lesion"))
    for img in (z, p, les):
        assert img.shape == (28, 20, 10) and np.allclose(img.affine, f_aff)
    z, p, les = (np.asarray(img.dataobj) for img in (z, p, les))
    assert np.all(z[beyond] == 0.0) and np.allclose(z[within], 3.0)
    assert np.all(p[beyond] == 1.0) and np.allclose(p[within], 0.2)
    assert not les[beyond].any() and les.any() and les.dtype == np.uint8
    report = json.loads(Path(written["report"]).read_text())
    assert report["n_lesions"] == 1 and report["lesions"][0]["voxels"] == int(les.sum())
    assert report["series"] == "FLAIR" and Path(written["report_csv"]).is_file()


def test_lesion_report_counts_components():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:5, 2:5, 2:5] = 1  # 27 voxels
    mask[10:12, 10:12, 10] = 1  # 4 voxels
    img = nib.Nifti1Image(mask, np.diag([1.0, 1.0, 2.0, 1.0]))
    z = nib.Nifti1Image(np.where(mask > 0, 5.0, 0.0).astype(np.float32), img.affine)
    report = lesion_report(img, z)
    assert report["n_lesions"] == 2
    assert report["lesions"][0]["voxels"] == 27 and report["lesions"][0]["volume_ml"] == pytest.approx(0.054)
    assert report["lesions"][0]["centroid_mm"] == [3.0, 3.0, 6.0] and report["lesions"][0]["max_z"] == 5.0
    assert report["total_volume_ml"] == pytest.approx(31 * 2 / 1000)


def test_infer_raw_items_checks_every_entry_first(tmp_path, monkeypatch):
    import monai_qrvae.raw.inverse as inverse

    calls = []
    monkeypatch.setattr(inverse, "infer_raw", lambda model, t1, t2, flair, out, **kw: calls.append((t1, out)) or {})
    for sub in ("sub-001", "sub-002"):
        (tmp_path / sub).mkdir()
        for s in ("T1", "T2", "FLAIR"):
            (tmp_path / sub / f"{s}.nii.gz").write_bytes(b"x")
    items = [
        {"image": [f"{sub}/{s}.nii.gz" for s in ("T1", "T2", "FLAIR")], "raw": True} for sub in ("sub-001", "sub-002")
    ]
    inverse.infer_raw_items("model", items, tmp_path / "out", base_dir=tmp_path, alpha=0.1)
    assert [c[1] for c in calls] == [tmp_path / "out" / "sub-001", tmp_path / "out" / "sub-002"]
    calls.clear()
    bad = [*items, {"image": ["sub-003/T1.nii.gz", "sub-003/T2.nii.gz", "sub-003/FLAIR.nii.gz"], "raw": True}]
    with pytest.raises(MissingSeriesError, match=r"entry 2: T1 series .*sub-003/T1\.nii\.gz does not exist"):
        inverse.infer_raw_items("model", bad, tmp_path / "out", base_dir=tmp_path)
    assert calls == []  # nothing ran before the check failed
    with pytest.raises(ValueError, match="expected .*three raw series"):
        inverse.infer_raw_items("model", [{"image": "a.nii.gz"}], tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------
# input errors
# ---------------------------------------------------------------------------------------------------------------
def test_bundle_raw_items_and_their_one_line_errors(tmp_path, capsys):
    """``inference_raw.json``'s inputs: a raw datalist or three series; bad input is one line and exit status 2."""
    from monai_qrvae.raw.bundle import check_raw_inputs, raw_items

    for name in ("T1", "T2", "FLAIR"):
        (tmp_path / "sub-001").mkdir(exist_ok=True)
        (tmp_path / "sub-001" / f"{name}.nii.gz").write_bytes(b"")
    entry = {"image": ["sub-001/T1.nii.gz", "sub-001/T2.nii.gz", "sub-001/FLAIR.nii.gz"], "raw": True}
    datalist = tmp_path / "raw_datalist.json"
    datalist.write_text(json.dumps({"test": [entry], "tuning": []}))
    (item,) = raw_items(datalist, "test")
    assert item["name"] == "sub-001" and item["series"][2] == str(tmp_path / "sub-001" / "FLAIR.nii.gz")
    (single,) = raw_items(None, t1=item["series"][0], t2=item["series"][1], flair=item["series"][2])
    assert single["series"] == item["series"]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    cases = [
        ((tmp_path / "missing.json", "test"), FileNotFoundError, "missing.json"),
        ((bad_json, "test"), ValueError, "bad.json"),
        ((datalist, "validation"), ValueError, "no 'validation' section"),
        ((datalist, "tuning"), ValueError, "is empty"),
        ((None, "test"), ValueError, "give a raw datalist"),
    ]
    for args, error, needle in cases:
        with pytest.raises(error, match=needle):
            raw_items(*args)
    with pytest.raises(ValueError, match="all three"):
        raw_items(None, t1=item["series"][0])
    with pytest.raises(SystemExit) as stop:  # the override's initialize step: one line on stderr, exit status 2
        check_raw_inputs(tmp_path / "missing.json", "test")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json" in err


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.Nifti1Image(data, np.eye(4) if affine is None else affine).to_filename(str(path))
    return path


def test_load_series_errors_name_the_file(tmp_path):
    with pytest.raises(MissingSeriesError, match=r"T2 series .*nope\.nii\.gz does not exist") as err:
        load_series(tmp_path / "nope.nii.gz", "T2")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    flat = _write(tmp_path / "flat.nii.gz", np.zeros((40, 40), np.float32))
    with pytest.raises(RawInputError, match=r"flat\.nii\.gz has shape \(40, 40\); expected one 3D volume"):
        load_series(flat, "T1")
    nan = np.ones((40, 40, 40), np.float32)
    nan[0, 0, 0] = np.nan
    with pytest.raises(RawInputError, match="1 NaN/Inf voxels"):
        load_series(_write(tmp_path / "nan.nii.gz", nan), "FLAIR")
    with pytest.raises(RawInputError, match="is constant"):
        load_series(_write(tmp_path / "const.nii.gz", np.ones((40, 40, 40), np.float32)), "T1")
    small = np.random.default_rng(0).random((40, 40, 40)).astype(np.float32)
    with pytest.raises(RawInputError, match=r"covers \[40.0, 40.0, 40.0\] mm; expected a head"):
        load_series(_write(tmp_path / "small.nii.gz", small), "T1")
    ok = load_series(_write(tmp_path / "ok.nii.gz", small, np.diag([3.0, 3.0, 3.0, 1.0])), "T1")
    assert ok.shape == (40, 40, 40)


def test_cli_missing_series_exit_2_nothing_written(tmp_path, capsys):
    from monai_qrvae.cli import main

    t2 = _write(tmp_path / "t2.nii.gz", np.random.default_rng(0).random((40, 40, 40)).astype(np.float32))
    out = tmp_path / "out"
    code = main(
        ["preprocess", "--t1", str(tmp_path / "t1.nii.gz"), "--t2", str(t2), "--flair", str(t2), "--out", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.count("\n") == 0 and "T1 series" in err and "t1.nii.gz does not exist" in err


# ---------------------------------------------------------------------------------------------------------------
# the raw-like writer
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coarse_raw(tmp_path_factory):
    from monai_qrvae.raw.synthetic import make_raw_subject

    out = tmp_path_factory.mktemp("raw") / "sub-001"
    spacings = {"T1": (3.0, 3.0, 3.0), "T2": (3.0, 3.0, 4.0), "FLAIR": (2.5, 2.5, 5.0)}
    truth = make_raw_subject(out, 0, lesions=2, seed=3, spacing=4.0, spacings=spacings)
    return out, truth


def test_raw_subject_files_grids_and_motion(coarse_raw):
    out, truth = coarse_raw
    assert truth["label_flair"] == "label_flair.nii.gz" and truth["lesion_voxels"] > 0
    for name, codes in (("T1", "ASL"), ("T2", "LPS"), ("FLAIR", "LAS")):
        img = nib.load(out / f"{name}.nii.gz")
        info = truth["series"][name]
        assert list(img.shape) == info["shape"] and np.allclose(img.affine, info["affine"])
        assert "".join(nib.aff2axcodes(img.affine)) == codes
        assert img.get_data_dtype() == np.int16
        assert np.allclose(sorted(nib.affines.voxel_sizes(img.affine)), sorted(info["spacing_mm"]))
        assert info["motion"]["angle_deg"] <= 10.0 and np.linalg.norm(info["motion"]["shift_mm"]) <= 10.0
        rel = np.asarray(info["t1_to_series"])
        assert rotation_angle_deg(rel) <= 20.0 + 1e-6  # T1 pose and the relative motion, each <= 10 deg
    assert np.allclose(truth["series"]["T1"]["t1_to_series"], np.eye(4))
    mask = nib.load(out / "brain_mask_t1.nii.gz")
    assert mask.shape == tuple(truth["series"]["T1"]["shape"]) and 0 < np.asarray(mask.dataobj).mean() < 0.5


def test_raw_subject_true_pose_puts_the_brain_back(coarse_raw):
    """The FLAIR series sampled through its true pose matches the generator's FLAIR channel inside the brain."""
    from monai_qrvae.data.synthetic import SyntheticBrainGenerator

    out, truth = coarse_raw
    subject = SyntheticBrainGenerator(spacing=4.0, seed=3).generate(0, lesions=2)
    flair = nib.load(out / "FLAIR.nii.gz")
    pose = np.asarray(truth["series"]["FLAIR"]["head_to_series"])
    back = resample_to_grid(np.asarray(flair.dataobj), flair.affine, subject.brain_mask.shape, subject.affine, pose)
    brain = subject.brain_mask > 0
    r_true = np.corrcoef(back[brain], subject.image[..., 2][brain])[0, 1]
    back_wrong = resample_to_grid(np.asarray(flair.dataobj), flair.affine, brain.shape, subject.affine, np.eye(4))
    r_wrong = np.corrcoef(back_wrong[brain], subject.image[..., 2][brain])[0, 1]
    assert r_true > 0.6 and r_true > r_wrong + 0.1
    # the head is there: bright scalp fat on T1 outside the brain, dark skull in between
    t1 = np.asarray(nib.load(out / "T1.nii.gz").dataobj, dtype=np.float32)
    t1_mask = np.asarray(nib.load(out / "brain_mask_t1.nii.gz").dataobj) > 0
    assert np.percentile(t1[~t1_mask], 99.5) > np.percentile(t1[t1_mask], 50)


def test_make_raw_cohort_datalist(tmp_path):
    from monai_qrvae.data import make_cohort
    from monai_qrvae.raw.synthetic import make_raw_cohort

    datalist = make_cohort(tmp_path / "data", n_healthy=1, n_lesion=1, seed=1, spacing=4.0)
    spacings = {"T1": (4.0, 4.0, 4.0), "T2": (4.0, 4.0, 4.0), "FLAIR": (4.0, 4.0, 6.0)}
    path = make_raw_cohort(datalist, subjects=["sub-002"], spacings=spacings)
    raw = json.loads(path.read_text())
    assert path == tmp_path / "data" / "raw" / "raw_datalist.json"
    assert raw["training"] == [] and len(raw["test"]) == 1
    entry = raw["test"][0]
    assert entry["raw"] is True and [Path(p).name for p in entry["image"]] == ["T1.nii.gz", "T2.nii.gz", "FLAIR.nii.gz"]
    assert all((path.parent / p).is_file() for p in [*entry["image"], entry["truth"], entry["label_flair"]])
    assert (path.parent / entry["analysis_ready"]).resolve() == (tmp_path / "data" / "sub-002" / "image.nii.gz")
    with pytest.raises(ValueError, match=r"subjects \['sub-009'\] are not in the datalist"):
        make_raw_cohort(datalist, subjects=["sub-009"])


def test_erode_mm_removes_the_outer_shell_in_mm():
    from monai_qrvae.raw.preprocess import _erode_mm

    grid = np.indices((41, 41, 21)).astype(float)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # anisotropic: 1 x 1 x 2 mm
    dist = np.sqrt((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 + (2 * (grid[2] - 10)) ** 2)
    ball = dist <= 15.0  # a ball of radius 15 mm
    inner = _erode_mm(ball, affine, 2.0)
    assert inner.sum() < ball.sum() and not (inner & ~ball).any()
    assert inner[dist <= 12.0].all() and not inner[dist > 13.5].any()  # ~2 mm off the surface, in mm not voxels
    assert _erode_mm(ball, affine, 0.0) is ball


def test_analysis_grid_is_the_generators():
    from monai_qrvae.data.synthetic import SyntheticBrainGenerator
    from monai_qrvae.raw.preprocess import analysis_grid

    shape, affine = analysis_grid(2.0)
    gen = SyntheticBrainGenerator(spacing=2.0)
    assert shape == gen.shape and np.allclose(affine, gen.affine)


# ---------------------------------------------------------------------------------------------------------------
# end to end (ANTs + deepbet)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_preprocess_end_to_end_against_truth(tmp_path):
    pytest.importorskip("ants")
    pytest.importorskip("deepbet")
    from monai_qrvae.raw.preprocess import preprocess
    from monai_qrvae.raw.synthetic import make_raw_subject

    raw = tmp_path / "raw"
    spacings = {"T1": (1.5, 1.5, 1.5), "T2": (1.2, 1.2, 2.5), "FLAIR": (1.2, 1.2, 3.0)}
    truth = make_raw_subject(raw, 1, lesions=True, seed=5, spacings=spacings)
    series = [raw / f"{s}.nii.gz" for s in ("T1", "T2", "FLAIR")]

    # a series that is not a head: refused (no similarity peak), nothing written; or, when the registration finds a
    # chance peak (ANTs is not bit-reproducible), warned that nothing beyond the outline aligns
    noise = tmp_path / "noise.nii.gz"
    rng = np.random.default_rng(0)
    _write(noise, rng.random((90, 90, 60)).astype(np.float32) * 1000, np.diag([2.0, 2.0, 3.0, 1.0]))
    try:
        noisy = preprocess(series[0], series[1], noise, tmp_path / "bad")
    except RegistrationError as e:
        assert re.search(r"FLAIR series .*noise\.nii\.gz does not align with the T1", str(e)), str(e)
        assert not (tmp_path / "bad").exists()
    else:
        assert any("FLAIR" in w for w in noisy["warnings"]), noisy["warnings"]

    # (a T2 of another patient is no longer refused: docs/raw.md, 'Alignment check')
    out = tmp_path / "prep"
    info = preprocess(*series, out, threads=2)
    assert (
        info["warnings"] == [] and info["similarity"]["T2_image_sharpness"] > info["similarity"]["T2_outline_sharpness"]
    )
    image = nib.load(out / "image.nii.gz")
    assert image.shape[-1] == 3 and image.get_data_dtype() == np.float32
    assert image.shape[:3] == tuple(info["analysis"]["shape"])
    mask = np.asarray(nib.load(out / "brain_mask.nii.gz").dataobj) > 0
    data = np.asarray(image.dataobj)
    assert np.all(data[~mask] == 0) and np.all(data[mask].mean(0) > 0)
    assert all((out / "transforms" / f).is_file() for f in ("T2_to_T1.mat", "FLAIR_to_T1.mat", "T1_to_MNI.mat"))
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing["seconds"]) >= {"n4", "coregistration", "brain_extraction", "template_alignment"}

    truth_mask_img = nib.load(raw / "brain_mask_t1.nii.gz")
    truth_mask = np.asarray(truth_mask_img.dataobj) > 0
    est_mask = np.asarray(nib.load(out / "brain_mask_t1.nii.gz").dataobj) > 0
    assert dice(truth_mask, est_mask) >= 0.95
    pts = (np.c_[np.argwhere(truth_mask), np.ones(int(truth_mask.sum()))] @ truth_mask_img.affine.T)[:, :3]
    for name in ("T2", "FLAIR"):
        error = mean_displacement(
            np.asarray(truth["series"][name]["t1_to_series"]), np.asarray(info["t1_to_series"][name]), pts
        )
        assert error <= 1.0, (name, error)

    # the analysis brain mask mapped back onto the T1 grid matches the truth there too
    back = maps_to_series(out / "brain_mask.nii.gz", out, reference="t1")
    assert dice(np.asarray(back.dataobj), truth_mask) >= 0.93


@pytest.mark.slow
def test_cli_infer_raw_series_writes_maps_on_the_flair_grid(tmp_path, capsys):
    """``qrvae infer --model M --t1 --t2 --flair --out D``: z, p, lesion and report on the FLAIR series' own grid."""
    pytest.importorskip("ants")
    pytest.importorskip("deepbet")
    import shutil

    from monai_qrvae.cli import main
    from monai_qrvae.raw.synthetic import make_raw_subject

    raw = tmp_path / "raw"
    make_raw_subject(
        raw, 1, lesions=True, seed=5, spacings={"T1": (2.0,) * 3, "T2": (2.0, 2.0, 3.0), "FLAIR": (1.5, 1.5, 3.0)}
    )
    model = tmp_path / "model"  # a copy of the shipped model folder (weights, configuration, calibration)
    shutil.copytree(Path(__file__).resolve().parents[2] / "bundle" / "models", model)
    series = [str(raw / f"{s}.nii.gz") for s in ("T1", "T2", "FLAIR")]
    argv = ["infer", "--model", str(model), "--t1", series[0], "--t2", series[1], "--flair", series[2]]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-png"]) == 0, capsys.readouterr().err
    flair = nib.load(series[2])
    for postfix in ("zmap", "pmap", "lesion"):
        out = nib.load(tmp_path / "out" / f"FLAIR_{postfix}.nii.gz")
        assert out.shape == flair.shape and np.allclose(out.affine, flair.affine, atol=1e-4), postfix
    p = np.asarray(nib.load(tmp_path / "out" / "FLAIR_pmap.nii.gz").dataobj)
    assert p.min() >= 0 and p.max() <= 1 and (p == 1).mean() > 0.5  # p = 1 wherever nothing was tested
    report = json.loads((tmp_path / "out" / "FLAIR_lesions.json").read_text())
    lesion = np.asarray(nib.load(tmp_path / "out" / "FLAIR_lesion.nii.gz").dataobj) > 0
    from scipy import ndimage

    assert report["grid"]["shape"] == list(flair.shape)
    assert report["n_lesions"] == ndimage.label(lesion, structure=np.ones((3, 3, 3)))[1]
    # mixing raw series with image paths is refused with one line, before anything is written
    assert main([*argv, "--out", str(tmp_path / "bad"), series[0]]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def raw_cohort_cli(tmp_path_factory):
    """``qrvae make-data --raw`` (3 mm, one lesion subject in ``test``) and ``qrvae infer`` of its raw datalist with
    the shipped model: ``(data folder, raw datalist, CLI output folder, exit status, stderr)``."""
    pytest.importorskip("ants")
    pytest.importorskip("deepbet")
    import contextlib
    import io

    from monai_qrvae.cli import main

    root = tmp_path_factory.mktemp("raw_cohort")
    data, out = root / "data", root / "cli"
    argv = ["make-data", "--out", str(data), "--healthy", "3", "--lesion", "1", "--spacing", "3", "--raw"]
    assert main(argv) == 0
    raw_list = data / "raw" / "raw_datalist.json"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["infer", "--datalist", str(raw_list), "--out", str(out), "--no-png", "--no-progress"])
    return data, raw_list, out, rc, err.getvalue()


def _flair_dice(raw_dir: Path, entry: dict, lesion_path: Path) -> float:
    truth = np.asarray(nib.load(raw_dir / entry["label_flair"]).dataobj) > 0
    return dice(np.asarray(nib.load(lesion_path).dataobj) > 0, truth)


@pytest.mark.slow
def test_make_data_raw_and_infer_from_a_raw_datalist(raw_cohort_cli):
    """`qrvae make-data --raw` writes raw-like test series; `qrvae infer --datalist raw_datalist.json` reads them and
    finds the lesions on the FLAIR grid (the extracted brain's outer 2 mm left out of the analysis: with it, the
    shipped model flagged 81 % of the brain, Dice 0.007)."""
    data, raw_list_path, out, rc, err = raw_cohort_cli
    assert rc == 0, err
    raw_list = json.loads(raw_list_path.read_text())
    test = json.loads((data / "datalist.json").read_text())["test"]
    assert [Path(e["image"][0]).parent.name for e in raw_list["test"]] == [Path(e["image"]).parent.name for e in test]
    assert all(e["raw"] and len(e["image"]) == 3 for e in raw_list["test"])
    for entry in raw_list["test"]:
        name = Path(entry["image"][0]).parent.name
        flair = nib.load(data / "raw" / entry["image"][2])
        lesion = nib.load(out / name / "FLAIR_lesion.nii.gz")
        assert lesion.shape == flair.shape and np.allclose(lesion.affine, flair.affine, atol=1e-4)
        assert (out / name / "FLAIR_lesions.json").is_file() and (out / name / "FLAIR_lesions.csv").is_file()
        assert _flair_dice(data / "raw", entry, out / name / "FLAIR_lesion.nii.gz") >= 0.5


@pytest.mark.slow
def test_without_the_mask_erosion_the_shipped_model_flags_most_of_a_raw_brain(raw_cohort_cli, tmp_path):
    """docs/raw.md, "Analysed brain": with deepbet's whole mask (``mask_erosion_mm=0``) the dark partial-volume shell
    shifts the normalisation and the shipped model flags most of the brain (measured 81 %); the default 2 mm erosion
    (the CLI run of the fixture) flags a small fraction and finds the lesions."""
    from monai_qrvae.raw.inverse import infer_raw

    data, raw_list_path, cli_out, rc, err = raw_cohort_cli
    assert rc == 0, err
    entry = json.loads(raw_list_path.read_text())["test"][0]
    name = Path(entry["image"][0]).parent.name
    series = [data / "raw" / p for p in entry["image"]]
    model = Path(__file__).resolve().parents[2] / "bundle" / "models"
    out = tmp_path / "no_erosion"
    infer_raw(model, *series, out, preprocess_kwargs={"mask_erosion_mm": 0.0}, save_png=False)

    def flagged_share(folder: Path) -> float:
        brain = np.asarray(nib.load(folder / "preprocessed" / "brain_mask.nii.gz").dataobj) > 0
        lesion = np.asarray(nib.load(next((folder / "analysis").glob("*_lesion.nii.gz"))).dataobj) > 0
        return float((lesion & brain).sum() / brain.sum())

    assert flagged_share(out) > 0.5
    assert flagged_share(cli_out / name) < 0.05


def _bundle_raw_cmd(**overrides: str) -> list[str]:
    import sys

    bundle = Path(__file__).resolve().parents[2] / "bundle"
    configs = (
        "['" + str(bundle / "configs" / "inference.json") + "','" + str(bundle / "configs/inference_raw.json") + "']"
    )
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(bundle)]
    cmd += ["--meta_file", str(bundle / "configs" / "metadata.json")]
    for key, value in overrides.items():
        cmd += [f"--{key}", value]
    return cmd


@pytest.mark.slow
def test_bundle_inference_raw_matches_the_cli(raw_cohort_cli, tmp_path):
    """``monai.bundle run`` with ``configs/inference_raw.json`` layered on ``inference.json``: the raw datalist's
    subjects preprocessed, analysed by the bundle's evaluator and written back on the FLAIR grid with the lesion
    report -- the maps of ``qrvae infer`` (same shipped model files, same preprocessing)."""
    import subprocess

    data, raw_list_path, cli_out, rc, err = raw_cohort_cli
    assert rc == 0, err
    out = tmp_path / "bundle"
    proc = subprocess.run(
        _bundle_raw_cmd(dataset_dir=str(data), output_dir=str(out)), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for entry in json.loads(raw_list_path.read_text())["test"]:
        name = Path(entry["image"][0]).parent.name
        flair = nib.load(data / "raw" / entry["image"][2])
        for postfix in ("zmap", "pmap", "lesion"):
            mine = nib.load(out / name / f"FLAIR_{postfix}.nii.gz")
            assert mine.shape == flair.shape and np.allclose(mine.affine, flair.affine, atol=1e-4), postfix
        # ANTs is not bit-reproducible (random sampling, threads: transforms differ by ~0.01 mm between two runs),
        # so the two runs agree up to the brain's edge voxels, not bit for bit
        lesion_bundle = np.asarray(nib.load(out / name / "FLAIR_lesion.nii.gz").dataobj) > 0
        lesion_cli = np.asarray(nib.load(cli_out / name / "FLAIR_lesion.nii.gz").dataobj) > 0
        assert dice(lesion_bundle, lesion_cli) >= 0.9
        assert _flair_dice(data / "raw", entry, out / name / "FLAIR_lesion.nii.gz") >= 0.5
        z_bundle = np.asarray(nib.load(out / name / "FLAIR_zmap.nii.gz").dataobj)
        z_cli = np.asarray(nib.load(cli_out / name / "FLAIR_zmap.nii.gz").dataobj)
        assert np.median(np.abs(z_bundle - z_cli)[(z_bundle != 0) & (z_cli != 0)]) < 0.05
        report = json.loads((out / name / "FLAIR_lesions.json").read_text())
        assert report["n_lesions"] >= 1
        assert (out / name / "FLAIR_lesions.csv").is_file()
        assert (out / "preprocessed" / name / "image.nii.gz").is_file()
    # a missing series: one line, exit status 2, nothing written
    bad = tmp_path / "bad"
    series = {k: str(data / "raw" / entry["image"][i]) for i, k in enumerate(("t1", "t2", "flair"))}
    series["t2"] = str(tmp_path / "missing_T2.nii.gz")
    proc = subprocess.run(_bundle_raw_cmd(output_dir=str(bad), **series), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "missing_T2.nii.gz" in proc.stderr and not bad.exists()


# ---------------------------------------------------------------------------------------------------------------
# the alignment check on real scans (../shared/real beside the checkout; checked there, never tuned on)
# ---------------------------------------------------------------------------------------------------------------
_REAL = Path(__file__).resolve().parents[2].parent / "shared" / "real"
_NO_REAL = f"the real cases are not here ({_REAL}; CI has them beside the checkout)"


def _real_check(t1: str, moving: str, name: str, tmp_path: Path) -> tuple[dict[str, float], list[str]]:
    """The check of ``qrvae preprocess`` on two real series: N4 work copies, rigid registration, then
    :func:`_check_alignment` with the default refusal bound: ``(figures, warnings)``; raises when refused."""
    import importlib

    pp = importlib.import_module("monai_qrvae.raw.preprocess")
    work = {}
    for key, file in (("T1", t1), (name, moving)):
        img = pp.load_series(_REAL / file, key)
        _, small, affine = pp._n4(np.asarray(img.dataobj, np.float32), img.affine, 2.0, 6.0)
        work[key] = (small, affine)
    t1_to_moving = pp._register(*work["T1"], *work[name], "Rigid", tmp_path / "x.mat")
    paths = {"T1": _REAL / t1, name: _REAL / moving}
    warnings: list[str] = []
    limit = pp.DEFAULT_THRESHOLDS["sharpness"]
    figures = pp._check_alignment(name, work, t1_to_moving, pp._head_mask(work["T1"][0]), limit, paths, warnings)
    return figures, warnings


@pytest.mark.slow
@pytest.mark.skipif(not _REAL.is_dir(), reason=_NO_REAL)
def test_real_other_patient_series_fail_the_alignment_check(tmp_path):
    """du7294's T1 with met110's T2 and FLAIR (another patient, skull-stripped both): refused (no similarity peak) or
    at least warned. Their sharpness lies at the refusal bound (-0.03..0.01 between runs), so either can happen;
    met110's T1 with du7294's series is neither (docs/raw.md, "Alignment check")."""
    pytest.importorskip("ants")
    for name, moving in (("T2", "met110_t2.nii.gz"), ("FLAIR", "met110_flair.nii.gz")):
        try:
            _, warnings = _real_check("du7294_native_t1.nii.gz", moving, name, tmp_path)
        except RegistrationError as e:
            assert "is not a similarity peak" in str(e)
        else:
            assert warnings and "no sharper than that of the two series' outlines" in warnings[0], (moving, warnings)


@pytest.mark.slow
@pytest.mark.skipif(not _REAL.is_dir(), reason=_NO_REAL)
def test_real_same_patient_series_pass_the_alignment_check(tmp_path):
    """du7294's own T2 and FLAIR (skull-stripped, each on its own grid) with its T1: accepted (at most a warning)."""
    pytest.importorskip("ants")
    for name, moving in (("T2", "du7294_native_t2.nii.gz"), ("FLAIR", "du7294_native_flair.nii.gz")):
        figures, _ = _real_check("du7294_native_t1.nii.gz", moving, name, tmp_path)
        assert figures["sharpness"] > 0.0, (moving, figures)  # not refused
