"""Command-line subcommands of the experiments: ``qrvae experiment simulation|calibration|fdr``.

The ``qrvae`` console script registers them with :func:`add_parsers`; each leaf parser sets ``func`` to a ``run_*``
function that takes the parsed ``argparse.Namespace``, prints the tables and returns 0. :func:`main` runs them on
their own::

    python -m monai_qrvae.cli.experiments simulation --out outputs/experiments
    python -m monai_qrvae.cli.experiments calibration --out outputs/experiments --demo-dir outputs/demo
    python -m monai_qrvae.cli.experiments fdr --out outputs/experiments --quick
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_qrvae.cli.utils import arg_values, run_command, show_progress

__all__ = [
    "add_parsers",
    "add_experiment_parsers",
    "build_parser",
    "main",
    "run_simulation_cmd",
    "run_calibration_cmd",
    "run_fdr_cmd",
]

_DEFAULT_OUT = "outputs/experiments"


def _models_from_args(args: argparse.Namespace) -> tuple[str | None, dict[str, str | None]]:
    """``(datalist, {method: model_dir})`` from ``--datalist``, ``--qrvae-model``, ``--gaussian-model`` and
    ``--demo-dir``."""
    datalist = args.datalist
    models: dict[str, str | None] = {"qrvae": args.qrvae_model, "gaussian": args.gaussian_model}
    if args.demo_dir:
        demo = Path(args.demo_dir)
        if datalist is None:
            datalist = str(demo / "data" / "datalist.json")
        for method in models:
            if models[method] is None and (demo / method / "model" / "model_config.json").is_file():
                models[method] = str(demo / method / "model")
    return datalist, models


def _quick(args: argparse.Namespace) -> bool:
    from monai_qrvae.experiments.common import quick_from_env

    return bool(args.quick) or quick_from_env()


def _brain_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments the brain experiments (``calibration``, ``fdr``) take from :func:`_add_brain_args`."""
    datalist, models = _models_from_args(args)
    return {
        "out_dir": args.out,
        "work_dir": args.work_dir,
        "datalist": datalist,
        "models": models,
        "quick": _quick(args),
        "epochs": args.epochs,
        "seed": args.seed,
        "progress": show_progress(args),
    }


def _print_figure(result: dict[str, Any]) -> None:
    print(f"figure: {result['files']['figure']}  ({result['seconds']:.0f} s)")


def run_simulation_cmd(args: argparse.Namespace) -> int:
    """``qrvae experiment simulation``."""
    from monai_qrvae.experiments.simulation import run_simulation

    result = run_simulation(
        out_dir=args.out, quick=_quick(args), **arg_values(args, "epochs", "n_train", "betas", "main_beta", "seed")
    )
    main = result["main"]
    print(result["table"])
    print(
        f"median predicted / true sigma at beta {result['config']['main_beta']:g}: "
        f"Gaussian VAE {main['ratio_gaussian_over_true']:.3f}, QR-VAE {main['ratio_qrvae_over_true']:.3f}"
    )
    _print_figure(result)
    return 0


def run_calibration_cmd(args: argparse.Namespace) -> int:
    """``qrvae experiment calibration``."""
    from monai_qrvae.experiments.calibration import run_calibration

    result = run_calibration(**_brain_kwargs(args), section=args.section)
    print(result["coverage_table"])
    print(result["z_table"])
    _print_figure(result)
    return 0


def run_fdr_cmd(args: argparse.Namespace) -> int:
    """``qrvae experiment fdr``."""
    from monai_qrvae.experiments.fdr import run_fdr

    result = run_fdr(**_brain_kwargs(args), alphas=args.alphas)
    print(result["table"])
    for line in result["verdict"]:
        print(f"- {line}")
    _print_figure(result)
    return 0


def run_thresholds_cmd(args: argparse.Namespace) -> int:
    """``qrvae experiment thresholds``."""
    from monai_qrvae.experiments.thresholds import run_thresholds

    options = ("section", "calibration_section", "alphas", "stratify", "num_strata", "quantile_score")
    result = run_thresholds(
        args.model,
        args.datalist,
        **arg_values(args, *options, "score_median", "device", out_dir="out"),
        cluster_p=None if args.cluster_p <= 0 else args.cluster_p,
        loo=not args.no_loo,
    )
    print(result["table"])
    print(f"table: {result['files']['table']}  ({result['seconds']:.0f} s)")
    return 0


def _add_brain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datalist", default=None, help="datalist JSON (default: make the embedded synthetic cohort)")
    p.add_argument("--qrvae-model", default=None, help="QR-VAE model folder from 'qrvae train' (default: train one)")
    p.add_argument("--gaussian-model", default=None, help="Gaussian VAE model folder (default: train one)")
    p.add_argument("--demo-dir", default=None, help="use the data and models of 'qrvae demo' (e.g. outputs/demo)")
    p.add_argument("--work-dir", default=None, help="where a cohort and models are made (default: OUT/work)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of models trained here (default 20, quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide training progress bars")


