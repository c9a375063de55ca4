"""The benchmark helpers (timing, report sections, child processes) and one benchmark at tiny settings."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from monai.data import Dataset

from benchmarks.bench_training import measure
from benchmarks.common import (
    Section,
    interleave,
    paired_ratio,
    pipeline_defaults,
    quartiles,
    run_process,
    update_doc,
)


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


def test_run_process_reports_the_child_alone(tmp_path):
    code = "import sys; print('hello'); sys.exit(3)"
    status, out, usage, wall = run_process([sys.executable, "-c", code], cwd=tmp_path)
    assert status == 3 and "hello" in out and wall > 0 and usage.ru_utime >= 0


def test_training_benchmark_tiny():
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, 16, 16, generator=g), "brain_mask": torch.ones(1, 16, 16)} for _ in range(8)]
    res = measure(Dataset(items), image_size=16, repeats=1, batch_size=4)
    assert set(res["variants"]) == {"bare", "ignite", "ignite + handlers"}
    for v in res["variants"].values():
        assert v["slices_per_s"] > 0 and 0.0 <= v["data_share"] <= 1.0
        assert math.isfinite(v["ratio_to_bare"]) and v["ratio_to_bare"] > 0
    assert res["variants"]["bare"]["ratio_to_bare"] == pytest.approx(1.0)
