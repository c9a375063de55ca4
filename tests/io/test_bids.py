"""``qrvae make-datalist --bids``: a small BIDS tree made from the embedded cohort; maps as a BIDS derivative."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("bids")

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "synth"


@pytest.fixture(scope="module")
def bids_tree(tmp_path_factory):
    """9 subjects of the shared cohort as BIDS: sub-01..06 healthy (sub-06 with two sessions), sub-07/08 lesion by a
    label file (--label-pattern), sub-09 lesion by participants.tsv only."""
    if not (DATA / "datalist.json").is_file():
        pytest.skip("the shared generated cohort (data/synth) is absent")
    content = json.loads((DATA / "datalist.json").read_text())
    healthy = [e for e in content["training"][:6]]
    lesion = [e for e in content["tuning"][:3]]
    root = tmp_path_factory.mktemp("bids") / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "qrvae test", "BIDSVersion": "1.9.0"}))
    rows = ["participant_id\tage\tgroup"]
    for i, entry in enumerate(healthy + lesion, start=1):
        sub = f"{i:02d}"
        img = nib.load(DATA / entry["image"])
        data = np.asarray(img.dataobj, dtype=np.float32)
        sessions = ["1", "2"] if i == 6 else [None]
        for ses in sessions:
            folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            for c, suffix in enumerate(("T1w", "T2w", "FLAIR")):
                nib.Nifti1Image(data[..., c], img.affine).to_filename(folder / f"{stem}_{suffix}.nii.gz")
        if i in (7, 8):
            lab = root / "derivatives" / "lesions" / f"sub-{sub}" / "anat"
            lab.mkdir(parents=True)
            label = nib.load(DATA / entry["label"])
            label.to_filename(lab / f"sub-{sub}_desc-lesion_mask.nii.gz")
        rows.append(f"sub-{sub}\t{40 + i}\t{'patient' if i > 6 else 'control'}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


LABELS = "derivatives/lesions/sub-{subject}/anat/sub-{subject}_desc-lesion_mask.nii.gz"


def test_make_datalist_bids_subjects_sessions_groups_and_splits(bids_tree, tmp_path, capsys):
    from monai_qrvae.cli import main
    from monai_qrvae.data.datalist import make_datalist

    out = tmp_path / "bids.json"
    argv = ["make-datalist", "--bids", str(bids_tree), "--label-pattern", LABELS, "--out", str(out), "--seed", "3"]
    assert main(argv) == 0, capsys.readouterr().err
    datalist = json.loads(out.read_text())
    sections = ("training", "validation", "calibration", "tuning", "test")
    entries = [e for s in sections for e in datalist[s]]
    assert len(entries) == 10  # 9 subjects, one with two sessions
    names = sorted(Path(e["image"][0]).name.removesuffix("_T1w.nii.gz") for e in entries)
    assert "sub-06_ses-1" in names and "sub-06_ses-2" in names
    for e in entries:
        assert [Path(p).name.split("_")[-1] for p in e["image"]] == ["T1w.nii.gz", "T2w.nii.gz", "FLAIR.nii.gz"]
    lesion = {e["bids"]["subject"] for s in ("tuning", "test") for e in datalist[s] if e.get("stratum") != "healthy"}
    assert lesion == {"07", "08", "09"}
    assert all("label" in e for s in ("tuning", "test") for e in datalist[s] if e["bids"]["subject"] in ("07", "08"))
    # the same five splits and fixed-seed shuffle as the pattern form: make_datalist's allocation, 7 healthy, 3 lesion
    from monai_qrvae.data.discovery import allocate_splits

    sizes = allocate_splits(7, 3, 0.1, 0.33, 0.09)
    assert [len(datalist[s]) for s in ("training", "validation", "calibration", "tuning")] == [
        sizes["training"],
        sizes["validation"],
        sizes["calibration"],
        3 - sizes["test_lesion"],
    ]
    again = make_datalist(bids_tree, [], None, subjects=_subjects(bids_tree), seed=3, check=False)
    assert [Path(e["image"][0]).name for e in again["training"]] == [
        Path(e["image"][0]).name for e in datalist["training"]
    ]


def _subjects(root):
    from monai_qrvae.io.bids import bids_subjects

    return bids_subjects(root, LABELS)


def test_bids_errors_are_one_line(bids_tree, tmp_path, capsys):
    from monai_qrvae.cli import main

    assert main(["make-datalist", "--bids", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none" in err


def test_infer_bids_datalist_writes_the_derivative(bids_tree, tmp_path, capsys):
    from monai_qrvae.cli import main
    from monai_qrvae.io.bids import derivative_paths

    out = tmp_path / "bids.json"
    assert main(["make-datalist", "--bids", str(bids_tree), "--label-pattern", LABELS, "--out", str(out)]) == 0
    datalist = json.loads(out.read_text())
    datalist["test"] = [e for e in datalist["test"] if e["bids"]["subject"] in ("07", "08", "09")][:2]
    out.write_text(json.dumps(datalist))
    rc = main(["infer", "--datalist", str(out), "--out", str(tmp_path / "maps"), "--no-png"])
    assert rc == 0, capsys.readouterr().err
    deriv = bids_tree / "derivatives" / "qrvae"
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "monai-qrvae"
    for entry in datalist["test"]:
        paths = derivative_paths(bids_tree, entry["bids"]["subject"], entry["bids"]["session"])
        assert paths["lesion"].name.endswith("_desc-lesion_mask.nii.gz") and paths["lesion"].is_file()
        image = nib.load(out.parent / entry["image"][2])
        mask = nib.load(paths["lesion"])
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
        assert json.loads(paths["report"].read_text())["n_lesions"] >= 0
