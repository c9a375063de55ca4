"""The ``qrvae`` command line: demo, train, evaluate, infer and the data commands.

Errors in the input (missing files, wrong shapes, NaN voxels...) are printed as one line, without a stack
trace, and the command exits with status 2. ``--debug`` shows the full trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from monai_qrvae.cli.utils import (
    POST_ARGS,
    OneLineArgumentParser,
    add_common_options,
    add_post_options,
    arg_values,
    print_json,
    run_command,
    show_progress,
)

__all__ = ["main", "build_parser", "OneLineArgumentParser"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from monai_qrvae.workflows import PINNED_DEMO, demo

    settings = arg_values(args, "epochs", "seed", "spacing", n_healthy="healthy", n_lesion="lesion")
    if args.pinned:
        settings.update(PINNED_DEMO)
    demo(
        output_dir=args.out,
        methods=args.methods,
        update_docs=args.update_docs or (),
        block="pinned" if args.pinned else "demo",
        **settings,
        progress=show_progress(args),
        preset=args.preset,
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from monai_qrvae.workflows import train

    summary = train(
        args.datalist,
        args.out,
        **arg_values(args, "method", "preset", "epochs", "batch_size", "lr", "seed", "device", "quantiles", "beta"),
        **arg_values(args, "context", "score"),
        num_slices=_num_slices(args),
        image_size="default" if args.image_size is None else args.image_size,
        resume=not args.no_resume,
        progress=show_progress(args),
        cache_dir=args.cache_dir,
        calibrate=not args.no_calibrate,
    )
    return print_json(summary)


def _num_slices(args: argparse.Namespace) -> int | None | str:
    """``--num-slices`` wins; ``--slices central`` is the paper's 20 central slices, ``all`` every brain slice."""
    if args.num_slices is not None:
        return args.num_slices
    return {"central": 20, "all": None}.get(args.slices, "default")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from monai_qrvae.workflows import evaluate

    result = evaluate(
        args.model,
        args.datalist,
        args.out,
        section=args.section,
        **arg_values(args, *POST_ARGS, "device"),
        save_maps=not args.no_maps,
        save_png=not args.no_png,
    )
    result.pop("per_volume", None)
    return print_json(result)


