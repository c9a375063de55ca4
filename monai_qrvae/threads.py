"""OpenMP thread settings for torch on shared CPUs, and a one-line hint when a process started torch without them.

torch's OpenMP runtime (libgomp) reads its settings from the environment once, when torch is imported. Importing
``monai_qrvae`` first sets them (:func:`apply_thread_defaults`, called by the package's ``__init__``); commands that
import torch before this package (``python -m monai.bundle run``, ``monailabel start_server``) only get them from
the environment they are started with, e.g. ``OMP_WAIT_POLICY=PASSIVE python -m monai.bundle run ...``.
This module must not import torch.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

__all__ = ["OMP_SETTINGS", "apply_thread_defaults", "thread_settings_hint", "log_thread_settings"]

logger = logging.getLogger(__name__)

#: Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes, spinning made torch ops
#: 3-20x slower (docs/benchmarks.md, "thread settings"). A user's own setting always wins.
OMP_SETTINGS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_thread_defaults(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set the :data:`OMP_SETTINGS` the user has not set, if torch is not imported yet; return whether it was not.

    Once torch is imported, setting them would change nothing in this process (and would hide that from
    :func:`thread_settings_hint`), so they are left alone.

    Args:
        environ: the environment to update (``os.environ`` by default).
    """
    if "torch" in sys.modules:
        return False
    environ = os.environ if environ is None else environ
    for key, value in OMP_SETTINGS.items():
        environ.setdefault(key, value)
    return True


def thread_settings_hint(environ: MutableMapping[str, str] | None = None) -> str | None:
    """A one-line hint naming the :data:`OMP_SETTINGS` missing from the environment; ``None`` when none is.

    Call it after torch is imported: what is missing then is what torch's OpenMP runtime started without.
    """
    environ = os.environ if environ is None else environ
    missing = " ".join(f"{k}={v}" for k, v in OMP_SETTINGS.items() if k not in environ)
    if not missing:
        return None
    return (
        f"torch was imported before monai_qrvae, so its OpenMP threads run without {missing}: on a CPU shared with "
        f"other work they spin and can make inference and training several times slower. Start the command with "
        f"`{missing}` in its environment (or set the variable yourself to choose another value)."
    )


def log_thread_settings(log: logging.Logger | None = None) -> str | None:
    """Log :func:`thread_settings_hint` as one INFO line (when there is one) and return it."""
    hint = thread_settings_hint()
    if hint:
        (log or logger).info(hint)
    return hint
