"""Logs a person can read: progress bars only on a terminal; in a log file or CI, one line per epoch or volume.

Progress bars (tqdm, ignite's ``ProgressBar``) redraw a line with carriage returns. In a terminal that is a moving
bar; in a log file or a CI log it becomes hundreds of partial lines. Code that creates a bar asks
:func:`progress_enabled` first and, when it says no, logs one line per unit of work instead.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["progress_enabled"]


def progress_enabled(requested: bool | None = None, stream: TextIO | None = None) -> bool:
    """Whether to draw a progress bar: not refused by the caller, and the bar's stream is a terminal.

    Args:
        requested: ``False`` never draws a bar (``--no-progress``); ``True`` or ``None`` (no preference) draw one
            only when ``stream`` is a terminal, so a bar asked for by default never ends up in a log file.
        stream: where the bar is drawn; ``sys.stderr`` (tqdm's and ignite's default) when not given.
    """
    if requested is False:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty(), or a closed stream
        return False
