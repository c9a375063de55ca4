"""Mutation score per module from mutmut's results (``mutants/**/*.py.meta``), for ``make mutation``.

``python tools/mutation_score.py [--survivors] [--diff] [--markdown] [MODULE_PREFIX ...]``: one line per mutated
module (killed, survived, no tests, timeout, equivalent survivors, score = killed (+ timeouts) / checked mutants, and
the score of the non-equivalent ones), then the total; ``--survivors`` also lists every surviving mutant with its
category, ``--diff`` with the line it changes (``mutmut show NAME`` prints the whole diff); ``--markdown`` writes
the docs/testing.md section. Mutants not checked (a run restricted to some modules) are left out.

A survivor counts as equivalent only when a rule proves or accepts it (a device or dtype argument, MetaTensor
tracking, display rounding, or a dropped keyword argument whose literal value equals the callee's default, checked
on the callee's signature), or when it is reviewed one by one in ``tools/mutation_equivalents.toml``, with its
reason. Every other survivor is a gap.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import importlib
import inspect
import json
import re
import sys
import textwrap
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

KILLED = {1, 3, 37}  # a failing test, pytest's internal error on the mutant, caught by the type checker
TIMEOUT = {24, -24, 36, 152, 255}  # a mutant that hangs is caught: the run would never finish
SURVIVED = {0}
NO_TESTS = {5, 33}
EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.toml")


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


def _functions(root: Path, wanted: set[str] | None) -> dict[str, tuple[str, str, str]]:
    """``{mutant name: (module, original function source, mutated function source)}`` from the mutated copies (each
    mutant is a function beside its ``__mutmut_orig``), the original renamed like the mutant."""
    out: dict[str, tuple[str, str, str]] = {}
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
            orig = functions.get(f"{stem}__mutmut_orig", "").replace(f"{stem}__mutmut_orig", name)
            out[f"{module}.{name}"] = (module, orig, source)
    return out


def _change(orig: str, mutated: str) -> str:
    """``"old line -> new line"``: the first lines that differ."""
    a, b = orig.splitlines(), mutated.splitlines()
    change = next(
        (op for op in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes() if op[0] != "equal"), None
    )
    if change is None:
        return ""
    _, i1, i2, j1, j2 = change
    return " / ".join(line.strip() for line in a[i1:i2]) + "  ->  " + " / ".join(line.strip() for line in b[j1:j2])


def _dropped_keyword(orig: str, mutated: str) -> tuple[ast.Call, ast.keyword] | None:
    """The call and the keyword argument a mutant removed, when that is its whole change (else None)."""
    try:
        a, b = ast.parse(textwrap.dedent(orig)), ast.parse(textwrap.dedent(mutated))
    except SyntaxError:
        return None
    calls_a = [n for n in ast.walk(a) if isinstance(n, ast.Call)]
    calls_b = [n for n in ast.walk(b) if isinstance(n, ast.Call)]
    if len(calls_a) != len(calls_b):
        return None
    found = None
    for ca, cb in zip(calls_a, calls_b):
        if ast.dump(ca) == ast.dump(cb):
            continue
        kept = [ast.dump(k) for k in cb.keywords]
        gone = [k for k in ca.keywords if ast.dump(k) not in kept]
        same_rest = ast.dump(ca.func) == ast.dump(cb.func) and [ast.dump(x) for x in ca.args] == [
            ast.dump(x) for x in cb.args
        ]
        if len(gone) == 1 and len(cb.keywords) == len(ca.keywords) - 1 and same_rest:
            # the innermost differing call is the mutated one (ast.walk is breadth first: outer calls differ too)
            found = (ca, gone[0])
    return found


def _callee(module: str, mutant: str, func: ast.expr) -> Any:
    """The object a call's ``func`` names in the mutated module (``self.x`` in a method: the class's ``x``)."""
    mod = importlib.import_module(module)
    parts: list[str] = []
    node = func
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise LookupError("not a dotted name")
    if node.id == "self":
        cls = mutant.rpartition(".")[2].split("\u01c1")[1]
        obj: Any = getattr(mod, cls)
    else:
        obj = getattr(mod, node.id) if hasattr(mod, node.id) else getattr(builtins, node.id)
    for part in parts:
        obj = getattr(obj, part)
    return obj


def verified_default(module: str, mutant: str, orig: str, mutated: str) -> bool:
    """Whether a mutant only drops a keyword argument whose literal value equals the callee's own default, checked
    on the callee's signature (such a mutant is equivalent: the call is unchanged)."""
    dropped = _dropped_keyword(orig, mutated)
    if dropped is None or dropped[1].arg is None:
        return False
    call, keyword = dropped
    try:
        value = ast.literal_eval(keyword.value)
        parameter = inspect.signature(_callee(module, mutant, call.func)).parameters[keyword.arg]
    except Exception:  # not a literal, a callee without a signature, an unknown parameter: not verified
        return False
    default = parameter.default
    return default is not inspect.Parameter.empty and type(default) is type(value) and default == value


