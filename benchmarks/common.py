"""Shared helpers of the benchmarks, by concern; this module re-exports them all (``from benchmarks.common import``):

- :mod:`benchmarks.timing`: interleaved timing, medians, paired ratios, formatting, Markdown tables;
- :mod:`benchmarks.machine`: the machine description and load;
- :mod:`benchmarks.context`: :class:`Context` (work folder, cached cohort and models) and the workflows' defaults;
- :mod:`benchmarks.report`: report sections and ``docs/benchmarks.md``;
- :mod:`benchmarks.cli`: the command line of the single benchmarks;
- :mod:`benchmarks.processes`: child processes;
- :mod:`benchmarks.workloads`: the default model and batch, one training step.
"""

from __future__ import annotations

from benchmarks.cli import add_common_args, context_from_args, standalone
from benchmarks.context import (
    DEFAULT_DOC,
    DEFAULT_WORK_DIR,
    ROOT,
    Context,
    anomaly_transforms,
    bench_cohort,
    pipeline_defaults,
    untrained_model_dir,
)
from benchmarks.machine import load_average, machine_info, machine_markdown
from benchmarks.processes import child_env, python_exe, run_process
from benchmarks.report import SECTIONS, Section, save_section, timed, timed_section, update_doc
from benchmarks.timing import fmt_signed, fmt_spread, fmt_time, interleave, md_table, median, paired_ratio, quartiles
from benchmarks.workloads import default_model_and_batch, train_step

__all__ = [
    "ROOT",
    "DEFAULT_WORK_DIR",
    "DEFAULT_DOC",
    "SECTIONS",
    "Context",
    "Section",
    "add_common_args",
    "anomaly_transforms",
    "bench_cohort",
    "child_env",
    "context_from_args",
    "default_model_and_batch",
    "fmt_signed",
    "fmt_spread",
    "fmt_time",
    "interleave",
    "load_average",
    "machine_info",
    "machine_markdown",
    "md_table",
    "median",
    "paired_ratio",
    "pipeline_defaults",
    "python_exe",
    "quartiles",
    "run_process",
    "save_section",
    "standalone",
    "timed",
    "timed_section",
    "train_step",
    "untrained_model_dir",
    "update_doc",
]
