"""``torch.compile`` (Inductor, CPU) against eager mode, for the inference forward and the training step.

Compilation is paid once per process (and again for every new input shape; much less when Inductor's on-disk cache is
warm); the table gives the cold one-off cost and the steady-state time afterwards, interleaved with the eager model.
Opt-in (``run_all --compile``): a cold compile takes about a minute on 2 cores.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from typing import Any

import torch

from benchmarks.cli import standalone
from benchmarks.context import Context
from benchmarks.report import timed
from benchmarks.timing import fmt_spread, fmt_time, interleave, md_table, paired_ratio
from benchmarks.workloads import default_model_and_batch, train_step


@timed("compile")
def run(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Run the torch.compile benchmark, with an empty Inductor cache (a temporary folder): the one-off cost is cold."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bench_inductor_") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        torch._dynamo.reset()
        try:
            return _measure(ctx)
        finally:
            torch._dynamo.reset()
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def _row(what: str, compile_s: float, t: dict[str, list[float]]) -> list[str]:
    """A table row: the one-off compile, the eager and compiled times and the speed-up."""
    speedup = f"**x{paired_ratio(t['eager'], t['compiled']):.2f}**"
    return [what, fmt_time(compile_s), fmt_spread(t["eager"]), fmt_spread(t["compiled"]), speedup]


def _measure(ctx: Context) -> tuple[str, dict[str, Any]]:
    vae, net, loss, x, mask = default_model_and_batch(32)
    x20 = x[:20]
    rows, data = [], {}

    # inference forward
    net_c = torch.compile(copy.deepcopy(net))
    start = time.perf_counter()
    try:
        with torch.no_grad():
            net_c(x20)
        compile_fwd = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - report why compile is unavailable here
        return f"`torch.compile` failed on this machine: `{type(err).__name__}: {err}`.\n", {"error": str(err)}

    def fwd(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model(x20)

    t = interleave({"eager": lambda: fwd(net), "compiled": lambda: fwd(net_c)}, repeats=max(ctx.repeats, 7))
    rows.append(_row("forward, 20 slices (inference)", compile_fwd, t))
    data["forward"] = {"compile_s": compile_fwd, **t}

    # training step
    vae_e = copy.deepcopy(vae)
    vae_c = torch.compile(copy.deepcopy(vae))
    opt_e, opt_c = torch.optim.Adam(vae_e.parameters()), torch.optim.Adam(vae_c.parameters())

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        train_step(model, loss, x, mask, opt)

    start = time.perf_counter()
    step(vae_c, opt_c)
    compile_train = time.perf_counter() - start
    t = interleave({"eager": lambda: step(vae_e, opt_e), "compiled": lambda: step(vae_c, opt_c)}, repeats=ctx.repeats)
    rows.append(_row("training step, batch 32", compile_train, t))
    data["train"] = {"compile_s": compile_train, **t}
    table = md_table(["what", "one-off compile", "eager", "compiled", "speed-up"], rows)
    fwd_gain = paired_ratio(data["forward"]["eager"], data["forward"]["compiled"])
    train_gain = paired_ratio(data["train"]["eager"], data["train"]["compiled"])
    eager_fwd = sum(data["forward"]["eager"]) / len(data["forward"]["eager"])
    saved = eager_fwd * (1 - 1 / fwd_gain) if fwd_gain > 0 else float("nan")
    breakeven = compile_fwd / saved if saved > 0 else float("inf")
    train_note = (
        f"a x{train_gain:.2f} training step would repay its {fmt_time(compile_train)} compile after about "
        f"{compile_train / (sum(data['train']['eager']) / len(data['train']['eager']) * (1 - 1 / train_gain)):.0f} "
        "steps: an option for long runs, not wired in."
        if train_gain > 1.05
        else f"no gain on the training step (x{train_gain:.2f}) for a {fmt_time(compile_train)} compile: not used."
    )
    body = (
        "QR-VAE `small`, default `torch.compile` (Inductor) settings. The one-off compile is measured with an empty "
        "Inductor cache (a fresh `TORCHINDUCTOR_CACHE_DIR`), as a first run on a machine pays it; later processes "
        f"reuse the on-disk cache and compile in a few seconds.\n\n{table}\n\n"
        f"- Inference: x{fwd_gain:.2f} on the forward saves about {fmt_time(saved)} per volume of 20 slices, so the "
        f"compile pays off after about {breakeven:.0f} volumes in one process; the network is a small share of the "
        "whole pipeline (see the inference section) and `qrvae infer` usually sees a few volumes: not used.\n"
        f"- Training: {train_note}\n"
    )
    return body, data


if __name__ == "__main__":
    standalone("bench_compile", run)
