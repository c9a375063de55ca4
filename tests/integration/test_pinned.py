"""The documented figures are recomputed: docs/benchmarks.md's pinned table must match the code within
:data:`TOLERANCE`.

The pinned run is float64 with deterministic kernels (``PINNED_DEMO["reproducible"]``): across thread counts 1/2/4,
``ATEN_CPU_CAPABILITY=default/avx2/avx512``, ``ONEDNN_MAX_CPU_ISA=AVX2/AVX512_CORE`` and oneDNN off every figure was
identical (spread 0.000, docs/benchmarks.md "Figures across CPUs"; ``python -m benchmarks.figure_spread``), so the
tolerance is the table's last digit plus its rounding: a figure edited by more, or a code change that moves one, fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monai_qrvae.tables import read_doc_block
from monai_qrvae.workflows import PINNED_DEMO, demo

DOCS = Path(__file__).resolve().parents[2] / "docs"
_NUMBER = re.compile(r"-?\d+\.\d+|n/a")
#: two units of the table's third decimal: the measured spread across emulated CPUs is 0, and a value printed as
#: x.xxx can round either way of a 5 in the fourth decimal.
TOLERANCE = 0.002


def _rows(table: str) -> dict[str, list[str]]:
    """``{row label: [numbers as text]}`` of a Markdown table (header and separator skipped)."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[1]) <= set("-") or not _NUMBER.search(cells[1]):
            continue
        rows[cells[0]] = [n for cell in cells[1:] for n in _NUMBER.findall(cell)]
    return rows


def mismatches(documented: dict[str, list[str]], fresh: dict[str, list[str]], tolerance: float = TOLERANCE) -> list:
    """``(row, documented, fresh)`` of every figure that differs by more than ``tolerance`` (or ``n/a`` vs a value)."""
    if fresh.keys() != documented.keys():
        return [("rows", sorted(documented), sorted(fresh))]
    bad = []
    for row, values in documented.items():
        if len(fresh[row]) != len(values):
            bad.append((row, values, fresh[row]))
            continue
        for doc_value, new_value in zip(values, fresh[row]):
            if "n/a" in (doc_value, new_value):
                if doc_value != new_value:
                    bad.append((row, doc_value, new_value))
            elif abs(float(new_value) - float(doc_value)) > tolerance + 1e-9:
                bad.append((row, doc_value, new_value))
    return bad


def test_rows_parser():
    rows = _rows("| method | a | b |\n|---|---|---|\n| QR-VAE | 0.500 ± 0.010 | n/a |\n")
    assert rows == {"QR-VAE": ["0.500", "0.010", "n/a"]}


def test_an_edited_figure_is_caught():
    """The documented table against itself with one figure edited: by the tolerance it passes, by more it fails."""
    documented = _rows(read_doc_block(DOCS / "benchmarks.md", "pinned"))
    assert mismatches(documented, documented) == []
    row = next(iter(documented))
    for delta, caught in ((TOLERANCE, False), (TOLERANCE + 0.001, True)):
        edited = {k: list(v) for k, v in documented.items()}
        edited[row][0] = f"{float(edited[row][0]) + delta:.3f}"
        assert bool(mismatches(documented, edited)) is caught, (delta, edited[row][0])
    edited = {k: list(v) for k, v in documented.items()}
    edited[row][-1] = "n/a"
    assert mismatches(documented, edited)


@pytest.mark.slow
def test_pinned_table_in_docs_matches_a_fresh_run(tmp_path):
    documented = _rows(read_doc_block(DOCS / "benchmarks.md", "pinned"))
    assert len(documented) >= 3, "docs/benchmarks.md has no pinned table: run `qrvae demo --pinned --update-docs ...`"
    result = demo(output_dir=tmp_path / "pinned", progress=False, **PINNED_DEMO)
    assert mismatches(documented, _rows(result["table"])) == []
