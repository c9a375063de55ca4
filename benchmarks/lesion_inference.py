"""Lesion-level inference against voxel-wise conformal BH: lesion recall, false lesions, realised lesion-level FDR.

One scoring pass per section: the shipped score of a model (as ``qrvae evaluate``), then every threshold of the
comparison (``conformal`` = voxel BH, ``lesion`` with each cluster statistic, ``lesion-volume``) at each alpha,
each scored on the input grid by its own :class:`~monai_qrvae.evaluation.InputGridCollector` (the figures of
:func:`monai_qrvae.workflows.evaluate` with that threshold, without re-running the network per threshold).

    python benchmarks/lesion_inference.py --model M --datalist D --section tuning --out OUT \\
        --alphas 0.05 --statistics extent mass peak

writes ``OUT/lesion_inference_<section>.json`` and ``.md`` (the table of docs/experiments.md, "Lesion-level
inference"). ``M`` needs a calibration with lesion statistics (``qrvae calibrate``, or
:func:`~monai_qrvae.workflows.fit_calibration`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

COLUMNS = (
    ("lesion_recall", "lesion recall"),
    ("fp_per_volume", "false lesions / vol"),
    ("lesion_fdr", "lesion FDR (s.e.)"),
    ("healthy_any_detection", "healthy vols with a lesion"),
    ("voxel_fdr", "voxel FDR"),
    ("voxel_fdr_margin", "voxel FDR (2-voxel margin)"),
    ("dice_fdr", "Dice"),
)


def configurations(alphas: list[float], statistics: list[str], volume: bool) -> list[tuple[str, str, float, str]]:
    """``(name, threshold, alpha, statistic)`` of every compared threshold."""
    out = []
    for a in alphas:
        out.append((f"conformal@{a:g}", "conformal", a, ""))
        for s in statistics:
            out.append((f"lesion[{s}]@{a:g}", "lesion", a, s))
            if volume:
                out.append((f"lesion-volume[{s}]@{a:g}", "lesion-volume", a, s))
    return out


def run(
    model_dir: str, datalist: str, section: str, alphas: list[float], statistics: list[str], volume: bool = True
) -> dict[str, Any]:
    """Score ``section`` once and summarise every configuration (see the module docstring)."""
    from monai_qrvae.calibration import min_volumes
    from monai_qrvae.evaluation import InputGridCollector, summarise
    from monai_qrvae.handlers import ThresholdHandler
    from monai_qrvae.workflows import CHECKED_SCORE_KEYS, Pipeline, checked_section

    pipeline = Pipeline.from_model_dir(model_dir, "cpu").load()
    cal = pipeline.calibration_for("conformal")
    definition = {k: v for k, v in pipeline.score_definition().items() if k in CHECKED_SCORE_KEYS}
    items = checked_section(datalist, section, read_data=True)
    pre = pipeline.pre_transforms()
    handlers: list[Any] = [pipeline.score_handler(contrast_key="zc")]
    collectors = {}
    skipped = []
    for name, threshold, alpha, statistic in configurations(alphas, statistics, volume):
        if threshold == "lesion-volume" and min_volumes(alpha) > cal.n_volumes:
            skipped.append(f"{name}: needs {min_volumes(alpha)} calibration volumes, has {cal.n_volumes}")
            continue
        key = f"lesion_{len(collectors)}"
        handlers.append(
            ThresholdHandler(
                threshold,
                cal,
                alpha=alpha,
                score=definition,
                p_key=f"p_{len(collectors)}",
                output_key=key,
                statistic=statistic or None,
            )
        )
        collectors[name] = InputGridCollector(pre, lesion_key=key)
    handlers.extend(collectors.values())
    evaluator = pipeline.evaluator(items, handlers, pre)
    start = time.perf_counter()
    evaluator.run()
    results = {}
    for name, c in collectors.items():
        summary = summarise(c.records)
        summary.pop("per_volume")
        summary.pop("strata")
        results[name] = summary
    return {
        "model": model_dir,
        "datalist": datalist,
        "section": section,
        "calibration": {"n_volumes": cal.n_volumes, "lesion_threshold": cal.lesion_threshold},
        "skipped": skipped,
        "seconds": time.perf_counter() - start,
        "results": results,
    }


def _cell(r: dict[str, Any], key: str) -> str:
    v = r.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key == "lesion_fdr":
        return f"{v:.3f} ({r['lesion_fdr_se']:.3f})"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(result: dict[str, Any]) -> str:
    """The Markdown table of :func:`run`'s result."""
    lines = ["| threshold | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in result["results"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(r, k) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--datalist", required=True)
    p.add_argument("--section", default="tuning")
    p.add_argument("--out", required=True)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.05])
    p.add_argument("--statistics", nargs="+", default=["extent", "mass", "peak"])
    p.add_argument("--no-volume", action="store_true", help="leave out the lesion-volume threshold")
    args = p.parse_args(argv)
    result = run(args.model, args.datalist, args.section, args.alphas, args.statistics, not args.no_volume)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"lesion_inference_{args.section}.json").write_text(json.dumps(result, indent=2))
    text = table(result)
    (out / f"lesion_inference_{args.section}.md").write_text(text)
    print(text)
    for line in result["skipped"]:
        print("skipped", line)
    print(f"{result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
