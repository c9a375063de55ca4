"""Benchmarks of monai-qrvae: speed, memory, scaling and detection quality, each measured side by side.

Run everything with ``make bench`` (``python -m benchmarks.run_all``); every benchmark is also a module that runs on
its own (``python -m benchmarks.bench_training``). Results are printed and written, section by section, to
``docs/benchmarks.md``; scratch files (data, models, raw JSON) go to ``outputs/bench/``.

The machines these run on are small and shared, so every comparison is made in one process with interleaved
repetitions (A, B, B, A, ...), and reported as medians and paired ratios rather than single absolute times.
"""

from __future__ import annotations

import monai_qrvae  # noqa: F401  imported first: the package's import-time settings apply before torch starts
