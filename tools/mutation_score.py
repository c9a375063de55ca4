"""Mutation score per module from mutmut's results (``mutants/**/*.py.meta``), for ``make mutation``.

``python tools/mutation_score.py [--survivors] [MODULE_PREFIX ...]``: one line per mutated module (killed, survived,
no tests, timeout, score = killed (+ timeouts) / checked mutants), then the total; ``--survivors`` also lists every
surviving mutant (``mutmut show NAME`` prints its diff). Mutants not checked (a run restricted to some modules)
are left out.
"""

from __future__ import annotations

import json
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


def main(argv: list[str]) -> int:
    show = "--survivors" in argv
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
        for module in sorted(survivors):
            if prefixes and not any(module.startswith(p) for p in prefixes):
                continue
            for name in survivors[module]:
                print(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
