"""Lesion-level inference: the alternatives tried on ``tuning`` beside the shipped cluster statistics (issue 24).

The shipped lesion threshold (``--threshold lesion``) forms candidates above a primary threshold, gives each the
conformal p-value of its ``mass`` against the healthy calibration clusters and runs Benjamini-Hochberg (BH) per
volume. This script scores the alternatives considered for it on the analysis grid, from one scoring pass of the
``calibration`` and ``tuning`` sections (the shipped score of the model's :class:`monai_qrvae.workflows.Pipeline`):

- statistics: ``extent``, ``mass``, ``peak`` (the package's) and ``tfce``, the largest threshold-free cluster
  enhancement (Smith and Nichols 2009; ``E = 0.5``, ``H = 2``, steps of 0.1 from the primary threshold) in the
  candidate;
- procedures: BH, and the adaptive two-stage BH of Benjamini, Krieger and Yekutieli (2006), which estimates the share
  of false candidates first (FDR control proven for independent p-values);
- the fitted generalised Pareto tail beyond the largest healthy cluster (the package's default), on or off;
- the best any cut of the p-values could do (``oracle``): the largest lesion recall at most 0.5 false lesions per
  volume, a bound on what a statistic can give, not a procedure.

Lesion recall counts lesions (26-connected) with >= 10 % of their voxels detected; "lesion FDR" is the mean share of a
volume's detected components touching no lesion (0 without any), with its s.e. across volumes. The ``test`` split is
not looked at. Example::

    python -m benchmarks.lesion_alternatives --model bundle/models --datalist data/synth/datalist.json \\
        --out outputs/lesion_alternatives
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

STRUCTURE = ndimage.generate_binary_structure(3, 3)
PRIMARY_P = (1e-4, 1e-3)
STATISTICS = ("extent", "mass", "peak", "tfce")


def score_maps(model: str, datalist: str, section: str) -> dict[str, list[Any]]:
    """The shipped score, brain mask and label of every volume of ``section``, on the analysis grid."""
    from monai_qrvae.workflows import CalibrationCollector, Pipeline, checked_section

    pipeline = Pipeline.from_model_dir(model)
    collector = CalibrationCollector(score_key="z", mask_key="roi", label_key="label")
    pipeline.run(checked_section(datalist, section), [pipeline.score_handler(), collector])
    return {
        "z": [s.numpy().astype(np.float64).squeeze() for s in collector.scores],
        "roi": [m.numpy().astype(bool).squeeze() for m in collector.masks],
        "label": [lab.numpy().astype(bool).squeeze() for lab in collector.labels],
        "voxel_ml": list(collector.voxel_ml),
    }


def tfce(score: np.ndarray, threshold: float, voxel_ml: float, step: float = 0.1) -> np.ndarray:
    """Threshold-free cluster enhancement of ``score`` above ``threshold`` (extent in mL, ``E = 0.5``, ``H = 2``)."""
    out = np.zeros(score.shape)
    for h in np.arange(threshold + step, float(score.max()) + step, step):
        labels, n = ndimage.label(score > h, structure=STRUCTURE)
        if n == 0:
            break
        size = np.bincount(labels.ravel(), minlength=n + 1) * voxel_ml
        size[0] = 0.0
        out += np.sqrt(size[labels]) * (h - threshold) ** 2 * step
    return out


def candidates(z: np.ndarray, roi: np.ndarray, threshold: float, voxel_ml: float) -> tuple[np.ndarray, dict]:
    """Candidate labels and every statistic of each candidate."""
    from monai_qrvae.anomaly import cluster_statistics, lesion_candidates

    score = np.where(roi, z, -np.inf)
    labels, n = lesion_candidates(score, threshold, mask=roi)
    stats = cluster_statistics(score, labels, n, threshold, voxel_ml)
    enhanced = tfce(score, threshold, voxel_ml)
    peak = np.zeros(n + 1)
    np.maximum.at(peak, labels[labels > 0], enhanced[labels > 0])
    stats["tfce"] = peak[1:]
    return labels, stats


def bky(p: np.ndarray, alpha: float) -> np.ndarray:
    """Two-stage adaptive BH (Benjamini, Krieger and Yekutieli 2006)."""
    from monai_qrvae.anomaly import bh_q_values, bh_reject

    first = alpha / (1.0 + alpha)
    rejected = bh_reject(p, first)
    r = int(rejected.sum())
    if r in (0, p.size):
        return rejected
    return bh_q_values(p) <= first * p.size / (p.size - r)


def summary(preds: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, float]:
    """Lesion recall, false lesions per volume and realised lesion-level FDR (with its s.e.)."""
    from monai_qrvae.evaluation import lesion_wise_counts

    counts = [lesion_wise_counts(p, lab) for p, lab in zip(preds, labels)]
    fdp = np.array([c["false_positive_components"] / max(c["pred_components"], 1) for c in counts])
    return {
        "lesion_recall": sum(c["detected"] for c in counts) / max(sum(c["lesions"] for c in counts), 1),
        "fp_per_volume": sum(c["false_positive_components"] for c in counts) / len(counts),
        "lesion_fdr": float(fdp.mean()),
        "lesion_fdr_se": float(fdp.std(ddof=1) / np.sqrt(fdp.size)) if fdp.size > 1 else 0.0,
    }


def oracle(p_values: list[np.ndarray], lesion_best: np.ndarray, false_p: np.ndarray, n_volumes: int) -> float:
    """Largest lesion recall of any common p-value cut with at most 0.5 false lesions per volume."""
    best = 0.0
    for cut in np.unique(np.concatenate([lesion_best, false_p, [0.0]])):
        if (false_p <= cut).sum() / n_volumes <= 0.5:
            best = max(best, float((lesion_best <= cut).mean()))
    return best


def run(model: str, datalist: str, alpha: float = 0.05) -> dict[str, Any]:
    """Every alternative's figures on ``tuning`` (see the module docstring)."""
    from monai_qrvae.anomaly import bh_reject, fit_lesion_tail, lesion_p_values
    from monai_qrvae.calibration import Calibration

    cal_maps, tuning = score_maps(model, datalist, "calibration"), score_maps(model, datalist, "tuning")
    pooled = Calibration.from_scores(
        [np.where(m, z, 0.0) for z, m in zip(cal_maps["z"], cal_maps["roi"])], masks=cal_maps["roi"]
    )
    procedures: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {"BH": bh_reject, "adaptive BH": bky}
    rows = []
    for primary_p in PRIMARY_P:
        threshold = pooled.primary_threshold(primary_p)
        healthy = {k: [] for k in STATISTICS}
        for z, m, ml in zip(cal_maps["z"], cal_maps["roi"], cal_maps["voxel_ml"]):
            _, stats = candidates(z, m, threshold, ml)
            for k in STATISTICS:
                healthy[k].extend(stats[k].tolist())
        scored = [candidates(z, m, threshold, ml) for z, m, ml in zip(tuning["z"], tuning["roi"], tuning["voxel_ml"])]
        for statistic in STATISTICS:
            h = np.asarray(healthy[statistic])
            tail = fit_lesion_tail(h)
            for use_tail in (True, False):
                p_values = [lesion_p_values(s[statistic], h, tail if use_tail else None) for _, s in scored]
                for name, procedure in procedures.items():
                    preds = [
                        np.isin(lab, np.flatnonzero(procedure(p, alpha)) + 1) if p.size else lab > 0
                        for (lab, _), p in zip(scored, p_values)
                    ]
                    row = {
                        "primary_p": primary_p,
                        "statistic": statistic,
                        "tail": use_tail,
                        "procedure": name,
                        "healthy_clusters": int(h.size),
                    }
                    row.update(summary(preds, tuning["label"]))
                    rows.append(row)
            best, false_p = [], []
            for (lab, s), label in zip(scored, tuning["label"]):
                p = lesion_p_values(s[statistic], h, tail)
                lesions, n = ndimage.label(label, structure=STRUCTURE)
                touching = set(np.unique(lab[label & (lab > 0)]).tolist())
                false_p.extend(p[i - 1] for i in range(1, p.size + 1) if i not in touching)
                for j in range(1, n + 1):
                    inside = lesions == j
                    ids, count = np.unique(lab[inside & (lab > 0)], return_counts=True)
                    covering = [p[i - 1] for i, c in zip(ids, count) if c >= 0.1 * inside.sum()]
                    best.append(min(covering, default=2.0))
            rows.append(
                {
                    "primary_p": primary_p,
                    "statistic": statistic,
                    "tail": True,
                    "procedure": "oracle",
                    "healthy_clusters": int(h.size),
                    "lesion_recall": oracle(p_values, np.asarray(best), np.asarray(false_p), len(scored)),
                }
            )
    return {"model": model, "datalist": datalist, "alpha": alpha, "rows": rows}


def table(result: dict[str, Any]) -> str:
    """The Markdown table of :func:`run`'s rows."""
    lines = [
        "| primary p | statistic | tail | procedure | healthy clusters | lesion recall | false lesions / vol | "
        "lesion FDR (s.e.) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        fdr = f"{r['lesion_fdr']:.3f} ({r['lesion_fdr_se']:.3f})" if "lesion_fdr" in r else "-"
        fp = f"{r['fp_per_volume']:.2f}" if "fp_per_volume" in r else "<= 0.5"
        lines.append(
            f"| {r['primary_p']:g} | {r['statistic']} | {'yes' if r['tail'] else 'no'} | {r['procedure']} | "
            f"{r['healthy_clusters']} | {r['lesion_recall']:.3f} | {fp} | {fdr} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundle/models")
    p.add_argument("--datalist", default="data/synth/datalist.json")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = run(args.model, args.datalist, args.alpha)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lesion_alternatives.json").write_text(json.dumps(result, indent=2))
    text = table(result)
    (out / "lesion_alternatives.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
