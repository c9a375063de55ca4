"""Whole-brain design choices on the ``tuning`` split (issue 16): slice context x score x quantile-function score.

For each variant (QR-VAE with slice context ``none``/``neighbours``/``position`` at 64 px and ``none`` at 96 px; the
Gaussian and MSE VAEs at 96 px, context ``none``), train on every brain slice (seed 0), then evaluate on ``tuning``
with each multi-contrast score (``flair``, ``flair_t2``, ``all``) and, for the QR-VAE, with and without the score read
from the quantile function. The label-free mask is the paper's threshold (Benjamini-Hochberg on N(0, 1) p-values,
``threshold="gaussian"``): the models are not calibrated, so one trained model serves every score. The ``test`` split
is never read.

    python -m benchmarks.whole_brain_choices --datalist data/synth-v2/datalist.json --out outputs/wb-choices
    python -m benchmarks.whole_brain_choices --out /tmp/wb-quick --quick   # tiny cohort, 1 epoch: a few minutes

Writes ``results.jsonl`` (one row per variant and score), ``whole_brain_choices.md`` (the table) under ``--out`` and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["VARIANTS", "QUANTILES", "SCORES", "METRICS", "run_choices", "choices_table", "main"]

#: (method, context, image size) of each trained variant
VARIANTS: tuple[tuple[str, str, int], ...] = (
    ("qrvae", "none", 64),
    ("qrvae", "neighbours", 64),
    ("qrvae", "position", 64),
    ("qrvae", "none", 96),
    ("gaussian", "none", 96),
    ("mse", "none", 96),
)
QUANTILES = (0.025, 0.15, 0.5, 0.85, 0.975)
SCORES = ("flair", "flair_t2", "all")
#: (result key, column title) of the table
METRICS = (
    ("auprc", "tuning AUPRC"),
    ("auroc", "AUROC"),
    ("best_dice", "best Dice"),
    ("lesion_recall", "lesion recall"),
)
KEPT = ("auprc", "auroc", "best_dice", "dice_fdr", "coverage", "lesion_recall", "fp_per_volume")


def run_choices(
    datalist: str | Path, out: str | Path, epochs: int = 5, variants: Sequence[tuple[str, str, int]] = VARIANTS
) -> list[dict[str, Any]]:
    """Train each variant, evaluate it on ``tuning`` with every score; return (and append to ``results.jsonl``) rows."""
    from monai_qrvae.workflows import evaluate, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for method, context, size in variants:
        model_dir = out / f"{method}-{context}-e{epochs}-s{size}"
        start = time.perf_counter()
        result = train(
            datalist,
            model_dir,
            method=method,
            epochs=epochs,
            num_slices=None,
            context=context,
            image_size=size,
            quantiles=QUANTILES if method == "qrvae" else None,
            progress=False,
            seed=0,
            calibrate=False,
        )
        print(
            f"trained {method} {context} {size} px: {result.get('train_slices')} slices, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
        config_file = model_dir / "model_config.json"
        original = config_file.read_text()
        try:
            for quantile_score in [False, True] if method == "qrvae" else [False]:
                for score in SCORES:
                    config = dict(json.loads(original), score=score, quantile_score=quantile_score)
                    config_file.write_text(json.dumps(config, indent=2))
                    metrics = evaluate(
                        model_dir,
                        datalist,
                        out / f"eval-{method}-{context}-{score}-{int(quantile_score)}-s{size}",
                        section="tuning",
                        save_maps=False,
                        save_png=False,
                        threshold="gaussian",
                    )
                    row = {
                        "method": method,
                        "context": context,
                        "image_size": size,
                        "score": score,
                        "quantile_score": quantile_score,
                        "epochs": epochs,
                        **{k: metrics.get(k) for k in KEPT},
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    with open(out / "results.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
        finally:
            config_file.write_text(original)
    return rows


def choices_table(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run_choices` rows (best tuning AUPRC in bold)."""
    best = max((r["auprc"] for r in rows if r.get("auprc") is not None), default=None)
    lines = [
        "| method | context | size | score | quantile-function score | "
        + " | ".join(title for _, title in METRICS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(METRICS),
    ]
    for r in rows:
        cells = []
        for key, _ in METRICS:
            v = r.get(key)
            text = "n/a" if v is None else f"{v:.3f}"
            cells.append(f"**{text}**" if key == "auprc" and v is not None and v == best else text)
        qs = ("yes" if r["quantile_score"] else "no") if r["method"] == "qrvae" else "-"
        lines.append(
            f"| {r['method']} | {r['context']} | {r['image_size']} px | {r['score']} | {qs} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    """Command line: run the comparison, print and write the table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.whole_brain_choices", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--datalist", help="datalist with 'training', 'validation' and 'tuning' (--quick: optional)")
    parser.add_argument("--out", required=True, help="folder for the models, results.jsonl and the table")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per variant (5)")
    parser.add_argument("--quick", action="store_true", help="tiny cohort (made under --out) and 1 epoch: a smoke test")
    args = parser.parse_args(argv)
    out = Path(args.out)
    datalist = args.datalist
    epochs = args.epochs
    if args.quick:
        epochs = 1
        if datalist is None:
            from monai_qrvae.data.synthetic import make_cohort

            datalist = make_cohort(out / "data", n_healthy=6, n_lesion=2, seed=3, spacing=2.0)
    if datalist is None:
        parser.error("--datalist is required without --quick")
    rows = run_choices(datalist, out, epochs=epochs)
    table = choices_table(rows)
    (out / "whole_brain_choices.md").write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
