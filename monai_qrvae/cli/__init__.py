"""The ``qrvae`` command line, one module per family of sub-commands (the top floor: it may import every other).

- :mod:`.main`: :func:`main`, :func:`build_parser` (demo, train, evaluate, infer, sweep, benchmark);
- :mod:`.calibrate`: ``qrvae calibrate``; :mod:`.data`: the data commands (``make-data``, ``make-datalist``...);
  :mod:`.raw`: ``qrvae preprocess`` and raw-series inference; :mod:`.experiments`: ``qrvae experiment ...``;
- :mod:`.utils`: :class:`OneLineArgumentParser`, the shared options and :func:`run_command` (one-line errors).

The console script ``qrvae`` is ``monai_qrvae.cli:main``; ``python -m monai_qrvae.cli`` runs the same.
"""

from __future__ import annotations

from monai_qrvae.cli.main import build_parser, main

__all__ = ["main", "build_parser"]
