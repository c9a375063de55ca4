"""Command line of the single benchmarks (``python -m benchmarks.<module>``) and the options ``run_all`` shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks.context import DEFAULT_DOC, DEFAULT_WORK_DIR, Context
from benchmarks.report import Section, save_section

__all__ = ["add_common_args", "context_from_args", "standalone"]


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options shared by every benchmark's command line."""
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="scratch folder (outputs/bench)")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="report to update (docs/benchmarks.md)")
    parser.add_argument("--no-doc", action="store_true", help="print only, do not update the report")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per case (5)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    return parser


def context_from_args(args: argparse.Namespace) -> Context:
    """A :class:`Context` from :func:`add_common_args` options (also applies ``--threads``)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    return Context(work_dir=args.work_dir, doc=None if args.no_doc else args.doc, repeats=repeats, quick=args.quick)


def standalone(name: str, run: Callable[[Context], Section], argv: Sequence[str] | None = None) -> Section:
    """``python -m benchmarks.<module>``: parse the common options, run, print and save."""
    parser = add_common_args(argparse.ArgumentParser(prog=f"python -m benchmarks.{name}"))
    args = parser.parse_args(argv)
    ctx = context_from_args(args)
    section = run(ctx)
    save_section(section, ctx)
    return section
