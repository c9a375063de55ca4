"""Mutation score per module from mutmut's results (``mutants/**/*.py.meta``), for ``make mutation``.

``python tools/mutation_score.py [--survivors] [--diff] [MODULE_PREFIX ...]``: one line per mutated module (killed,
survived, no tests, timeout, score = killed (+ timeouts) / checked mutants), then the total; ``--survivors`` also
lists every surviving mutant, ``--diff`` with the line it changes (``mutmut show NAME`` prints the whole diff).
Mutants not checked (a run restricted to some modules) are left out.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {1, 3, 37}  # a failing test, pytest's internal error on the mutant, caught by the type checker
TIMEOUT = {24, -24, 36, 152, 255}  # a mutant that hangs is caught: the run would never finish
SURVIVED = {0}
NO_TESTS = {5, 33}


def scores(root: Path = Path("mutants")) -> tuple[dict[str, Counter], dict[str, list[str]]]:
    """Counts by outcome and the names of the surviving mutants, per module."""
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for meta in sorted(root.rglob("*.py.meta")):
        module = ".".join(meta.relative_to(root).with_suffix("").with_suffix("").parts)
        for name, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
            if code is None:
                continue
            outcome = (
                "killed"
                if code in KILLED
                else (
                    "timeout"
                    if code in TIMEOUT
                    else "survived" if code in SURVIVED else "no tests" if code in NO_TESTS else "other"
                )
            )
            counts[module][outcome] += 1
            if outcome in ("survived", "no tests", "other"):
                survivors[module].append(f"{name} ({outcome})")
    return counts, survivors


def changed_lines(wanted: set[str] | None = None, root: Path = Path("mutants")) -> dict[str, str]:
    """``{mutant name: "old line -> new line"}`` from the mutated copies (each mutant is a function beside its
    ``__mutmut_orig``)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if "__mutmut_orig" not in text:
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        if wanted is not None and not any(name.startswith(module + ".") for name in wanted):
            continue
        lines = text.splitlines()
        functions = {
            node.name: "\n".join(lines[node.lineno - 1 : node.end_lineno])
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name
        }
        for name, source in functions.items():
            stem, _, number = name.rpartition("__mutmut_")
            if number == "orig" or (wanted is not None and f"{module}.{name}" not in wanted):
                continue
            orig = functions.get(f"{stem}__mutmut_orig", "").replace(f"{stem}__mutmut_orig", name).splitlines()
            mutated = source.splitlines()
            opcodes = difflib.SequenceMatcher(None, orig, mutated, autojunk=False).get_opcodes()
            change = next((op for op in opcodes if op[0] != "equal"), None)
            if change is not None:
                _, i1, i2, j1, j2 = change
                old = " / ".join(line.strip() for line in orig[i1:i2])
                new = " / ".join(line.strip() for line in mutated[j1:j2])
                out[f"{module}.{name}"] = f"{old}  ->  {new}"
    return out


#: why a surviving mutant may be left alive, by what its change touches (first match wins); the rest are gaps
CATEGORIES = [
    ("device", r"device|\.to\(None\)", "equivalent here: where a tensor lives (one CPU device in the tests)"),
    (
        "dtype",
        r"dtype|float64|float32|\.double|\.float|int64",
        "accepted: working precision only (the values agree to the checked tolerance)",
    ),
    ("metatensor", r"track_meta", "equivalent: MetaTensor or plain tensor, same values"),
    ("rounding", r"round\(", "accepted: digits of a displayed (rounded) value"),
    (
        "default",
        r"None|, \)|\(\)",
        "equivalent or accepted: an argument dropped or set to None where the default gives the same result",
    ),
    (
        "text",
        r"XX|\"[A-Z_]{2,}\"|'[A-Z_]{2,}'",
        "accepted: the text of a name, key or label that only reaches messages, logs or display",
    ),
]


def _fragments(change: str) -> str:
    """The characters a mutant changes, with a little context on each side."""
    old, _, new = change.partition("  ->  ")
    parts = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            parts += [old[max(0, i1 - 12) : i2 + 3], new[max(0, j1 - 12) : j2 + 3]]
    return " ".join(parts)


def category(change: str) -> str:
    fragment = _fragments(change)
    for name, pattern, _ in CATEGORIES:
        if re.search(pattern, fragment):
            return name
    return "gap"


