"""The shipped pipeline on the real scans of ``../shared/real``: the figures of docs/real.md (issue 23).

- Analysis-ready (BraTS space, 1 mm): DU-7294 (low-grade glioma, reference segmentation) and MET-00110 (metastasis,
  no label), through ``qrvae infer`` with the shipped weights (default threshold, and ``--threshold lesion``) and with
  FLAIR thresholding (the same pipeline with ``--method flair``, fitted and calibrated on a small embedded cohort,
  :data:`FLAIR_COHORT`); see :data:`METHODS`. Figures on the input
  grid, every brain voxel: AUROC, AUPRC, best Dice (an upper bound: it looks at the reference), label-free Dice (the
  default threshold), share of the tumour-free brain flagged, lesions reported; for MET-00110 the flagged volume,
  the share of the brain flagged and how much of it lies in the FLAIR-brightest 3 % of the brain.
- Raw (``du7294_native_*``: skull-stripped series on their own grids): ``qrvae infer --t1 --t2 --flair``, whether it
  is accepted, the time, the flagged volume on the native FLAIR grid against the reference's 23.5 mL.

These cases are a check, never a choice: nothing is tuned on them. Example::

    python -m benchmarks.real_cases --out outputs/real --update-docs docs/real.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.null_choice import REAL, real_cases

REPO = Path(__file__).resolve().parents[1]
#: the small embedded cohort FLAIR thresholding is fitted and calibrated on (healthy sections only are used).
FLAIR_COHORT: dict[str, Any] = {"n_healthy": 30, "n_lesion": 2, "seed": 1, "spacing": 2.0}


#: ``(column, model, label-free threshold, output folder suffix)`` of the methods compared: the shipped default
#: (voxel-wise conformal BH), the shipped weights with lesion-level BH (``--threshold lesion``), FLAIR thresholding.
METHODS = (
    ("QR-VAE (shipped)", "shipped", "conformal", "qrvae"),
    ("QR-VAE, lesion-level BH", "shipped", "lesion", "qrvae-lesion"),
    ("FLAIR thresholding", "flair", "conformal", "flair"),
)


def _read(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def flair_model(work: Path) -> Path:
    """FLAIR thresholding fitted and calibrated on :data:`FLAIR_COHORT` (made once under ``work``)."""
    from monai_qrvae.data import make_cohort
    from monai_qrvae.workflows import train

    model = work / "flair-model"
    if not (model / "calibration.pt").is_file():
        datalist = make_cohort(work / "flair-cohort", **FLAIR_COHORT)
        train(datalist, model, method="flair", progress=False)
    return model


def _case_figures(paths: list[Path], case: dict[str, Any]) -> dict[str, float]:
    from monai_qrvae.metrics.average_precision import compute_masked_average_precision
    from monai_qrvae.metrics.dice import compute_best_dice
    from monai_qrvae.metrics.rocauc import compute_masked_roc_auc

    z = _read(next(p for p in paths if p.name.endswith("_zmap.nii.gz"))).astype(np.float32)
    lesion = _read(next(p for p in paths if p.name.endswith("_lesion.nii.gz"))) > 0
    report = json.loads(next(p for p in paths if p.name.endswith("_lesions.json")).read_text())
    brain = _read(Path(case["brain_mask"])) > 0 if "brain_mask" in case else z != 0
    voxel_ml = float(report["voxel_ml"])
    out: dict[str, float] = {"lesions reported": float(report["n_lesions"]), "flagged mL": lesion.sum() * voxel_ml}
    out["site shift (calibration widths)"] = float(report.get("site", {}).get("shift", float("nan")))
    if "reference" in case:
        ref = _read(Path(case["reference"])) > 0
        import torch

        zt, rt, bt = torch.as_tensor(z), torch.as_tensor(ref), torch.as_tensor(brain)
        out["AUROC"] = float(compute_masked_roc_auc(zt, rt, bt))
        out["AUPRC"] = float(compute_masked_average_precision(zt, rt, bt))
        out["best Dice"] = float(compute_best_dice(zt, rt, bt)[0])
        out["label-free Dice"] = float(2 * (lesion & ref).sum() / max(lesion.sum() + ref.sum(), 1))
        out["tumour-free brain flagged"] = float((lesion & ~ref & brain).sum() / max((brain & ~ref).sum(), 1))
    else:
        flair = _read(Path(case["image"][2])).astype(np.float32)
        bright = brain & (flair >= np.percentile(flair[brain], 97))
        out["brain flagged"] = float(lesion.sum() / max(brain.sum(), 1))
        out["flagged in FLAIR-brightest 3 %"] = float((lesion & bright).sum() / max(lesion.sum(), 1))
    return out


def analysis_ready(out: Path, model: Path, flair: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{case: {method: figures}}`` on the analysis-ready real cases; overlays under ``out/<case>-<method>``."""
    from monai_qrvae.workflows import infer

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, case in real_cases().items():
        entry = {k: v for k, v in case.items() if k != "reference"}
        results[name] = {}
        for method, model_dir, threshold, folder in METHODS:
            model_dir = {"shipped": model, "flair": flair}[model_dir]
            paths = infer(model_dir, [entry], out / f"{name}-{folder}", save_png=True, threshold=threshold)
            results[name][method] = _case_figures(paths, case)
    return results


