"""``pip check`` for a virtual environment the Makefile builds, run with that environment's python.

itk 5.4.x (needed by ``monai[itk]`` and by MONAI Label) installs a ``WHEEL`` file whose ``Tag:`` line starts with the
distribution's name and version (``Tag: itk-5.4.7-cp311-abi3-manylinux_2_28_x86_64``; the wheel's tag is
``cp311-abi3-manylinux_2_28_x86_64``). pip >= 24.1 parses these tags in ``pip check`` and stops on them with
``InvalidTag: ... must have exactly three components`` before it checks anything. This script first rewrites every
such line to its last three components (the tag of the wheel's file name), then runs ``python -m pip check`` and
exits with its status: non-zero when an installed package's requirements are not met.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path


def repair_wheel_tags() -> list[Path]:
    """Rewrite ``Tag:`` lines of more than three components in this environment's ``*.dist-info/WHEEL`` files."""
    repaired = []
    dirs = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    for wheel in sorted(p for d in dirs for p in d.glob("*.dist-info/WHEEL")):
        lines = wheel.read_text().splitlines(keepends=True)
        out = []
        for line in lines:
            key, sep, value = line.partition(":")
            parts = value.strip().split("-")
            if key.strip() == "Tag" and sep and len(parts) > 3:
                line = f"Tag: {'-'.join(parts[-3:])}\n"
            out.append(line)
        if out != lines:
            wheel.write_text("".join(out))
            repaired.append(wheel)
    return repaired


def main() -> int:
    for wheel in repair_wheel_tags():
        print(f"pip check: repaired the malformed Tag line of {wheel.parent.name}/WHEEL")
    return subprocess.call([sys.executable, "-m", "pip", "check"])


if __name__ == "__main__":
    sys.exit(main())
