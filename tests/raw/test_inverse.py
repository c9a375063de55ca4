"""Raw series without ANTs: ``infer_raw`` on a stored preprocessing (known transforms) and a tiny untrained model.

The registration (``preprocess``) is replaced by a stand-in that writes what it would: an analysis-ready image and
brain mask and a ``transforms.json`` whose FLAIR, T2 and T1 grids are oblique but map onto the analysis grid by a
known integer voxel map (a flip, a permutation and a shift), so the maps ``infer_raw`` writes on a series' grid can
be read off the analysis maps by indexing, without any resampling code.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

import monai_qrvae.workflows as workflows
from monai_qrvae.raw.errors import MissingSeriesError
from monai_qrvae.raw.geometry import rigid_matrix
from monai_qrvae.raw.inverse import (
    _stem,
    analysis_maps_by_key,
    infer_raw,
    lesion_report,
    load_transforms,
    maps_to_series,
    raw_entries,
    series_to_analysis,
    write_series_maps,
)
from monai_qrvae.workflows import ModelConfig, build_networks

# the module (``monai_qrvae.raw.preprocess`` as an attribute is the function the package re-exports)
preprocess_module = importlib.import_module("monai_qrvae.raw.preprocess")

#: the analysis grid of the tiny case: 4 mm, 20 x 24 x 18 voxels.
ANALYSIS_SHAPE = (20, 24, 18)
ANALYSIS_AFFINE = np.array([[4.0, 0, 0, -40.0], [0, 4.0, 0, -52.0], [0, 0, 4.0, -30.0], [0, 0, 0, 1.0]])
#: series voxel -> analysis voxel (homogeneous, integer): FLAIR a = (j + 2, 20 - i, k - 3); T1 a = (i - 2, j + 3, k);
#: T2 a = (k + 1, j - 2, 20 - i). Each series sees beyond the analysis grid on some side.
VOXEL_MAPS = {
    "FLAIR": np.array([[0, 1, 0, 2], [-1, 0, 0, 20], [0, 0, 1, -3], [0, 0, 0, 1]], float),
    "T1": np.array([[1, 0, 0, -2], [0, 1, 0, 3], [0, 0, 1, 0], [0, 0, 0, 1]], float),
    "T2": np.array([[0, 0, 1, 1], [0, 1, 0, -2], [-1, 0, 0, 20], [0, 0, 0, 1]], float),
}
SERIES_SHAPES = {"FLAIR": (22, 20, 22), "T1": (23, 22, 18), "T2": (24, 28, 18)}
SERIES_FILES = {"T1": "t1_mprage.nii.gz", "T2": "t2_tse.nii.gz", "FLAIR": "flair_3mm.nii.gz"}


def _transforms() -> dict:
    """transforms.json of the tiny case: rotated and moved T1 (MNI -> T1) and T2, FLAIR (T1 -> series) poses; each
    series' affine is what puts its voxel f at world ``t1_to_series @ mni_to_t1 @ A_analysis @ M f``."""
    mni_to_t1 = rigid_matrix((4.0, -3.0, 7.0), (2.5, -1.0, 3.0))
    t1_to_series = {
        "T1": np.eye(4),
        "T2": rigid_matrix((-5.0, 2.0, 1.0), (1.0, 4.0, -2.0)),
        "FLAIR": rigid_matrix((6.0, -2.0, -8.0), (-3.0, 2.0, 5.0)),
    }
    series = {
        name: {
            "shape": list(SERIES_SHAPES[name]),
            "affine": (t1_to_series[name] @ mni_to_t1 @ ANALYSIS_AFFINE @ VOXEL_MAPS[name]).tolist(),
        }
        for name in ("T1", "T2", "FLAIR")
    }
    return {
        "series": series,
        "analysis": {
            "shape": list(ANALYSIS_SHAPE),
            "affine": ANALYSIS_AFFINE.tolist(),
            "channels": ["T1", "T2", "FLAIR"],
        },
        "mni_to_t1": mni_to_t1.tolist(),
        "t1_to_series": {k: v.tolist() for k, v in t1_to_series.items()},
        "similarity": {"T2_sharpness": 0.9},
        "warnings": [],
    }


