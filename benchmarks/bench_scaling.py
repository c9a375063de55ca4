"""Scaling: how the cost grows with the number of slices per volume and with the image size (64 and 128).

- **Slices per volume** ``N``: the whole inference pipeline (:func:`monai_qrvae.workflows.infer`, NIfTI output, all
  test volumes in one call, time per volume) and the network forward alone on ``N`` slices, for each ``N``; a least-
  squares line ``t = a + b N`` separates the fixed cost per volume (loading, normalising the whole volume, inverting,
  writing) from the cost per slice.
- **Image size** 64 and 128 (in-plane, the network's input; 4x the pixels): training throughput (one training step
  of the default batch size on real slices, QR-VAE ``small``), the network forward on 20 slices and the whole
  inference pipeline.

All cases of a table are interleaved.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cli import standalone
from benchmarks.context import Context, pipeline_defaults
from benchmarks.report import timed
from benchmarks.timing import fmt_signed, fmt_spread, fmt_time, interleave, md_table, median, paired_ratio
from benchmarks.workloads import train_step


def _slices_table(ctx: Context, scratch: Path) -> tuple[str, dict[str, Any]]:
    from monai_qrvae.workflows import infer, load_model

    counts = [5, 20] if ctx.quick else [5, 10, 20, 40]
    items = ctx.inputs("test")[:2]
    models = {n: ctx.model_dir(f"small_n{n}", num_slices=n) for n in counts}
    _, net = load_model(models[counts[0]])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(max(counts), 3, 64, 64, generator=g)
    cases: dict[str, Any] = {}
    calls = 5  # forwards per timed repetition: a single one is too short to time on a busy machine
    for n in counts:
        cases[f"pipeline {n}"] = lambda n=n: infer(models[n], items, scratch / f"n{n}", save_png=False)

        def forward(n: int = n) -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for _ in range(calls):
                    net(x[:n])
            return (time.perf_counter() - start) / calls

        cases[f"forward {n}"] = forward
    cpu: dict[str, list[float]] = {}
    times = interleave(cases, repeats=min(ctx.repeats, 3), warmup=1, cpu=cpu)
    for n in counts:
        times[f"pipeline {n}"] = [t / len(items) for t in times[f"pipeline {n}"]]
        cpu[f"pipeline {n}"] = [t / len(items) for t in cpu[f"pipeline {n}"]]
        cpu[f"forward {n}"] = [t / calls for t in cpu[f"forward {n}"]]
    pipe = np.array([median(cpu[f"pipeline {n}"]) for n in counts])
    fwd = np.array([median(cpu[f"forward {n}"]) for n in counts])
    a, b = np.polyfit(np.array(counts, dtype=float), pipe, 1)[::-1]
    fa, fb = np.polyfit(np.array(counts, dtype=float), fwd, 1)[::-1]
    rows = []
    for i, n in enumerate(counts):
        rows.append(
            [
                n,
                fmt_spread(times[f"pipeline {n}"]),
                fmt_spread(cpu[f"pipeline {n}"]),
                fmt_time(pipe[i] / n),
                fmt_spread(cpu[f"forward {n}"]),
                fmt_time(fwd[i] / n),
                f"{100 * fwd[i] / pipe[i]:.0f} %",
            ]
        )
    table = md_table(
        [
            "slices per volume",
            "whole pipeline, wall",
            "whole pipeline, CPU",
            "CPU per slice",
            "network forward, CPU",
            "per slice",
            "network share (CPU)",
        ],
        rows,
    )
    crossover = f"up to about {a / b:.0f} slices per volume" if b > 0 else "at every slice count measured"
    text = (
        f"Slices per volume ({len(items)} test volumes per `infer` call; time per volume; 64 x 64; "
        f"{min(ctx.repeats, 3)} interleaved repetitions; CPU time is the steadier measure on a shared machine):\n\n"
        f"{table}\n\n"
        f"Least-squares line through the CPU medians: whole pipeline = {fmt_signed(a)} per volume {fmt_signed(b)} per "
        f"slice; network forward = {fmt_signed(fa)} {fmt_signed(fb)} per slice. The fixed per-volume work "
        f"dominates {crossover}.\n"
    )
    return text, {"times": times, "cpu": cpu, "fit_pipeline": [a, b], "fit_forward": [fa, fb], "counts": counts}


def _size_table(ctx: Context, scratch: Path) -> tuple[str, dict[str, Any]]:
    from monai_qrvae.preprocessing import SliceDataset, volume_transforms
    from monai_qrvae.workflows import ModelConfig, build_loss, build_networks, infer

    sizes = (64, 128)
    bs = pipeline_defaults()["batch_size"]
    train_items = ctx.items("training")[:2]
    test_items = ctx.inputs("test")[:2]
    state: dict[int, dict[str, Any]] = {}
    cases: dict[str, Any] = {}
    for size in sizes:
        cfg = ModelConfig(image_size=size)
        torch.manual_seed(0)
        vae, net = build_networks(cfg)
        ds = SliceDataset(train_items, volume_transforms(image_size=size, num_slices=20), progress=False)
        batch = torch.stack([ds[i]["image"] for i in range(bs)])
        mask = torch.stack([ds[i]["brain_mask"] for i in range(bs)])
        s = {"vae": vae, "net": net.eval(), "opt": torch.optim.Adam(vae.parameters()), "loss": build_loss(cfg)}
        s.update(x=batch, m=mask, model=ctx.model_dir(f"small_s{size}", image_size=size))
        state[size] = s

        def step(s: dict[str, Any] = s) -> None:
            train_step(s["vae"], s["loss"], s["x"], s["m"], s["opt"])

        def forward(s: dict[str, Any] = s) -> None:
            with torch.no_grad():
                s["net"](s["x"][:20])

        cases[f"train {size}"] = step
        cases[f"forward {size}"] = forward
        cases[f"pipeline {size}"] = lambda s=s, size=size: infer(
            s["model"], test_items, scratch / f"s{size}", save_png=False
        )
    cpu: dict[str, list[float]] = {}
    times = interleave(cases, repeats=min(ctx.repeats, 3), warmup=1, cpu=cpu)
    for size in sizes:
        times[f"pipeline {size}"] = [t / len(test_items) for t in times[f"pipeline {size}"]]
        cpu[f"pipeline {size}"] = [t / len(test_items) for t in cpu[f"pipeline {size}"]]
    rows = []
    for size in sizes:
        params = sum(p.numel() for p in state[size]["vae"].parameters()) / 1e6
        rows.append(
            [
                f"{size} x {size}",
                f"{params:.1f} M",
                f"{bs / median(times[f'train {size}']):.1f}",
                fmt_spread(times[f"forward {size}"]),
                fmt_spread(times[f"pipeline {size}"]),
            ]
        )
    for label, t in (("wall", times), ("CPU", cpu)):
        rows.append(
            [
                f"time ratio 128 / 64 ({label})",
                "",
                f"x{paired_ratio(t['train 128'], t['train 64']):.2f}",
                f"x{paired_ratio(t['forward 128'], t['forward 64']):.2f}",
                f"x{paired_ratio(t['pipeline 128'], t['pipeline 64']):.2f}",
            ]
        )
    table = md_table(
        [
            "image size",
            "parameters",
            f"training slices/s (batch {bs})",
            "network forward, 20 slices",
            "whole pipeline per volume",
        ],
        rows,
    )
    text = (
        f"Image size (20 slices per volume; {min(ctx.repeats, 3)} interleaved repetitions; the `small` network's "
        f"FC layer grows with the image: its input is 128 x (size/8)^2):\n\n{table}\n"
    )
    return text, {"times": times, "cpu": cpu}


@timed("scaling")
def run(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Run the scaling benchmark."""
    scratch = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    try:
        text1, data1 = _slices_table(ctx, scratch)
        text2, data2 = _size_table(ctx, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    body = (
        f"{text1}\n{text2}\n"
        "- Cost per slice is constant (the network and the maps are linear in the slices); the per-volume part "
        "(reading, normalising the whole volume, inverting the maps onto the input grid and writing NIfTI) does not "
        "depend on the slice count.\n"
        "- At 128 x 128 the convolutions see 4x the pixels: training and the network forward grow about as much, "
        "the per-volume part much less.\n"
    )
    return body, {"slices": data1, "size": data2}


if __name__ == "__main__":
    standalone("bench_scaling", run)
