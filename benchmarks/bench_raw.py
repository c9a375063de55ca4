"""Raw series in: brain-mask Dice, co-registration error, time per step, detection from raw vs analysis-ready.

For ``--subjects`` lesion subjects of the embedded generator (seed ``--seed``), writes the raw-like series
(:func:`monai_qrvae.raw.make_raw_cohort`: head, own grids, motion up to 10 deg / 10 mm, bias field), runs
:func:`monai_qrvae.raw.preprocess` on each and measures against the kept truth:

- **brain-mask Dice** on the T1 series' grid (deepbet's mask vs the generator's brain mask moved by the true pose);
- **co-registration error**: mean distance, over the true brain voxels, between where the true and the estimated
  T1 -> T2 / T1 -> FLAIR point maps send them (mm);
- **time** per subject, wall-clock and process CPU seconds (all threads), and the share of each step;
- with ``--model`` (a model folder, e.g. the shipped ``bundle/models``; a bare ``model.pt`` is taken as the old
  20-slice preset): **detection** from the
  raw series (:func:`monai_qrvae.raw.infer_raw`, maps on the FLAIR grid) against the same subject given
  analysis-ready (:func:`monai_qrvae.workflows.infer` on ``image.nii.gz``, its z-map and lesion mask moved onto the
  FLAIR grid by the true transform): voxel AUPRC of the z-map inside the true brain, Dice of the label-free lesion
  mask, lesion-wise recall (true lesions touched by a detection), and **false detections outside the true brain**
  (voxels and components).

Run: ``python -m benchmarks.bench_raw --subjects 3 --model bundle/models`` (prints a Markdown table and
writes ``<work>/raw_bench.json``); then ``--similarity`` (same ``--work``) prints the normalised mutual information of
every T1 with every subject's T2/FLAIR after rigid registration: same patient vs different patients.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


def _label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3, 3, 3)))


def _auprc(score: np.ndarray, label: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    if label.sum() == 0:
        return float("nan")
    return float(average_precision_score(label.astype(np.uint8), score.astype(np.float64)))


def _recall(detected: np.ndarray, label: np.ndarray) -> float:
    labels, n = _label_components(label)
    if n == 0:
        return float("nan")
    hit = np.unique(labels[(labels > 0) & detected])
    return float(len(hit)) / n


def _model_dir(model: str, work: Path) -> Path:
    path = Path(model)
    if path.is_dir():
        return path
    from monai_qrvae.workflows import ModelConfig

    folder = work / "model"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, folder / "model.pt")
    ModelConfig().save(folder / "model_config.json")  # the bundle's network: small QR-VAE, 64 px, 20 slices
    return folder


def run(subjects: int, seed: int, work: Path, model: str | None, threads: int) -> dict[str, Any]:
    from monai_qrvae.data import make_cohort
    from monai_qrvae.raw import infer_raw, make_raw_cohort, preprocess
    from monai_qrvae.raw.geometry import dice, mean_displacement, resample_to_grid
    from monai_qrvae.workflows import infer

    work.mkdir(parents=True, exist_ok=True)
    datalist = make_cohort(work / "data", n_healthy=0, n_lesion=subjects, seed=seed)
    start = time.perf_counter()
    raw_list = make_raw_cohort(datalist, out_dir=work / "raw")
    make_seconds = (time.perf_counter() - start) / subjects
    entries = json.loads(Path(raw_list).read_text())["test"]
    model_dir = _model_dir(model, work) if model else None
    rows = []
    for entry in entries:
        base = Path(raw_list).parent
        t1, t2, flair = (base / p for p in entry["image"])
        truth = json.loads((base / entry["truth"]).read_text())
        name = t1.parent.name
        out = work / "prep" / name
        wall, cpu = time.perf_counter(), time.process_time()
        info = preprocess(t1, t2, flair, out, threads=threads)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        mask_truth_img = nib.load(base / entry["brain_mask_truth"])
        mask_truth = np.asarray(mask_truth_img.dataobj) > 0
        mask_est = np.asarray(nib.load(out / "brain_mask_t1.nii.gz").dataobj) > 0
        pts = np.c_[np.argwhere(mask_truth), np.ones(int(mask_truth.sum()))] @ mask_truth_img.affine.T
        errors = {
            s: mean_displacement(
                np.asarray(truth["series"][s]["t1_to_series"]), np.asarray(info["t1_to_series"][s]), pts[:, :3]
            )
            for s in ("T2", "FLAIR")
        }
        row: dict[str, Any] = {
            "subject": name,
            "dice": dice(mask_truth, mask_est),
            "coreg_error_mm": errors,
            "wall_s": wall,
            "cpu_s": cpu,
            "steps_s": info["timing"]["seconds"],
            "similarity": info["similarity"],
        }
        if model_dir is not None:
            res = infer_raw(model_dir, t1, t2, flair, work / "infer_raw" / name, save_png=False)
            fl = truth["series"]["FLAIR"]
            shape, affine = tuple(fl["shape"]), np.asarray(fl["affine"])
            head_to_flair = np.asarray(fl["head_to_series"])
            a_aff = np.asarray(truth["analysis_affine"])
            ready = Path(raw_list).parent / entry["analysis_ready"]
            gen_mask = np.asarray(nib.load(ready.parent / "brain_mask.nii.gz").dataobj).astype(np.float32)
            brain_fl = resample_to_grid(gen_mask, a_aff, shape, affine, np.linalg.inv(head_to_flair)) > 0.5
            label = np.asarray(nib.load(base / entry["label_flair"]).dataobj) > 0
            z_raw = np.asarray(nib.load(res["maps"]["z"]).dataobj, dtype=np.float32)
            les_raw = np.asarray(nib.load(res["maps"]["lesion"]).dataobj) > 0
            written = infer(
                model_dir,
                [{"image": str(ready), "brain_mask": str(ready.parent / "brain_mask.nii.gz")}],
                work / "infer_ready" / name,
                save_png=False,
            )
            paths = {k: next(p for p in written if str(p).endswith(f"_{k}.nii.gz")) for k in ("zmap", "lesion")}
            z_ready = resample_to_grid(
                np.asarray(nib.load(paths["zmap"]).dataobj, dtype=np.float32),
                a_aff,
                shape,
                affine,
                np.linalg.inv(head_to_flair),
            )
            les_ready = (
                resample_to_grid(
                    np.asarray(nib.load(paths["lesion"]).dataobj, dtype=np.float32),
                    a_aff,
                    shape,
                    affine,
                    np.linalg.inv(head_to_flair),
                    order=0,
                )
                > 0.5
            )
            outside = les_raw & ~brain_fl
            row["detection"] = {
                "auprc_raw": _auprc(z_raw[brain_fl], label[brain_fl]),
                "auprc_ready": _auprc(z_ready[brain_fl], label[brain_fl]),
                "recall_raw": _recall(les_raw, label),
                "recall_ready": _recall(les_ready, label),
                "dice_raw": float(dice(les_raw, label)),
                "dice_ready": float(dice(les_ready, label)),
                "flagged_raw": int(les_raw.sum()),
                "flagged_ready": int(les_ready.sum()),
                "outside_voxels": int(outside.sum()),
                "outside_components": int(_label_components(outside)[1]),
                "outside_voxels_ready": int((les_ready & ~brain_fl).sum()),
            }
        rows.append(row)
        print(json.dumps(row))
    return {"subjects": subjects, "seed": seed, "make_raw_seconds_per_subject": make_seconds, "rows": rows}


def similarity_pairs(work: Path) -> list[dict[str, Any]]:
    """Normalised mutual information after rigid registration of every subject's T1 with every subject's T2/FLAIR.

    Uses the raw series and brain masks of a previous run in ``work``; the same-subject pairs are the correct input,
    the others stand for "contrasts from different patients" (the former absolute NMI limits; the relative check of
    ``DEFAULT_THRESHOLDS`` is calibrated by ``benchmarks/bench_alignment.py``).
    """
    import importlib
    import itertools
    import tempfile

    from monai_qrvae.raw.geometry import resample_to_grid

    pp = importlib.import_module("monai_qrvae.raw.preprocess")  # the module (the package exports the function)
    subjects = sorted(p.name for p in (work / "prep").iterdir() if p.is_dir())
    series = {}
    for s in subjects:
        for n in ("T1", "T2", "FLAIR"):
            img = pp.load_series(work / "raw" / s / f"{n}.nii.gz", n)
            _, small, small_affine = pp._n4(np.asarray(img.dataobj, np.float32), img.affine, 2.0, 6.0)
            series[s, n] = (small, small_affine)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for a, b in itertools.product(subjects, subjects):
            t1, t1_affine = series[a, "T1"]
            head = pp._head_mask(t1)
            m = nib.load(work / "prep" / a / "brain_mask_t1.nii.gz")
            brain = resample_to_grid(np.asarray(m.dataobj, np.float32), m.affine, t1.shape, t1_affine) > 0.5
            for n in ("T2", "FLAIR"):
                moving, moving_affine = series[b, n]
                t1_to_moving = pp._register(t1, t1_affine, moving, moving_affine, "Rigid", Path(tmp) / "x.mat")
                warped = resample_to_grid(moving, moving_affine, t1.shape, t1_affine, t1_to_moving)
                row = {
                    "t1": a,
                    "other": b,
                    "series": n,
                    "same": a == b,
                    "head_nmi": pp.normalised_mutual_information(t1, warped, head),
                    "brain_nmi": pp.normalised_mutual_information(t1, warped, brain),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        "| subject | mask Dice | co-reg error T2 / FLAIR (mm) | wall s | CPU s "
        "| N4 | co-reg | brain ext. | MNI | resample |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["steps_s"]
        total = sum(s.values())
        share = {k: 100.0 * v / total for k, v in s.items()}
        lines.append(
            f"| {r['subject']} | {r['dice']:.3f} "
            f"| {r['coreg_error_mm']['T2']:.2f} / {r['coreg_error_mm']['FLAIR']:.2f} "
            f"| {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {share['n4']:.0f} % | {share['coregistration']:.0f} % "
            f"| {share['brain_extraction']:.0f} % | {share['template_alignment']:.0f} % | {share['resample']:.0f} % |"
        )
    text = "\n".join(lines) + "\n"
    if all("detection" in r for r in rows):
        lines = [
            "| subject | AUPRC raw | AUPRC analysis-ready | lesion recall raw | recall ready "
            "| false voxels outside brain |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            d = r["detection"]
            lines.append(
                f"| {r['subject']} | {d['auprc_raw']:.3f} | {d['auprc_ready']:.3f} | {d['recall_raw']:.2f} "
                f"| {d['recall_ready']:.2f} | {d['outside_voxels']} ({d['outside_components']} components) |"
            )
        text += "\n" + "\n".join(lines) + "\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="outputs/bench_raw")
    parser.add_argument("--model", default=None, help="model folder or bundle model.pt (detection figures)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--similarity", action="store_true", help="only the same/different-patient NMI table of a previous run"
    )
    args = parser.parse_args()
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    work = Path(args.work)
    if args.similarity:
        rows = similarity_pairs(work)
        for same in (True, False):
            part = [r for r in rows if r["same"] == same]
            print(
                f"{'same patient' if same else 'different patients'} ({len(part)} pairs): head NMI "
                f"{min(r['head_nmi'] for r in part):.3f}-{max(r['head_nmi'] for r in part):.3f}, brain NMI "
                f"{min(r['brain_nmi'] for r in part):.3f}-{max(r['brain_nmi'] for r in part):.3f}"
            )
        return
    result = run(args.subjects, args.seed, work, args.model, args.threads)
    (work / "raw_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    load = os.getloadavg()[0]
    n_rows = len(result["rows"])  # the raw series are written for the cohort's `test` lesion subjects
    print(
        f"\n{n_rows} test subjects of {args.subjects}, seed {args.seed}; "
        f"load average at the end {load:.1f} on {os.cpu_count()} cores"
    )
    print(table(result))


if __name__ == "__main__":
    main()