INFO = _transforms()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained model folder, one analysis-ready case (a smooth random 3-contrast volume in an ellipsoid
    brain) and the raw series' file names."""
    from scipy.ndimage import gaussian_filter

    model = tmp_path_factory.mktemp("model")
    config = ModelConfig(image_size=32, num_slices=8, quantiles=(0.15, 0.5, 0.85), score="flair", quantile_score=False)
    torch.manual_seed(0)
    _, net = build_networks(config)
    config.save(model / "model_config.json")
    torch.save(net.state_dict(), model / "model.pt")
    case = tmp_path_factory.mktemp("case")
    grid = np.indices(ANALYSIS_SHAPE) - (np.array(ANALYSIS_SHAPE) - 1)[:, None, None, None] / 2
    brain = ((grid / (np.array(ANALYSIS_SHAPE)[:, None, None, None] * 0.4)) ** 2).sum(0) <= 1.0
    rng = np.random.default_rng(4)
    image = np.stack([gaussian_filter(rng.random(ANALYSIS_SHAPE), 1.0) + 0.5 for _ in range(3)], -1) * brain[..., None]
    nib.Nifti1Image(image.astype(np.float32), ANALYSIS_AFFINE).to_filename(str(case / "image.nii.gz"))
    nib.Nifti1Image(brain.astype(np.uint8), ANALYSIS_AFFINE).to_filename(str(case / "brain_mask.nii.gz"))
    raw = tmp_path_factory.mktemp("raw")
    paths = {}
    for name, file in SERIES_FILES.items():  # only their names matter: the stand-in does not read them
        paths[name] = raw / file
        paths[name].write_bytes(b"")
    return {
        "model": model,
        "image": case / "image.nii.gz",
        "mask": case / "brain_mask.nii.gz",
        "info": INFO,
        "paths": paths,
    }


def _stand_in(tiny, calls):
    """``preprocess`` as it would run on the tiny case: the files and transforms.json, and the same return keys."""

    def preprocess(t1, t2, flair, out_dir, **kwargs):
        calls.append(((t1, t2, flair, Path(out_dir)), kwargs))
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny["image"], out / "image.nii.gz")
        shutil.copyfile(tiny["mask"], out / "brain_mask.nii.gz")
        (out / "transforms.json").write_text(json.dumps(tiny["info"]))
        files = [str(out / f) for f in ("image.nii.gz", "brain_mask.nii.gz", "transforms.json")]
        return {**tiny["info"], "timing": {"total_seconds": 1.0}, "files": files}

    return preprocess


