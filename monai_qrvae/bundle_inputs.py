"""Inputs of the MONAI bundle's inference: the datalist of a folder of scans, refused when the folder holds none.

``bundle/configs/inference.json`` builds its datalist with :func:`folder_datalist` when ``--input_dir`` is given, and
its ``initialize`` step calls :func:`check_input_dir`: a missing or empty folder is then one line on stderr and exit
status 2 before anything is loaded or written (instead of a traceback, or, for an empty folder, a run on nothing that
exits 0).
"""

from __future__ import annotations

import glob
import os
import sys

from monai.config import PathLike

__all__ = ["folder_datalist", "check_input_dir"]


def folder_datalist(input_dir: PathLike, pattern: str = "*.nii.gz") -> list[dict[str, str]]:
    """One ``{"image": path}`` entry per file of ``input_dir`` matching ``pattern``, sorted by path.

    Raises:
        FileNotFoundError: ``input_dir`` is not a folder, or no file in it matches ``pattern``.
    """
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(
            f"input_dir {input_dir}: no such folder (expected a folder of NIfTI images matching '{pattern}')."
        )
    files = sorted(glob.glob(os.path.join(input_dir, pattern)))
    if not files:
        raise FileNotFoundError(
            f"input_dir {input_dir} has no file matching '{pattern}' (expected NIfTI images, e.g. sub-001.nii.gz)."
        )
    return [{"image": f} for f in files]


def check_input_dir(input_dir: PathLike | None, pattern: str = "*.nii.gz", prog: str = "monai.bundle run") -> None:
    """The bundle's ``initialize`` check: with ``input_dir`` set, exit with status 2 and a one-line message on stderr
    when :func:`folder_datalist` refuses it; nothing to check without ``input_dir`` (the datalist is used)."""
    if not input_dir:
        return
    try:
        folder_datalist(input_dir, pattern)
    except FileNotFoundError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
