"""Per-contrast ablation of the QR-VAE score on ``test`` (issue 16): FLAIR only, FLAIR + T2 (default), all three.

Takes the QR-VAE models of a ``qrvae benchmark`` folder (``<dir>/qrvae/seed<k>/model``), and for each other score
copies the weights with that score in ``model_config.json``, calibrates it on the healthy ``calibration`` section
(as ``qrvae train`` does) and scores ``test`` with the default conformal threshold. The default score's figures
are read back from the benchmark's own evaluation. Prints a Markdown table (mean ± s.d. over seeds).

Usage::

    python -m benchmarks.score_ablation --benchmark-dir outputs/benchmark --datalist data/synth/datalist.json \
        --out outputs/ablation
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCORE_NAMES = {"flair": "FLAIR only", "flair_t2": "FLAIR + T2 (default)", "all": "T1 + T2 + FLAIR"}
COLUMNS = ("auprc", "auroc", "best_dice", "dice_fdr", "lesion_recall", "fp_per_volume", "healthy_any_detection")


def run(benchmark_dir: Path, datalist: str, out: Path, seeds: Sequence[int] = (0, 1, 2)) -> tuple[list[dict], str]:
    """Score each seed's QR-VAE with every score of :data:`SCORE_NAMES`; return the rows and the table."""
    from monai_qrvae.workflows import evaluate, fit_calibration

    rows: list[dict[str, Any]] = []
    for seed in seeds:
        src = benchmark_dir / "qrvae" / f"seed{seed}" / "model"
        default = json.loads((src / "model_config.json").read_text())["score"]
        for score in SCORE_NAMES:
            if score == default:
                metrics = json.loads((src.parent / "eval" / "metrics.json").read_text())
            else:
                model = out / f"seed{seed}-{score}"
                model.mkdir(parents=True, exist_ok=True)
                shutil.copy(src / "model.pt", model / "model.pt")
                config = dict(json.loads((src / "model_config.json").read_text()), score=score)
                (model / "model_config.json").write_text(json.dumps(config, indent=2))
                fit_calibration(model, datalist)
                metrics = evaluate(model, datalist, out / f"eval-seed{seed}-{score}", save_maps=False, save_png=False)
            rows.append({"seed": seed, "score": score, **{k: metrics[k] for k in COLUMNS}})
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        "| score | AUPRC | AUROC | best Dice | Dice (FDR) | lesion recall | FP comp./vol. | healthy vols. flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for score, name in SCORE_NAMES.items():
        cells = []
        for key in COLUMNS:
            values = [r[key] for r in rows if r["score"] == score]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    (out / "ablation.md").write_text(table)
    return rows, table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark-dir", required=True, type=Path, help="output folder of 'qrvae benchmark'")
    p.add_argument("--datalist", required=True, help="the benchmark's datalist (calibration and test sections)")
    p.add_argument("--out", default="outputs/ablation", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    print(run(args.benchmark_dir, args.datalist, args.out, args.seeds)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
