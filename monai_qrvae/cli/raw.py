"""Sub-commands for raw series: ``qrvae preprocess`` and the raw options the lead wires into ``infer``/``make-data``.

Each builder adds its parser to an ``argparse`` sub-parser set and sets ``func`` (a ``run_*`` function taking the
parsed namespace, returning 0). Input errors are :class:`~monai_qrvae.raw.errors.RawInputError` (a ``ValueError``)
or :class:`~monai_qrvae.raw.errors.MissingSeriesError` (also a ``FileNotFoundError``), which ``qrvae`` prints as one
line with exit status 2. Stand-alone: ``python -m monai_qrvae.cli.raw preprocess --t1 ... --out DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from monai_qrvae.cli.utils import POST_ARGS, print_json, run_command

__all__ = [
    "add_preprocess_parser",
    "add_infer_raw_parser",
    "add_raw_data_parser",
    "add_raw_series_arguments",
    "add_dicom_out_argument",
    "run_preprocess",
    "run_infer_raw",
    "run_make_raw_data",
    "build_parser",
    "main",
]


def add_raw_series_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--t1 --t2 --flair`` (the three raw series) and ``--no-alignment-check``."""
    p.add_argument(
        "--t1", required=required, help="T1-weighted series (NIfTI file or DICOM series folder), with skull, any grid"
    )
    p.add_argument("--t2", required=required, help="T2-weighted series (NIfTI file or DICOM series folder)")
    p.add_argument(
        "--flair", required=required, help="FLAIR series (NIfTI file or DICOM folder); maps are written on its grid"
    )
    p.add_argument(
        "--no-alignment-check",
        action="store_true",
        help="do not refuse a T2/FLAIR series whose found pose is not a similarity peak (alignment check; docs/raw.md)",
    )


def add_dicom_out_argument(p: argparse.ArgumentParser) -> None:
    """``--dicom-out``: lesion mask as DICOM SEG and z-map as Parametric Map (automatic for a DICOM FLAIR)."""
    p.add_argument(
        "--dicom-out",
        action="store_true",
        help="also write the lesion mask as DICOM SEG and the z-map as a DICOM Parametric Map referencing the FLAIR "
        "series (automatic when --flair is a DICOM folder; needs the dicom extra)",
    )


def _add_preprocess_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-mm", type=float, default=2.0, help="voxel size the registrations work on (2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for brain extraction (default: torch's)")
    p.add_argument(
        "--mask-erosion-mm",
        type=float,
        default=2.0,
        help="analyse the extracted brain without its outer shell of this thickness in mm (2; 0 = whole mask)",
    )


def _preprocess_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "work_mm": getattr(args, "work_mm", 2.0),
        "threads": getattr(args, "threads", None),
        "mask_erosion_mm": getattr(args, "mask_erosion_mm", 2.0),
        "alignment_check": not getattr(args, "no_alignment_check", False),
    }


def run_preprocess(args: argparse.Namespace) -> int:
    """Handler of ``qrvae preprocess``."""
    from monai_qrvae.raw.preprocess import preprocess

    try:
        result = preprocess(args.t1, args.t2, args.flair, args.out, **_preprocess_kwargs(args))
    except ImportError as e:  # the raw extra is missing: one line (qrvae maps RuntimeError to exit status 2)
        raise RuntimeError(str(e)) from e
    summary = {k: result[k] for k in ("similarity", "brain_volume_ml", "analysed_volume_ml", "timing", "files")}
    return print_json(summary)


def add_preprocess_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``preprocess --t1 T1 --t2 T2 --flair FLAIR --out DIR`` to ``subparsers``."""
    p = subparsers.add_parser(
        "preprocess",
        help="raw T1/T2/FLAIR series -> analysis-ready image, brain mask and transforms (needs the raw extra)",
    )
    add_raw_series_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    _add_preprocess_options(p)
    p.set_defaults(func=run_preprocess)
    return p


def run_infer_raw(args: argparse.Namespace) -> int:
    """Handler of the raw form of ``qrvae infer`` (``--model --t1 --t2 --flair --out``)."""
    from monai_qrvae.raw.inverse import infer_raw

    kwargs = {k: getattr(args, k) for k in (*POST_ARGS, "device") if hasattr(args, k)}
    if hasattr(args, "no_png"):
        kwargs["save_png"] = not args.no_png
    try:
        result = infer_raw(
            args.model,
            args.t1,
            args.t2,
            args.flair,
            args.out,
            preprocess_kwargs=_preprocess_kwargs(args),
            **kwargs,
        )
    except ImportError as e:  # the raw extra is missing
        raise RuntimeError(str(e)) from e
    paths = [*result["maps"].values(), result["report"]]
    if getattr(args, "dicom_out", False) or os.path.isdir(args.flair):  # DICOM SEG + Parametric Map (io.dicom_out)
        from monai_qrvae.io.dicom_out import write_dicom_results

        try:
            dicom = write_dicom_results(result, args.flair, args.out)
        except ImportError as e:  # the dicom extra is missing: one line
            raise RuntimeError(str(e)) from e
        paths += [os.path.join(args.out, dicom[k]["path"]) for k in ("segmentation", "parametric_map")]
    for path in paths:
        print(path)
    return 0


def add_infer_raw_parser(subparsers: Any, name: str = "infer-raw") -> argparse.ArgumentParser:
    """A stand-alone ``infer-raw --model M --t1 --t2 --flair --out DIR`` (the lead may fold it into ``infer``)."""
    p = subparsers.add_parser(name, help="preprocess raw series, detect lesions, write maps on the FLAIR grid")
    p.add_argument("--model", required=True, help="model folder (model_config.json + model.pt)")
    add_raw_series_arguments(p)
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--per", choices=("volume", "slice"), default="volume")
    p.add_argument("--score-median", type=int, default=3)
    p.add_argument("--median-size", type=int, default=1)
    p.add_argument("--min-size", type=int, default=0)
    p.add_argument("--no-png", action="store_true")
    p.add_argument("--device", default="cpu")
    add_dicom_out_argument(p)
    _add_preprocess_options(p)
    p.set_defaults(func=run_infer_raw)
    return p


def run_make_raw_data(args: argparse.Namespace) -> int:
    """Handler of ``make-raw-data`` (the lead exposes it as ``qrvae make-data --raw``)."""
    from monai_qrvae.raw.synthetic import make_raw_cohort

    path = make_raw_cohort(args.data, subjects=args.subjects, out_dir=args.out)
    print(f"raw-like series: {path}")
    return 0


def add_raw_data_parser(subparsers: Any, name: str = "make-raw-data") -> argparse.ArgumentParser:
    """``make-raw-data --data COHORT [--subjects sub-041 ...] [--out DIR]``."""
    p = subparsers.add_parser(name, help="write raw-like T1/T2/FLAIR series (head, motion, bias) for a cohort")
    p.add_argument("--data", required=True, help="cohort folder or datalist.json written by make-data")
    p.add_argument("--subjects", nargs="+", default=None, help="subject folders (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: <cohort>/raw)")
    p.set_defaults(func=run_make_raw_data)
    return p


def build_parser() -> argparse.ArgumentParser:
    """Parser with the raw sub-commands only (``python -m monai_qrvae.cli.raw``)."""
    parser = argparse.ArgumentParser(prog="python -m monai_qrvae.cli.raw", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_preprocess_parser(sub)
    add_infer_raw_parser(sub)
    add_raw_data_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one raw sub-command; input errors print one line and return 2."""
    args = build_parser().parse_args(argv)
    return run_command(args, f"qrvae {args.command}", (ValueError, FileNotFoundError, RuntimeError))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
