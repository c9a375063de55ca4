"""The documented figures are recomputed: docs/benchmarks.md's pinned table must match the code within 0.01."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monai_qrvae.study import read_doc_block
from monai_qrvae.workflows import PINNED_DEMO, demo

DOCS = Path(__file__).resolve().parents[1] / "docs"
_NUMBER = re.compile(r"-?\d+\.\d+|n/a")


def _rows(table: str) -> dict[str, list[str]]:
    """``{row label: [numbers as text]}`` of a Markdown table (header and separator skipped)."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[1]) <= set("-") or not _NUMBER.search(cells[1]):
            continue
        rows[cells[0]] = [n for cell in cells[1:] for n in _NUMBER.findall(cell)]
    return rows


def test_rows_parser():
    rows = _rows("| method | a | b |\n|---|---|---|\n| QR-VAE | 0.500 ± 0.010 | n/a |\n")
    assert rows == {"QR-VAE": ["0.500", "0.010", "n/a"]}


@pytest.mark.slow
def test_pinned_table_in_docs_matches_a_fresh_run(tmp_path):
    documented = _rows(read_doc_block(DOCS / "benchmarks.md", "pinned"))
    assert len(documented) >= 3, "docs/benchmarks.md has no pinned table: run `qrvae demo --pinned --update-docs ...`"
    result = demo(output_dir=tmp_path / "pinned", progress=False, **PINNED_DEMO)
    fresh = _rows(result["table"])
    assert fresh.keys() == documented.keys()
    for row, values in documented.items():
        assert len(fresh[row]) == len(values), row
        for doc_value, new_value in zip(values, fresh[row]):
            if doc_value == "n/a" or new_value == "n/a":
                assert doc_value == new_value, (row, doc_value, new_value)
            else:
                assert float(new_value) == pytest.approx(float(doc_value), abs=0.01), (row, doc_value, new_value)