def _on_series(analysis: np.ndarray, name: str, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """``analysis`` read on series ``name``'s grid through its integer voxel map (``fill`` beyond the analysis
    grid), and where the comparison is exact (not on the analysis grid's outer voxel layer, where the map's rounding
    decides between a value and the fill)."""
    idx = np.indices(SERIES_SHAPES[name]).reshape(3, -1)
    a = (VOXEL_MAPS[name][:3, :3] @ idx + VOXEL_MAPS[name][:3, 3:]).astype(int)
    size = np.array(analysis.shape)[:, None]
    inside = np.all((a >= 0) & (a < size), axis=0)
    edge = inside & np.any((a == 0) | (a == size - 1), axis=0)
    out = np.full(idx.shape[1], fill, np.float64)
    out[inside] = analysis[tuple(a[:, inside])]
    return out.reshape(SERIES_SHAPES[name]), ~edge.reshape(SERIES_SHAPES[name])


@pytest.fixture(scope="module")
def flair_run(tiny, tmp_path_factory):
    """One ``infer_raw`` (FLAIR grid, the default) with the real ``infer``, whose analysis report gets a ``site``
    entry (as a calibrated site check writes) to follow into the series' report."""
    out = tmp_path_factory.mktemp("infer_raw") / "case"
    calls, infer_calls = [], []
    real_infer = workflows.infer

    def infer(model_dir, images, output_dir, **kwargs):
        infer_calls.append((Path(model_dir), images, Path(output_dir), kwargs))
        written = real_infer(model_dir, images, output_dir, **kwargs)
        report = next(p for p in written if p.name.endswith("_lesions.json"))
        report.write_text(json.dumps({**json.loads(report.read_text()), "site": {"shift": 0.25}}))
        return written

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(preprocess_module, "preprocess", _stand_in(tiny, calls))
        mp.setattr(workflows, "infer", infer)
        p = tiny["paths"]
        result = infer_raw(
            tiny["model"],
            p["T1"],
            p["T2"],
            p["FLAIR"],
            out,
            preprocess_kwargs={"threads": 1, "alignment_check": False},
            threshold="gaussian",
            alpha=0.5,
            save_png=False,
        )
    return out, result, calls, infer_calls


def test_infer_raw_on_the_flair_grid(tiny, flair_run):
    """preprocess, then infer on its output; z (0 beyond the analysis grid), p (1 there) and lesion maps on the FLAIR
    file's shape and affine, equal to the analysis maps read through the FLAIR grid's voxel map; the report counts
    the FLAIR lesion map's lesions and carries the analysis report's site check. (All in the one test that uses
    the module fixture: mutmut runs on a mutant only the tests it recorded calling the mutated function, and it
    records a cached fixture's calls for the first of its tests only.)"""
    out, result, calls, infer_calls = flair_run
    p = tiny["paths"]
    assert calls == [((p["T1"], p["T2"], p["FLAIR"], out / "preprocessed"), {"threads": 1, "alignment_check": False})]
    ((model, images, analysis_dir, kwargs),) = infer_calls
    assert model == tiny["model"] and analysis_dir == out / "analysis"
    prep = out / "preprocessed"
    assert images == [{"image": str(prep / "image.nii.gz"), "brain_mask": str(prep / "brain_mask.nii.gz")}]
    assert kwargs == {"threshold": "gaussian", "alpha": 0.5, "save_png": False}
    # what preprocess returned, only its timing, similarity figures and files
    assert result["preprocess"] == {
        "timing": {"total_seconds": 1.0},
        "similarity": {"T2_sharpness": 0.9},
        "files": [str(prep / f) for f in ("image.nii.gz", "brain_mask.nii.gz", "transforms.json")],
    }
    stem = str(out / "analysis" / "preprocessed")  # named after the image's folder
    suffixes = ("_zmap.nii.gz", "_pmap.nii.gz", "_lesion.nii.gz", "_lesions.json", "_lesions.csv")
    assert result["analysis_maps"] == [stem + s for s in suffixes]
    assert all(Path(f).is_file() for f in result["analysis_maps"])
    flair_affine = np.asarray(tiny["info"]["series"]["FLAIR"]["affine"])
    assert result["maps"] == {
        "z": str(out / "flair_3mm_zmap.nii.gz"),
        "p": str(out / "flair_3mm_pmap.nii.gz"),
        "lesion": str(out / "flair_3mm_lesion.nii.gz"),
    }
    analysis = {
        k: np.asarray(nib.load(out / "analysis" / f"preprocessed_{k}.nii.gz").dataobj) for k in ("zmap", "pmap")
    }
    analysis["lesion"] = np.asarray(nib.load(out / "analysis" / "preprocessed_lesion.nii.gz").dataobj)
    assert analysis["lesion"].any() and (analysis["pmap"] < 1).any()  # a random network at alpha 0.5 flags voxels
    for key, postfix, fill in (("z", "zmap", 0.0), ("p", "pmap", 1.0), ("lesion", "lesion", 0.0)):
        img = nib.load(result["maps"][key])
        assert img.shape == SERIES_SHAPES["FLAIR"] and np.allclose(img.affine, flair_affine, atol=1e-5)
        expected, exact = _on_series(analysis[postfix], "FLAIR", fill)
        data = np.asarray(img.dataobj)
        assert np.allclose(data[exact], expected[exact], atol=1e-4), key
        assert (expected[exact] == fill).mean() > 0.2 and (expected[exact] != fill).any()  # both sides checked
    lesion = np.asarray(nib.load(result["maps"]["lesion"]).dataobj)
    assert lesion.dtype == np.uint8
    report = json.loads(Path(result["report"]).read_text())
    assert result["report"] == str(out / "flair_3mm_lesions.json")
    assert result["report_csv"] == str(out / "flair_3mm_lesions.csv") and Path(result["report_csv"]).is_file()
    assert report["n_lesions"] == ndimage.label(lesion > 0, structure=np.ones((3, 3, 3)))[1] >= 1
    assert report["grid"]["shape"] == list(SERIES_SHAPES["FLAIR"])
    z = np.asarray(nib.load(result["maps"]["z"]).dataobj)
    assert max(e["max_z"] for e in report["lesions"]) == pytest.approx(z[lesion > 0].max(), abs=1e-3)  # z of FLAIR
    assert report["series"] == "FLAIR" and report["source"] == os.path.abspath(tiny["paths"]["FLAIR"])
    assert report["site"] == {"shift": 0.25}  # carried over from the analysis report


@pytest.mark.parametrize("reference", ["t1", "T2"])
def test_infer_raw_reference_series_picks_its_grid_and_file_name(tiny, flair_run, tmp_path, monkeypatch, reference):
    """``reference``: the maps and report go on that series' grid (any case), named after that series' file; the
    analysis maps are the stored ones of the FLAIR run (``infer`` is not run again), for T2 without a lesion report
    on the analysis grid."""
    first_out, first, _, _ = flair_run
    name = reference.upper()
    calls = []

    def infer(model_dir, images, output_dir, **kwargs):  # the analysis maps (and for t1 the report) of the first run
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True)
        written = []
        for path in map(Path, first["analysis_maps"][: 4 if name == "T1" else 3]):
            shutil.copyfile(path, output_dir / path.name)
            written.append(output_dir / path.name)
        return written

    monkeypatch.setattr(preprocess_module, "preprocess", _stand_in(tiny, calls))
    monkeypatch.setattr(workflows, "infer", infer)
    p = tiny["paths"]
    result = infer_raw(tiny["model"], p["T1"], p["T2"], p["FLAIR"], tmp_path, reference=reference)
    assert calls[0][1] == {}  # no preprocess_kwargs: none passed on
    stem = Path(SERIES_FILES[name]).name[: -len(".nii.gz")]
    assert result["maps"] == {
        "z": str(tmp_path / f"{stem}_zmap.nii.gz"),
        "p": str(tmp_path / f"{stem}_pmap.nii.gz"),
        "lesion": str(tmp_path / f"{stem}_lesion.nii.gz"),
    }
    affine = np.asarray(tiny["info"]["series"][name]["affine"])
    for key, postfix, fill in (("z", "zmap", 0.0), ("p", "pmap", 1.0), ("lesion", "lesion", 0.0)):
        img = nib.load(result["maps"][key])
        assert img.shape == SERIES_SHAPES[name] and np.allclose(img.affine, affine, atol=1e-5)
        analysis = np.asarray(nib.load(first_out / "analysis" / f"preprocessed_{postfix}.nii.gz").dataobj)
        expected, exact = _on_series(analysis, name, fill)
        assert np.allclose(np.asarray(img.dataobj)[exact], expected[exact], atol=1e-4), key
    report = json.loads(Path(result["report"]).read_text())
    assert report["series"] == name and report["source"] == os.path.abspath(p[name])
    assert report.get("site") == ({"shift": 0.25} if name == "T1" else None)  # no analysis report: no site


