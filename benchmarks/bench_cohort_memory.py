"""Large cohorts: peak memory and throughput of one training epoch vs the number of subjects, in memory vs bounded.

For each cohort size (default 50, 200 and 1000 synthetic subjects) and each path, a fresh child process prepares
the training slices and runs :func:`monai_qrvae.workflows.train` for one epoch with the QR-VAE defaults (64 x 64,
20 central slices per volume, batch 16, ``small`` preset):

- ``in memory`` (the default): :class:`~monai_qrvae.preprocessing.SliceDataset`, every slice held in RAM;
- ``bounded`` (``train(..., cache_dir=...)``, ``qrvae train --cache-dir``):
  :class:`~monai_qrvae.workflows.PersistentSliceDataset`, each volume prepared once into a folder on disk by MONAI's
  ``PersistentDataset`` and read back through an LRU of 16 volumes.

Reported per child: peak RSS (``VmHWM`` of the child itself, as in ``bench_memory``), the seconds spent preparing
the slices (the bounded path writes its cache: a second run would only read it), and the training throughput:
training slices / the epoch's time as Ignite measures it (data loading and steps, without the validation and the
writes of the model folder that follow).

The subjects are cheap synthetic volumes written directly (noisy 3-contrast ellipsoids, 40 x 48 x 32 voxels of 4 mm,
uncompressed NIfTI, no lesions): only their number matters here. Run::

    python -m benchmarks.bench_cohort_memory --subjects 50 200 1000 --no-doc
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    ROOT,
    SECTIONS,
    Context,
    Section,
    add_common_args,
    context_from_args,
    md_table,
    python_exe,
    run_process,
    save_section,
    timed_section,
)

NAME = "cohort_memory"
SECTIONS.setdefault(NAME, "Large cohorts: training memory and throughput vs number of subjects")
SHAPE = (40, 48, 32)
N_VALIDATION = 2
PATHS = ("in memory", "bounded")

_CHILD = (
    "import atexit, json, re, sys, time\n"
    "def _peak():\n"
    "    status = open('/proc/self/status').read()\n"
    "    print('BENCH_PEAK_KIB', re.search(r'VmHWM:\\s*(\\d+)', status).group(1), flush=True)\n"
    "atexit.register(_peak)\n"
    "from monai_qrvae.defaults import method_defaults\n"
    "import monai_qrvae.workflows.training as training\n"
    "from monai_qrvae.workflows import train\n"
    "from monai_qrvae.workflows.datasets import checked_section, persistent_slice_dataset, slice_dataset\n"
    "trainers = []\n"
    "def _keep(*args, _create=training.create_trainer, **kwargs):  # to read the trainer's epoch time\n"
    "    trainers.append(_create(*args, **kwargs))\n"
    "    return trainers[-1]\n"
    "training.create_trainer = _keep\n"
    "a = json.loads(sys.argv[1])\n"
    "d = method_defaults('qrvae')\n"
    "items = checked_section(a['datalist'], 'training')\n"
    "start = time.perf_counter()\n"
    "if a['cache_dir'] is None:  # kept in the process cache, which train() then uses\n"
    "    ds = slice_dataset(items, d.image_size, d.num_slices, False)\n"
    "else:  # written to the disk cache, which train() then reads\n"
    "    ds = persistent_slice_dataset(items, d.image_size, d.num_slices, a['cache_dir'], False)\n"
    "prep = time.perf_counter() - start\n"
    "del ds\n"
    "start = time.perf_counter()\n"
    "s = train(a['datalist'], a['out'], epochs=1, progress=False, resume=False, cache_dir=a['cache_dir'])\n"
    "r = {'prep_s': prep, 'train_s': time.perf_counter() - start, 'slices': s['train_slices']}\n"
    "r['epoch_s'] = trainers[-1].state.times['EPOCH_COMPLETED']  # data loading + steps, without validation\n"
    "print('BENCH_RESULT', json.dumps(r), flush=True)\n"
)


def write_cohort(folder: Path, n_subjects: int, seed: int = 0) -> Path:
    """``n_subjects`` training and :data:`N_VALIDATION` validation subjects (4D image + brain mask) and a datalist."""
    folder.mkdir(parents=True, exist_ok=True)
    import nibabel as nib

    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    mask = ((grid**2).sum(0) < 0.9).astype(np.uint8)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    tissue = (0.6 + 0.3 * np.cos(3 * grid[0]) * np.cos(2 * grid[2]))[..., None] * np.array([1.0, 0.7, 0.5])
    rng = np.random.default_rng(seed)
    sections: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for i in range(n_subjects + N_VALIDATION):
        name = f"sub-{i:04d}"
        image = ((tissue + rng.normal(0, 0.05, (*SHAPE, 3))) * mask[..., None]).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), str(folder / f"{name}_image.nii"))
        nib.save(nib.Nifti1Image(mask, affine), str(folder / f"{name}_mask.nii"))
        entry = {"image": f"{name}_image.nii", "brain_mask": f"{name}_mask.nii"}
        sections["training" if i < n_subjects else "validation"].append(entry)
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps(sections, indent=1))
    return datalist


def _child(args: dict[str, Any]) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    status, out, usage, wall = run_process([python_exe(), "-c", _CHILD, json.dumps(args)], env=env, timeout=3600)
    peak = [ln.split()[1] for ln in out.splitlines() if ln.startswith("BENCH_PEAK_KIB ")]
    result = [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith("BENCH_RESULT ")]
    if status or not peak or not result:
        raise RuntimeError(f"cohort memory child failed (exit {status}):\n{out[-3000:]}")
    r = json.loads(result[-1])
    return {
        "peak_rss_mb": int(peak[-1]) / 1024,
        "prep_s": r["prep_s"],
        "train_s": r["train_s"],
        "epoch_s": r["epoch_s"],
        "slices": r["slices"],
        "slices_per_s": r["slices"] / r["epoch_s"],
        "wall_s": wall,
    }


def _body(ctx: Context) -> tuple[str, dict[str, Any]]:
    sizes = ctx.options.get("subjects") or ([10, 20] if ctx.quick else [50, 200, 1000])
    work = ctx.work_dir / NAME
    results: dict[int, dict[str, dict[str, float]]] = {}
    try:
        for n in sizes:
            shutil.rmtree(work, ignore_errors=True)
            datalist = write_cohort(work / "data", n, seed=ctx.seed)
            results[n] = {}
            for path in PATHS:
                cache_dir = str(work / "cache") if path == "bounded" else None
                args = {"datalist": str(datalist), "out": str(work / f"model_{path.replace(' ', '_')}")}
                results[n][path] = _child(dict(args, cache_dir=cache_dir))
                print(f"[cohort memory] {n} subjects, {path}: {results[n][path]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(results), {"results": {str(k): v for k, v in results.items()}, "sizes": sizes}


def report(results: dict[int, dict[str, dict[str, float]]]) -> str:
    """The Markdown of the section from the measured ``{subjects: {path: figures}}``."""
    sizes = sorted(results)
    rows = []
    for n in sizes:
        mem, bnd = results[n]["in memory"], results[n]["bounded"]
        rows.append(
            [
                n,
                mem["slices"],
                f"{mem['peak_rss_mb']:.0f}",
                f"{bnd['peak_rss_mb']:.0f}",
                f"{bnd['peak_rss_mb'] / mem['peak_rss_mb']:.2f}",
                f"{mem['prep_s']:.0f} / {bnd['prep_s']:.0f}",
                f"{mem['slices_per_s']:.0f}",
                f"{bnd['slices_per_s']:.0f}",
                f"{bnd['slices_per_s'] / mem['slices_per_s']:.2f}",
            ]
        )
    headers = [
        "subjects",
        "training slices",
        "peak RSS in memory (MiB)",
        "peak RSS bounded (MiB)",
        "RSS ratio bounded / in memory",
        "preparing slices (s) in memory / bounded",
        "epoch slices/s in memory",
        "epoch slices/s bounded",
        "throughput ratio bounded / in memory",
    ]
    first, last = results[sizes[0]], results[sizes[-1]]
    growth = {p: (last[p]["peak_rss_mb"] - first[p]["peak_rss_mb"]) / max(sizes[-1] - sizes[0], 1) for p in PATHS}
    trend = ""
    if sizes[-1] < 1000:
        at_1000 = last["in memory"]["peak_rss_mb"] + growth["in memory"] * (1000 - sizes[-1])
        trend = f"; by this trend 1000 subjects would need about {at_1000:.0f} MiB in memory"
    body = (
        f"One child process per cell, one epoch each (QR-VAE defaults: 64 x 64, 20 slices per volume, batch 16, "
        f"`small` preset; {N_VALIDATION} validation subjects). Synthetic subjects of {' x '.join(map(str, SHAPE))} "
        "voxels written directly (only their number matters). Command: "
        f"`python -m benchmarks.bench_cohort_memory --subjects {' '.join(map(str, sizes))} --no-doc`.\n\n"
        f"{md_table(headers, rows)}\n\n"
        f"- Peak RSS grows by {growth['in memory'] * 1024:.0f} KiB per subject in memory (every slice held: 20 x "
        f"(3 + 1) x 64 x 64 float32 = 1.25 MiB per subject, plus the preparation's transients) and by "
        f"{growth['bounded'] * 1024:.0f} KiB per subject on the bounded path (the datalist entries and an index)"
        f"{trend}.\n"
        "- Throughput: training slices per second of the epoch (data loading and steps, as Ignite times it). The "
        "bounded path reads a volume's file (20 slices) whenever a slice's volume is not among the 16 it keeps; "
        "with a shuffled order over many subjects that is most slices. The cells ran one after the other, once "
        "each: on a shared machine the throughput ratios move with the other users' load (load figures above), read "
        "them as the order of the cost, not as a speed-up.\n"
        "- Use: `qrvae train --cache-dir DIR` or `train(..., cache_dir=DIR)`; in the bundle, set `train#dataset` and "
        "`validate#dataset` to `monai_qrvae.workflows.PersistentSliceDataset` (same arguments as `SliceDataset` plus "
        "`cache_dir`), which also works under `torchrun` with `multi_gpu_train.json` (DDP, `DistributedSampler`; "
        "tests/integration/test_cohort_memory.py runs it on 2 gloo processes).\n"
    )
    return body


def run(ctx: Context) -> Section:
    """Run the large-cohort benchmark (one child process per cohort size and path)."""
    return timed_section(NAME, lambda: _body(ctx))


def main(argv: list[str] | None = None) -> Section:
    """``python -m benchmarks.bench_cohort_memory [--subjects N ...]`` plus the common benchmark options."""
    parser = add_common_args(argparse.ArgumentParser(prog="python -m benchmarks.bench_cohort_memory"))
    parser.add_argument("--subjects", type=int, nargs="+", default=None, help="cohort sizes (50 200 1000)")
    args = parser.parse_args(argv)
    ctx = context_from_args(args)
    ctx.options["subjects"] = args.subjects
    section = run(ctx)
    save_section(section, ctx)
    return section


if __name__ == "__main__":
    main()
