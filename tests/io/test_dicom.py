"""DICOM in and out: series folders read with exact geometry, refused with one line, SEG / Parametric Map round trip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from monai_qrvae.io.dicom import DicomSeriesError, read_series, scan_series  # noqa: E402
from monai_qrvae.io.dicom_out import read_parametric_map, read_seg, write_dicom_results  # noqa: E402
from monai_qrvae.io.dicom_write import write_series  # noqa: E402

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "real"


def _oblique(affine: np.ndarray, angles_deg=(12.0, -8.0, 20.0)) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    out = np.asarray(affine, dtype=np.float64).copy()
    out[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ out[:3, :3]
    return out


def same_in_world(img: nib.Nifti1Image, data: np.ndarray, affine: np.ndarray, atol: float = 1e-4) -> bool:
    """The read image is ``(data, affine)``, or the same voxels with the slice axis reversed (a left-handed grid is
    read in the order of the DICOM slice normal)."""
    read = np.asarray(img.dataobj)
    if np.allclose(img.affine, affine, atol=atol):
        return bool(np.array_equal(read, data))
    flipped = np.asarray(affine, dtype=np.float64).copy()
    flipped[:3, 3] += flipped[:3, 2] * (data.shape[2] - 1)
    flipped[:3, 2] *= -1
    return bool(np.allclose(img.affine, flipped, atol=atol) and np.array_equal(read, data[:, :, ::-1]))


@pytest.fixture(scope="module")
def raw_subject(tmp_path_factory):
    """An embedded synthetic subject's raw-like series (int16; ASL, LPS, LAS storage) and their DICOM folders."""
    from monai_qrvae.raw.synthetic import make_raw_subject

    out = tmp_path_factory.mktemp("dicom") / "sub-001"
    spacings = {"T1": (3.0, 3.0, 3.0), "T2": (3.0, 3.0, 4.0), "FLAIR": (2.5, 2.5, 5.0)}
    make_raw_subject(out, 0, lesions=2, seed=3, spacing=4.0, spacings=spacings)
    study, frame = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    for number, name in enumerate(("T1", "T2", "FLAIR"), start=1):
        img = nib.load(out / f"{name}.nii.gz")
        data, affine = np.asarray(img.dataobj), img.affine.copy()
        # origins on a 1/1024 mm grid: exact in NIfTI's float32 sform and in DICOM's decimal strings alike, so that
        # both files give the pipeline bit-identical geometry (the grids are axis-aligned: cosines 0/+-1)
        affine[:3, 3] = np.round(affine[:3, 3] * 1024) / 1024
        write_series(data, affine, out / "dicom" / name, name, study, frame, series_number=number)
        if np.linalg.det(affine[:3, :3]) < 0:  # DICOM slices go along row x column: the same voxels, slices reversed
            affine[:3, 3] += affine[:3, 2] * (data.shape[2] - 1)
            affine[:3, 2] *= -1
            data = data[:, :, ::-1]
        (out / "nifti").mkdir(exist_ok=True)
        nib.Nifti1Image(np.ascontiguousarray(data), affine).to_filename(out / "nifti" / f"{name}.nii.gz")
    return out


@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize("left_handed", [False, True])
def test_series_round_trip_exact_geometry(tmp_path, oblique, left_handed):
    rng = np.random.default_rng(1)
    data = rng.integers(-50, 1200, (24, 30, 11)).astype(np.int16)
    affine = np.diag([0.9, 1.1, 3.5, 1.0])
    affine[:3, 3] = [-12.3, 40.1, 7.7]
    if left_handed:
        affine[0] *= -1
    if oblique:
        affine = _oblique(affine)
    files = write_series(data, affine, tmp_path / "s", "FLAIR")
    assert len(files) == 11 and len({f.name for f in files}) == 11
    img, series = read_series(tmp_path / "s", "FLAIR")
    assert same_in_world(img, data, affine, atol=1e-6)
    assert series.series_uid and series.study_uid and len(series.sop_instance_uids) == 11
    import pydicom

    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR" and ds.Rows == 30 and ds.Columns == 24


