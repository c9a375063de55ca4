"""``qrvae calibrate``: recompute a model's healthy calibration (``calibration.pt``) from a site's own healthy scans.

No retraining: the shipped score (preprocessing, network, z-map filter) is computed on the healthy volumes of a
datalist section and its null distribution is stored beside the weights (see :mod:`monai_qrvae.calibration`).
"""

from __future__ import annotations

import argparse
from typing import Any

from monai_qrvae.cli.utils import add_device_option, arg_values, print_json

__all__ = ["add_parser", "run_calibrate"]


def run_calibrate(args: argparse.Namespace) -> int:
    """Run ``qrvae calibrate`` and print a short summary."""
    from monai_qrvae.calibration import CALIBRATION_FILE
    from monai_qrvae.workflows import fit_calibration

    options = (
        "section",
        "alpha",
        "score_median",
        "stratify",
        "num_strata",
        "max_voxels",
        "cluster_p",
        "device",
        "null",
        "lesion_p",
    )
    cal = fit_calibration(args.model, args.datalist, **arg_values(args, *options))
    summary: dict[str, Any] = cal.summary()
    summary.pop("volume_maxima", None)
    summary.pop("max_cluster_sizes", None)
    summary.pop("lesion_volume_max", None)
    print(
        f"calibrated {summary['score'].get('score_name', 'the score')} of {summary['score'].get('method')} on "
        f"n = {cal.n_volumes} healthy volumes ({cal.n_voxels} brain voxels); wrote {args.model}/{CALIBRATION_FILE}"
    )
    return print_json(summary)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``calibrate`` sub-command to the ``qrvae`` parser's sub-parsers."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit the label-free thresholds of a trained model on healthy scans (writes MODEL/calibration.pt)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", required=True, help="model folder written by 'qrvae train'")
    p.add_argument("--datalist", required=True, help="datalist JSON with a section of healthy subjects")
    p.add_argument("--section", default="calibration", help="the healthy section (default: calibration)")
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="volume-level alpha the calibration must support: needs n + 1 >= 1 / alpha volumes "
        "(default: the method's alpha)",
    )
    p.add_argument(
        "--score-median",
        type=int,
        default=None,
        help="in-plane median filter of the z-map, as at inference (default: the method's)",
    )
    p.add_argument("--stratify", choices=("none", "slice"), default="none", help="pool voxels or bin by slice")
    p.add_argument("--num-strata", type=int, default=4, help="slice-position bins for --stratify slice (4)")
    p.add_argument(
        "--cluster-p",
        type=float,
        default=None,
        help="also calibrate a minimum lesion size: clusters of voxels with conformal p <= this (e.g. 0.001)",
    )
    p.add_argument(
        "--lesion-p",
        type=float,
        default=1e-4,
        help="primary threshold of the lesion-level thresholds (--threshold lesion, lesion-volume): candidate lesions "
        "are clusters of voxels with conformal p <= this; their healthy statistics are calibrated (default 1e-4)",
    )
    p.add_argument("--max-voxels", type=int, default=2_000_000, help="voxel scores kept (thinned above)")
    p.add_argument(
        "--null",
        choices=("none", "median", "upper", "robust", "central"),
        default=None,
        help="per-volume empirical null the scores are standardised with before calibration and at inference: "
        "'central' (Efron's central matching), 'robust' (median, IQR) or 'none' (default: the method's, none)",
    )
    add_device_option(p)
    p.set_defaults(func=run_calibrate)
    return p
