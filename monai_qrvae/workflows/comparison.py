"""The demo: make the embedded cohort, train and evaluate every method, write the comparison table.

:data:`PINNED_DEMO` is the small fixed setting whose table docs/benchmarks.md shows and a test recomputes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_qrvae.data import make_cohort
from monai_qrvae.numerics import reproducible_numerics, torch_threads
from monai_qrvae.tables import update_doc_block
from monai_qrvae.workflows.evaluation import evaluate, write_table
from monai_qrvae.workflows.training import train

__all__ = ["DEMO_METHODS", "PINNED_DEMO", "demo"]

#: the methods ``make demo`` trains by default: QR-VAE against FLAIR thresholding, within 10 minutes on 2 CPU cores
#: (``qrvae benchmark`` compares all four methods over three seeds).
DEMO_METHODS = ("qrvae", "flair")

#: the small fixed demo setting whose table docs/benchmarks.md shows and a test recomputes (tolerances measured
#: across emulated CPUs, docs/benchmarks.md). ``reproducible``: float64, one torch thread, deterministic algorithms,
#: no oneDNN (:func:`~monai_qrvae.numerics.reproducible_numerics`): in float32 the CPU's choice of vector kernels
#: moved the QR-VAE figures by up to 0.05 of AUPRC between machines.
PINNED_DEMO: dict[str, Any] = {
    "n_healthy": 14,
    "n_lesion": 6,
    "spacing": 3.0,
    "epochs": 2,
    "seed": 0,
    "threads": 1,
    "reproducible": True,
}


def demo(
    output_dir: str | os.PathLike = "outputs/demo",
    epochs: int | None = None,
    methods: Sequence[str] = DEMO_METHODS,
    seed: int = 0,
    n_healthy: int | None = None,
    n_lesion: int | None = None,
    alpha: float = 0.05,
    progress: bool = True,
    preset: str = "small",
    spacing: float = 2.0,
    update_docs: Sequence[str | os.PathLike] = (),
    block: str = "demo",
    threads: int | None = None,
    reproducible: bool = False,
) -> dict[str, Any]:
    """The main job: make the embedded data (if missing), train the methods, evaluate on ``test``, compare.

    The cohort is the embedded default (:func:`~monai_qrvae.data.make_cohort`'s seed, sizes unless given); ``seed``
    is the training seed (seed 0 of ``qrvae benchmark``). ``methods``: any of :data:`monai_qrvae.workflows.METHODS`.

    Every method uses its defaults (:mod:`monai_qrvae.defaults`, chosen on ``tuning``) unless ``epochs`` is given.
    Writes under ``output_dir``: ``data/`` (the synthetic cohort), ``<method>/model`` (weights, curves),
    ``<method>/eval`` (metrics, PNG overlays; NIfTI maps for QR-VAE) and ``metrics.csv``/``metrics.md`` (the
    comparison, whole brain on the input grid). ``update_docs`` rewrites the marked ``block`` of those Markdown
    files with the table (see :func:`monai_qrvae.tables.update_doc_block`). ``threads``: torch's intra-op threads
    for the whole run (``None``: unchanged), restored afterwards. ``reproducible``: train and evaluate in float64 with
    deterministic kernels (:func:`~monai_qrvae.numerics.reproducible_numerics`), so that the figures do not depend on
    the CPU (slower; the pinned setting).
    """
    with reproducible_numerics(threads=threads) if reproducible else torch_threads(threads):
        return _demo(
            output_dir, epochs, methods, seed, n_healthy, n_lesion, alpha, progress, preset, spacing, update_docs, block
        )


def _demo(
    output_dir: str | os.PathLike,
    epochs: int | None,
    methods: Sequence[str],
    seed: int,
    n_healthy: int | None,
    n_lesion: int | None,
    alpha: float,
    progress: bool,
    preset: str,
    spacing: float,
    update_docs: Sequence[str | os.PathLike],
    block: str,
) -> dict[str, Any]:

    start = time.perf_counter()
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    datalist = data_dir / "datalist.json"
    if not datalist.is_file():
        sizes = {k: v for k, v in (("n_healthy", n_healthy), ("n_lesion", n_lesion)) if v is not None}
        print(f"[demo] making the synthetic cohort in {data_dir}")
        datalist = Path(make_cohort(data_dir, spacing=spacing, **sizes))
    results = []
    for method in methods:
        print(f"[demo] training {method} ...")
        summary = train(
            datalist,
            output_dir / method / "model",
            method=method,
            epochs=epochs if method != "flair" else None,
            seed=seed,
            progress=progress,
            preset=preset,
        )
        print(f"[demo] evaluating {method} on the test subjects (whole brain, input grid) ...")
        metrics = evaluate(
            output_dir / method / "model",
            datalist,
            output_dir / method / "eval",
            alpha=alpha,
            save_maps=method == "qrvae",
            save_png=True,
        )
        metrics["train_seconds"] = summary["seconds"]
        results.append(metrics)
    csv_path, md_path, table = write_table(results, output_dir)
    for doc in update_docs:  # the figures only: training times are not reproducible to the second
        update_doc_block(doc, block, table.split("\nTraining time")[0])
    total = time.perf_counter() - start
    print("\n" + table)
    print(f"[demo] done in {total:.0f} s. Metrics: {csv_path} and {md_path}")
    print(f"[demo] QR-VAE maps (NIfTI): {output_dir / 'qrvae' / 'eval' / 'maps'}")
    print(f"[demo] overlays (PNG): {output_dir / 'qrvae' / 'eval' / 'overlays'}")
    print(f"[demo] training curves: {output_dir}/<method>/model/training_curve.png")
    return {"results": results, "table": table, "seconds": total, "output_dir": str(output_dir)}