def add_parsers(subparsers: Any) -> None:
    """Register ``experiment`` (with ``simulation``, ``calibration`` and ``fdr``) on an argparse subparsers object
    (from ``parser.add_subparsers()``); each leaf parser sets ``func``."""
    p = subparsers.add_parser(
        "experiment",
        help="reproduce the paper's evidence: variance-shrinkage simulation, calibration, FDR",
        description="Experiments that measure the method's claims; each writes PNG figures, a Markdown table and JSON.",
    )
    add_experiment_parsers(
        p.add_subparsers(dest="experiment", required=True, metavar="{simulation,calibration,fdr,thresholds}")
    )


def add_experiment_parsers(sub: Any) -> None:
    """Register the three experiments (``simulation``, ``calibration``, ``fdr``) directly on ``sub``."""
    q = sub.add_parser(
        "simulation",
        help="variance shrinkage on a 2-D manifold in 4-D with known noise: Gaussian VAE vs QR-VAE",
    )
    q.add_argument("--out", default=_DEFAULT_OUT, help=f"output folder (default {_DEFAULT_OUT})")
    q.add_argument("--quick", action="store_true", help="small settings (seconds); also QRVAE_NOTEBOOK_QUICK=1")
    q.add_argument("--epochs", type=int, default=None, help="training epochs (default 150, quick 40)")
    q.add_argument("--n-train", type=int, default=None, help="training points (default 4000, quick 1500)")
    q.add_argument("--betas", type=float, nargs="+", default=None, help="KL weights (default 1 0.1 0.01)")
    q.add_argument("--main-beta", type=float, default=None, help="beta of the headline ratios (default 0.1)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=run_simulation_cmd)

    q = sub.add_parser("calibration", help="quantile coverage and z-scores on healthy held-out subjects")
    q.add_argument("--out", default=_DEFAULT_OUT, help=f"output folder (default {_DEFAULT_OUT})")
    q.add_argument("--quick", action="store_true", help="tiny cohort, one epoch; also QRVAE_NOTEBOOK_QUICK=1")
    q.add_argument("--section", default="validation", help="healthy datalist section (default validation)")
    _add_brain_args(q)
    q.set_defaults(func=run_calibration_cmd)

    q = sub.add_parser("fdr", help="realised FDR and sensitivity of Benjamini-Hochberg on the lesion subjects")
    q.add_argument("--out", default=_DEFAULT_OUT, help=f"output folder (default {_DEFAULT_OUT})")
    q.add_argument("--quick", action="store_true", help="tiny cohort, one epoch; also QRVAE_NOTEBOOK_QUICK=1")
    q.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.05, 0.1], help="FDR levels")
    _add_brain_args(q)
    q.set_defaults(func=run_fdr_cmd)

    q = sub.add_parser(
        "thresholds",
        help="realised FDR and healthy any-detection of N(0,1)+BH, conformal BH, volume-level and cluster thresholds",
    )
    q.add_argument("--model", required=True, help="model folder from 'qrvae train'")
    q.add_argument("--datalist", required=True, help="datalist with a healthy calibration section and a scored one")
    q.add_argument("--out", default=_DEFAULT_OUT, help=f"output folder (default {_DEFAULT_OUT})")
    q.add_argument("--section", default="test", help="labelled section scored (default test)")
    q.add_argument("--calibration-section", default="calibration", help="healthy section calibrated on")
    q.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1], help="levels (default 0.05 0.1)")
    q.add_argument("--cluster-p", type=float, default=0.001, help="cluster-forming level (0: no cluster threshold)")
    q.add_argument("--stratify", choices=("none", "slice"), default="none", help="conformal p-values per stratum")
    q.add_argument("--num-strata", type=int, default=4, help="slice-position bins for --stratify slice")
    q.add_argument("--quantile-score", action="store_true", help="QR-VAE: score from the quantile function")
    q.add_argument("--no-loo", action="store_true", help="skip the leave-one-out check on healthy volumes")
    q.add_argument("--score-median", type=int, default=None, help="z-map median filter (default: the method's)")
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=run_thresholds_cmd)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the ``experiment`` subcommands at top level."""
    parser = argparse.ArgumentParser(prog="python -m monai_qrvae.cli.experiments", description=__doc__.splitlines()[0])
    add_experiment_parsers(parser.add_subparsers(dest="experiment", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one experiment; errors in the input are printed as one line (exit status 2)."""
    return run_command(build_parser().parse_args(argv), "qrvae experiment", one_line=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
