"""Inference: seconds per 3D volume for the whole pipeline against the network forward alone.

Whole pipeline = :func:`monai_qrvae.workflows.infer`: load the NIfTI volume, reorient, normalise inside the brain,
crop, resize, select 20 axial slices, run the network slice by slice (``SliceInferer`` inside a
``SupervisedEvaluator``), z/p anomaly maps, Benjamini-Hochberg FDR, lesion filter, invert the preprocessing and write
the z-map, p-map and lesion mask as NIfTI on the input grid (and, optionally, a PNG overlay). The network forward alone
is ``AnomalyMapNet`` on the 20 preprocessed slices (one batch), under ``torch.no_grad`` (each repetition: the mean of
5 back-to-back calls). All cases are interleaved.

A stage breakdown runs the same steps by hand (the transforms, inferer, post-processing transforms and savers that
the handlers wrap) to show where the time goes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.cli import standalone
from benchmarks.context import Context, anomaly_transforms
from benchmarks.report import timed
from benchmarks.timing import fmt_spread, fmt_time, interleave, md_table, median, paired_ratio

FORWARD_CALLS = 5  # back-to-back forwards per timed repetition


def _stages(model_dir: Path, item: dict, out_dir: Path) -> dict[str, Any]:
    """Callables for each stage of the pipeline on one volume, sharing state in order."""
    from monai.data import decollate_batch
    from monai.inferers import SliceInferer

    from monai_qrvae.data.datalist import check_item
    from monai_qrvae.handlers import AnomalyMapSaver, OverlaySaver
    from monai_qrvae.preprocessing import volume_transforms
    from monai_qrvae.workflows import load_model

    config, net = load_model(model_dir)
    pre = volume_transforms(image_size=config.image_size, num_slices=config.num_slices)
    load, rest = pre.transforms[:2], pre.transforms[2:]
    inferer = SliceInferer(roi_size=(config.image_size,) * 2, sw_batch_size=32, spatial_dim=2, progress=False)
    maps, fdr, filt = anomaly_transforms()  # exactly what infer attaches, with its defaults
    saver = AnomalyMapSaver(out_dir, preprocessing=pre)
    overlay = OverlaySaver(out_dir, label_key="__none__")
    s: dict[str, Any] = {}

    def st_check() -> None:
        check_item(dict(item), num_channels=3, read_data=True)

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

    def st_maps() -> None:
        out = decollate_batch({"pred": s["pred"]})[0]
        out["brain_mask"] = s["pre"]["brain_mask"]
        s["out"] = maps(out)

    def st_fdr() -> None:
        s["out"] = fdr(s["out"])

    def st_filter() -> None:
        s["out"] = filt(s["out"])

    def st_save() -> None:
        saver.save_item(s["out"], s["pre"], fallback="bench")

    def st_png() -> None:
        overlay.save_item({**s["pre"], **s["out"]}, "bench")

    return {
        "input check (check_item, reads the files)": st_check,
        "load NIfTI": st_load,
        "preprocess (orient, normalise, crop, resize, 20 slices)": st_pre,
        "network (SliceInferer, 20 slices)": st_net,
        f"anomaly maps (z-map median {maps.median_size}, z, p)": st_maps,
        "Benjamini-Hochberg FDR": st_fdr,
        (
            "lesion filter (off by default)" if filt.median_size <= 1 and filt.min_size <= 0 else "lesion filter"
        ): st_filter,
        "invert + write 3 NIfTI": st_save,
        "PNG overlay (optional)": st_png,
    }


@timed("inference")
def run(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Run the inference benchmark."""
    from monai_qrvae.preprocessing import volume_transforms
    from monai_qrvae.workflows import infer, load_model

    model_dir = ctx.model_dir("small")
    items = ctx.inputs("test")
    item = items[0]
    config, net = load_model(model_dir)
    n = config.num_slices
    pre = volume_transforms(image_size=config.image_size, num_slices=n)
    x = pre(dict(item))["image"].as_tensor().permute(3, 0, 1, 2).contiguous()  # (N, C, H, W): the 20 slices
    scratch = Path(tempfile.mkdtemp(prefix="bench_infer_"))

    def forward(batch: torch.Tensor, calls: int = FORWARD_CALLS) -> float:
        """Mean time of a few back-to-back calls: one short call is at the mercy of the machine's other work."""
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(calls):
                net(batch)
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
                f"{paired_ratio(ts, times[fwd_key]):.1f}",
                fmt_spread(cpu[name]),
                f"{paired_ratio(cpu[name], cpu[fwd_key]):.1f}",
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
    srows = []
    for name, ts in stage_times.items():
        share = "" if name.startswith("PNG") else f"{100 * median(stage_cpu[name]) / total:.0f} %"
        srows.append([name, fmt_spread(ts), fmt_spread(stage_cpu[name]), share])
    stable = md_table(
        [
            "stage (by hand, same steps as the handlers)",
            "wall time per volume",
            "CPU time per volume",
            "share of CPU (without PNG)",
        ],
        srows,
    )
    one = median(cpu["infer, 1 volume (NIfTI out)"])
    per = median(cpu[per_volume_key])
    fwd = median(cpu[fwd_key])
    png = median(stage_cpu[next(k for k in stage_cpu if k.startswith("PNG"))])
    body = (
        f"QR-VAE `small` (untrained weights: the cost does not depend on their values), {n} axial slices of "
        f"{config.image_size} x {config.image_size} per volume; input volumes 85 x 103 x 90 x 3 (2 mm). "
        f"{ctx.repeats} interleaved repetitions.\n\n"
        f"{table}\n\n"
        f"Stage breakdown, one volume, {ctx.repeats} repetitions:\n\n{stable}\n\n"
        f"- In CPU time the whole pipeline costs {fmt_time(per)} per volume in a multi-volume call ({fmt_time(one)} "
        f"for a one-volume call, which also builds the model and the engine): {per / fwd:.0f}x the network forward. "
        "The network is not where the time goes: reading and checking the input, normalising the whole volume, "
        "inverting the maps onto the input grid and writing compressed NIfTI are.\n"
        f"- The optional PNG overlay (on by default in `qrvae infer` and `evaluate`) costs {fmt_time(png)} of CPU per "
        "volume, about as much as everything else together.\n"
        "- `infer` checks every input first (`check_item(read_data=True)`: every voxel is read to catch NaN and shape "
        "errors before anything is written), so each volume is read twice.\n"
    )
    data = {"times": times, "cpu": cpu, "stages": stage_times, "stages_cpu": stage_cpu, "num_slices": n}
    return body, data


if __name__ == "__main__":
    standalone("bench_inference", run)
