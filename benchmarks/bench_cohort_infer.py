"""Cohort runs of ``qrvae infer --datalist``: subjects per hour with 1 and 2 processes, and the cost of resuming.

Small subjects are made cheaply: four test subjects of the shared cohort (``data/synth``) cut to their ``--slices``
central axial slices, written once; the ``--subjects`` subject folders are symbolic links to them (inputs are
stamped by the file they point to, so each folder is a subject of its own for the manifests). Then, with the
shipped model:

1. one process: ``python -m monai_qrvae.cli infer --datalist D --out O1`` (wall time, subjects per hour);
2. two processes: ``torchrun --nproc_per_node 2 -m monai_qrvae.cli infer ...`` (``gloo``, each rank takes
   ``rank::2``; one torch thread per process);
3. resume: a fresh one-process run is killed with SIGKILL once half of the subjects have their manifest, then run
   again; reported: the rerun's time, the time the remaining subjects cost at the rate of (1), their difference
   (the resume cost: start-up, stamping and skipping the done half), and a third run with all done (skip only).

Run (a few minutes on 2 cores)::

    python -m benchmarks.bench_cohort_infer --subjects 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_subjects(out: Path, n: int, slices: int) -> Path:
    """``n`` small subjects (links to 4 cut subjects of data/synth) and their datalist (section ``test``)."""
    data = ROOT / "data" / "synth"
    entries = json.loads((data / "datalist.json").read_text())["test"][:4]
    bases = []
    for i, e in enumerate(entries):
        folder = out / "base" / f"b{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for key in ("image", "brain_mask"):
            img = nib.load(data / e[key])
            z0 = img.shape[2] // 2 - slices // 2
            cut = img.slicer[:, :, z0 : z0 + slices]
            nib.save(nib.Nifti1Image(np.asarray(cut.dataobj), cut.affine), folder / f"{key}.nii")
        bases.append(folder)
    items = []
    for k in range(n):
        folder = out / "subjects" / f"sub-{k:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for key in ("image", "brain_mask"):
            link = folder / f"{key}.nii"
            if not link.exists():
                link.symlink_to(bases[k % len(bases)] / f"{key}.nii")
        items.append({"image": str(folder / "image.nii"), "brain_mask": str(folder / "brain_mask.nii")})
    datalist = out / "datalist.json"
    datalist.write_text(json.dumps({"test": items}))
    return datalist


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _infer_cmd(datalist: Path, out: Path) -> list[str]:
    return ["-m", "monai_qrvae.cli", "infer", "--datalist", str(datalist), "--out", str(out), "--no-png"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run(n: int, slices: int, work: Path) -> dict[str, float]:
    datalist = make_subjects(work, n, slices)
    results: dict[str, float] = {"subjects": n, "slices": slices}
    one = timed([sys.executable, *_infer_cmd(datalist, work / "o1")], _env(2))
    results["one_process_s"] = round(one, 1)
    results["one_process_per_hour"] = round(n / one * 3600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29573"]
    two = timed([*torchrun, *_infer_cmd(datalist, work / "o2")], _env(1))
    results["two_processes_s"] = round(two, 1)
    results["two_processes_per_hour"] = round(n / two * 3600)

    out = work / "o3"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *_infer_cmd(datalist, out)], env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    manifests = out / ".manifest"
    while proc.poll() is None and len(list(manifests.glob("*.json")) if manifests.is_dir() else []) < n // 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    results["killed_after_s"] = round(time.perf_counter() - start, 1)
    done = len(list(manifests.glob("*.json")))
    results["done_at_kill"] = done
    rerun = timed([sys.executable, *_infer_cmd(datalist, out)], _env(2))
    results["rerun_s"] = round(rerun, 1)
    remaining = (n - done) * one / n
    results["remaining_at_rate_s"] = round(remaining, 1)
    results["resume_cost_s"] = round(rerun - remaining, 1)
    results["all_done_rerun_s"] = round(timed([sys.executable, *_infer_cmd(datalist, out)], _env(2)), 1)
    ok = all(len((o / "cohort.csv").read_text().splitlines()) == n + 1 for o in (work / "o1", work / "o2", out))
    results["cohort_csv_complete"] = ok
    return results


def table(r: dict[str, float]) -> str:
    rows = [
        ("1 process", f"{r['one_process_s']} s", f"{r['one_process_per_hour']}"),
        ("2 processes (torchrun, gloo, 1 thread each)", f"{r['two_processes_s']} s", f"{r['two_processes_per_hour']}"),
    ]
    lines = ["| run | wall time | subjects / hour |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += [
        "",
        "| resume (1 process) | seconds |",
        "|---|---:|",
        f"| killed (SIGKILL) with {r['done_at_kill']} of {r['subjects']} done, after | {r['killed_after_s']} |",
        f"| rerun: skips the done, runs the rest | {r['rerun_s']} |",
        f"| the rest at the one-process rate | {r['remaining_at_rate_s']} |",
        f"| resume cost (rerun - rest at rate) | {r['resume_cost_s']} |",
        f"| a third run, all {r['subjects']} done (stamp + skip only) | {r['all_done_rerun_s']} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=200)
    p.add_argument("--slices", type=int, default=8, help="axial slices kept per small subject (8)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "bench_cohort_infer"))
    p.add_argument("--json", default=None, help="write the figures here too")
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    results = run(args.subjects, args.slices, work)
    print(json.dumps(results, indent=1))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
