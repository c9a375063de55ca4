"""Detection quality on the embedded lesion subjects: QR-VAE, Gaussian VAE, MSE VAE and FLAIR thresholding.

Every method goes through the same jobs (:func:`monai_qrvae.workflows.train` on the healthy ``training`` section,
then :func:`monai_qrvae.workflows.evaluate` on the lesion ``test`` section): the same preprocessing (20 central
axial slices per volume, 64 x 64, percentile normalisation inside the brain) and the same post-processing (z-map of
the FLAIR channel, one-sided p-values, Benjamini-Hochberg at alpha = 0.05 per volume, no filter). Metrics, voxel-wise
inside the brain and pooled over the test volumes:

- ``dice_fdr``: Dice of the label-free FDR mask (the threshold a user gets without labels);
- ``best_dice``: best Dice over all thresholds (an upper bound: it looks at the test labels);
- ``auroc``, ``auprc``.

Three training seeds per method (the data are fixed: ``make_cohort(seed=0)``), mean and standard deviation. FLAIR
thresholding has no training: its seeds must agree exactly (a check of the pipeline's determinism).

Expensive (3 VAEs x 3 seeds of training): opt-in, resumable (finished runs are kept under
``outputs/bench/quality``), best run in the background::

    nohup .venv/bin/python -m benchmarks.bench_quality --epochs 15 > outputs/bench/quality.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    Context,
    Section,
    add_common_args,
    bench_cohort,
    context_from_args,
    load_average,
    md_table,
    save_section,
    timed_section,
)

METRICS = ("dice_fdr", "best_dice", "auroc", "auprc")
METHODS = ("qrvae", "gaussian", "mse", "flair")


def _settings(ctx: Context) -> dict[str, Any]:
    o = ctx.options
    quick = ctx.quick
    return {
        "epochs": int(o.get("epochs") or (2 if quick else 15)),
        "seeds": list(o.get("seeds") or ([0] if quick else [0, 1, 2])),
        "methods": list(o.get("methods") or METHODS),
        "n_healthy": int(o.get("n_healthy") or (10 if quick else 40)),
        "n_lesion": int(o.get("n_lesion") or (4 if quick else 10)),
        "preset": o.get("preset") or "small",
        "code": _code_settings(),
        "commit": _git_commit(),  # once, at the start: the code this process imported, not the tree's later state
    }


def _code_settings() -> dict[str, Any]:
    """The training, preprocessing and post-processing defaults in force (a result made under others is redone)."""
    import inspect

    from monai_qrvae import workflows
    from monai_qrvae.preprocessing import volume_transforms

    out: dict[str, Any] = {}
    for fn, names in (
        (workflows.train, ("batch_size", "lr", "num_slices", "image_size")),
        (workflows.evaluate, ("alpha", "per", "median_size", "min_size", "score_median")),
        (volume_transforms, ("lower", "upper", "clip")),
    ):
        params = inspect.signature(fn).parameters
        out.update({n: params[n].default for n in names if n in params})
    return out


def _git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _run_one(datalist: Path, out: Path, method: str, seed: int, s: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (method, seed); reuse a finished result."""
    from monai_qrvae.workflows import evaluate, train

    done = out / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("settings") == {k: s[k] for k in ("epochs", "preset", "code")}:
            return result
        shutil.rmtree(out / "model", ignore_errors=True)  # made under other settings: do not resume from it
    summary = train(
        datalist, out / "model", method=method, epochs=s["epochs"], seed=seed, progress=False, preset=s["preset"]
    )
    start = time.perf_counter()
    metrics = evaluate(out / "model", datalist, out / "eval", save_maps=False, save_png=False)
    result = {
        "method": method,
        "seed": seed,
        "settings": {k: s[k] for k in ("epochs", "preset", "code")},
        "commit": s["commit"],
        "train_seconds": summary["seconds"],
        "eval_seconds": time.perf_counter() - start,
        "final_loss": summary.get("final_loss"),
        "final_val_loss": summary.get("final_val_loss"),
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        **{k: metrics.get(k) for k in METRICS},
    }
    done.write_text(json.dumps(result, indent=2))
    return result


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def _tables(results: list[dict[str, Any]], s: dict[str, Any]) -> str:
    rows = []
    for method in s["methods"]:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        row = [method, str(len(runs))] + [_fmt([r[k] for r in runs]) for k in METRICS]
        row.append(f"{statistics.fmean(r['train_seconds'] for r in runs):.0f}")
        rows.append(row)
    summary = md_table(
        [
            "method",
            "seeds",
            "Dice at FDR 0.05 (label-free)",
            "best Dice [upper bound]",
            "AUROC",
            "AUPRC",
            "train s (mean)",
        ],
        rows,
    )
    per_seed = md_table(
        ["method", "seed"] + list(METRICS),
        [[r["method"], r["seed"]] + [f"{r[k]:.3f}" if r[k] is not None else "n/a" for k in METRICS] for r in results],
    )
    return f"{summary}\n\nPer seed:\n\n{per_seed}\n"


def _ranking(results: list[dict[str, Any]]) -> str:
    """One generated line per metric: the methods ordered by their mean over the seeds."""
    lines = []
    for key, label in zip(METRICS, ("label-free Dice", "best Dice", "AUROC", "AUPRC")):
        means = {}
        for method in dict.fromkeys(r["method"] for r in results):
            values = [r[key] for r in results if r["method"] == method and r[key] is not None and r[key] == r[key]]
            if values:
                means[method] = statistics.fmean(values)
        if means:
            ranked = sorted(means, key=means.get, reverse=True)
            lines.append(f"{label}: " + " > ".join(f"{m} ({means[m]:.3f})" for m in ranked))
    return ("- Ranking by mean: " + "; ".join(lines) + ".\n") if lines else ""


