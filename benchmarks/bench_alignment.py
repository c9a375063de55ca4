"""The alignment check's figures (peak sharpness, :func:`monai_qrvae.raw.series.alignment_sharpness`; image and outline
sharpness, :func:`~monai_qrvae.raw.series.outline_sharpness`) on same-patient and other-patient pairs after rigid
registration, as ``qrvae preprocess`` computes them.

``python -m benchmarks.bench_alignment --work /tmp/align --subjects 4`` writes raw-like subjects (``make_raw_subject``,
default grids) and prints, for every subject's T1 with every subject's T2 and FLAIR, the figures and the check's verdict
(refused: sharpness <= 0; warned: image sharpness <= outline sharpness); ``--real ../shared/real`` adds the real cases
(checked, not tuned on).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--slice-mm",
        type=float,
        default=None,
        help="write every series 0.9 x 0.9 x SLICE mm (default: the raw-like grids)",
    )
    parser.add_argument("--real", default=None, help="folder of the real cases (../shared/real), optional")
    args = parser.parse_args()
    pp = importlib.import_module("monai_qrvae.raw.preprocess")
    from monai_qrvae.raw.series import alignment_sharpness, outline_sharpness
    from monai_qrvae.raw.synthetic import make_raw_subject

    work = Path(args.work)
    pairs = []
    subs = []
    for i in range(args.subjects):
        sub = work / f"sub{i}"
        if not (sub / "truth.json").is_file():
            spacings = None if args.slice_mm is None else {n: (0.9, 0.9, args.slice_mm) for n in ("T1", "T2", "FLAIR")}
            make_raw_subject(sub, i, lesions=bool(i % 2), seed=args.seed + i, spacings=spacings)
        subs.append(sub)
    for a, b in itertools.product(subs, subs):
        for n in ("T2", "FLAIR"):
            pairs.append((f"synthetic {a.name} T1 / {b.name} {n}", a / "T1.nii.gz", b / f"{n}.nii.gz", n, a == b))
    if args.real:
        r = Path(args.real)
        du, met = "du7294_native_", "met110_"
        for t1, other, same in ((du, du, True), (du, met, False), (met, met, True), (met, du, False)):
            for n in ("T2", "FLAIR"):
                label = f"real {t1}t1 / {other}{n.lower()}"
                pairs.append((label, r / f"{t1}t1.nii.gz", r / f"{other}{n.lower()}.nii.gz", n, same))
    cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def _work(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
        if path not in cache:
            img = pp.load_series(path, name)
            _, small, affine = pp._n4(np.asarray(img.dataobj, np.float32), img.affine, 2.0, 6.0)
            cache[path] = (small, affine)
        return cache[path]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, t1_path, moving_path, name, same in pairs:
            t1, t1_affine = _work(t1_path, "T1")
            moving, moving_affine = _work(moving_path, name)
            t1_to_moving = pp._register(t1, t1_affine, moving, moving_affine, "Rigid", Path(tmp) / "x.mat")
            start = time.perf_counter()
            head = pp._head_mask(t1)
            nmi, perturbed, sharp = alignment_sharpness(t1, t1_affine, moving, moving_affine, t1_to_moving, head)
            image, outline = outline_sharpness(
                t1, t1_affine, moving, moving_affine, t1_to_moving, head, pp._head_mask(moving)
            )
            verdict = (
                "refused"
                if sharp <= pp.DEFAULT_THRESHOLDS["sharpness"]
                else "warned" if image <= outline else "accepted"
            )
            row = {"pair": label, "same": same, "nmi": round(nmi, 4), "perturbed_nmi": round(perturbed, 4)}
            row.update(sharpness=round(sharp, 3), image_sharpness=round(image, 3), outline_sharpness=round(outline, 3))
            row.update(ratio=round(image / outline, 2) if outline > 0 else None, check=verdict)
            row.update(seconds=round(time.perf_counter() - start, 2))
            rows.append(row)
            print(json.dumps(row), flush=True)
    (work / "alignment.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
