"""The ``qrvae`` command line: demo, train, evaluate, infer and the data commands.

Errors in the input (missing files, wrong shapes, NaN voxels...) are printed as one line, without a stack
trace, and the command exits with status 2. ``--debug`` shows the full trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_post(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.05, help="Benjamini-Hochberg false discovery rate (0.05)")
    p.add_argument("--per", choices=("volume", "slice"), default="volume", help="FDR per volume or per slice")
    p.add_argument("--score-median", type=int, default=3, help="in-plane median filter of the z-map (3; 1 = off)")
    p.add_argument("--median-size", type=int, default=1, help="median filter of the lesion mask (1 = off)")
    p.add_argument("--min-size", type=int, default=0, help="drop lesion components smaller than this (voxels)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from monai_qrvae.workflows import demo

    demo(
        output_dir=args.out,
        epochs=args.epochs,
        methods=args.methods,
        seed=args.seed,
        n_healthy=args.healthy,
        n_lesion=args.lesion,
        progress=not args.no_progress,
        preset=args.preset,
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from monai_qrvae.workflows import train

    summary = train(
        args.datalist,
        args.out,
        method=args.method,
        preset=args.preset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        num_slices=args.num_slices,
        image_size=args.image_size,
        quantiles=args.quantiles,
        beta=args.beta,
        resume=not args.no_resume,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from monai_qrvae.workflows import evaluate

    result = evaluate(
        args.model,
        args.datalist,
        args.out,
        section=args.section,
        alpha=args.alpha,
        per=args.per,
        median_size=args.median_size,
        min_size=args.min_size,
        score_median=args.score_median,
        save_maps=not args.no_maps,
        save_png=not args.no_png,
        device=args.device,
    )
    result.pop("per_volume", None)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from monai_qrvae.workflows import infer

    images: list = list(args.images)
    if args.datalist:
        from monai.data import load_decathlon_datalist

        images += load_decathlon_datalist(args.datalist, is_segmentation=False, data_list_key=args.section)
    if not images:
        raise ValueError("no input: give image paths or --datalist.")
    written = infer(
        args.model,
        images,
        args.out,
        alpha=args.alpha,
        per=args.per,
        median_size=args.median_size,
        min_size=args.min_size,
        score_median=args.score_median,
        save_png=not args.no_png,
        device=args.device,
    )
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``qrvae``."""
    from monai_qrvae.workflows import METHODS, MODEL_PRESETS

    parser = argparse.ArgumentParser(prog="qrvae", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full stack traces")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="make the embedded data, train all methods, evaluate and compare")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--epochs", type=int, default=15, help="epochs per model (default 15)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--preset", choices=tuple(MODEL_PRESETS), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--healthy", type=int, default=40, help="healthy subjects to generate (default 40)")
    p.add_argument("--lesion", type=int, default=10, help="lesion subjects to generate (default 10)")
    _add_common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a model on the healthy training section of a datalist")
    p.add_argument("--datalist", required=True, help="Decathlon-style datalist JSON")
    p.add_argument("--out", required=True, help="model folder (weights, config, curves, checkpoints)")
    p.add_argument("--method", choices=METHODS, default="qrvae")
    p.add_argument("--preset", choices=tuple(MODEL_PRESETS), default="small")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16, help="slices per batch (16; the paper used 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3; the paper used 3e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-slices", type=int, default=20)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--quantiles", type=float, nargs="+", default=[0.15, 0.5])
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    _add_common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="score a labelled datalist section; write metrics, maps, overlays")
    p.add_argument("--model", required=True, help="model folder written by 'qrvae train'")
    p.add_argument("--datalist", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--section", default="test")
    p.add_argument("--no-maps", action="store_true")
    p.add_argument("--no-png", action="store_true")
    _add_post(p)
    _add_common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("infer", help="find lesions in new volumes (no labels); write NIfTI maps and masks")
    p.add_argument("--model", required=True)
    p.add_argument("images", nargs="*", help="4D (T1, T2, FLAIR) NIfTI/NRRD/MHA images")
    p.add_argument("--datalist", help="or a datalist JSON")
    p.add_argument("--section", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--no-png", action="store_true")
    _add_post(p)
    _add_common(p)
    p.set_defaults(func=_cmd_infer)

    try:
        from monai_qrvae.data.cli import add_parsers
    except ImportError:  # pragma: no cover - data subpackage always ships
        add_parsers = None
    if add_parsers is not None:
        add_parsers(sub)
    from monai_qrvae.experiments.cli import add_parsers as add_experiment_parsers

    add_experiment_parsers(sub)
    from monai_qrvae.raw.cli import add_preprocess_parser  # qrvae preprocess (raw series; needs the raw extra)

    add_preprocess_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qrvae`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, OSError) as e:
        if args.debug:
            raise
        message = " ".join(str(e).split())  # one line, whatever the exception's formatting
        print(f"qrvae {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qrvae {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
