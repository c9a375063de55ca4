"""Inference: seconds per 3D volume for the whole pipeline against the network forward alone.

Whole pipeline = :func:`monai_qrvae.workflows.infer` with every default: check and load the NIfTI volume, reorient,
normalise inside the brain, crop, resize to 96 x 96, select every axial slice with brain, run the network slice by
slice (``SliceInferer`` inside a ``SupervisedEvaluator``; the QR-VAE's score read from its quantile function), the
FLAIR+T2 z-map, conformal p-values with the model's healthy calibration and Benjamini-Hochberg, the lesion filter,
invert the maps onto the input grid, write the z-map, p-map and lesion mask as NIfTI and the lesion report (JSON +
CSV) (and, optionally, a PNG overlay). The network forward alone is ``AnomalyMapNet`` on the same preprocessed slices
(in infer's batches of 32), under ``torch.no_grad`` (each repetition: the mean of 2 back-to-back calls). All cases
are interleaved. The model is the default one trained for 1 epoch (:func:`benchmarks.context.trained_model_dir`), so
the conformal
threshold has its calibration.

A stage breakdown runs the same steps by hand (the transforms, inferer, post-processing transforms and the saver's
inversion, NIfTI writing and report that the handlers wrap) to show where the time goes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.cli import standalone
from benchmarks.context import Context, anomaly_transforms, trained_model_dir
from benchmarks.report import timed
from benchmarks.timing import fmt_spread, fmt_time, interleave, md_table, median, paired_ratio

FORWARD_CALLS = 2  # back-to-back forwards per timed repetition
SW_BATCH = 32  # slices per forward in infer (create_anomaly_evaluator's sw_batch_size)


def _stages(model_dir: Path, item: dict, out_dir: Path) -> dict[str, Any]:
    """Callables for each stage of the pipeline on one volume, sharing state in order (the PNG overlay last)."""
    from monai.data import decollate_batch
    from monai.inferers import SliceInferer

    from monai_qrvae.data.datalist import check_item
    from monai_qrvae.handlers import AnomalyMapSaver, OverlaySaver
    from monai_qrvae.workflows import Pipeline

    pipeline = Pipeline.from_model_dir(model_dir).load()
    config, net = pipeline.config, pipeline.network
    pre = pipeline.pre_transforms()
    load, rest = pre.transforms[:2], pre.transforms[2:]
    inferer = SliceInferer(roi_size=pipeline.roi_size, sw_batch_size=SW_BATCH, spatial_dim=2, progress=False)
    post = anomaly_transforms(model_dir)  # exactly what infer attaches, with its defaults
    saver = AnomalyMapSaver(out_dir, preprocessing=pre, report=True)
    overlay = OverlaySaver(out_dir, label_key="__none__")
    s: dict[str, Any] = {}

    def st_check() -> None:
        check_item(dict(item), num_channels=config.in_channels, read_data=True)

    def st_load() -> None:
        d = dict(item)
        for t in load:
            d = t(d)
        s["loaded"] = d

    def st_pre() -> None:
        d = s["loaded"]
        for t in rest:
            d = t(d)
        s["pre"] = d

    def st_net() -> None:
        with torch.no_grad():
            s["pred"] = inferer(s["pre"]["image"][None], net)

    def st_post() -> None:
        out = decollate_batch({"pred": s["pred"]})[0]
        out["brain_mask"] = s["pre"]["brain_mask"]
        for t in post:
            out = t(out)
        s["out"] = out

    def st_invert() -> None:
        s["inv"], s["meta"] = saver.invert(s["out"], s["pre"])

    def st_write() -> None:
        saver.write_maps(s["inv"], "bench", s["meta"])

    def st_report() -> None:
        saver._write_report(s["inv"], "bench", s["meta"], [k for k in s["inv"] if k not in saver.keys])

    def st_png() -> None:
        overlay.save_item({**s["pre"], **s["out"]}, "bench")

    return {
        "input check (check_item, reads the files)": st_check,
        "read NIfTI": st_load,
        "preprocess (orient, normalise, crop, resize, brain slices)": st_pre,
        "network forward (SliceInferer)": st_net,
        "post-processing (z-map, conformal p, BH, lesion filter)": st_post,
        "inversion onto the input grid (z, p, lesion, per-contrast z)": st_invert,
        "NIfTI writing (3 maps)": st_write,
        "lesion report (JSON + CSV)": st_report,
        "PNG overlay (optional)": st_png,
    }


@timed("inference")
def run(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Run the inference benchmark."""
    from monai_qrvae.data.datalist import load_datalist
    from monai_qrvae.workflows import infer, load_model

    model_dir = trained_model_dir(ctx.work_dir / "models" / "trained-default")
    datalist = model_dir.parent / "data" / "datalist.json"
    items = [
        {k: v for k, v in item.items() if k != "label"}
        for section in ("tuning", "test", "calibration", "validation")
        for item in load_datalist(datalist, section=section, check=False)
    ][: 2 if ctx.quick else 4]
    item = items[0]
    config, net = load_model(model_dir)
    x = config.transforms()(dict(item))["image"].as_tensor().permute(3, 0, 1, 2).contiguous()  # (N, C, H, W)
    n = x.shape[0]
    scratch = Path(tempfile.mkdtemp(prefix="bench_infer_"))

    def forward(batch: torch.Tensor, calls: int = FORWARD_CALLS) -> float:
        """Mean time of a few back-to-back calls: one short call is at the mercy of the machine's other work."""
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(calls):
                for i in range(0, batch.shape[0], SW_BATCH):  # the batches of infer's SliceInferer
                    net(batch[i : i + SW_BATCH])
        return (time.perf_counter() - start) / calls

    cases = {
        "infer, 1 volume (NIfTI out)": lambda: infer(model_dir, [item], scratch / "a", save_png=False),
        f"infer, {len(items)} volumes per call (NIfTI out), per volume": lambda: infer(
            model_dir, items, scratch / "b", save_png=False
        ),
        "infer, 1 volume (NIfTI + PNG out)": lambda: infer(model_dir, [item], scratch / "c", save_png=True),
        f"network forward alone, {n} slices": lambda: forward(x),
        "network forward alone, 1 slice": lambda: forward(x[:1]),
    }
    try:
        cpu: dict[str, list[float]] = {}
        times = interleave(cases, repeats=ctx.repeats, warmup=1, cpu=cpu)
        per_volume_key = f"infer, {len(items)} volumes per call (NIfTI out), per volume"
        times[per_volume_key] = [t / len(items) for t in times[per_volume_key]]
        cpu[per_volume_key] = [t / len(items) for t in cpu[per_volume_key]]
        for key in cpu:
            if key.startswith("network forward"):
                cpu[key] = [t / FORWARD_CALLS for t in cpu[key]]
        stages = _stages(model_dir, item, scratch / "stages")
        # one "repetition" runs the stages in pipeline order (each needs the previous one's output)
        stage_times: dict[str, list[float]] = {k: [] for k in stages}
        stage_cpu: dict[str, list[float]] = {k: [] for k in stages}
        for r in range(ctx.repeats + 1):
            for name, fn in stages.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                if r:  # round 0 is the warm-up
                    stage_times[name].append(time.perf_counter() - start)
                    stage_cpu[name].append(time.process_time() - start_cpu)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    fwd_key = f"network forward alone, {n} slices"
    rows = []
    for name, ts in times.items():
        t = median(ts)
        slices = 1 if name.endswith("1 slice") else n
        rows.append(
            [
                name,
                fmt_spread(ts),
                fmt_time(t / slices),
                f"{paired_ratio(ts, times[fwd_key]):.2f}",
                fmt_spread(cpu[name]),
                f"{paired_ratio(cpu[name], cpu[fwd_key]):.2f}",
            ]
        )
    table = md_table(
        [
            "case",
            "wall time per volume",
            "per slice",
            f"ratio to forward ({n} slices)",
            "CPU time per volume",
            "CPU ratio to forward",
        ],
        rows,
    )
    total = sum(median(v) for k, v in stage_cpu.items() if not k.startswith("PNG"))
    wall_total = sum(median(v) for k, v in stage_times.items() if not k.startswith("PNG"))
    srows = []
    for name, ts in stage_times.items():
        png = name.startswith("PNG")
        share = "" if png else f"{100 * median(stage_cpu[name]) / total:.0f} %"
        wshare = "" if png else f"{100 * median(ts) / wall_total:.0f} %"
        srows.append([name, fmt_spread(ts), wshare, fmt_spread(stage_cpu[name]), share])
    stable = md_table(
        [
            "stage (by hand, same steps as the handlers)",
            "wall time per volume",
            "share of wall (without PNG)",
            "CPU time per volume",
            "share of CPU (without PNG)",
        ],
        srows,
    )
    one_key = "infer, 1 volume (NIfTI out)"
    png = median(stage_cpu[next(k for k in stage_cpu if k.startswith("PNG"))])
    top = sorted(((median(v), k) for k, v in stage_cpu.items() if not k.startswith("PNG")), reverse=True)[:3]
    quantiles = len(config.quantiles or ())
    body = (
        f"Default model: {config.method} `{config.preset}`, every axial slice with brain ({n} slices of "
        f"{config.image_size} x {config.image_size} for the first volume), {quantiles} quantiles, quantile-function "
        f"score {config.quantile_score}, score `{config.score}`, conformal threshold with the model's calibration, "
        "lesion report written; trained for 1 epoch (`benchmarks.context.trained_model_dir`: the cost does not depend "
        f"on the weights' values). Input volumes 85 x 103 x 90 x 3 (2 mm, the default grid). {ctx.repeats} "
        f"interleaved repetitions; the multi-volume call runs {len(items)} volumes.\n\n"
        f"{table}\n\n"
        f"Stage breakdown, one volume, {ctx.repeats} repetitions:\n\n{stable}\n\n"
        f"- Full pipeline / network forward on the same slices (target <= 2; medians of the per-round ratios): "
        f"**{paired_ratio(times[per_volume_key], times[fwd_key]):.2f}** in wall time and "
        f"**{paired_ratio(cpu[per_volume_key], cpu[fwd_key]):.2f}** in CPU time per volume in a multi-volume call; "
        f"{paired_ratio(times[one_key], times[fwd_key]):.2f} / {paired_ratio(cpu[one_key], cpu[fwd_key]):.2f} for a "
        "one-volume call, which also builds the model, the calibration and the engine.\n"
        "- Largest stages (CPU): " + ", ".join(f"{k} {100 * t / total:.0f} %" for t, k in top) + ".\n"
        f"- The optional PNG overlay (on by default in `qrvae infer` and `evaluate`) costs {fmt_time(png)} of CPU per "
        "volume on top.\n"
        "- `infer` checks every input first (`check_item(read_data=True)`: every voxel is read to catch NaN and shape "
        "errors before anything is written), so each volume is read twice.\n"
    )
    data = {"times": times, "cpu": cpu, "stages": stage_times, "stages_cpu": stage_cpu, "num_slices": n}
    return body, data


if __name__ == "__main__":
    standalone("bench_inference", run)