def test_embedded_subject_dicom_equals_nifti_and_an_oblique_case(raw_subject, tmp_path):
    from monai_qrvae.raw.series import load_series

    for name in ("T1", "T2", "FLAIR"):
        nifti = load_series(raw_subject / f"{name}.nii.gz", name)  # as generated (T1 ASL, T2 LPS, FLAIR LAS)
        dicom = load_series(raw_subject / "dicom" / name, name)
        assert same_in_world(dicom, np.asarray(nifti.dataobj), nifti.affine, atol=1e-3), name
        same = load_series(raw_subject / "nifti" / f"{name}.nii.gz", name)  # the same grid, right-handed order
        assert np.array_equal(np.asarray(dicom.dataobj), np.asarray(same.dataobj))
        assert np.array_equal(dicom.affine, same.affine), name
    flair = nib.load(raw_subject / "FLAIR.nii.gz")
    oblique = _oblique(flair.affine)
    write_series(np.asarray(flair.dataobj), oblique, tmp_path / "oblique", "FLAIR")
    assert same_in_world(load_series(tmp_path / "oblique", "FLAIR"), np.asarray(flair.dataobj, np.float32), oblique)


def _copy_series(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_folders_one_line_naming_folder_and_problem(raw_subject, tmp_path, capsys):
    from monai_qrvae.cli import main

    two = _copy_series(raw_subject / "dicom" / "FLAIR", tmp_path / "two")
    for f in (raw_subject / "dicom" / "T2").iterdir():
        shutil.copy(f, two / f"T2_{f.name}")
    gap = _copy_series(raw_subject / "dicom" / "FLAIR", tmp_path / "gap")
    series = scan_series(gap)
    series.files[len(series.files) // 2].unlink()
    ct = tmp_path / "ct"
    img = nib.load(raw_subject / "FLAIR.nii.gz")
    write_series(np.asarray(img.dataobj), img.affine, ct, modality="CT")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not DICOM")
    expected = {two: "holds 2 series", gap: "misses 1 slice(s)", ct: "is a CT series; expected MR", empty: "no DICOM"}
    for folder, problem in expected.items():
        with pytest.raises(DicomSeriesError, match=re.escape(problem)):
            scan_series(folder, "FLAIR")
        t1, t2 = raw_subject / "T1.nii.gz", raw_subject / "T2.nii.gz"
        argv = ["preprocess", "--t1", str(t1), "--t2", str(t2), "--flair", str(folder), "--out", str(tmp_path / "o")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(folder) in err and problem in err, err
    assert not (tmp_path / "o").exists()


def _fake_result(raw_subject: Path, out: Path, reverse: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    """Maps on the FLAIR DICOM grid as infer_raw writes them (lesion mask, z-map, report)."""
    grid, _ = read_series(raw_subject / "dicom" / "FLAIR", "FLAIR")
    rng = np.random.default_rng(0)
    lesion = np.zeros(grid.shape, np.uint8)
    lesion[30:40, 40:52, 10:14] = 1
    lesion[60:63, 20:22, 30] = 1
    z = rng.normal(size=grid.shape).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(lesion, grid.affine).to_filename(out / "FLAIR_lesion.nii.gz")
    nib.Nifti1Image(z, grid.affine).to_filename(out / "FLAIR_zmap.nii.gz")
    (out / "FLAIR_lesions.json").write_text(json.dumps({"n_lesions": 2}))
    maps = {"lesion": str(out / "FLAIR_lesion.nii.gz"), "z": str(out / "FLAIR_zmap.nii.gz")}
    return {"maps": maps, "report": str(out / "FLAIR_lesions.json")}, lesion, z


def test_seg_and_parametric_map_round_trip_on_the_flair_grid(raw_subject, tmp_path):
    import highdicom as hd
    import pydicom

    result, lesion, z = _fake_result(raw_subject, tmp_path / "out")
    entry = write_dicom_results(result, raw_subject / "dicom" / "FLAIR", tmp_path / "out")
    series = scan_series(raw_subject / "dicom" / "FLAIR")
    seg_path, pm_path = (tmp_path / "out" / entry[k]["path"] for k in ("segmentation", "parametric_map"))
    assert np.array_equal(read_seg(seg_path, series), lesion)  # by referenced source instance
    assert np.array_equal(read_parametric_map(pm_path, series), z)
    seg = pydicom.dcmread(seg_path)
    assert seg.SOPClassUID == hd.sop_class_uids.SegmentationStorage if hasattr(hd, "sop_class_uids") else True
    assert seg.StudyInstanceUID == series.study_uid and seg.FrameOfReferenceUID == series.frame_of_reference_uid
    refs = {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
    assert refs == {series.series_uid}
    # by geometry alone: the world positions of the SEG's lesion voxels are those of the mask on the FLAIR grid
    volume = hd.seg.segread(seg_path).get_volume()
    ijk = np.argwhere(volume.array[..., 0] > 0)
    world_seg = (volume.affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T * [-1, -1, 1]  # LPS -> RAS
    grid = read_series(raw_subject / "dicom" / "FLAIR")[0]
    ijk = np.argwhere(lesion > 0)
    world_mask = (grid.affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
    key = lambda w: sorted(map(tuple, np.round(w, 2)))  # noqa: E731
    assert key(world_seg) == key(world_mask)
    report = json.loads(Path(result["report"]).read_text())
    assert report["n_lesions"] == 2 and report["dicom"]["SeriesInstanceUID"] == series.series_uid
    assert report["dicom"]["StudyInstanceUID"] == "1.2.826.0.1.3680043.8.498.1"


def test_nifti_flair_with_dicom_out_gets_a_series_to_refer_to(raw_subject, tmp_path):
    grid, _ = read_series(raw_subject / "dicom" / "FLAIR", "FLAIR")
    flair = tmp_path / "FLAIR.nii.gz"
    nib.Nifti1Image(np.asarray(grid.dataobj).astype(np.int16), grid.affine).to_filename(flair)
    result, lesion, _ = _fake_result(raw_subject, tmp_path / "out")
    entry = write_dicom_results(result, flair, tmp_path / "out")
    series = scan_series(tmp_path / "out" / "dicom" / "FLAIR")
    assert entry["SeriesInstanceUID"] == series.series_uid
    assert np.array_equal(read_seg(tmp_path / "out" / entry["segmentation"]["path"], series), lesion)


def test_left_handed_nifti_flair_with_dicom_out(raw_subject, tmp_path):
    """FLAIR stored LAS (left-handed): the DICOM copy's slices run the other way; SEG frames follow the DICOM slices."""
    flair = nib.load(raw_subject / "FLAIR.nii.gz")
    assert np.linalg.det(flair.affine[:3, :3]) < 0
    lesion = np.zeros(flair.shape, np.uint8)
    lesion[30:40, 40:50, 5:9] = 1
    out = tmp_path / "out"
    out.mkdir()
    nib.Nifti1Image(lesion, flair.affine).to_filename(out / "FLAIR_lesion.nii.gz")
    nib.Nifti1Image(lesion.astype(np.float32) * 3, flair.affine).to_filename(out / "FLAIR_zmap.nii.gz")
    (out / "FLAIR_lesions.json").write_text("{}")
    result = {"maps": {"lesion": str(out / "FLAIR_lesion.nii.gz"), "z": str(out / "FLAIR_zmap.nii.gz")}}
    result["report"] = str(out / "FLAIR_lesions.json")
    entry = write_dicom_results(result, raw_subject / "FLAIR.nii.gz", out)
    series = scan_series(out / "dicom" / "FLAIR")
    grid = read_series(out / "dicom" / "FLAIR")[0]
    back = nib.Nifti1Image(read_seg(out / entry["segmentation"]["path"], series), grid.affine)
    assert same_in_world(back, lesion, flair.affine)


def test_raw_datalist_entries_may_name_series_folders(raw_subject):
    from monai_qrvae.raw.inverse import raw_entries

    entry = {"image": ["dicom/T1", "dicom/T2", "nifti/FLAIR.nii.gz"], "raw": True}
    [(name, paths)] = raw_entries([entry], base_dir=raw_subject)
    assert paths[0] == raw_subject / "dicom" / "T1" and paths[2].is_file()


def test_infer_parser_has_dicom_out():
    from monai_qrvae.cli import build_parser

    args = build_parser().parse_args(["infer", "--t1", "a", "--t2", "b", "--flair", "c", "--dicom-out"])
    assert args.dicom_out is True


@pytest.mark.slow
def test_cli_infer_dicom_series_gives_the_nifti_maps_and_a_seg(raw_subject, tmp_path):
    """``qrvae infer --t1 DIR --t2 DIR --flair DIR``: the same maps as from the NIfTI files, plus SEG and PM.

    ANTs' registrations are bit-reproducible only with a fixed seed and one thread (docs/raw.md): both are set, in a
    fresh process each (ITK reads its thread count once per process, so an earlier ANTs call in this one would win)."""
    pytest.importorskip("ants")
    pytest.importorskip("deepbet")
    from monai_qrvae.raw.series import load_series

    env = {**os.environ, "ANTS_RANDOM_SEED": "7", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}

    def run(kind: str) -> Path:
        out = tmp_path / kind
        series = [raw_subject / kind / (s + ("" if kind == "dicom" else ".nii.gz")) for s in ("T1", "T2", "FLAIR")]
        argv = ["infer", "--t1", str(series[0]), "--t2", str(series[1]), "--flair", str(series[2]), "--no-png"]
        cmd = [sys.executable, "-m", "monai_qrvae.cli", *argv, "--out", str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return out

    nifti, dicom = run("nifti"), run("dicom")
    for name in ("T1", "T2", "FLAIR"):  # the DICOM series hold exactly the NIfTI files' voxels and grids
        a, b = nib.load(raw_subject / "nifti" / f"{name}.nii.gz"), load_series(raw_subject / "dicom" / name, name)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.array_equal(a.affine, b.affine)
    # bit-identical inputs (voxels and geometry) and ANTs seeded on one thread: the same maps, voxel for voxel
    maps = {}
    for postfix in ("lesion", "zmap", "pmap"):
        a = nib.load(nifti / f"FLAIR_{postfix}.nii.gz")
        b = nib.load(dicom / f"FLAIR_{postfix}.nii.gz")
        assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-6), postfix
        maps[postfix] = np.asarray(a.dataobj, np.float64), np.asarray(b.dataobj, np.float64)
        x, y = maps[postfix]
        print(postfix, "max difference", np.abs(x - y).max(), "differing voxels", int((x != y).sum()))
    for postfix, (x, y) in maps.items():
        assert np.array_equal(x, y), postfix
    report = json.loads((dicom / "FLAIR_lesions.json").read_text())
    series = scan_series(raw_subject / "dicom" / "FLAIR")
    assert report["dicom"]["SeriesInstanceUID"] == series.series_uid
    lesion = np.asarray(nib.load(dicom / "FLAIR_lesion.nii.gz").dataobj)
    assert np.array_equal(read_seg(dicom / "dicom" / "lesion_seg.dcm", series), lesion)
    assert report["n_lesions"] == json.loads((nifti / "FLAIR_lesions.json").read_text())["n_lesions"]


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "du7294_native_flair.nii.gz").is_file(), reason="../shared/real is absent")
def test_real_native_series_as_dicom_keep_their_geometry(tmp_path):
    """DU-7294's native series (GE grids: FLAIR 0.94 x 0.94 x 2.5 mm, T1/T2 0.47 x 0.47 x 5 mm) as DICOM: same
    voxels (as int16) in the same world places; a SEG on the real FLAIR grid round-trips."""
    from monai_qrvae.raw.series import load_series

    for name in ("t1", "t2", "flair"):
        img = nib.load(REAL / f"du7294_native_{name}.nii.gz")
        data = np.asarray(img.dataobj, dtype=np.float32)
        write_series(data, img.affine, tmp_path / name, name.upper() if name != "flair" else "FLAIR")
        read = load_series(tmp_path / name, name.upper())
        back, affine = np.asarray(read.dataobj), read.affine.copy()
        if not np.allclose(affine, img.affine, atol=1e-4):  # a left-handed grid: DICOM's slice order is reversed
            affine[:3, 3] += affine[:3, 2] * (back.shape[2] - 1)
            affine[:3, 2] *= -1
            back = back[:, :, ::-1]
        assert np.allclose(affine, img.affine, atol=1e-4), name
        step = float(np.abs(data).max()) / 32000.0 if not np.allclose(data, np.rint(data)) else 0.0
        assert np.abs(back - data).max() <= step / 2 + 1e-3, name
    grid, series = read_series(tmp_path / "flair", "FLAIR")
    mask = (np.asarray(grid.dataobj) > np.percentile(np.asarray(grid.dataobj), 99)).astype(np.uint8)
    from monai_qrvae.io.dicom_out import write_seg

    write_seg(mask, series, tmp_path / "seg.dcm")
    assert np.array_equal(read_seg(tmp_path / "seg.dcm", series), mask)
