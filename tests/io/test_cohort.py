"""Cohort runs of ``qrvae infer --datalist``: resume from manifests, kill -9 safety, torchrun shares, cohort.csv."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monai_qrvae.io.cohort import COHORT_COLUMNS, MANIFEST_DIR, PARTIAL_DIR, run_cohort

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "bundle" / "models"


def _fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "model_config.json").write_text("{}")
    return folder


def _inputs(folder: Path, n: int) -> list[tuple[str, list[str]]]:
    folder.mkdir(parents=True, exist_ok=True)
    subjects = []
    for i in range(n):
        path = folder / f"s{i}.nii.gz"
        path.write_bytes(bytes([i]) * (10 + i))
        subjects.append((f"s{i}", [str(path)]))
    return subjects


def _analyse(calls: list[str], sleep: float = 0.0):
    def analyse(name: str, inputs: list[str], stage: Path) -> Path:
        calls.append(name)
        n = Path(inputs[0]).stat().st_size - 10
        (stage / f"{name}_lesion.nii.gz").write_bytes(b"x" * 100)
        time.sleep(sleep)
        report = stage / f"{name}_lesions.json"
        lesions = [{"volume_ml": 0.5 * (k + 1)} for k in range(n)]
        site = {"matches_calibration": n != 2}
        report.write_text(json.dumps({"n_lesions": n, "total_volume_ml": 0.5 * n, "lesions": lesions, "site": site}))
        return report

    return analyse


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "cohort.csv") as f:
        return list(csv.DictReader(f))


def test_second_run_skips_complete_subjects_and_redoes_changed_ones(tmp_path):
    model, subjects, out = _fake_model(tmp_path / "m"), _inputs(tmp_path / "in", 4), tmp_path / "out"
    calls: list[str] = []
    first = run_cohort(subjects, _analyse(calls), out, model, {"alpha": 0.05})
    assert first["done"] == ["s0", "s1", "s2", "s3"] and calls == first["done"]
    rows = _rows(out)
    assert tuple(rows[0]) == COHORT_COLUMNS and [r["subject"] for r in rows] == ["s0", "s1", "s2", "s3"]
    assert rows[3]["lesions"] == "3" and rows[3]["largest_lesion_ml"] == "1.5" and rows[3]["total_ml"] == "1.5"
    assert [r["site_mismatch"] for r in rows] == ["False", "False", "True", "False"]
    assert not (out / PARTIAL_DIR).exists()

    calls.clear()
    assert run_cohort(subjects, _analyse(calls), out, model, {"alpha": 0.05})["skipped"] == ["s0", "s1", "s2", "s3"]
    assert calls == []
    os.utime(subjects[1][1][0], ns=(1, 1))  # a changed input (its mtime)
    (out / "s2_lesion.nii.gz").write_bytes(b"short")  # an output that is not the one recorded
    run_cohort(subjects, _analyse(calls), out, model, {"alpha": 0.05})
    assert calls == ["s1", "s2"]
    calls.clear()
    run_cohort(subjects, _analyse(calls), out, model, {"alpha": 0.01})  # another setting: everything is redone
    assert calls == ["s0", "s1", "s2", "s3"]
    calls.clear()
    (model / "model.pt").write_bytes(b"new weights")  # another model: everything is redone
    run_cohort(subjects, _analyse(calls), out, model, {"alpha": 0.01})
    assert calls == ["s0", "s1", "s2", "s3"]


def test_input_stamp_of_a_dicom_folder_follows_its_files(tmp_path):
    from monai_qrvae.io.cohort import input_stamp

    folder = tmp_path / "FLAIR"
    folder.mkdir()
    for i in range(3):
        (folder / f"IM{i}.dcm").write_bytes(b"d" * (i + 1))
    before = input_stamp([folder])
    assert input_stamp([folder]) == before
    os.utime(folder / "IM1.dcm", ns=(5, 5))
    assert input_stamp([folder]) != before
    (folder / "IM3.dcm").write_bytes(b"new slice")
    assert len(input_stamp([folder])[str(folder.resolve())]) == 4


def test_a_failed_subject_is_not_counted_done_and_its_leftovers_go(tmp_path):
    model, subjects, out = _fake_model(tmp_path / "m"), _inputs(tmp_path / "in", 3), tmp_path / "out"
    calls: list[str] = []
    ok = _analyse(calls)

    def failing(name, inputs, stage):
        if name == "s1":
            (stage / "s1_lesion.nii.gz").write_bytes(b"half")
            raise RuntimeError("killed")
        return ok(name, inputs, stage)

    with pytest.raises(RuntimeError):
        run_cohort(subjects, failing, out, model, {})
    assert (out / MANIFEST_DIR / "s0.json").is_file() and not (out / MANIFEST_DIR / "s1.json").exists()
    assert not (out / "s1_lesion.nii.gz").exists()  # staged only: nothing of s1 among the results
    calls.clear()
    result = run_cohort(subjects, ok, out, model, {})
    assert result["skipped"] == ["s0"] and calls == ["s1", "s2"]
    assert not (out / PARTIAL_DIR / "s1").exists() and len(_rows(out)) == 3


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_cohort import _analyse, _inputs
from monai_qrvae.io.cohort import run_cohort
root = Path({root!r})
run_cohort(_inputs(root / "in", 8), _analyse([], sleep=0.15), root / "out", root / "m", {{}})
"""


