"""Which per-volume empirical null the shipped thresholds use: compared on ``tuning``, a synthetic site shift and real
scans (issue 23; docs/real.md, block ``nulls``).

For each method of :data:`monai_qrvae.anomaly.null.NULL_METHODS`, the shipped weights are calibrated on the default
cohort's healthy ``calibration`` section with that null, then the default label-free threshold (conformal BH at
0.05 per volume) is scored on:

- ``tuning`` (10 lesion subjects) as generated, and site-shifted (:mod:`monai_qrvae.data.site`): label-free Dice,
  lesion recall, false components per volume;
- the healthy ``validation`` subjects (6), as generated and site-shifted: share of volumes with any detection (the
  promise on healthy scans);
- the real cases of ``../shared/real`` when present (DU-7294 in BraTS space: Dice against the reference, share of the
  tumour-free brain flagged; MET-00110: share of the brain flagged). These are a check, never a choice.

The ``test`` split is not looked at. Example::

    python -m benchmarks.null_choice --datalist data/synth/datalist.json --out outputs/nulls --update-docs docs/real.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "real"


def real_cases(root: Path = REAL) -> dict[str, dict[str, Any]]:
    """The analysis-ready real cases of ``../shared/real`` as datalist entries (``{}`` when absent)."""
    if not (root / "du7294_flair.nii.gz").is_file():
        return {}
    return {
        "DU-7294": {
            "image": [str(root / f"du7294_{c}.nii.gz") for c in ("t1", "t2", "flair")],
            "brain_mask": str(root / "du7294_brain_mask.nii.gz"),
            "reference": str(root / "du7294_seg.nii.gz"),
        },
        "MET-00110": {"image": [str(root / f"met110_{c}.nii.gz") for c in ("t1", "t2", "flair")]},
    }


def _read(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def healthy_flagged(model_dir: Path, items: list[dict], out: Path) -> dict[str, float]:
    """Share of (healthy) volumes with any detected voxel, and the mean flagged share of their brains."""
    from monai_qrvae.workflows import infer

    paths = infer(model_dir, [{k: v for k, v in i.items() if k != "label"} for i in items], out, save_png=False)
    lesions = [p for p in paths if p.name.endswith("_lesion.nii.gz")]
    zmaps = [p for p in paths if p.name.endswith("_zmap.nii.gz")]
    flagged = [_read(p) > 0 for p in lesions]
    brains = [_read(p) != 0 for p in zmaps]
    return {
        "healthy_any": float(np.mean([f.any() for f in flagged])),
        "healthy_share": float(np.mean([f.sum() / max(b.sum(), 1) for f, b in zip(flagged, brains)])),
    }


def real_figures(model_dir: Path, out: Path) -> dict[str, float]:
    """Label-free figures of the shipped threshold on the real cases (see the module docstring)."""
    from monai_qrvae.workflows import infer

    figures: dict[str, float] = {}
    for name, case in real_cases().items():
        entry = {k: v for k, v in case.items() if k != "reference"}
        paths = infer(model_dir, [entry], out / name, save_png=False)
        lesion = _read(next(p for p in paths if p.name.endswith("_lesion.nii.gz"))) > 0
        brain = _read(next(p for p in paths if p.name.endswith("_zmap.nii.gz"))) != 0
        report = json.loads(next(p for p in paths if p.name.endswith("_lesions.json")).read_text())
        figures[f"{name} lesions"] = float(report["n_lesions"])
        figures[f"{name} shift"] = float(report.get("site", {}).get("shift", float("nan")))
        if "reference" in case:
            ref = _read(Path(case["reference"])) > 0
            figures[f"{name} Dice"] = float(2 * (lesion & ref).sum() / max(lesion.sum() + ref.sum(), 1))
            figures[f"{name} tumour-free flagged"] = float((lesion & ~ref).sum() / max((brain & ~ref).sum(), 1))
        else:
            figures[f"{name} brain flagged"] = float(lesion.sum() / max(brain.sum(), 1))
    return figures


def compare(datalist: Path, out: Path, methods: tuple[str, ...], model: Path) -> dict[str, dict[str, float]]:
    """The figures of every null method (see the module docstring)."""
    from monai_qrvae.data.datalist import load_datalist
    from monai_qrvae.data.site import make_shifted_datalist
    from monai_qrvae.workflows import evaluate, fit_calibration

    shifted = {s: make_shifted_datalist(datalist, s, out / f"shifted-{s}") for s in ("tuning", "validation")}
    results: dict[str, dict[str, float]] = {}
    for method in methods:
        model_dir = out / f"model-{method}"
        model_dir.mkdir(parents=True, exist_ok=True)
        for name in ("model.pt", "model_config.json"):
            shutil.copy(model / name, model_dir / name)
        fit_calibration(model_dir, datalist, null=method)
        row: dict[str, float] = {}
        for label, source in (("tuning", datalist), ("tuning, site-shifted", shifted["tuning"])):
            m = evaluate(
                model_dir, source, out / f"eval-{method}-{label}", section="tuning", save_maps=False, save_png=False
            )
            row.update({f"{label}: {k}": float(m[k]) for k in ("dice_fdr", "lesion_recall", "fp_per_volume")})
        for label, source in (("healthy", datalist), ("healthy, site-shifted", shifted["validation"])):
            items = load_datalist(source, section="validation", check=False)
            flagged = healthy_flagged(model_dir, items, out / f"healthy-{method}-{label}")
            row[f"{label}: volumes flagged"] = flagged["healthy_any"]
        row.update(real_figures(model_dir, out / f"real-{method}"))
        results[method] = row
        print(f"[nulls] {method}: {json.dumps(row)}", flush=True)
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per figure, one column per null method."""
    methods = list(results)
    lines = ["| figure | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for figure in results[methods[0]]:
        lines.append(f"| {figure} | " + " | ".join(f"{results[m][figure]:.3f}" for m in methods) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from monai_qrvae.anomaly.null import NULL_METHODS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.null_choice", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", type=Path, default=REPO / "data" / "synth" / "datalist.json")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "nulls")
    parser.add_argument("--model", type=Path, default=REPO / "bundle" / "models")
    parser.add_argument("--methods", nargs="+", choices=NULL_METHODS, default=list(NULL_METHODS))
    parser.add_argument("--update-docs", nargs="*", default=[])
    args = parser.parse_args(argv)
    results = compare(args.datalist, args.out, tuple(args.methods), args.model)
    from monai_qrvae.tables import publish_table

    return publish_table(table(results), args.update_docs, "nulls", results, args.out / "nulls.json")


if __name__ == "__main__":
    sys.exit(main())
