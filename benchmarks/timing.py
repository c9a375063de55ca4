"""Timing of the benchmarks: interleaved repetitions, medians and paired ratios, and how times are printed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["interleave", "median", "quartiles", "paired_ratio", "fmt_time", "fmt_signed", "fmt_spread", "md_table"]


def interleave(
    cases: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    on_round: Callable | None = None,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time every case ``repeats`` times, interleaved (A B C, C B A, A B C, ...), after ``warmup`` untimed rounds.

    Alternating the order cancels slow drifts of the machine's load between the cases; the per-round values can be
    paired (see :func:`paired_ratio`). A case that returns a float reports its own time (e.g. without its set-up);
    otherwise the wall time of the call is used. With ``cpu`` (a dict), the process CPU time of every timed call
    (``time.process_time``: all threads, user + system) is recorded there too: with idle threads sleeping, it measures
    the work done and is much less disturbed than wall time by other processes on the machine.

    Returns:
        ``{name: [seconds per repetition]}``.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            own = cases[name]()
            elapsed = time.perf_counter() - start
            times[name].append(float(own) if isinstance(own, float) else elapsed)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - start_cpu)
        if on_round is not None:
            on_round(r, times)
    return times


def median(values: Sequence[float]) -> float:
    """Median (NaN for no values)."""
    return float(statistics.median(values)) if len(values) else float("nan")


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles; (min, max) below four values."""
    v = sorted(values)
    if len(v) < 4:
        return (v[0], v[-1]) if v else (float("nan"), float("nan"))
    q = statistics.quantiles(v, n=4)
    return q[0], q[2]


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over the repetitions of ``a[i] / b[i]`` (each pair measured in the same round)."""
    return median([x / y for x, y in zip(a, b) if y > 0])


def fmt_time(seconds: float) -> str:
    """Seconds with a unit that keeps three significant digits."""
    if seconds != seconds:  # NaN
        return "n/a"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def fmt_signed(seconds: float) -> str:
    """A signed time difference, e.g. ``+12.0 ms`` or ``-3.1 ms``."""
    return ("-" if seconds < 0 else "+") + fmt_time(abs(seconds))


def fmt_spread(values: Sequence[float]) -> str:
    """``median [q25-q75]`` of a list of seconds."""
    lo, hi = quartiles(values)
    return f"{fmt_time(median(values))} [{fmt_time(lo)}-{fmt_time(hi)}]"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
