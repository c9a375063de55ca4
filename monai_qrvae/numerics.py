"""Numerics whose results do not depend on the CPU: the setting of the pinned figures (docs/benchmarks.md).

CPU kernels take different floating-point paths on different processors: oneDNN and ATen pick vector
instructions (AVX2, AVX-512, AMX) by what the CPU offers, and so sum in another order. In float32 the last-bit
differences grow, over a short training run, into differences of several hundredths of AUPRC (issue 27: 0.402 /
0.451 / 0.452 for one seed under three emulated CPUs). :func:`reproducible_numerics` runs a block in float64 (the
differences then stay near 1e-16 and never reach the third decimal of a figure), with oneDNN off (it has no float64
kernels, and its choice of kernel is the main source of the differences), deterministic algorithms and a fixed
number of torch threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["reproducible_numerics", "torch_threads"]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (``None``: unchanged), restored on exit."""
    previous = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def reproducible_numerics(threads: int | None = 1, dtype: torch.dtype | None = torch.float64) -> Iterator[None]:
    """Run the block with ``threads`` torch threads, ``dtype`` as torch's default, deterministic algorithms, no oneDNN.

    Networks built inside the block get ``dtype`` parameters (they cast their input to it); everything is restored
    on exit. ``None`` leaves that setting unchanged.
    """
    previous_dtype = torch.get_default_dtype()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        torch.use_deterministic_algorithms(True)
        with torch_threads(threads), torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.set_default_dtype(previous_dtype)
        torch.use_deterministic_algorithms(previous_deterministic)
