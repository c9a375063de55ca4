"""How much each pinned figure moves across emulated CPUs and thread counts: the tolerances of the pinned tests.

The same computation is rerun in fresh processes under the settings that change the CPU kernels' floating-point
path on one machine (they emulate other CPUs): torch threads 1/2/4, ``ATEN_CPU_CAPABILITY=default/avx2/avx512``,
``ONEDNN_MAX_CPU_ISA=AVX2/AVX512_CORE`` and oneDNN off. Probes:

- ``pinned``: the pinned demo (``qrvae demo --pinned``: float64, deterministic; tests/integration/test_pinned.py);
- ``pinned-float32``: the same setting in float32 with oneDNN (the pinned setting before issue 27), for contrast;
- ``card``: the shipped weights on the default cohort's test split (the bundle card's figures, metadata.json).

Prints, per probe, every figure's value under each setting and its spread (max - min), writes them as JSON, and with
``--update-docs`` rewrites the ``spread`` block of docs/benchmarks.md. Example::

    python -m benchmarks.figure_spread --probes pinned pinned-float32 card --out outputs/spread \\
        --update-docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> (environment variables, torch threads, oneDNN enabled)
SETTINGS: dict[str, tuple[dict[str, str], int, bool]] = {
    "1 thread": ({}, 1, True),
    "2 threads": ({}, 2, True),
    "4 threads": ({}, 4, True),
    "ATEN=default": ({"ATEN_CPU_CAPABILITY": "default"}, 1, True),
    "ATEN=avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, 1, True),
    "ATEN=avx512": ({"ATEN_CPU_CAPABILITY": "avx512"}, 1, True),
    "ONEDNN=AVX2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, 1, True),
    "ONEDNN=AVX512_CORE": ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, 1, True),
    "oneDNN off": ({}, 1, False),
}
PROBES = ("pinned", "pinned-float32", "card")
_NUMBER = re.compile(r"-?\d+\.\d+|n/a")


def table_figures(table: str) -> dict[str, float]:
    """``{"row | column": value}`` of a Markdown comparison table (``n/a`` cells left out)."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    figures, parent = {}, ""
    for line in lines[2:]:
        raw = [c.strip() for c in line.strip("|").split("|")]
        cells = [c.replace("&nbsp;", "") for c in raw]
        row = cells[0] if not raw[0].startswith("&nbsp;") else f"{parent}, {cells[0]}"  # a stratum of the method above
        parent = parent if raw[0].startswith("&nbsp;") else cells[0]
        for column, cell in zip(header[1:], cells[1:]):
            if cell != "n/a" and _NUMBER.fullmatch(cell):
                figures[f"{row}: {column}"] = float(cell)
    return figures


def _probe(name: str, work: Path, threads: int, onednn: bool) -> dict[str, float]:
    """Run one probe in this process and return its figures."""
    import torch

    torch.backends.mkldnn.enabled = onednn
    if name.startswith("pinned"):
        from monai_qrvae.workflows import PINNED_DEMO, demo

        settings = dict(PINNED_DEMO, threads=threads, reproducible=name == "pinned")
        result = demo(output_dir=work, progress=False, **settings)
        return table_figures(result["table"].split("\nTraining time")[0])
    if name == "card":
        from monai_qrvae.data import make_cohort
        from monai_qrvae.workflows import evaluate

        torch.set_num_threads(threads)
        datalist = REPO / "outputs" / "spread-cohort" / "datalist.json"
        if not datalist.is_file():
            make_cohort(datalist.parent)
        metrics = evaluate(REPO / "bundle" / "models", datalist, work, save_maps=False, save_png=False)
        card = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text())["eval_metrics"]
        return {key: float(metrics[key]) for key in card}
    raise ValueError(f"unknown probe {name!r}, expected one of {PROBES}")


def _run_one(probe: str, setting: str, out: Path) -> dict[str, float]:
    env_vars, threads, onednn = SETTINGS[setting]
    work = out / f"{probe}-{re.sub(r'[^A-Za-z0-9]+', '_', setting)}"
    cmd = [sys.executable, "-m", "benchmarks.figure_spread", "--child", probe, "--threads", str(threads)]
    cmd += ["--out", str(work)] + ([] if onednn else ["--no-onednn"])
    env = dict(os.environ, **env_vars)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{probe} under {setting} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: one row per (probe, figure), the value under each setting and the spread (max - min)."""
    settings = list(next(iter(results.values())))
    lines = [
        "| probe | figure | " + " | ".join(settings) + " | spread |",
        "|---|---|" + "---|" * (len(settings) + 1),
    ]
    for probe, by_setting in results.items():
        for figure in by_setting[settings[0]]:
            values = [by_setting[s][figure] for s in settings]
            cells = " | ".join(f"{v:.3f}" for v in values)
            lines.append(f"| {probe} | {figure} | {cells} | {max(values) - min(values):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.figure_spread", description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", nargs="+", choices=PROBES, default=["pinned"])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "spread")
    parser.add_argument("--jobs", type=int, default=2, help="settings run at once (one process each)")
    parser.add_argument("--update-docs", nargs="*", default=[], help="Markdown files whose 'spread' block is rewritten")
    parser.add_argument("--merge", type=Path, help="a spread.json of an earlier run whose other probes are kept")
    parser.add_argument("--child", choices=PROBES, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--no-onednn", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_probe(args.child, args.out, args.threads, not args.no_onednn)))
        return 0

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    if args.merge:
        results.update({k: v for k, v in json.loads(args.merge.read_text()).items() if k not in args.probes})
    for probe in args.probes:
        if probe == "card":  # make the shared cohort once, before the parallel runs
            _run_one(probe, args.settings[0], args.out)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {s: pool.submit(_run_one, probe, s, args.out) for s in args.settings}
            results[probe] = {s: f.result() for s, f in futures.items()}
        print(f"[spread] {probe} done ({time.perf_counter() - start:.0f} s)", flush=True)
    from monai_qrvae.tables import publish_table

    return publish_table(spread_table(results), args.update_docs, "spread", results, args.out / "spread.json")


if __name__ == "__main__":
    sys.exit(main())
