"""The benchmark helpers (timing, report sections, child processes) and one benchmark at tiny settings."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import pytest
import torch
from monai.data import Dataset

from benchmarks.bench_training import measure
from benchmarks.context import ROOT, Context, pipeline_defaults
from benchmarks.machine import locked_markdown, locked_versions
from benchmarks.processes import child_env, run_process
from benchmarks.report import Section, timed, update_doc
from benchmarks.timing import interleave, paired_ratio, quartiles
from benchmarks.workloads import default_model_and_batch, train_step


def test_interleave_alternates_order_and_uses_returned_times():
    calls = []
    cases = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b") or 0.5}
    cpu: dict = {}
    times = interleave(cases, repeats=3, warmup=1, cpu=cpu)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert len(times["a"]) == 3 and all(t >= 0 for t in times["a"])
    assert times["b"] == [0.5, 0.5, 0.5]  # a case that returns a float reports its own time
    assert len(cpu["a"]) == 3 and all(t >= 0 for t in cpu["a"])  # CPU time of the timed calls only


def test_pipeline_defaults_follow_the_workflows():
    from monai_qrvae.defaults import method_defaults

    defaults = pipeline_defaults()
    assert defaults["batch_size"] == method_defaults("qrvae").batch_size
    assert defaults["score_median"] == method_defaults("qrvae").score_median
    assert {"alpha", "per", "score_median", "clip"} <= set(defaults)


def test_paired_ratio_and_quartiles():
    assert paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0]) == 2.0
    assert quartiles([1.0, 2.0]) == (1.0, 2.0)
    lo, hi = quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert lo < 3.0 < hi


def test_update_doc_replaces_one_section_and_keeps_the_others(tmp_path):
    doc = tmp_path / "benchmarks.md"
    machine = {"cpu": "test cpu", "usable_cpus": 2, "logical_cpus": 2, "memory_gb": 1.0, "python": "3", "torch": "t"}
    machine.update(monai="m", ignite="i", numpy="n", torch_threads=2, torch_interop_threads=2)
    machine.update(OMP_NUM_THREADS="(unset)", OMP_WAIT_POLICY="PASSIVE", MKL_NUM_THREADS="(unset)")
    update_doc(doc, [Section("training", "first training body", machine=machine)])
    update_doc(doc, [Section("quality", "quality body", machine=machine)])
    update_doc(doc, [Section("training", "second training body", machine=machine)])
    text = doc.read_text()
    assert "second training body" in text and "first training body" not in text
    assert "quality body" in text and "test cpu" in text
    assert text.index("Training throughput") < text.index("Detection quality")  # the fixed section order


def test_locked_versions_in_the_machine_block(tmp_path):
    lock = "# header\ntorch==2.13.0\nmonai==1.6.1\npytorch-ignite==0.5.5\nnumpy==2.3.5  # a comment\n"
    (tmp_path / "constraints.txt").write_text(lock)
    (tmp_path / "constraints-monailabel.txt").write_text("monailabel==0.8.5\ntorch==2.14.1\nnumpy==1.26.4\n")
    assert locked_versions(tmp_path / "constraints.txt")["pytorch-ignite"] == "0.5.5"
    text = locked_markdown(tmp_path)
    assert "torch 2.13.0, MONAI 1.6.1, Ignite 0.5.5, numpy 2.3.5;" in text and "monailabel 0.8.5, torch 2.14.1" in text
    assert locked_markdown(tmp_path / "missing") == ""
    # the repository's own lock holds the key versions, and the report's machine block names it
    repo_lock = locked_versions(ROOT / "constraints.txt")
    assert {"torch", "monai", "pytorch-ignite", "numpy", "scipy", "nibabel", "antspyx", "deepbet"} <= set(repo_lock)
    assert locked_versions(ROOT / "constraints-monailabel.txt")["monailabel"] == "0.8.5"
    doc = tmp_path / "benchmarks.md"
    machine = {"cpu": "c", "usable_cpus": 2, "logical_cpus": 2, "memory_gb": 1.0, "python": "3", "torch": "t"}
    machine.update(monai="m", ignite="i", numpy="n", torch_threads=2, torch_interop_threads=2)
    machine.update(OMP_NUM_THREADS="(unset)", OMP_WAIT_POLICY="PASSIVE", MKL_NUM_THREADS="(unset)")
    update_doc(doc, [Section("training", "body", machine=machine)])
    block = doc.read_text().split("<!-- bench:machine -->")[1].split("<!-- /bench:machine -->")[0]
    assert "`constraints.txt`" in block and f"torch {repo_lock['torch']}" in block


def test_run_process_reports_the_child_alone(tmp_path):
    code = "import sys; print('hello'); sys.exit(3)"
    status, out, usage, wall = run_process([sys.executable, "-c", code], cwd=tmp_path)
    assert status == 3 and "hello" in out and wall > 0 and usage.ru_utime >= 0


def test_common_reexports_every_helper():
    """``from benchmarks.common import X`` keeps working for every helper of the split modules."""
    import benchmarks.common as common
    import benchmarks.report

    assert len(common.__all__) == 33 and all(getattr(common, name) is not None for name in common.__all__)
    assert (
        common.Section is Section and common.update_doc is update_doc and common.SECTIONS is benchmarks.report.SECTIONS
    )


def test_child_env_and_timed_sections(monkeypatch):
    monkeypatch.setenv("BENCH_TEST_DROP", "1")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = child_env({"BENCH_TEST_DROP": None, "BENCH_TEST_SET": "x"})
    assert "BENCH_TEST_DROP" not in env and env["BENCH_TEST_SET"] == "x"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]

    @timed("training")
    def run(ctx):
        """A benchmark body."""
        return f"body of {ctx.repeats} repeats", {"x": 1}

    section = run(Context(doc=None, repeats=2))
    assert run.__doc__ == "A benchmark body."
    assert (section.name, section.body, section.data) == ("training", "body of 2 repeats", {"x": 1})
    assert section.title.startswith("Training throughput") and section.machine["usable_cpus"] >= 1


def test_train_step_is_one_optimiser_step():
    vae, net, loss, x, mask = default_model_and_batch(4)
    assert x.shape == (4, 3, 64, 64) and mask.shape == (4, 1, 64, 64) and not net.training
    again = default_model_and_batch(4)[3]
    assert torch.equal(x, again)  # seeded
    before = [p.detach().clone() for p in vae.parameters()]
    opt = torch.optim.SGD(vae.parameters(), lr=0.0)
    train_step(vae, loss, x, mask, opt)  # a zero learning rate: gradients, no change
    assert vae.training and all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())
    opt = torch.optim.SGD(vae.parameters(), lr=1e-3)
    train_step(vae, loss, x, mask, opt)
    assert not all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))


class _SlowItems(Dataset):
    """Slices that take ``delay`` seconds each to load: a known time spent waiting for data."""

    def __init__(self, items, delay: float) -> None:
        super().__init__(items)
        self.delay = delay

    def __getitem__(self, index):
        time.sleep(self.delay)
        return super().__getitem__(index)


class _RecordingLoss(torch.nn.Module):
    """Wrap a VAE loss: record the batch each call saw, and sleep ``delay`` seconds per call (a known extra cost)."""

    def __init__(self, loss: torch.nn.Module, delay: float) -> None:
        super().__init__()
        self.loss, self.delay, self.batches = loss, delay, []

    @property
    def parts(self) -> dict:
        return self.loss.parts

    def forward(self, out, target, mu, logvar, mask=None):
        self.batches.append(float(target.double().sum()))
        time.sleep(self.delay)
        return self.loss(out, target, mu, logvar, mask=mask)


def test_training_benchmark_tiny(monkeypatch):
    """Every variant does the same work; a known data wait and a known slow-down of one variant are measured."""
    import monai_qrvae.workflows

    build_loss, losses = monai_qrvae.workflows.build_loss, []
    delays = {1: 0.06}  # the second loss built (the "ignite" variant's) costs 60 ms more per iteration

    def recording_loss(config):
        losses.append(_RecordingLoss(build_loss(config), delays.get(len(losses), 0.0)))
        return losses[-1]

    monkeypatch.setattr(monai_qrvae.workflows, "build_loss", recording_loss)
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, 16, 16, generator=g), "brain_mask": torch.ones(1, 16, 16)} for _ in range(8)]
    items_sum = [float(item["image"].double().sum()) for item in items]
    load_delay = 0.01  # 8 slices: 80 ms of every epoch spent waiting for data
    res = measure(_SlowItems(items, load_delay), image_size=16, repeats=2, batch_size=4)
    variants = res["variants"]
    assert list(variants) == ["bare", "ignite", "ignite + handlers"] and res["slices_per_epoch"] == 8
    # the same slices (the samplers' orders differ) for every variant: (1 warm-up + 2 timed epochs) x 2 iterations
    assert [len(loss.batches) for loss in losses] == [6, 6, 6]
    per_epoch = [[sum(loss.batches[i : i + 2]) for i in (0, 2, 4)] for loss in losses]
    np.testing.assert_allclose(per_epoch, [[sum(items_sum)] * 3] * 3, rtol=1e-9)
    for name, v in variants.items():
        times = v["epoch_seconds"]
        assert len(times) == 2 and len(v["cpu_seconds"]) == 2
        assert v["slices_per_s"] == pytest.approx(8 / statistics.median(times))
        assert v["ratio_to_bare"] == pytest.approx(
            statistics.median(b / t for b, t in zip(variants["bare"]["epoch_seconds"], times))
        )
        # at least 80 ms of each epoch waited for data
        assert v["data_share"] >= 8 * load_delay / max(times) - 1e-6 and v["data_share"] <= 1.0, (name, v)
    # the slowed variant's epochs hold its 2 x 60 ms: the times are those of the epochs it ran
    assert min(variants["ignite"]["epoch_seconds"]) >= 2 * 0.06 + 8 * load_delay


@pytest.mark.slow
def test_whole_brain_choices_quick_runs(tmp_path):
    """`python -m benchmarks.whole_brain_choices --quick`: every variant x score on 'tuning', and its table."""
    import subprocess
    import sys

    out = tmp_path / "wb"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.whole_brain_choices", "--out", str(out), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 6 + 2 * 3  # QR-VAE variants with and without the quantile score; two baselines
    assert {r["score"] for r in rows} == {"flair", "flair_t2", "all"}
    assert all(0.0 <= r["auprc"] <= 1.0 and 0.0 <= r["auroc"] <= 1.0 for r in rows)
    table = (out / "whole_brain_choices.md").read_text()
    assert table.count("\n") == 2 + len(rows) and "| qrvae | position | 64 px |" in table