def test_infer_raw_without_a_model_config_fails_before_preprocessing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(preprocess_module, "preprocess", _stand_in({}, calls))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.pt").write_bytes(b"")
    series = [tmp_path / f for f in SERIES_FILES.values()]
    with pytest.raises(FileNotFoundError, match="has no model_config.json"):
        infer_raw(tmp_path / "model", *series, tmp_path / "out")
    assert calls == [] and not (tmp_path / "out").exists()
    (tmp_path / "model" / "model_config.json").write_text("{}")
    with pytest.raises(ValueError, match="reference must be one of"):
        infer_raw(tmp_path / "model", *series, tmp_path / "out", reference="dwi")
    assert calls == []


def test_infer_raw_items_passes_the_model_and_options_to_each_subject(tmp_path, monkeypatch):
    import monai_qrvae.raw.inverse as inverse

    calls = []
    monkeypatch.setattr(inverse, "infer_raw", lambda *args, **kw: calls.append((args, kw)) or {"ok": len(calls)})
    (tmp_path / "sub-1").mkdir()
    for name in SERIES_FILES.values():
        (tmp_path / "sub-1" / name).write_bytes(b"")
    item = {"image": [f"sub-1/{n}" for n in SERIES_FILES.values()], "raw": True}
    assert inverse.infer_raw_items("model", [item], tmp_path / "out", base_dir=tmp_path, alpha=0.1) == [{"ok": 1}]
    series = [tmp_path / "sub-1" / n for n in SERIES_FILES.values()]
    assert calls == [(("model", *series, tmp_path / "out" / "sub-1"), {"alpha": 0.1})]


