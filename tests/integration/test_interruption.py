"""Kill a real `qrvae train` process (SIGKILL, SIGTERM, during a checkpoint save), rerun it, and it resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monai_qrvae.handlers.checkpoint import list_checkpoints, load_state_dict_file

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
def datalist(cohort_factory):
    return cohort_factory("kill", "data", n_healthy=5, n_lesion=1, seed=2, spacing=3.0)


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


# `qrvae train` with torch.save instrumented: the second checkpoint save (epoch 2) writes half of its bytes, flushes
# them, records in MARKER where it writes and how much, then waits to be killed before writing the rest.
_SLOW_SAVE = """
import io, json, os, sys, time
import torch
from monai_qrvae.cli import main

marker, real_save, calls = sys.argv.pop(1), torch.save, []


def slow_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) != 2:
        return real_save(obj, f, *args, **kwargs)
    data = io.BytesIO()
    real_save(obj, data, *args, **kwargs)
    data = data.getvalue()
    handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    handle.write(data[: len(data) // 2])
    handle.flush()
    os.fsync(handle.fileno())
    target = str(f) if isinstance(f, (str, os.PathLike)) else handle.name
    with open(marker + ".tmp", "w") as out:
        json.dump({"file": target, "written": len(data) // 2, "size": len(data)}, out)
    os.replace(marker + ".tmp", marker)
    time.sleep(600)
    handle.write(data[len(data) // 2 :])


torch.save = slow_save
sys.argv[0] = "qrvae"
sys.exit(main())
"""


def test_killed_during_a_checkpoint_save_resumes(datalist, tmp_path):
    """SIGKILL while the epoch-2 checkpoint is half written: epoch 1's stays the newest, and the rerun resumes there."""
    out = tmp_path / "model"
    ckpt = out / "checkpoints"
    marker = tmp_path / "in_save.json"
    cmd = [sys.executable, "-c", _SLOW_SAVE, str(marker), *_command(datalist, out)[3:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, marker.exists, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    # the kill landed inside the write: the half-written file is there, with exactly the bytes written so far
    in_save = json.loads(marker.read_text())
    partial = Path(in_save["file"])
    assert partial.parent == ckpt and partial.stat().st_size == in_save["written"] < in_save["size"]
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_state_dict_file(partial)
    # ... and it never took a checkpoint's name: epoch 1 is the newest checkpoint, intact
    assert [p.name for p in list_checkpoints(ckpt)] == ["checkpoint_epoch=1.pt"]
    _assert_checkpoints_good(ckpt)
    trainer = load_state_dict_file(ckpt / "checkpoint_epoch=1.pt")["trainer"]
    assert trainer["iteration"] == trainer["epoch_length"], trainer  # saved at the end of epoch 1
    assert not (out / "model.pt").exists()
    done = subprocess.run(_command(datalist, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout[done.stdout.index("{") :])["epochs"] == EPOCHS
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(2, EPOCHS + 1)), "the rerun must continue after epoch 1"
    _assert_checkpoints_good(ckpt)
    load_state_dict_file(out / "model.pt")