def _load_equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """``{mutant name: why it is equivalent or accepted}`` from the reviewed list."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for group in tomllib.loads(path.read_text()).get("group", []):
        for name in group["mutants"]:
            out[name] = group["why"]
    return out


#: why a surviving mutant may be left alive, by what its change touches (first match wins); what no rule and no
#: reviewed entry of tools/mutation_equivalents.toml covers is a gap
CATEGORIES = [
    ("device", r"device|\.to\(None\)", "accepted: where a tensor lives (the tests run on one CPU device)"),
    (
        "dtype",
        r"dtype|float64|float32|\.double|\.float",
        "accepted: working precision only (the values agree to the checked tolerance)",
    ),
    ("metatensor", r"track_meta", "equivalent: MetaTensor or plain tensor, same values"),
    ("rounding", r"round\(", "accepted: digits of a displayed (rounded) value"),
]
REASONS = {
    **{name: reason for name, _, reason in CATEGORIES},
    "default": "equivalent: drops a keyword argument equal to the callee's default (checked on its signature)",
    "reviewed": "equivalent or accepted, reviewed one by one (tools/mutation_equivalents.toml gives each one's reason)",
    "gap": "not killed: a behaviour no fast test checks",
}


def _fragments(change: str) -> str:
    """The characters a mutant changes, with a little context on each side."""
    old, _, new = change.partition("  ->  ")
    parts = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag != "equal":
            parts += [old[max(0, i1 - 12) : i2 + 3], new[max(0, j1 - 12) : j2 + 3]]
    return " ".join(parts)


def category(change: str, name: str = "", sources: tuple[str, str, str] | None = None) -> str:
    """Why a survivor may stay alive: a reviewed entry, a rule on its changed text, a verified default; else gap."""
    if name in _EQUIVALENTS:
        return "reviewed"
    fragment = _fragments(change)
    for label, pattern, _ in CATEGORIES:
        if re.search(pattern, fragment):
            return label
    if sources is not None and verified_default(sources[0], name, sources[1], sources[2]):
        return "default"
    return "gap"


_EQUIVALENTS = _load_equivalents()


#: rule categories whose survivors are equivalent (no input tells them apart); the others are accepted: a difference
#: exists (another device or precision, a display digit) but the tests do not check it on purpose
EQUIVALENT_RULES = ("metatensor", "default")


def is_equivalent(label: str, name: str) -> bool:
    """Whether a classified survivor is equivalent (not merely accepted): an equivalent rule, or a reviewed entry whose
    reason starts with "equivalent:"."""
    if label == "reviewed":
        return _EQUIVALENTS[name].startswith("equivalent:")
    return label in EQUIVALENT_RULES


def classify(prefixes: list[str] = ()) -> tuple[dict[str, Counter], dict[str, list[tuple[str, str, str]]], dict]:
    """Counts per module, the survivors by category (``(name, module, change)``) and the no-tests functions."""
    counts, survivors = scores()
    counts = {m: c for m, c in counts.items() if not prefixes or any(m.startswith(p) for p in prefixes)}
    wanted = {n.split(" ")[0] for m in counts for n in survivors.get(m, [])}
    sources = _functions(Path("mutants"), wanted)
    by_category: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    no_tests: dict[str, Counter] = defaultdict(Counter)
    for module in sorted(counts):
        for entry in survivors.get(module, []):
            name, outcome = entry.split(" ", 1)
            if "no tests" in outcome:
                function = name.rpartition("__mutmut_")[0].rpartition(".")[2].lstrip("x").lstrip("_").replace("ǁ", ".")
                no_tests[module][function] += 1
                continue
            src = sources.get(name)
            change = _change(src[1], src[2]) if src else ""
            by_category[category(change, name, src)].append((name, module, change))
    return counts, by_category, no_tests


def markdown(prefixes: list[str]) -> str:
    """The score table and every survivor by category (for docs/testing.md)."""
    counts, by_category, no_tests = classify(prefixes)
    equivalent_by_module: Counter = Counter(
        module for label, rows in by_category.items() for name, module, _ in rows if is_equivalent(label, name)
    )
    rows = [
        "| module | killed | survived | no tests | timeout | equivalent | score | score of non-equivalent |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total: Counter = Counter()
    for module in sorted(counts):
        c = counts[module]
        if not sum(c.values()):
            continue
        total.update(c)
        killed, eq = c["killed"] + c["timeout"], equivalent_by_module[module]
        rows.append(
            f"| `{module}` | {c['killed']} | {c['survived']} | {c['no tests']} | {c['timeout']} | {eq} | "
            f"{killed / sum(c.values()):.1%} | {killed / max(1, sum(c.values()) - eq):.1%} |"
        )
    killed, eq = total["killed"] + total["timeout"], sum(equivalent_by_module.values())
    checked = sum(total.values())
    rows.append(
        f"| total | {total['killed']} | {total['survived']} | {total['no tests']} | {total['timeout']} | {eq} | "
        f"{killed / max(1, checked):.1%} | {killed / max(1, checked - eq):.1%} |"
    )
    gaps = len(by_category.get("gap", []))
    untested = sum(sum(c.values()) for c in no_tests.values())
    rows += [
        "",
        f"Of the {checked - eq} non-equivalent mutants, {killed} are killed ({killed / max(1, checked - eq):.1%}); "
        f"{checked - eq - killed - gaps - untested} survive but are accepted (below: another device or precision, a "
        f"display digit, a message), {gaps} survive as gaps and {untested} sit in functions that no fast test calls.",
    ]
    out = rows + [""]
    for label in [c[0] for c in CATEGORIES] + ["default", "reviewed", "gap"]:
        entries = by_category.get(label, [])
        if not entries:
            continue
        out += [f"**{label}** ({len(entries)}): {REASONS[label]}", ""]
        if label == "reviewed":
            out += ["| mutant | change | why |", "|---|---|---|"]
        else:
            out += ["| mutant | change |", "|---|---|"]
        for name, module, change in entries:
            cell = change.replace("|", "\\|")  # a table cell
            why = " " + _EQUIVALENTS[name].replace("|", "\\|") + " |" if label == "reviewed" else ""
            out.append(f"| `{name.rpartition('.')[2]}` ({module}) | `{cell}` |{why}")
        out.append("")
    if no_tests:
        out += ["**no tests**: functions that no fast test calls (only slow tests run them, or none):", ""]
        for module in sorted(no_tests):
            funcs = ", ".join(f"`{f}` ({n})" for f, n in sorted(no_tests[module].items()))
            out.append(f"- `{module}`: {funcs}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    prefixes = [a for a in argv if not a.startswith("--")]
    if "--markdown" in argv:
        print(markdown(prefixes))
        return 0
    diff = "--diff" in argv
    show = "--survivors" in argv or diff
    counts, by_category, no_tests = classify(prefixes)
    eq_by_module: Counter = Counter(
        m for label, rows in by_category.items() for name, m, _ in rows if is_equivalent(label, name)
    )
    total: Counter = Counter()
    head = ("module", "killed", "survived", "no tests", "timeout", "equiv.", "score", "non-eq.")
    print(f"{head[0]:48s} " + " ".join(f"{h:>8s}" for h in head[1:]))
    for module in sorted(counts):
        c = counts[module]
        checked = sum(c.values())
        if not checked:
            continue
        total.update(c)
        killed, eq = c["killed"] + c["timeout"], eq_by_module[module]
        print(
            f"{module:48s} {c['killed']:8d} {c['survived']:8d} {c['no tests']:8d} {c['timeout']:8d} {eq:8d} "
            f"{killed / checked:8.1%} {killed / max(1, checked - eq):8.1%}"
        )
    checked, eq = sum(total.values()), sum(eq_by_module.values())
    if checked:
        killed = total["killed"] + total["timeout"]
        print(
            f"{'total':48s} {total['killed']:8d} {total['survived']:8d} {total['no tests']:8d} {total['timeout']:8d} "
            f"{eq:8d} {killed / checked:8.1%} {killed / max(1, checked - eq):8.1%}"
        )
    surviving = {name for rows in by_category.values() for name, _, _ in rows}
    stale = sorted(n for n in _EQUIVALENTS if n not in surviving and any(n.startswith(m + ".") for m in counts))
    for name in stale:  # killed since it was reviewed, or renamed by a change of its function
        print(f"note: {name} is reviewed in {EQUIVALENTS.name} but no longer survives", file=sys.stderr)
    if show:
        for label in sorted(by_category):
            for name, _, change in by_category[label]:
                print(f"[{label}] {name}  {change if diff else ''}".rstrip())
        for module in sorted(no_tests):
            for function, n in sorted(no_tests[module].items()):
                print(f"[no tests] {module}.{function}: {n} mutants")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