@pytest.mark.slow
def test_kill_9_at_any_point_leaves_no_partial_output_and_the_rerun_completes(tmp_path):
    model = _fake_model(tmp_path / "m")
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for delay in (0.9, 1.3, 1.7):  # kills land at different points of different subjects
        proc = subprocess.Popen([sys.executable, "-c", script], env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out = tmp_path / "out"
        for manifest in (out / MANIFEST_DIR).glob("*.json"):  # every subject counted done has all its outputs
            record = json.loads(manifest.read_text())
            assert all((out / rel).stat().st_size == size for rel, size in record["outputs"].items())
        assert not list(out.glob(".*.tmp*"))  # no temporary file among the results
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert len(_rows(tmp_path / "out")) == 8 and len(list((tmp_path / "out").glob("*_lesions.json"))) == 8
    assert model.is_dir()


@pytest.fixture(scope="module")
def small_datalist(tmp_path_factory):
    """Four analysis-ready subjects of the shared cohort in a datalist's test section."""
    data = ROOT / "data" / "synth"
    if not (data / "datalist.json").is_file():
        pytest.skip("the shared generated cohort (data/synth) is absent")
    entries = json.loads((data / "datalist.json").read_text())["test"][:4]
    root = tmp_path_factory.mktemp("cohort")
    for e in entries:
        e.pop("label", None)
        for k in ("image", "brain_mask"):
            e[k] = str(data / e[k])
    (root / "datalist.json").write_text(json.dumps({"test": entries}))
    return root / "datalist.json"


def test_cli_infer_datalist_resumes_and_writes_cohort_csv(small_datalist, tmp_path, capsys):
    from monai_qrvae.cli import main

    argv = ["infer", "--datalist", str(small_datalist), "--out", str(tmp_path / "out"), "--no-png"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = _rows(tmp_path / "out")
    assert len(rows) == 4 and all(float(r["seconds"]) > 0 for r in rows)
    reports = {r["subject"]: json.loads((tmp_path / "out" / f"{r['subject']}_lesions.json").read_text()) for r in rows}
    assert all(int(r["lesions"]) == reports[r["subject"]]["n_lesions"] for r in rows)
    capsys.readouterr()
    assert main(argv) == 0
    assert "skipped 4 complete subject(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_share_the_subjects(small_datalist, tmp_path):
    """``torchrun --nproc_per_node 2 -m monai_qrvae.cli infer --datalist``: each rank takes its half, the maps equal a
    one-process run, rank 0 writes cohort.csv of all four."""
    import nibabel as nib
    import numpy as np

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571"]
    cmd = ["-m", "monai_qrvae.cli", "infer", "--datalist", str(small_datalist), "--no-png"]
    two = subprocess.run([*torchrun, *cmd, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "[rank 0/2]" in two.stderr and "[rank 1/2]" in two.stderr
    one = subprocess.run([sys.executable, *cmd, "--out", str(tmp_path / "one")], env=env, capture_output=True)
    assert one.returncode == 0
    rows = _rows(tmp_path / "two")
    assert sorted(r["subject"] for r in rows) == sorted(r["subject"] for r in _rows(tmp_path / "one"))
    for r in rows:
        a = nib.load(tmp_path / "one" / f"{r['subject']}_zmap.nii.gz").get_fdata()
        b = nib.load(tmp_path / "two" / f"{r['subject']}_zmap.nii.gz").get_fdata()
        assert np.allclose(a, b, atol=1e-5)
    shutil.rmtree(tmp_path / "one")
