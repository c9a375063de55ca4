"""The two studies behind the published figures: the ``tuning`` sweep and the ``test`` benchmark.

- :func:`sweep` trains every method with each candidate learning rate, evaluates it on the ``tuning`` split after
  each candidate number of epochs (one run per learning rate, continued from its checkpoint) and with each
  candidate z-map filter, and picks, per method, the setting with the best tuning AUPRC. FLAIR thresholding gets
  the same post-processing candidates. Nothing here looks at ``test``.
- :func:`benchmark` trains every method with its defaults (:mod:`monai_qrvae.defaults`) for several seeds and
  scores each on ``test``: the headline table (mean +- s.d. over seeds), whole brain, input grid, with coverage
  and lesion-wise figures.

Both write CSV and Markdown; :func:`~monai_qrvae.tables.update_doc_block` then rewrites the marked block of a
Markdown file so README and docs show exactly what the command printed.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_qrvae import workflows
from monai_qrvae.handlers.checkpoint import latest_checkpoint
from monai_qrvae.tables import HEADLINE_COLUMNS, format_headline, format_value
from monai_qrvae.utils import write_csv, write_text

__all__ = ["sweep", "benchmark"]


def sweep(
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    methods: Sequence[str] = ("qrvae", "gaussian", "mse", "flair"),
    lrs: Sequence[float] = (3e-4, 1e-3),
    epochs: Sequence[int] = (10, 20),
    score_medians: Sequence[int] = (1, 3),
    seed: int = 0,
    progress: bool = False,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Choose each method's learning rate, epochs and z-map filter on the ``tuning`` split.

    Every combination is trained on ``training`` (validated on ``validation``) and scored on ``tuning`` (whole
    brain, input grid); the pick per method is the best tuning AUPRC (ties: fewer epochs, then the first). FLAIR
    thresholding has no training, so only its filter is swept. The label-free columns use a calibration of each
    scored filter, recomputed on the healthy ``calibration`` split (the model folders keep the last one).

    Returns:
        ``{"rows": [...], "picked": {method: row}, "table": markdown}``; also written to ``output_dir`` as
        ``sweep.csv``, ``sweep.md`` and ``sweep.json``.
    """

    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    for method in methods:
        run_lrs: Sequence[float | None] = lrs if method != "flair" else [None]
        run_epochs: Sequence[int] = sorted(epochs) if method != "flair" else [0]
        for lr in run_lrs:
            model = out / method / ("fit" if lr is None else f"lr{lr:g}")
            latest = latest_checkpoint(model / "checkpoints")
            if latest is not None and int(latest.stem.split("=")[-1]) > min(run_epochs):
                # resuming would skip training and score later weights under a smaller epoch count
                raise ValueError(
                    f"{model} already holds a checkpoint of {latest.stem.split('=')[-1]} epochs, more than the first "
                    f"epoch count swept ({min(run_epochs)}); expected a fresh --out folder (or delete {model})."
                )
            for n_epochs in run_epochs:
                workflows.train(
                    datalist,
                    model,
                    method=method,
                    epochs=n_epochs if method != "flair" else None,
                    lr=lr,
                    seed=seed,
                    progress=progress,
                    **train_kwargs,
                )
                for score_median in score_medians:
                    # the label-free columns need a calibration of exactly this score (on `calibration`, not tuning)
                    config, net = workflows.load_model(model)
                    workflows.calibrate_model(
                        model, datalist, config, net, "cpu", score_median=score_median
                    )  # as evaluate: CPU
                    result = workflows.evaluate(
                        model,
                        datalist,
                        out / method / f"eval_lr{lr}_e{n_epochs}_m{score_median}",
                        section="tuning",
                        score_median=score_median,
                        save_maps=False,
                        save_png=False,
                    )
                    rows.append(
                        {
                            "method": method,
                            "lr": lr,
                            "epochs": n_epochs,
                            "score_median": score_median,
                            **{k: result[k] for k, _ in HEADLINE_COLUMNS},
                        }
                    )
    picked: dict[str, dict[str, Any]] = {}
    for method in methods:
        candidates = [r for r in rows if r["method"] == method]
        ranked = sorted(
            candidates, key=lambda r: (-np.nan_to_num(r["auprc"], nan=-1.0), r["epochs"])
        )  # stable: first of equals
        picked[method] = ranked[0]
    lines = [
        "| method | lr | epochs | z-map median | tuning AUPRC | tuning AUROC | tuning best Dice | picked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "**yes**" if r is picked[r["method"]] else ""
        lines.append(
            f"| {r['method']} | {format_value(r['lr'], 4) if r['lr'] else '-'} | {r['epochs']} | {r['score_median']} | "
            f"{format_value(r['auprc'])} | {format_value(r['auroc'])} | {format_value(r['best_dice'])} | {mark} |"
        )
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "sweep.csv", rows)
    write_text(out / "sweep.md", table)
    write_text(out / "sweep.json", json.dumps({"rows": rows, "picked": picked}, indent=2))
    return {"rows": rows, "picked": picked, "table": table}