def markdown(prefixes: list[str]) -> str:
    """The score table and every survivor by category (for docs/testing.md)."""
    counts, survivors = scores()
    wanted = {n.split(" ")[0] for m in survivors for n in survivors[m]}
    lines = changed_lines(wanted)
    rows = ["| module | killed | survived | no tests | timeout | score |", "|---|---:|---:|---:|---:|---:|"]
    total: Counter = Counter()
    for module in sorted(counts):
        if prefixes and not any(module.startswith(p) for p in prefixes):
            continue
        c = counts[module]
        if not sum(c.values()):
            continue
        total.update(c)
        score = (c["killed"] + c["timeout"]) / sum(c.values())
        rows.append(
            f"| `{module}` | {c['killed']} | {c['survived']} | {c['no tests']} | {c['timeout']} | {score:.1%} |"
        )
    score = (total["killed"] + total["timeout"]) / max(1, sum(total.values()))
    rows.append(
        f"| total | {total['killed']} | {total['survived']} | {total['no tests']} | {total['timeout']} | {score:.1%} |"
    )
    by_category: dict[str, list[str]] = defaultdict(list)
    no_tests: dict[str, Counter] = defaultdict(Counter)
    for module in sorted(survivors):
        for entry in survivors[module]:
            name, outcome = entry.split(" ", 1)
            if "no tests" in outcome:
                function = name.rpartition("__mutmut_")[0].rpartition(".")[2].lstrip("x").lstrip("_").replace("ǁ", ".")
                no_tests[module][function] += 1
                continue
            change = lines.get(name, "")
            cell = change.replace("|", "\\|")  # a table cell
            by_category[category(change)].append(f"| `{name.rpartition('.')[2]}` ({module}) | `{cell}` |")
    gaps = len(by_category.get("gap", []))
    untested = sum(sum(c.values()) for c in no_tests.values())
    killed = total["killed"] + total["timeout"]
    rows += [
        "",
        f"Not counting the survivors of the equivalent or accepted categories below: {killed} killed of "
        f"{killed + gaps + untested} ({killed / max(1, killed + gaps + untested):.1%}); {gaps} gaps and {untested} "
        "mutants in functions only slow tests run remain.",
    ]
    out = rows + [""]
    reasons = {name: reason for name, _, reason in CATEGORIES}
    reasons["gap"] = "not killed yet: a behaviour no fast test checks (to do)"
    for name in [c[0] for c in CATEGORIES] + ["gap"]:
        if by_category.get(name):
            out += [f"**{name}** ({len(by_category[name])}): {reasons[name]}", "", "| mutant | change |", "|---|---|"]
            out += by_category[name] + [""]
    if no_tests:
        out += ["**no tests**: functions that only the slow tests run (training, bundle and raw end-to-end runs):", ""]
        for module in sorted(no_tests):
            funcs = ", ".join(f"`{f}` ({n})" for f, n in sorted(no_tests[module].items()))
            out.append(f"- `{module}`: {funcs}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if "--markdown" in argv:
        print(markdown([a for a in argv if not a.startswith("--")]))
        return 0
    diff = "--diff" in argv
    show = "--survivors" in argv or diff
    prefixes = [a for a in argv if not a.startswith("--")]
    counts, survivors = scores()
    total: Counter = Counter()
    print(f"{'module':48s} {'killed':>7s} {'survived':>8s} {'no tests':>8s} {'timeout':>7s} {'score':>7s}")
    for module in sorted(counts):
        if prefixes and not any(module.startswith(p) for p in prefixes):
            continue
        c = counts[module]
        checked = sum(c.values())
        if not checked:
            continue
        total.update(c)
        score = (c["killed"] + c["timeout"]) / checked
        print(f"{module:48s} {c['killed']:7d} {c['survived']:8d} {c['no tests']:8d} {c['timeout']:7d} {score:7.1%}")
    checked = sum(total.values())
    if checked:
        score = (total["killed"] + total["timeout"]) / checked
        print(
            f"{'total':48s} {total['killed']:7d} {total['survived']:8d} {total['no tests']:8d} "
            f"{total['timeout']:7d} {score:7.1%}"
        )
    if show:
        wanted = {n.split(" ")[0] for m in survivors for n in survivors[m]}
        lines = changed_lines(wanted) if diff else {}
        for module in sorted(survivors):
            if prefixes and not any(module.startswith(p) for p in prefixes):
                continue
            for name in survivors[module]:
                print(f"{name}  {lines.get(name.split(' ')[0], '')}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
