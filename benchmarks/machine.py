"""The machine a benchmark ran on: CPU, memory, library versions, thread settings and load."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_average", "locked_markdown", "locked_versions", "machine_info", "machine_markdown"]

REPO = Path(__file__).resolve().parents[1]
#: the packages whose locked versions the report names (constraints.txt; monailabel: constraints-monailabel.txt)
LOCKED = ("torch", "monai", "pytorch-ignite", "numpy", "scipy", "nibabel", "antspyx", "deepbet")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or "unknown")


def _mem_total_gb() -> float:
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), flags=re.MULTILINE)
        return int(m.group(1)) / 1024**2 if m else float("nan")
    except OSError:
        return float("nan")


def load_average() -> float:
    """One-minute load average (NaN where unavailable)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, library versions and thread settings of this process."""
    import monai
    import numpy
    from ignite import __version__ as ignite_version

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gb": round(_mem_total_gb(), 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite_version,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "(unset)"),
        "load_average_1min": round(load_average(), 2),
    }


def machine_markdown(info: Mapping[str, Any]) -> str:
    """One-paragraph Markdown description of :func:`machine_info`."""
    return (
        f"CPU: {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
        f"{info['memory_gb']} GB RAM. Python {info['python']}, torch {info['torch']}, MONAI {info['monai']}, "
        f"Ignite {info['ignite']}, numpy {info['numpy']}. Threads: torch intra-op {info['torch_threads']}, "
        f"inter-op {info['torch_interop_threads']}; OMP_NUM_THREADS={info['OMP_NUM_THREADS']}, "
        f"OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}, MKL_NUM_THREADS={info['MKL_NUM_THREADS']}."
    )


def locked_versions(path: Path) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines of a constraints file (empty if there is none)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    pins = (line.split("#")[0].strip().partition("==") for line in lines)
    return {name.strip().lower(): version.strip() for name, sep, version in pins if sep}


def locked_markdown(repo: Path = REPO) -> str:
    """One sentence: where the installed versions are locked, and the key ones (empty without constraints.txt)."""
    main = locked_versions(repo / "constraints.txt")
    if not main:
        return ""
    names = {"pytorch-ignite": "Ignite", "monai": "MONAI"}
    listed = ", ".join(f"{names.get(n, n)} {main[n]}" for n in LOCKED if n in main)
    ml = locked_versions(repo / "constraints-monailabel.txt")
    ml_text = (
        f"; MONAI Label's environment (`make monailabel-env`, `constraints-monailabel.txt`): monailabel "
        f"{ml.get('monailabel', '?')}, torch {ml.get('torch', '?')}, numpy {ml.get('numpy', '?')}"
        if ml
        else ""
    )
    return (
        f"Installed versions: `make install` installs with `constraints.txt` (a `pip freeze` of a fresh install; "
        f"`make install CONSTRAINTS=` installs without it): {listed}{ml_text}. The line above gives the versions of "
        f"the process that measured these figures; where the two differ, the figures predate the lock."
    )