def benchmark(
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    methods: Sequence[str] = ("qrvae", "gaussian", "mse", "flair"),
    seeds: Sequence[int] = (0, 1, 2),
    section: str = "test",
    progress: bool = False,
    reuse: bool = False,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Train every method with its defaults for each seed, score it on ``section``; write the headline table.

    With ``reuse``, a method and seed already scored in ``output_dir`` (``<method>/seed<k>/eval/metrics.json``, e.g.
    by earlier runs of some of the methods) is read back instead of trained and scored again; its training time comes
    from ``<method>/seed<k>/train_summary.json`` or an earlier ``headline*.csv`` of the folder.

    FLAIR thresholding is deterministic and trained once. Writes ``headline.md``, ``headline.csv`` (one row per
    method and seed) and ``headline.json`` into ``output_dir``.

    Returns:
        ``{"results": {method: [result per seed]}, "table": markdown, "first_seed_table": markdown}``; the
        first seed's table of the demo's methods is what ``qrvae demo`` (seed 0, the same cohort and defaults)
        prints.
    """

    out = Path(output_dir)
    results: dict[str, list[dict[str, Any]]] = {}
    rows = []
    earlier = _earlier_train_seconds(out) if reuse else {}
    for method, seed in itertools.product(methods, seeds):
        if method == "flair" and seed != seeds[0]:
            continue
        model = out / method / f"seed{seed}" / "model"
        metrics = out / method / f"seed{seed}" / "eval" / "metrics.json"
        summary_file = out / method / f"seed{seed}" / "train_summary.json"
        if reuse and metrics.is_file():
            result = json.loads(metrics.read_text())
            seconds = json.loads(summary_file.read_text())["seconds"] if summary_file.is_file() else None
            summary = {"seconds": seconds if seconds is not None else earlier.get((method, seed), math.nan)}
        else:
            summary = workflows.train(datalist, model, method=method, seed=seed, progress=progress, **train_kwargs)
            write_text(summary_file, json.dumps(summary, indent=2, default=str))
            result = workflows.evaluate(
                model, datalist, out / method / f"seed{seed}" / "eval", section=section, save_maps=False
            )
        result["train_seconds"] = summary["seconds"]
        results.setdefault(method, []).append(result)
        rows.append({"method": method, "seed": seed, **{k: result.get(k) for k, _ in HEADLINE_COLUMNS}})
        rows[-1]["train_seconds"] = round(summary["seconds"], 1)
    table = format_headline(results)

    shown = [m for m in workflows.DEMO_METHODS if m in results] or list(results)  # what `qrvae demo` trains and prints
    first = format_headline({m: results[m][:1] for m in shown})
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "first_seed.md", first)
    write_csv(out / "headline.csv", rows)
    write_text(out / "headline.md", table)
    slim = {m: [{k: v for k, v in r.items() if k != "per_volume"} for r in runs] for m, runs in results.items()}
    write_text(out / "headline.json", json.dumps(slim, indent=2))
    return {"results": results, "table": table, "first_seed_table": first}


def _earlier_train_seconds(out: Path) -> dict[tuple[str, int], float]:
    """Training seconds per ``(method, seed)`` from the ``headline*.csv`` files of an output folder."""
    seconds: dict[tuple[str, int], float] = {}
    for path in sorted(out.glob("headline*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("train_seconds") not in (None, ""):
                    seconds[(row["method"], int(row["seed"]))] = float(row["train_seconds"])
    return seconds
