"""Readable logs (progress bars only on a terminal) and the OpenMP thread settings (monai_qrvae.threads)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monai_qrvae.logging_utils import progress_enabled
from monai_qrvae.threads import OMP_SETTINGS, apply_thread_defaults, thread_settings_hint

REPO = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Closed(io.StringIO):
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


@pytest.mark.parametrize(
    "requested, stream, expected",
    [
        (None, _Terminal(), True),
        (True, _Terminal(), True),
        (False, _Terminal(), False),
        (None, io.StringIO(), False),  # a log file or a CI log: no bar even when asked for
        (True, io.StringIO(), False),
        (True, _Closed(), False),
        (True, object(), False),  # no isatty at all
    ],
)
def test_progress_enabled_only_on_a_terminal(requested, stream, expected) -> None:
    assert progress_enabled(requested, stream) is expected


def test_progress_enabled_defaults_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_enabled() is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_enabled(True) is False


def test_thread_defaults_and_hint() -> None:
    env: dict[str, str] = {}
    assert "torch" in sys.modules  # imported by the package: setting the variables now would change nothing
    assert apply_thread_defaults(env) is False and env == {}
    hint = thread_settings_hint(env)
    assert hint is not None and "OMP_WAIT_POLICY=PASSIVE" in hint and "\n" not in hint
    assert thread_settings_hint({"OMP_WAIT_POLICY": "ACTIVE"}) is None  # the user's choice: nothing to say


def _child(code: str, **env: str | None) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in OMP_SETTINGS}
    environ.update({k: v for k, v in env.items() if v is not None}, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_REPORT = (
    "import json, os, monai_qrvae, monai_qrvae.threads as t; "
    "print(json.dumps({'policy': os.environ.get('OMP_WAIT_POLICY'), 'hint': t.thread_settings_hint(), "
    "'file': monai_qrvae.__file__}))"
)


@pytest.mark.slow  # three interpreters importing torch and monai: 20-60 s on 2 shared cores
def test_import_order_decides_whether_the_settings_reach_torch() -> None:
    first = _child(_REPORT)  # monai_qrvae before torch: the default is set, nothing to hint
    assert first["file"].startswith(str(REPO)) and first["policy"] == "PASSIVE" and first["hint"] is None
    late = _child("import torch; " + _REPORT)  # as `python -m monai.bundle run` and `monailabel start_server` do
    assert late["policy"] is None and "OMP_WAIT_POLICY=PASSIVE" in late["hint"]
    given = _child("import torch; " + _REPORT, OMP_WAIT_POLICY="PASSIVE")  # set in the command's environment
    assert given["policy"] == "PASSIVE" and given["hint"] is None
