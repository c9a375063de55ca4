"""Print the package's module map and import structure, from the tree (nothing of the package is imported).

    python tools/module_map.py            # Markdown table: file, lines, first line of its docstring
    python tools/module_map.py --imports  # rooms, floors, arrows, circles, imports up a floor, private imports

A *room* is a top-level module or package of ``monai_qrvae``; an *arrow* is "room A imports room B"; floors and the
import rule are those of ``tests/test_imports.py`` (docs/architecture.md, "Import rule").
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "monai_qrvae"
sys.path.insert(0, str(ROOT / "tests"))

from test_imports import FLOOR, _imports, _room  # noqa: E402


def module_map() -> str:
    """The Markdown module map: one row per file, package totals in bold."""
    rows = []
    total = 0
    files = sorted(PACKAGE.rglob("*.py"))
    for path in files:
        text = path.read_text()
        lines = len(text.splitlines())
        total += lines
        doc = ast.get_docstring(ast.parse(text)) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        rows.append((path.relative_to(PACKAGE).as_posix(), lines, first.replace("|", "\\|")))
    largest = max(rows, key=lambda r: r[1])
    out = [
        f"`monai_qrvae/`: {len(rows)} files, {total:,} lines; largest `{largest[0]}` ({largest[1]}).",
        "",
        "| file | lines | holds (first line of its docstring) |",
        "| --- | ---: | --- |",
    ]
    out += [f"| `{name}` | {lines} | {first} |" for name, lines, first in rows]
    return "\n".join(out) + "\n"


def import_structure() -> str:
    """The import structure's figures (see the module docstring)."""
    imports = _imports()
    arrows = {(_room(s), _room(d)) for s, d, _, _ in imports if _room(s) != _room(d)}
    up = [(s, d) for s, d, _, _ in imports if FLOOR[_room(d)] > FLOOR[_room(s)]]
    private = [
        (s, n)
        for s, d, names, _ in imports
        for n in names
        if n.startswith("_") and not n.endswith("__") and _room(s) != _room(d)
    ]
    inside = 0
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("monai_qrvae"):
                        inside += 1
                    elif isinstance(node, ast.Import) and any(a.name.startswith("monai_qrvae") for a in node.names):
                        inside += 1
    edges: dict[str, set[str]] = {}
    for s, d in arrows:
        edges.setdefault(s, set()).add(d)
    circles = _circles(edges)
    floors = len({FLOOR[r] for r in FLOOR})
    return (
        f"rooms {len(FLOOR)} on {floors} floors, arrows {len(arrows)}, circles {len(circles)}, imports up a floor "
        f"{len(up)}, private names across rooms {len(private)}, internal imports {len(imports)} "
        f"({inside} inside functions)\n"
    )


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imports", action="store_true", help="print the import structure's figures instead")
    args = parser.parse_args()
    print(import_structure() if args.imports else module_map(), end="")
