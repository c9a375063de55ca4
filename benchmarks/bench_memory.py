"""Peak resident memory (RSS) of training and inference, each job in its own child process.

Each job runs as a fresh Python process that reports its own peak resident set size, ``VmHWM`` of
``/proc/self/status``, when it exits. (Not ``ru_maxrss`` from ``wait4``/``RUSAGE_CHILDREN``: on Linux a child started
from a large parent inherits the parent's high-water mark across ``fork``/``exec``, so every child of this 0.7 GiB
benchmark process would read at least 0.7 GiB.) Jobs:

- ``import`` only (``import monai_qrvae.workflows``: Python, torch, MONAI, Ignite, SciPy): the floor every job pays;
- ``train``: :func:`monai_qrvae.workflows.train`, one epoch with its defaults, on the benchmark cohort (slice
  datasets of the training and validation volumes, the trainer, validation, checkpoint, TensorBoard);
- ``infer``: :func:`monai_qrvae.workflows.infer` on one volume (NIfTI maps and the PNG overlay);

for the shipped ``small`` preset and the paper's ``paper`` preset (69.6 M parameters).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from benchmarks.cli import standalone
from benchmarks.context import Context, pipeline_defaults
from benchmarks.processes import child_env, python_exe, run_process
from benchmarks.report import timed
from benchmarks.timing import md_table, median

_PEAK = (
    "import atexit, re\n"
    "def _peak():\n"
    "    status = open('/proc/self/status').read()\n"
    "    print('BENCH_PEAK_KIB', re.search(r'VmHWM:\\s*(\\d+)', status).group(1), flush=True)\n"
    "atexit.register(_peak)\n"
)
_IMPORT = "import monai_qrvae.workflows\n"
_TRAIN = (
    "import sys, json\n"
    "from monai_qrvae.workflows import train\n"
    "a = json.loads(sys.argv[1])\n"
    "train(a['datalist'], a['out'], preset=a['preset'], epochs=1, progress=False, resume=False)\n"
)
_INFER = (
    "import sys, json\n"
    "from monai_qrvae.workflows import infer\n"
    "a = json.loads(sys.argv[1])\n"
    "infer(a['model'], [a['item']], a['out'], save_png=True)\n"
)


def _child(code: str, args: dict[str, Any]) -> dict[str, float]:
    status, out, usage, wall = run_process([python_exe(), "-c", _PEAK + code, json.dumps(args)], env=child_env())
    peak = [ln.split()[1] for ln in out.splitlines() if ln.startswith("BENCH_PEAK_KIB ")]
    if status or not peak:
        raise RuntimeError(f"memory benchmark child failed (exit {status}):\n{out[-3000:]}")
    return {"peak_rss_mb": int(peak[-1]) / 1024, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def _params(preset: str) -> tuple[float, float]:
    from monai_qrvae.workflows import ModelConfig, build_networks

    vae, _ = build_networks(ModelConfig(preset=preset))
    n = sum(p.numel() for p in vae.parameters())
    return n / 1e6, n * 4 / 1024**2


@timed("memory")
def run(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Run the memory benchmark (one child process per job)."""
    presets = ("small",) if ctx.quick else ("small", "paper")
    datalist = str(ctx.datalist)
    item = ctx.inputs("test")[0]
    repeats = 1  # peak RSS hardly varies between runs; each child costs ~20 s of imports on 2 busy cores
    jobs: dict[str, tuple[str, dict[str, Any]]] = {"import only": (_IMPORT, {})}
    with tempfile.TemporaryDirectory(prefix="bench_mem_") as tmp:
        for preset in presets:
            model = str(ctx.model_dir(preset, preset=preset))
            jobs[f"train, {preset}, 1 epoch"] = (_TRAIN, {"datalist": datalist, "preset": preset})
            jobs[f"infer, {preset}, 1 volume"] = (_INFER, {"model": model, "item": item})
        results: dict[str, list[dict[str, float]]] = {k: [] for k in jobs}
        for r in range(repeats):
            for i, (name, (code, args)) in enumerate(jobs.items() if r % 2 == 0 else list(jobs.items())[::-1]):
                args = dict(args, out=os.path.join(tmp, f"{r}_{i}"))
                results[name].append(_child(code, args))
                print(f"[memory] {name}: {results[name][-1]}", flush=True)
    floor = median([x["peak_rss_mb"] for x in results["import only"]])
    rows = []
    for name, runs in results.items():
        peak = median([x["peak_rss_mb"] for x in runs])
        extra = "" if name == "import only" else f"+{peak - floor:.0f}"
        rows.append([name, f"{peak:.0f}", extra, f"{median([x['wall_s'] for x in runs]):.1f}"])
    table = md_table(["job (own process)", "peak RSS (MiB)", "above the import floor (MiB)", "wall time (s)"], rows)
    sizes = []
    for preset in presets:
        n, mb = _params(preset)
        sizes.append(f"`{preset}`: {n:.1f} M parameters, {mb:.0f} MiB of float32 weights")
    n_train = len(ctx.items("training"))
    body = (
        f"Median of {repeats} run(s) per job, jobs interleaved. Cohort: {n_train} training volumes "
        f"({20 * n_train} slices), 85 x 103 x 90 x 3 at 2 mm. Models: {'; '.join(sizes)}.\n\n"
        f"{table}\n\n"
        "- Training holds the weights, their gradients and two Adam moments (4x the weights), the activations of a "
        f"batch of {pipeline_defaults()['batch_size']}, and all slices in memory (3 x 64 x 64 float32 + mask = 64 KiB "
        "per slice: a 40-subject cohort is 50 MiB).\n"
        "- Most of an inference job's memory is the libraries; the volume and its maps are a few tens of MiB.\n"
    )
    return body, {"results": results, "floor_mb": floor}


if __name__ == "__main__":
    standalone("bench_memory", run)