def _cmd_infer(args: argparse.Namespace) -> int:
    from monai_qrvae.workflows import infer, shipped_model_dir

    if args.model is None:
        args.model = str(shipped_model_dir())

    raw = [args.t1, args.t2, args.flair]
    if any(raw):  # raw series: preprocessing + detection, maps on the FLAIR series' grid
        if not all(raw) or args.images or args.datalist:
            raise ValueError(
                "give all three raw series --t1 --t2 --flair (and no image paths or --datalist); got "
                f"t1={args.t1}, t2={args.t2}, flair={args.flair}, images={list(args.images)}, datalist={args.datalist}."
            )
        from monai_qrvae.cli.raw import run_infer_raw

        return run_infer_raw(args)

    images: list = list(args.images)
    post_kwargs = {**arg_values(args, *POST_ARGS, "device"), "save_png": not args.no_png}
    if args.datalist:
        from monai.data import load_decathlon_datalist

        from monai_qrvae.data.datalist import missing_section_message, read_datalist_json

        content = read_datalist_json(args.datalist)
        entries = content.get(args.section)
        if not isinstance(entries, list):
            raise ValueError(missing_section_message(args.datalist, content, args.section, job="infer"))
        if not entries and not images:
            raise ValueError(
                f"datalist {args.datalist}: section {args.section!r} is empty; expected at least one entry "
                '{"image": ...} to analyse (or give image paths).'
            )
        if entries and all(isinstance(e, dict) and e.get("raw") for e in entries):  # raw series (raw_datalist.json)
            if images:
                raise ValueError(f"give either image paths or a datalist of raw series, not both; got {images}.")
            from monai_qrvae.cli.cohort_infer import infer_datalist

            return infer_datalist(args, entries, raw=True)  # resumable cohort run (io/cohort.py), torchrun-aware
        entries = load_decathlon_datalist(args.datalist, is_segmentation=False, data_list_key=args.section)
        if not images:
            from monai_qrvae.cli.cohort_infer import infer_datalist

            return infer_datalist(args, entries, raw=False)
        images += entries
    if not images:
        raise ValueError("no input: give image paths or --datalist.")
    written = infer(args.model, images, args.out, **post_kwargs)
    for path in written:
        print(path)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from monai_qrvae.study import sweep

    options = ("methods", "lrs", "epochs", "score_medians", "seed")
    result = sweep(args.datalist, args.out, **arg_values(args, *options), progress=show_progress(args))
    print(result["table"])
    for method, row in result["picked"].items():
        print(f"picked for {method}: lr {row['lr']}, epochs {row['epochs']}, z-map median {row['score_median']}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from monai_qrvae.study import benchmark
    from monai_qrvae.tables import update_doc_block

    options = ("methods", "seeds", "section", "reuse")
    result = benchmark(args.datalist, args.out, **arg_values(args, *options), progress=show_progress(args))
    print(result["table"])
    for doc in args.update_docs or []:
        update_doc_block(doc, args.block, result["table"])
        print(f"updated the '{args.block}' block of {doc}")
        if "<!-- demo:start -->" in Path(doc).read_text():  # the first seed is what `make demo` prints
            update_doc_block(doc, "demo", result["first_seed_table"])
            print(f"updated the 'demo' block of {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``qrvae``."""
    from monai_qrvae.anomaly import SCORES
    from monai_qrvae.context import CONTEXTS
    from monai_qrvae.workflows import METHODS, MODEL_PRESETS

    parser = OneLineArgumentParser(prog="qrvae", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full stack traces")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="make the embedded data, train all methods, evaluate and compare")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: each method's, defaults.py)")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=["qrvae", "flair"],
        help="methods compared (default: qrvae flair; all four: qrvae gaussian mse flair)",
    )
    p.add_argument("--preset", choices=tuple(MODEL_PRESETS), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--healthy", type=int, default=None, help="healthy subjects to generate (default: make-data's)")
    p.add_argument("--lesion", type=int, default=None, help="lesion subjects to generate (default: make-data's)")
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size of the generated cohort in mm (2)")
    p.add_argument(
        "--pinned",
        action="store_true",
        help="the small fixed setting documented in docs/benchmarks.md and pinned by a test (overrides the sizes)",
    )
    p.add_argument(
        "--update-docs", nargs="*", help="Markdown files whose marked 'demo' (or 'pinned') block gets the table"
    )
    add_common_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a model on the healthy training section of a datalist")
    p.add_argument("--datalist", required=True, help="Decathlon-style datalist JSON")
    p.add_argument("--out", required=True, help="model folder (weights, config, curves, checkpoints)")
    p.add_argument("--method", choices=METHODS, default="qrvae")
    p.add_argument("--preset", choices=tuple(MODEL_PRESETS), default="small")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the method's, see defaults.py)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="slices per batch (default: the method's; the paper used 8)"
    )
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the method's; paper: 3e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--slices",
        choices=("all", "central"),
        default=None,
        help="axial slices trained on and analysed: 'all' (every slice with brain, the default) or 'central' (the "
        "paper's 20 central slices)",
    )
    p.add_argument("--num-slices", type=int, default=None, help="N central axial slices (overrides --slices)")
    p.add_argument("--image-size", type=int, default=None, help="in-plane size (default: the method's; VAEs 96)")
    p.add_argument(
        "--quantiles",
        type=float,
        nargs="+",
        default=None,
        help="QR-VAE quantile levels (default: 0.025 0.15 0.5 0.85 0.975; the paper: 0.15 0.5)",
    )
    p.add_argument(
        "--context",
        choices=CONTEXTS,
        default=None,
        help="through-plane context of the 2D model: none (default), neighbours (2.5D) or position",
    )
    p.add_argument(
        "--score",
        choices=tuple(SCORES),
        default=None,
        help="anomaly score: flair, flair_t2 (FLAIR and T2 brighter; the VAEs' default) or all (and T1 darker)",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="do not calibrate the score on the datalist's healthy 'calibration' section after training",
    )
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="bounded memory for large cohorts: prepare each volume's slices once into this folder and read them "
        "back from disk (default: every slice in memory)",
    )
    add_common_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="score a labelled datalist section; write metrics, maps, overlays")
    p.add_argument("--model", required=True, help="model folder written by 'qrvae train'")
    p.add_argument("--datalist", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--section", default="test")
    p.add_argument("--no-maps", action="store_true")
    p.add_argument("--no-png", action="store_true")
    add_post_options(p)
    add_common_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("infer", help="find lesions in new volumes (no labels); write NIfTI maps and masks")
    p.add_argument(
        "--model",
        default=None,
        help="model folder written by 'qrvae train' (model_config.json, model.pt); default: the shipped weights, "
        "the same as the bundle's (bundle/models)",
    )
    p.add_argument("images", nargs="*", help="4D (T1, T2, FLAIR) NIfTI/NRRD/MHA images")
    p.add_argument("--datalist", help="or a datalist JSON")
    p.add_argument("--section", default="test", help="datalist section to read with --datalist (default: test)")
    p.add_argument("--out", default="qrvae_output", help="output folder (default: ./qrvae_output)")
    p.add_argument("--no-png", action="store_true", help="do not write the PNG overlays")
    from monai_qrvae.cli.raw import add_dicom_out_argument, add_raw_series_arguments

    add_raw_series_arguments(p, required=False)  # raw series instead of images: needs the raw extra (docs/raw.md)
    add_dicom_out_argument(p)  # DICOM SEG / Parametric Map of raw series (monai_qrvae.io.dicom_out)
    add_post_options(p)
    add_common_options(p)
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("sweep", help="choose each method's lr, epochs and z-map filter on the tuning split")
    p.add_argument("--datalist", required=True, help="datalist with training, validation and tuning sections")
    p.add_argument("--out", required=True, help="output folder (models, sweep.csv/md/json)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3], help="learning rates tried")
    p.add_argument("--epochs", type=int, nargs="+", default=[10, 20], help="epoch counts tried")
    p.add_argument("--score-medians", type=int, nargs="+", default=[1, 3], help="z-map median filters tried")
    p.add_argument("--seed", type=int, default=0)
    add_common_options(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("benchmark", help="the headline table: every method, its defaults, several seeds, on test")
    p.add_argument("--datalist", required=True)
    p.add_argument("--out", required=True, help="output folder (models, headline.csv/md/json)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--section", default="test", help="split scored (default: test)")
    p.add_argument(
        "--reuse", action="store_true", help="read back methods and seeds already scored in --out (see study.benchmark)"
    )
    p.add_argument("--update-docs", nargs="*", help="Markdown files whose marked block gets the table")
    p.add_argument("--block", default="headline", help="name of the marked block (default: headline)")
    add_common_options(p)
    p.set_defaults(func=_cmd_benchmark)

    try:
        from monai_qrvae.cli.data import add_parsers
    except ImportError:  # pragma: no cover - data subpackage always ships
        add_parsers = None
    if add_parsers is not None:
        add_parsers(sub)
    from monai_qrvae.cli.experiments import add_parsers as add_experiment_parsers

    add_experiment_parsers(sub)
    from monai_qrvae.cli.calibrate import add_parser as add_calibrate_parser
    from monai_qrvae.cli.raw import add_preprocess_parser  # qrvae preprocess (raw series; needs the raw extra)

    add_calibrate_parser(sub)
    add_preprocess_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qrvae`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    errors = (ValueError, FileNotFoundError, KeyError, RuntimeError, OSError)
    return run_command(args, f"qrvae {args.command}", errors, debug=args.debug, resume_hint=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
