"""Experiments that measure the method's claims, from the command line (``qrvae experiment ...``) or notebooks.

- :func:`run_simulation` (:mod:`.simulation`): the paper's variance-shrinkage simulation, a 2-D manifold in 4-D with
  known heteroscedastic noise; predicted sigma of a Gaussian VAE and of a QR-VAE against the true sigma.
- :func:`run_calibration` (:mod:`.calibration`): on healthy held-out brains, the fraction of voxels below each
  predicted quantile and the z-score distribution against N(0, 1).
- :func:`run_fdr` (:mod:`.fdr`): on the lesion subjects, the realised false discovery rate and sensitivity of
  Benjamini-Hochberg per slice and per volume.
- :func:`run_thresholds` (:mod:`.thresholds`): realised FDR and healthy any-detection rate of N(0, 1) + BH against
  the healthy-calibrated thresholds (conformal BH, volume-level, cluster size) of :mod:`monai_qrvae.calibration`.

Each returns a dict of the measured numbers and, given ``out_dir``, writes a PNG figure, a Markdown table and JSON.
The brain experiments take trained model folders (``qrvae train``) or train what is missing
(:func:`~monai_qrvae.experiments.common.prepare_models`). ``quick=True`` (or ``QRVAE_NOTEBOOK_QUICK=1`` for the
notebooks and the command line) gives tiny settings that run in seconds.
"""

from __future__ import annotations

from monai_qrvae.experiments.calibration import CALIBRATION_LEVELS, calibration_stats, run_calibration
from monai_qrvae.experiments.common import QUICK_ENV, prepare_models, quick_from_env
from monai_qrvae.experiments.fdr import ALPHAS, bh_verdict, fdr_stats, run_fdr
from monai_qrvae.experiments.simulation import MLPVAE, make_manifold_data, run_simulation, sigma_summary
from monai_qrvae.experiments.thresholds import run_thresholds

__all__ = [
    "ALPHAS",
    "CALIBRATION_LEVELS",
    "MLPVAE",
    "QUICK_ENV",
    "bh_verdict",
    "calibration_stats",
    "fdr_stats",
    "make_manifold_data",
    "prepare_models",
    "quick_from_env",
    "run_calibration",
    "run_fdr",
    "run_simulation",
    "run_thresholds",
    "sigma_summary",
]