def _body(ctx: Context, progress: Any = None) -> tuple[str, dict[str, Any]]:
    s = _settings(ctx)
    root = ctx.work_dir / "quality" / f"healthy{s['n_healthy']}_lesion{s['n_lesion']}"
    datalist = bench_cohort(root / "data", s["n_healthy"], s["n_lesion"], seed=0)
    results: list[dict[str, Any]] = []
    total = len(s["seeds"]) * len(s["methods"])
    for seed in s["seeds"]:  # seeds outside: a partial run has every method at the same number of seeds
        for method in s["methods"]:
            start = time.perf_counter()
            r = _run_one(datalist, root / method / f"seed{seed}", method, seed, s)
            results.append(r)
            print(
                f"[quality] {len(results)}/{total} {method} seed {seed}: "
                + ", ".join(f"{k} {r[k]:.3f}" for k in METRICS if r[k] is not None)
                + f" ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            if progress is not None and len(results) < total:
                progress(_compose(results, s, partial=True), {"results": results, "settings": s})
    return _compose(results, s, partial=False), {"results": results, "settings": s}


def _compose(results: list[dict[str, Any]], s: dict[str, Any], partial: bool) -> str:
    n_train = int(round(s["n_healthy"] * 0.8))
    status = (
        f"**Partial: {len(results)} of {len(s['seeds']) * len(s['methods'])} runs finished.**\n\n" if partial else ""
    )
    c = s["code"]
    lesion_filter = (
        "off" if c["median_size"] <= 1 and c["min_size"] <= 0 else f"median {c['median_size']}, min {c['min_size']}"
    )
    commits = ", ".join(f"`{x}`" for x in sorted({r.get("commit", "unknown") for r in results})) or "unknown"
    total = sum((r.get("train_seconds") or 0) + (r.get("eval_seconds") or 0) for r in results)
    finished = sorted(r["finished"] for r in results if r.get("finished"))
    when = f", finished between {finished[0]} and {finished[-1]}" if finished else ""
    status += f"The {len(results)} runs took {total / 60:.0f} min of training and evaluation in total{when}.\n\n"
    return (
        f"{status}Settings: synthetic cohort `make_cohort(n_healthy={s['n_healthy']}, n_lesion={s['n_lesion']}, "
        f"seed=0)` ({n_train} training and {s['n_healthy'] - n_train} validation healthy subjects, {s['n_lesion']} "
        f"lesion subjects for the test), preset `{s['preset']}`, **{s['epochs']} epochs**, batch {c['batch_size']}, "
        f"Adam lr {c['lr']:g}, seeds {s['seeds']}; {c['num_slices']} slices per volume at {c['image_size']} x "
        f"{c['image_size']}, intensities scaled between percentiles {c['lower']:g} and {c['upper']:g} inside the brain"
        f"{' and clipped' if c['clip'] else ', not clipped'}; z-map median filter {c['score_median']} in-plane, FDR "
        f"alpha {c['alpha']:g} per {c['per']}, lesion filter {lesion_filter}. These are the package's defaults in "
        f"force at commit {commits}. Mean ± standard deviation over the seeds.\n\n"
        f"{_tables(results, s)}\n"
        f"{_ranking(results)}"
        '- `best Dice` uses the test labels to pick its threshold (the literature\'s "[Dice]"); `Dice at FDR 0.05` '
        "is what a user gets without labels. `best Dice` is the best *single* threshold for all test volumes pooled, "
        "while Benjamini-Hochberg sets one threshold per volume, so the label-free Dice can come out higher.\n"
        "- Synthetic data: these figures compare the methods under identical conditions; they say nothing about "
        "real patients.\n"
    )


def run(ctx: Context) -> Section:
    """Run the detection-quality benchmark (writes partial sections to the report while it runs)."""

    started, load, start = time.strftime("%Y-%m-%d %H:%M"), load_average(), time.perf_counter()

    def progress(body: str, data: dict[str, Any]) -> None:
        section = Section(name="quality", body=body, data=data, started=started, load_before=load)
        section.seconds, section.load_after = time.perf_counter() - start, load_average()
        save_section(section, ctx)

    section = timed_section("quality", lambda: _body(ctx, progress))
    finished = sorted(r["finished"] for r in section.data["results"] if r.get("finished"))
    if finished and finished[0] < section.started:  # runs reused from earlier: say when they were measured
        section.started = f"{finished[0]} to {finished[-1]} (runs reused {section.started})"
        section.seconds = sum(r["train_seconds"] + r.get("eval_seconds", 0.0) for r in section.data["results"])
    return section


def add_quality_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of the quality benchmark."""
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per model (15; --quick: 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (0 1 2; --quick: 0)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="methods (all four)")
    parser.add_argument("--n-healthy", type=int, default=None, help="healthy subjects (40; --quick: 10)")
    parser.add_argument("--n-lesion", type=int, default=None, help="lesion subjects (10; --quick: 4)")
    parser.add_argument("--preset", choices=("small", "paper"), default=None, help="network preset (small)")
    return parser


def quality_options(args: argparse.Namespace) -> dict[str, Any]:
    """The quality options of a parsed command line, for :attr:`Context.options`."""
    keys = ("epochs", "seeds", "methods", "n_healthy", "n_lesion", "preset")
    return {k: getattr(args, k, None) for k in keys if getattr(args, k, None) is not None}


def main(argv: list[str] | None = None) -> Section:
    parser = add_quality_args(add_common_args(argparse.ArgumentParser(prog="python -m benchmarks.bench_quality")))
    args = parser.parse_args(argv)
    ctx = context_from_args(args)
    ctx.options.update(quality_options(args))
    section = run(ctx)
    save_section(section, ctx)
    return section


if __name__ == "__main__":
    main()
