"""Command-line subcommands of the data module: ``make-data``, ``make-datalist``, ``check-datalist``, ``montage``.

The ``qrvae`` console script registers them with :func:`add_parsers`; each parser sets ``func`` (a ``run_*``
function taking the parsed ``argparse.Namespace`` and returning 0; it raises ``FileNotFoundError``/``ValueError``
with a message naming the file, for the caller to print). :func:`main` runs them on their own::

    python -m monai_qrvae.cli.data make-data --out data/synthetic --healthy 61 --lesion 20 --seed 1 --spacing 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_qrvae.cli.utils import arg_values, run_command

__all__ = [
    "add_parsers",
    "build_parser",
    "main",
    "run_make_data",
    "run_make_datalist",
    "run_check_datalist",
    "run_montage",
    "main_make_data",
    "main_make_datalist",
    "main_montage",
]


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in counts.items())


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_make_data(args: argparse.Namespace) -> int:
    from monai_qrvae.data.synthetic import make_cohort

    start = time.perf_counter()
    counts = {f"n_{k}": k for k in ("healthy", "lesion", "validation", "calibration", "test_healthy", "tuning")}
    path = make_cohort(args.out, **arg_values(args, "seed", "spacing", "subtle_fraction", "lesion_kind", **counts))
    seconds = time.perf_counter() - start
    size = _dir_size(Path(args.out)) / 2**20
    counts = json.loads(path.read_text())["metadata"]["counts"]
    print(
        f"wrote {args.healthy} healthy + {args.lesion} lesion subjects to {args.out} "
        f"({size:.1f} MiB, {seconds:.1f} s); datalist: {path} ({_format_counts(counts)})"
    )
    if args.montage:
        from monai_qrvae.data.montage import subject_montage
        from monai_qrvae.data.synthetic import subject_name

        n_total = args.healthy + args.lesion
        index = args.healthy if args.lesion else 0
        png = subject_montage(Path(args.out) / subject_name(index, n_total), Path(args.out) / "montage.png")
        print(f"montage: {png}")
    if args.raw:  # raw-like T1/T2/FLAIR series (head, own grids, motion, bias) of the test subjects
        from monai_qrvae.raw.synthetic import make_raw_cohort

        test = json.loads(path.read_text())["test"]
        subjects = [Path(item["image"]).parent.name for item in test]
        print(f"raw-like series: {make_raw_cohort(path, subjects=subjects)}")
    return 0


def run_make_datalist(args: argparse.Namespace) -> int:
    from monai_qrvae.data.datalist import DATALIST_SECTIONS, make_datalist

    options = ("brain_mask", "label", "section", "val_fraction", "seed", "skip_incomplete", "update")
    split_options = ("section", "val_fraction", "seed", "skip_incomplete", "update")
    if getattr(args, "bids", None):  # a BIDS dataset (monai_qrvae.io.bids, pybids)
        if args.root or args.image:
            raise ValueError("give either --bids ROOT or --root with --image patterns, not both.")
        from monai_qrvae.io.bids import make_bids_datalist

        datalist = make_bids_datalist(
            args.bids,
            args.out,
            label_pattern=args.label_pattern,
            group_column=args.group_column,
            **arg_values(args, *split_options, "calibration_fraction", "test_healthy_fraction"),
            check=not args.no_check,
        )
        counts = {k: len(datalist[k]) for k in DATALIST_SECTIONS if k in datalist}
        print(f"wrote {args.out} ({_format_counts(counts)})")
        return 0
    if not args.root or not args.image:
        raise ValueError("make-datalist needs --root and --image patterns (or --bids ROOT).")
    datalist = make_datalist(
        args.root,
        args.image[0] if len(args.image) == 1 else args.image,
        args.out,
        **arg_values(args, *options, "calibration_fraction", "test_healthy_fraction", num_channels="channels"),
        check=not args.no_check,
    )
    counts = {k: len(datalist[k]) for k in DATALIST_SECTIONS if k in datalist}
    print(f"wrote {args.out} ({_format_counts(counts)})")
    return 0


def run_check_datalist(args: argparse.Namespace) -> int:
    from monai_qrvae.data.datalist import (
        DATALIST_SECTIONS,
        JOB_SECTIONS,
        load_datalist,
        require_sections,
        section_counts,
    )

    counts = section_counts(args.datalist)
    print(f"{args.datalist}: " + _format_counts(counts))
    required: list[str] = []
    for job in args.job or []:
        require_sections(args.datalist, job=job)
        required += [s for s in JOB_SECTIONS[job] if s not in required]
    if args.section:
        require_sections(args.datalist, args.section)
        sections = list(args.section)
    else:
        sections = [s for s in DATALIST_SECTIONS if s in counts]
        missing = [s for s in DATALIST_SECTIONS if s not in counts]
        if missing:
            print(f"note: no {', '.join(repr(s) for s in missing)} section(s); expected {list(DATALIST_SECTIONS)}")
    for section in sections:
        items = load_datalist(args.datalist, section, num_channels=args.channels, read_data=args.read_data)
        strata: dict[str, int] = {}
        for item in items:
            strata[str(item.get("stratum", "-"))] = strata.get(str(item.get("stratum", "-")), 0) + 1
        detail = "" if list(strata) == ["-"] else " (" + _format_counts(strata) + ")"
        print(f"{section}: {len(items)} entries OK{detail}")
    return 0


def run_montage(args: argparse.Namespace) -> int:
    from monai_qrvae.data.montage import save_montage, subject_montage

    if args.subject is not None:
        png = subject_montage(args.subject, args.out, levels=args.levels)
    elif args.image:
        if args.out is None:
            raise ValueError("--out is required with --image.")
        png = save_montage(
            args.image[0] if len(args.image) == 1 else args.image,
            args.out,
            label=args.label,
            brain_mask=args.brain_mask,
            levels=args.levels,
            title=args.title,
        )
    else:
        raise ValueError("give --subject DIR (a folder written by make-data) or --image FILE [FILE ...].")
    print(f"wrote {png}")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``make-data``, ``make-datalist``, ``check-datalist`` and ``montage`` on an argparse subparsers
    object (from ``parser.add_subparsers()``); each sets ``func`` to its ``run_*`` function."""
    p = subparsers.add_parser(
        "make-data",
        help="write the synthetic T1/T2/FLAIR cohort (healthy + lesion subjects) and its datalist",
        description="Render synthetic skull-stripped T1/T2/FLAIR subjects from nilearn's MNI152 2009 template "
        "(no download) and write NIfTI files plus OUT/datalist.json.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--healthy",
        type=int,
        default=61,
        help="healthy subjects in total (training/validation/calibration/healthy test; default 61 = 30/6/20/5)",
    )
    p.add_argument("--lesion", type=int, default=20, help="lesion subjects in total (test first, then tuning; 20)")
    p.add_argument("--validation", type=int, default=None, help="healthy subjects in validation (default 10 %%)")
    p.add_argument("--calibration", type=int, default=None, help="healthy subjects in calibration (default 33 %%)")
    p.add_argument("--test-healthy", type=int, default=None, help="healthy subjects in test (default 9 %%)")
    p.add_argument("--tuning", type=int, default=None, help="lesion subjects in tuning (default half, rounded down)")
    p.add_argument(
        "--subtle-fraction", type=float, default=0.3, help="share of each lesion split with faint lesions only (0.3)"
    )
    p.add_argument(
        "--lesion-kind",
        default="ms",
        choices=("ms", "tumour"),
        help="lesion subjects: ms (default; 3-15 MS-like white-matter lesions) or tumour (one 20-150 mL glioma/"
        "metastasis-like mass with oedema, optional necrosis and mass effect; stratum 'tumour')",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1); same seed, same bytes")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm (default 2)")
    p.add_argument("--montage", action="store_true", help="also write OUT/montage.png of the first lesion subject")
    p.add_argument(
        "--raw",
        action="store_true",
        help="also write the test subjects as raw-like T1/T2/FLAIR series with skull, own grids and motion "
        "(OUT/raw/, raw_datalist.json, true transforms and brain masks; see docs/raw.md)",
    )
    p.set_defaults(func=run_make_data)

    p = subparsers.add_parser(
        "make-datalist",
        help="build a Decathlon-style datalist from a folder of scans by file-name patterns",
        description="Patterns are relative to --root and contain {subject} (e.g. '{subject}/{subject}_flair.nii.gz') "
        "and optionally glob wildcards. Give one --image pattern per contrast (T1 T2 FLAIR) or one for a 4D file. "
        "NIfTI, NRRD and MetaImage (.mha/.mhd) files are accepted.",
    )
    p.add_argument("--root", default=None, help="folder holding the scans (required unless --bids)")
    p.add_argument(
        "--image", default=None, nargs="+", help="image pattern(s): one 4D file, or T1 T2 FLAIR files (unless --bids)"
    )
    p.add_argument(
        "--bids",
        default=None,
        metavar="ROOT",
        help="a BIDS dataset instead of patterns: sub-*/[ses-*/]anat/*_T1w, _T2w, _FLAIR (pybids; the bids extra)",
    )
    p.add_argument(
        "--label-pattern",
        default=None,
        help="with --bids: lesion label file under ROOT, with {subject} (and {session}), e.g. "
        "'derivatives/lesions/sub-{subject}/anat/sub-{subject}_desc-lesion_mask.nii.gz'; a subject with one is a "
        "lesion subject",
    )
    p.add_argument(
        "--group-column",
        default="group",
        help="with --bids: participants.tsv column telling healthy (control/healthy/HC) from lesion subjects",
    )
    p.add_argument("--brain-mask", default=None, help="brain-mask pattern")
    p.add_argument(
        "--label", default=None, help="lesion-label pattern (in auto, labelled subjects go to 'test'/'tuning')"
    )
    p.add_argument("--out", required=True, help="the JSON file to write (paths relative to its folder)")
    p.add_argument(
        "--section",
        default="auto",
        choices=("auto", "training", "validation", "calibration", "tuning", "test"),
        help="where subjects go; auto (default): unlabelled -> training/validation/calibration/test, labelled -> "
        "test (half, rounded up)/tuning, shuffled with --seed",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of unlabelled subjects in validation")
    p.add_argument(
        "--calibration-fraction", type=float, default=0.33, help="share of unlabelled subjects in calibration (auto)"
    )
    p.add_argument(
        "--test-healthy-fraction", type=float, default=0.09, help="share of unlabelled subjects in test (auto)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split shuffles")
    p.add_argument("--channels", type=int, default=3, help="channels each image must have (default 3)")
    p.add_argument("--no-check", action="store_true", help="do not read the files' headers")
    p.add_argument("--skip-incomplete", action="store_true", help="leave out subjects with a missing file")
    p.add_argument("--update", action="store_true", help="merge into an existing --out (replacing its sections)")
    p.set_defaults(func=run_make_datalist)

    p = subparsers.add_parser(
        "check-datalist",
        help="check that every file of a datalist exists, is readable and has the right channels and grid",
    )
    p.add_argument("datalist", help="the JSON file")
    p.add_argument("--section", nargs="*", default=None, help="sections to check, required (default: all present)")
    p.add_argument(
        "--job",
        nargs="*",
        default=None,
        choices=("train", "calibrate", "tune", "evaluate"),
        help="require the sections these jobs need (train: training+validation, calibrate: calibration, tune: "
        "tuning, evaluate: test)",
    )
    p.add_argument("--channels", type=int, default=3, help="channels each image must have (default 3)")
    p.add_argument("--read-data", action="store_true", help="read every voxel (finds truncated files; slower)")
    p.set_defaults(func=run_check_datalist)

    p = subparsers.add_parser(
        "montage",
        help="PNG montage of one subject: each contrast at a few axial levels, lesion outline in red",
    )
    p.add_argument("--subject", default=None, help="a subject folder written by make-data")
    p.add_argument("--image", nargs="+", default=None, help="one 4D file or one file per contrast")
    p.add_argument("--label", default=None, help="lesion label file (outlined)")
    p.add_argument("--brain-mask", default=None, help="brain mask file (windowing and levels)")
    p.add_argument("--out", default=None, help="PNG path (default SUBJECT/montage.png with --subject)")
    p.add_argument("--levels", type=int, default=5, help="number of axial levels (default 5)")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(func=run_montage)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with only the data subcommands."""
    parser = argparse.ArgumentParser(prog="qrvae", description="monai-qrvae data tools")
    parser.add_argument("--debug", action="store_true", help="show full stack traces")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one data subcommand, e.g. ``main(["make-data", "--out", "data"])``; returns the exit code.

    Like ``qrvae``: a missing file or a bad value prints one line (``qrvae CMD: error: ...``) and returns 2;
    ``--debug`` shows the full trace instead.
    """
    args = build_parser().parse_args(argv)
    return run_command(args, f"qrvae {args.command}", (FileNotFoundError, ValueError), debug=args.debug, one_line=False)


def main_make_data(argv: Sequence[str] | None = None) -> int:
    """``qrvae make-data`` with its own arguments, e.g. ``main_make_data(["--out", "data"])``."""
    return main(["make-data", *(sys.argv[1:] if argv is None else argv)])


def main_make_datalist(argv: Sequence[str] | None = None) -> int:
    """``qrvae make-datalist`` with its own arguments."""
    return main(["make-datalist", *(sys.argv[1:] if argv is None else argv)])


def main_montage(argv: Sequence[str] | None = None) -> int:
    """``qrvae montage`` with its own arguments."""
    return main(["montage", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