def raw_case(out: Path, model: Path) -> dict[str, Any]:
    """``qrvae infer --t1 --t2 --flair`` on ``du7294_native_*``: accepted or the refusal, time, flagged volume."""
    from monai_qrvae.raw.inverse import infer_raw

    series = [REAL / f"du7294_native_{c}.nii.gz" for c in ("t1", "t2", "flair")]
    if not all(p.is_file() for p in series):
        return {}
    start = time.perf_counter()
    try:
        result = infer_raw(model, *series, out / "du7294-raw", save_png=True)
    except (ValueError, RuntimeError) as e:
        return {"accepted": False, "reason": str(e), "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    report = json.loads(Path(result["report"]).read_text())
    lesion = _read(Path(result["maps"]["lesion"])) > 0
    return {
        "accepted": True,
        "seconds": round(seconds, 1),
        "flagged mL": round(float(report["total_volume_ml"]), 2),
        "lesions reported": int(report["n_lesions"]),
        "largest lesion mL": round(float(report["lesions"][0]["volume_ml"]), 2) if report["lesions"] else 0.0,
        "grid": list(lesion.shape),
        "site shift (calibration widths)": report.get("site", {}).get("shift"),
    }


def tables(ready: dict[str, dict[str, dict[str, float]]], raw: dict[str, Any]) -> str:
    """Markdown of the figures."""
    lines = []
    for name, by_method in ready.items():
        methods = list(by_method)
        lines += [f"**{name}**", "", "| figure | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for figure in by_method[methods[0]]:
            lines.append(f"| {figure} | " + " | ".join(f"{by_method[m][figure]:.3f}" for m in methods) + " |")
        lines.append("")
    if raw:
        lines += [
            "**DU-7294, raw native series** (`qrvae infer --t1 --t2 --flair`)",
            "",
            "| figure | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in raw.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_cases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "real")
    parser.add_argument("--model", type=Path, default=REPO / "bundle" / "models")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw native series")
    parser.add_argument("--update-docs", nargs="*", default=[])
    args = parser.parse_args(argv)
    if not real_cases():
        print(f"no real cases at {REAL}: nothing to do")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    ready = analysis_ready(args.out, args.model, flair_model(args.out))
    raw = {} if args.no_raw else raw_case(args.out, args.model)
    (args.out / "real.json").write_text(json.dumps({"analysis_ready": ready, "raw": raw}, indent=2))
    text = tables(ready, raw)
    print(text)
    for doc in args.update_docs:
        from monai_qrvae.tables import update_doc_block

        update_doc_block(doc, "real", text)
        images = Path(doc).parent / "images"
        for case in ready:
            for png in sorted((args.out / f"{case}-qrvae").glob("*overlay*.png"))[:1]:
                shutil.copy(png, images / f"real_{case.lower().replace('-', '')}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
