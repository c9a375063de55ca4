"""Helpers shared by the ``qrvae`` command lines: the one-line parser, common options and one-line errors.

Used by :mod:`monai_qrvae.cli`, :mod:`monai_qrvae.cli.calibrate`, :mod:`monai_qrvae.cli.data`,
:mod:`monai_qrvae.cli.experiments` and :mod:`monai_qrvae.cli.raw`. Errors in the input are printed as one line
(``<prog>: error: <what>``) without a stack trace, and the command returns exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from monai_qrvae.defaults import THRESHOLD_CHOICES
from monai_qrvae.logging_utils import progress_enabled

__all__ = [
    "OneLineArgumentParser",
    "POST_ARGS",
    "add_common_options",
    "add_device_option",
    "add_post_options",
    "arg_values",
    "print_json",
    "run_command",
    "show_progress",
]

#: the post-processing options of ``evaluate``/``infer`` (see :func:`add_post_options`), as namespace attributes.
POST_ARGS = ("alpha", "per", "median_size", "min_size", "score_median", "threshold")


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit status 2), like the other errors.

    argparse prints the usage and then the error on a second line; ``qrvae`` prints
    ``qrvae <command>: error: <what>; see 'qrvae <command> --help'`` instead.
    """

    def error(self, message: str) -> NoReturn:
        """Print one line naming the program and the problem, then exit with status 2."""
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'.\n")


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device`` (default ``cpu``)."""
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def add_common_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--no-progress``."""
    add_device_option(p)
    p.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (shown only when stderr is a terminal)"
    )


def add_post_options(p: argparse.ArgumentParser) -> None:
    """The lesion-mask options: ``--threshold --alpha --per --score-median --median-size --min-size``."""
    p.add_argument(
        "--threshold",
        choices=THRESHOLD_CHOICES,
        default="conformal",
        help="label-free threshold: 'conformal' (default; Benjamini-Hochberg on p-values calibrated on healthy scans, "
        "calibration.pt beside the model), 'volume' (at most --alpha of healthy volumes get any detection), "
        "'lesion' (Benjamini-Hochberg over candidate lesions: at most --alpha of reported lesions false, on average), "
        "'lesion-volume' (at most --alpha of healthy volumes get any lesion) or "
        "'gaussian' (the paper's N(0, 1) p-values, no calibration needed)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="false discovery rate (conformal, gaussian, lesion) or share of healthy volumes with a detection (volume, "
        "lesion-volume); 0.05",
    )
    p.add_argument("--per", choices=("volume", "slice"), default="volume", help="FDR per volume or per slice")
    p.add_argument(
        "--score-median",
        type=int,
        default=None,
        help="in-plane median filter of the z-map (1 = off; default: the method's, chosen on the tuning split)",
    )
    p.add_argument("--median-size", type=int, default=1, help="median filter of the lesion mask (1 = off)")
    p.add_argument("--min-size", type=int, default=0, help="drop lesion components smaller than this (voxels)")


def arg_values(args: argparse.Namespace, *names: str, **renamed: str) -> dict[str, Any]:
    """Keyword arguments from parsed options: ``{name: args.name}``, and ``{key: args.<attr>}`` for ``key=attr``.

    Example: ``train(**arg_values(args, "lr", "seed", n_healthy="healthy"))``.
    """
    return {**{n: getattr(args, n) for n in names}, **{k: getattr(args, a) for k, a in renamed.items()}}


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: not with ``--no-progress``, and only when stderr is a terminal."""
    return progress_enabled(not args.no_progress)


def print_json(result: Any) -> int:
    """Print ``result`` as indented JSON on stdout; returns 0, the handler's exit status."""
    print(json.dumps(result, indent=2))
    return 0


def run_command(
    args: argparse.Namespace,
    prog: str,
    errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError),
    debug: bool = False,
    one_line: bool = True,
    resume_hint: bool = False,
) -> int:
    """Run ``args.func(args)`` and turn the input errors into one message on stderr and exit status 2.

    Args:
        args: the parsed namespace; ``args.func`` is the sub-command's handler.
        prog: names the command in the message, e.g. ``"qrvae train"``.
        errors: the exception types reported as input errors.
        debug: re-raise them instead (full stack trace).
        one_line: squeeze the message's whitespace and line breaks into single spaces.
        resume_hint: on Ctrl-C print that the same command resumes, and return 130 (else Ctrl-C propagates).

    Returns:
        The handler's exit status (0 when it returns ``None``), 2 for an input error, 130 when interrupted.
    """
    try:
        return int(args.func(args) or 0)
    except errors as e:
        if debug:
            raise
        message = " ".join(str(e).split()) if one_line else str(e)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not resume_hint:
            raise
        print(f"{prog}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
