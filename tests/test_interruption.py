"""Kill a real `qrvae train` process (SIGKILL, SIGTERM, during a checkpoint save), rerun it, and it resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from monai_qrvae.checkpoints import list_checkpoints, load_state_dict_file
from monai_qrvae.data import make_cohort

pytestmark = pytest.mark.slow

EPOCHS = 8


def _command(datalist, out):
    return [
        sys.executable,
        "-m",
        "monai_qrvae.cli",
        "train",
        "--datalist",
        str(datalist),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--num-slices",
        "6",
        "--batch-size",
        "4",
        "--no-progress",
    ]


def _kill_when(proc, ready, sig, timeout=240.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            pytest.fail(f"training finished before it could be killed (rc {proc.returncode})")
        if ready():
            proc.send_signal(sig)
            proc.wait(timeout=60)
            return
        time.sleep(0.005)
    proc.kill()
    pytest.fail("timed out waiting for the moment to kill training")


def _assert_checkpoints_good(ckpt_dir):
    for path in list_checkpoints(ckpt_dir):
        state = load_state_dict_file(path)  # raises on a truncated file
        assert {"network", "optimizer", "trainer"} <= set(state)


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("kill") / "data", n_healthy=5, n_lesion=1, seed=2, spacing=3.0)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_mid_epoch_resumes(datalist, tmp_path, sig):
    out = tmp_path / "model"
    proc = subprocess.Popen(_command(datalist, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # after the second checkpoint, in the middle of the third epoch
    _kill_when(
        proc,
        lambda: len(list_checkpoints(out / "checkpoints")) >= 1
        and any(p.name.endswith("epoch=2.pt") for p in list_checkpoints(out / "checkpoints")),
        sig,
    )
    _assert_checkpoints_good(out / "checkpoints")
    assert not (out / "model.pt").exists()
    last_saved = int(list_checkpoints(out / "checkpoints")[0].stem.split("=")[1])
    done = subprocess.run(_command(datalist, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["epochs"] == EPOCHS
    history = json.loads((out / "history.json").read_text())
    assert history[0]["epoch"] == last_saved + 1, "the rerun must continue after the last checkpoint"
    _assert_checkpoints_good(out / "checkpoints")
    load_state_dict_file(out / "model.pt")


def test_killed_during_a_checkpoint_save_resumes(datalist, tmp_path):
    out = tmp_path / "model"
    ckpt = out / "checkpoints"
    proc = subprocess.Popen(_command(datalist, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def saving() -> bool:  # the atomic saver's temporary file is there: the save is under way
        return ckpt.is_dir() and any(p.suffix != ".pt" or not p.name.startswith("checkpoint_") for p in ckpt.iterdir())

    try:
        _kill_when(proc, saving, signal.SIGKILL, timeout=120)
        caught_in_save = True
    except pytest.fail.Exception:
        caught_in_save = False  # the save was too quick to catch: the test still checks resume below
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_checkpoints_good(ckpt)
    done = subprocess.run(_command(datalist, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout[done.stdout.index("{") :])["epochs"] == EPOCHS
    _assert_checkpoints_good(ckpt)
    print(f"killed during a save: {caught_in_save}")
