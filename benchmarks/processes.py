"""Child processes of the benchmarks: run one to completion with its own resource usage, on this interpreter."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.context import ROOT

__all__ = ["run_process", "python_exe", "child_env"]


def run_process(
    args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path = ROOT, timeout: float = 1800.0
) -> tuple[int, str, Any, float]:
    """Run a child to completion; return ``(exit status, stdout, its own resource usage, wall seconds)``.

    The child is reaped with ``os.wait4``, so the resource usage (``ru_maxrss`` in KiB, ``ru_utime``, ``ru_stime``)
    is that child's alone (``RUSAGE_CHILDREN`` would mix all children).
    """
    import subprocess
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(list(args), cwd=cwd, env=None if env is None else dict(env), stdout=out, stderr=out)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    return proc.returncode, text, usage, wall


def child_env(changes: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with ``changes`` (``None`` removes a variable), the repository first on
    ``PYTHONPATH`` (children import ``benchmarks`` and this checkout's ``monai_qrvae``)."""
    env = dict(os.environ)
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def python_exe() -> str:
    """The interpreter running the benchmarks (children use the same one)."""
    return sys.executable