def test_analysis_maps_by_key_picks_the_three_maps_by_their_postfix():
    written = [
        Path("a/case_zmap.nii.gz"),
        "a/case_pmap.nii.gz",
        Path("a/case_lesion.nii.gz"),
        Path("a/case_lesions.json"),
        Path("a/case_zmap.png"),
    ]
    assert analysis_maps_by_key(written) == {
        "z": Path("a/case_zmap.nii.gz"),
        "p": Path("a/case_pmap.nii.gz"),
        "lesion": Path("a/case_lesion.nii.gz"),
    }
    with pytest.raises(RuntimeError, match=r"\['p', 'lesion'\] lack"):
        analysis_maps_by_key([Path("a/case_zmap.nii.gz"), Path("a/case_lesion.png"), Path("a/case_pmap.nii")])


# ---------------------------------------------------------------------------------------------------------------
# maps_to_series and its inputs, on the stored transforms of the tiny case
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    (out / "transforms.json").write_text(json.dumps(INFO))
    return out, ANALYSIS_SHAPE, ANALYSIS_AFFINE


def test_load_transforms_refuses_incomplete_or_broken_files(prep, tmp_path):
    out, _, _ = prep
    assert load_transforms(out)["mni_to_t1"] == load_transforms(out / "transforms.json")["mni_to_t1"]
    info = json.loads((out / "transforms.json").read_text())
    del info["mni_to_t1"], info["series"]
    (tmp_path / "transforms.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"lacks \['series', 'mni_to_t1'\]"):
        load_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_transforms(tmp_path)


def test_series_to_analysis_defaults_to_the_flair_series():
    info = INFO
    expected = np.linalg.inv(np.asarray(info["mni_to_t1"])) @ np.linalg.inv(np.asarray(info["t1_to_series"]["FLAIR"]))
    assert np.allclose(series_to_analysis(info), expected)
    assert np.allclose(series_to_analysis(info, "t1"), np.linalg.inv(np.asarray(info["mni_to_t1"])))


def test_maps_to_series_inputs_channels_and_header(prep):
    """An array, a NIfTI image or a file; 3D, 4D with one channel (squeezed) or several (kept); the output carries
    the series' affine as scanner-coded qform and sform, in mm."""
    out, shape, a_aff = prep
    ramp = np.indices(shape).sum(0).astype(np.float32)  # linear: trilinear sampling at the integer map is exact
    expected, exact = _on_series(ramp, "FLAIR", 0.0)
    for source in (ramp, nib.Nifti1Image(ramp, a_aff), ramp[..., None]):
        img = maps_to_series(source, out)
        assert img.shape == SERIES_SHAPES["FLAIR"] and img.get_data_dtype() == np.float32
        assert np.allclose(np.asarray(img.dataobj)[exact], expected[exact], atol=1e-3)
    two = maps_to_series(np.stack([ramp, 2 * ramp], -1), out)
    assert two.shape == (*SERIES_SHAPES["FLAIR"], 2)
    assert np.allclose(np.asarray(two.dataobj)[..., 1][exact], 2 * expected[exact], atol=1e-3)
    flair_affine = np.asarray(json.loads((out / "transforms.json").read_text())["series"]["FLAIR"]["affine"])
    header = two.header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1  # "scanner"
    assert np.allclose(two.get_qform(), flair_affine, atol=1e-4) and np.allclose(two.get_sform(), flair_affine)
    assert header.get_xyzt_units()[0] == "mm"
    with pytest.raises(ValueError, match="expected the analysis grid"):
        maps_to_series(np.zeros((*shape, 2, 3), np.float32), out)  # 5D


def test_maps_to_series_file_must_be_on_the_analysis_grid_to_a_thousandth(prep, tmp_path):
    out, shape, a_aff = prep
    ramp = np.indices(shape).sum(0).astype(np.float32)
    close, far = a_aff.copy(), a_aff.copy()
    close[0, 1] = 5e-4  # within 1e-3 of the analysis affine: the same grid
    far[0, 3] += 0.5
    nib.Nifti1Image(ramp, close).to_filename(str(tmp_path / "close.nii.gz"))
    nib.Nifti1Image(ramp, far).to_filename(str(tmp_path / "far.nii.gz"))
    assert maps_to_series(tmp_path / "close.nii.gz", out).shape == SERIES_SHAPES["FLAIR"]
    with pytest.raises(ValueError, match="is not on the analysis grid"):
        maps_to_series(tmp_path / "far.nii.gz", out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        maps_to_series(tmp_path / "none.nii.gz", out)


def _oblique_prep(tmp_path):
    """A 2 mm analysis grid and a FLAIR grid of 1.3 x 1.7 x 2.9 mm, rotated against it (no voxel centre of one on
    the other's)."""
    a_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    f_aff = rigid_matrix((7.0, -4.0, 11.0), (0.3, -0.7, 0.4)) @ np.diag([1.3, 1.7, 2.9, 1.0])
    info = {
        "series": {"FLAIR": {"shape": [14, 11, 7], "affine": f_aff.tolist()}},
        "analysis": {"shape": [9, 10, 8], "affine": a_aff.tolist()},
        "mni_to_t1": np.eye(4).tolist(),
        "t1_to_series": {"T1": np.eye(4).tolist(), "FLAIR": np.eye(4).tolist()},
    }
    (tmp_path / "transforms.json").write_text(json.dumps(info))
    vox = np.linalg.inv(a_aff) @ f_aff @ np.vstack([np.indices((14, 11, 7)).reshape(3, -1), np.ones(14 * 11 * 7)])
    return vox[:3]


def test_maps_to_series_masks_are_nearest_neighbour_and_auto_kind_follows_the_values(tmp_path):
    vox = _oblique_prep(tmp_path)
    mask = np.zeros((9, 10, 8), np.float32)  # a float map of 0 and 1 only: a mask
    mask[2:7, 3:8, 2:6] = 1.0
    mask[4, 5, 3] = 0.0
    nearest = np.round(vox).astype(int)
    inside = np.all((nearest >= 0) & (nearest < np.array([9, 10, 8])[:, None]), axis=0)
    expected = np.zeros(vox.shape[1])
    expected[inside] = mask[tuple(nearest[:, inside])]
    assert 0 < expected.sum() < inside.sum()
    img = maps_to_series(mask, tmp_path)
    assert img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(img.dataobj).ravel(), expected)
    explicit = maps_to_series(mask * 0.4 + 0.3, tmp_path, kind="mask")  # 0.3 / 0.7: sampled, then > 0.5
    assert np.array_equal(np.asarray(explicit.dataobj).ravel(), expected)
    continuous = maps_to_series(mask * 0.5, tmp_path)  # 0 and 0.5: continuous, trilinear
    assert continuous.get_data_dtype() == np.float32
    values = np.asarray(continuous.dataobj)
    assert len(np.unique(values)) > 3 and values.max() <= 0.5


def test_maps_to_series_auto_kind_of_large_maps(tmp_path):
    """From 5 million voxels on, a float map is taken as continuous without reading its values (an integer map is
    still read)."""
    shape = (250, 200, 100)  # 5 000 000 voxels
    a_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    info = {
        "series": {"FLAIR": {"shape": [3, 3, 3], "affine": np.eye(4).tolist()}},
        "analysis": {"shape": list(shape), "affine": a_aff.tolist()},
        "mni_to_t1": np.eye(4).tolist(),
        "t1_to_series": {"T1": np.eye(4).tolist(), "FLAIR": np.eye(4).tolist()},
    }
    (tmp_path / "transforms.json").write_text(json.dumps(info))
    data = np.zeros(shape, np.uint8)
    data[:2, :2, :2] = 1
    assert maps_to_series(data, tmp_path).get_data_dtype() == np.uint8
    as_float = maps_to_series(data.astype(np.float32), tmp_path)
    assert as_float.get_data_dtype() == np.float32
    assert np.asarray(as_float.dataobj)[:2, :2, :2].tolist() == np.ones((2, 2, 2)).tolist()


def test_lesion_report_without_a_z_map():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    report = lesion_report(nib.Nifti1Image(mask, np.diag([2.0, 2.0, 2.0, 1.0])))
    assert report["n_lesions"] == 1 and report["lesions"][0]["voxels"] == 8 and "max_z" not in report["lesions"][0]
    assert report["lesions"][0]["volume_ml"] == pytest.approx(0.064)


def test_write_series_maps_keeps_float_maps_float_when_their_values_are_0_and_1(prep, tmp_path):
    """A volume with nothing tested (z = 0, p = 1 everywhere): the z and p maps stay float maps, not masks."""
    out, shape, a_aff = prep
    maps = {}
    for key, value, dtype in (("z", 0.0, np.float32), ("p", 1.0, np.float32), ("lesion", 0, np.uint8)):
        maps[key] = tmp_path / f"case_{key}.nii.gz"
        nib.Nifti1Image(np.full(shape, value, dtype), a_aff).to_filename(str(maps[key]))
    written = write_series_maps(maps, out, tmp_path, tmp_path / "FLAIR.nii", analysis_report=tmp_path / "none.json")
    z, p, lesion = (nib.load(written["maps"][k]) for k in ("z", "p", "lesion"))
    assert z.get_data_dtype() == np.float32 and p.get_data_dtype() == np.float32 and lesion.get_data_dtype() == np.uint8
    assert np.all(np.asarray(p.dataobj) == 1.0) and not np.asarray(z.dataobj).any()
    report = json.loads(Path(written["report"]).read_text())
    assert written["report"] == str(tmp_path / "FLAIR_lesions.json") and report["n_lesions"] == 0
    assert "site" not in report  # no analysis report file: nothing carried over


def test_stem_of_series_files_and_folders():
    names = ["a/T1.nii.gz", "T2.nii", "b/flair.nrrd", "c.mha", "d.mhd", "series_dir", "scan.v2.dcm"]
    assert [_stem(n) for n in names] == ["T1", "T2", "flair", "c", "d", "series_dir", "scan.v2"]


def test_raw_entries_names_and_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("s1", "s1x", "s2/anat", "s3/anat"):
        (tmp_path / folder).mkdir(parents=True)
        for name in ("T1", "T2", "FLAIR"):
            (tmp_path / folder / f"{name}.nii.gz").write_bytes(b"")
    entry = {"image": ["s1/T1.nii.gz", "s1x/T2.nii.gz", "s1x/FLAIR.nii.gz"], "raw": True}
    ((name, paths),) = raw_entries([entry])  # relative to the working folder without base_dir
    assert name == "s1" and paths == [Path("s1/T1.nii.gz"), Path("s1x/T2.nii.gz"), Path("s1x/FLAIR.nii.gz")]
    same = [{"image": [f"{d}/anat/{s}.nii.gz" for s in ("T1", "T2", "FLAIR")], "raw": True} for d in ("s2", "s3")]
    assert [n for n, _ in raw_entries(same)] == ["anat-0", "anat-1"]  # two T1 folders of one name: numbered
    bad = [
        ["s1/T1.nii.gz"],
        {"image": entry["image"]},
        {"image": "s1/T1.nii.gz", "raw": True},
        {"image": entry["image"][:2], "raw": True},
    ]
    for item in bad:
        with pytest.raises(ValueError, match="three raw series"):
            raw_entries([item])
    with pytest.raises(MissingSeriesError, match="entry 0: FLAIR series"):
        raw_entries([{"image": ["s1/T1.nii.gz", "s1/T2.nii.gz", "s1/none.nii.gz"], "raw": True}])
