"""Markdown tables and the marked blocks of the docs, shared by the studies, the jobs and the experiments.

- :func:`format_headline`: the headline table (``method x figure``, mean +- s.d. over runs) of
  :data:`HEADLINE_COLUMNS`;
- :func:`markdown_table`: any list of dict rows as a Markdown table;
- :func:`update_doc_block` / :func:`read_doc_block`: the block between ``<!-- name:start -->`` and
  ``<!-- name:end -->`` of a Markdown file, so README and docs show exactly what a command printed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_qrvae.utils import write_text

__all__ = [
    "HEADLINE_COLUMNS",
    "METHOD_NAMES",
    "format_value",
    "mean_sd",
    "format_headline",
    "markdown_table",
    "update_doc_block",
    "update_doc_blocks",
    "publish_table",
    "read_doc_block",
]

#: columns of the headline table: (result key, header).
HEADLINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("auprc", "AUPRC"),
    ("auroc", "AUROC"),
    ("best_dice", "best Dice [upper bound]"),
    ("dice_fdr", "Dice (FDR, label-free)"),
    ("lesion_recall", "lesion recall (FDR)"),
    ("fp_per_volume", "FP comp./vol. (FDR)"),
    ("healthy_any_detection", "healthy vols. flagged"),
    ("coverage", "coverage"),
)
METHOD_NAMES = {
    "qrvae": "QR-VAE (ours)",
    "gaussian": "Gaussian VAE (learned variance)",
    "mse": "MSE VAE (residual)",
    "flair": "FLAIR thresholding",
}


def format_value(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def format_headline(results: dict[str, list[dict[str, Any]]], strata: bool = True) -> str:
    """Markdown table ``method x figure`` as ``mean +- s.d.`` over the runs of each method (one run: the value).

    Args:
        results: ``{method: [evaluate() result per seed]}``.
        strata: add one row per stratum (``typical``, ``subtle``) under each method.
    """
    header = "| method | " + " | ".join(h for _, h in HEADLINE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(HEADLINE_COLUMNS) + 1)]

    def cells(runs: list[dict[str, Any]]) -> str:
        out = []
        for key, _ in HEADLINE_COLUMNS:
            mean, sd = mean_sd([r.get(key, math.nan) for r in runs])
            if len(runs) > 1:
                out.append("n/a" if math.isnan(mean) else f"{mean:.3f} ± {sd:.3f}")
            else:
                out.append(format_value(mean))
        return " | ".join(out)

    for method, runs in results.items():
        lines.append(f"| {METHOD_NAMES.get(method, method)} | {cells(runs)} |")
        if strata:
            names = sorted({s for r in runs for s in r.get("strata", {})})
            for name in names:
                sub = [r["strata"][name] for r in runs if name in r.get("strata", {})]
                lines.append(f"| &nbsp;&nbsp;{name} lesions only | {cells(sub)} |")
    return "\n".join(lines) + "\n"


def _cell(value: Any, fmt: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if not np.isfinite(value) else format(float(value), fmt)
    return str(value)


def markdown_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    headers: Sequence[str] | None = None,
    fmt: str = ".3f",
    formats: dict[str, str | Callable[[Any], str]] | None = None,
) -> str:
    """A Markdown table of ``rows`` (dicts) with the given columns; floats formatted with ``fmt``."""
    formats = formats or {}
    headers = list(headers) if headers is not None else list(columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = []
        for c in columns:
            f = formats.get(c, fmt)
            cells.append(f(row.get(c)) if callable(f) else _cell(row.get(c), f))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def update_doc_block(path: str | os.PathLike, name: str, text: str) -> Path:
    """Replace the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` of a Markdown file.

    Raises:
        ValueError: when the file has no such block.
    """
    path = Path(path)
    source = path.read_text()
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n)(.*?)(<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(source):
        raise ValueError(f"{path} has no block '<!-- {name}:start -->' ... '<!-- {name}:end -->' to update.")
    new = pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(3), source, count=1)
    return write_text(path, new)


def update_doc_blocks(paths: Sequence[str | os.PathLike], name: str, text: str) -> list[Path]:
    """:func:`update_doc_block` on each of ``paths`` (a command's ``--update-docs``)."""
    return [update_doc_block(path, name, text) for path in paths]


def publish_table(
    text: str, docs: Sequence[str | os.PathLike], name: str, results: Any = None, json_path: str | os.PathLike = ""
) -> int:
    """A command's last step: write ``results`` as JSON to ``json_path`` (when given), print the table ``text`` and
    put it into the block ``name`` of each of ``docs``; returns 0 (the exit status)."""
    if json_path:
        write_text(json_path, json.dumps(results, indent=2))
    print(text)
    update_doc_blocks(docs, name, text)
    return 0


def read_doc_block(path: str | os.PathLike, name: str) -> str:
    """The text of a marked block (see :func:`update_doc_block`)."""
    source = Path(path).read_text()
    match = re.search(rf"<!-- {re.escape(name)}:start -->\n(.*?)<!-- {re.escape(name)}:end -->", source, re.S)
    if match is None:
        raise ValueError(f"{path} has no block '<!-- {name}:start -->' ... '<!-- {name}:end -->'.")
    return match.group(1)
