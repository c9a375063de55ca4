"""Run the benchmarks and write ``docs/benchmarks.md``: ``make bench`` / ``python -m benchmarks.run_all``.

The default set (training, inference, memory, scaling, thread settings, speed-ups) takes about 10 minutes on 2 busy
cores. ``--compile`` adds the ``torch.compile`` comparison (minutes of compiling). Detection quality is not a speed
benchmark: ``qrvae sweep`` (tuning split) and ``qrvae benchmark`` (test split) produce it, see docs/benchmarks.md.
``--only`` picks benchmarks by name. Each benchmark replaces its own section of the report and keeps the others.

Examples::

    python -m benchmarks.run_all                       # default set
    python -m benchmarks.run_all --quick --no-doc      # smoke test, report untouched
    python -m benchmarks.run_all --only training inference
    python -m benchmarks.run_all --assemble            # rebuild the report from outputs/bench/results/*.json
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable, Sequence

from benchmarks import (
    bench_compile,
    bench_inference,
    bench_memory,
    bench_scaling,
    bench_speedups,
    bench_threads,
    bench_training,
)
from benchmarks.cli import add_common_args, context_from_args
from benchmarks.context import Context
from benchmarks.report import Section, save_section, update_doc

BENCHMARKS: dict[str, Callable[[Context], Section]] = {
    "training": bench_training.run,
    "inference": bench_inference.run,
    "memory": bench_memory.run,
    "scaling": bench_scaling.run,
    "threads": bench_threads.run,
    "speedups": bench_speedups.run,
    "compile": bench_compile.run,
}
DEFAULT = ("training", "inference", "memory", "scaling", "threads", "speedups")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--compile", action="store_true", help="also run the torch.compile benchmark (slow)")
    parser.add_argument("--assemble", action="store_true", help="only rebuild the report from the saved results")
    return parser


def assemble(ctx: Context) -> None:
    """Rebuild the report's sections from ``work_dir/results/*.json``."""
    sections = []
    for path in sorted((ctx.work_dir / "results").glob("*.json")):
        d = json.loads(path.read_text())
        sections.append(Section(**d))
    if ctx.doc is not None and sections:
        update_doc(ctx.doc, sections)
        print(f"[bench] {ctx.doc} rebuilt from {len(sections)} section(s)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = context_from_args(args)
    if args.assemble:
        assemble(ctx)
        return 0
    names = list(args.only or DEFAULT)
    if not args.only:
        names += ["compile"] * args.compile
    start = time.perf_counter()
    failed = []
    for name in names:
        print(f"\n[bench] ===== {name} =====", flush=True)
        try:
            save_section(BENCHMARKS[name](ctx), ctx)
        except Exception:  # noqa: BLE001 - one failing benchmark must not lose the others' results
            traceback.print_exc()
            failed.append(name)
    print(f"\n[bench] done in {time.perf_counter() - start:.0f} s" + (f"; FAILED: {failed}" if failed else ""))
    if ctx.doc is not None:
        print(f"[bench] report: {ctx.doc}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
