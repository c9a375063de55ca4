"""The defaults every entry point reads (CLI, workflows, bundle tests, benchmarks): one place, chosen on ``tuning``.

Each method has its own training budget and post-processing, chosen on the ``tuning`` split (lesion subjects that
are never reported) by ``qrvae sweep``; the sweep, what was tried and what was picked are in
docs/benchmarks.md. The ``test`` split was never used to choose any of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["MethodDefaults", "DEFAULTS", "THRESHOLD_CHOICES", "method_defaults"]


@dataclass(frozen=True)
class MethodDefaults:
    """Training and post-processing defaults of one method.

    Attributes:
        epochs: training epochs (0 for FLAIR thresholding, which only fits healthy intensity statistics).
        batch_size: slices per training step.
        lr: Adam learning rate.
        score_median: in-plane median filter of the z-map before p-values (1 = off).
        alpha: Benjamini-Hochberg false discovery rate of the label-free lesion mask.
        image_size: in-plane size the volumes are resized to (``None``: the input's own grid).
        num_slices: central axial slices analysed (``None``: every slice of the brain; ``20`` is the paper's
            central-slice setting, ``qrvae train --slices central``).
        context: through-plane context of the slice model (:data:`monai_qrvae.context.CONTEXTS`).
        score: how the contrasts' z-maps are combined (:data:`monai_qrvae.anomaly.SCORES`).
        quantiles: quantile levels of the QR-VAE's heads.
        quantile_score: the QR-VAE's score is read from its predicted quantile function instead of
            ``(x - mu) / sigma``.
        null: the per-volume empirical null the calibrated thresholds standardise the score with
            (:data:`monai_qrvae.anomaly.null.NULL_METHODS`); ``"none"`` (raw scores) won on ``tuning`` and kept the
            most of the real tumours; the alternatives lost their sensitivity there (docs/real.md, "Thresholds at a
            new site").
    """

    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    score_median: int = 1
    alpha: float = 0.05
    image_size: int | None = 96
    num_slices: int | None = None
    context: str = "none"
    score: str = "flair_t2"
    quantiles: tuple[float, ...] = (0.025, 0.15, 0.5, 0.85, 0.975)
    quantile_score: bool = True
    null: str = "none"

    def as_dict(self) -> dict[str, Any]:
        """The defaults as a plain dictionary."""
        return asdict(self)


#: label-free thresholds of the lesion mask (``--threshold``): ``"conformal"`` (default: Benjamini-Hochberg on p-values
#: calibrated on healthy volumes), ``"volume"`` (at most alpha of healthy volumes with any detection), ``"gaussian"``
#: (the paper's N(0, 1) p-values), ``"lesion"`` (BH over candidate lesions: lesion-level FDR) and ``"lesion-volume"``
#: (at most alpha of healthy volumes with any lesion).
THRESHOLD_CHOICES = ("conformal", "volume", "gaussian", "lesion", "lesion-volume")

_VAE = MethodDefaults()
#: per method, picked on the ``tuning`` split of the v2 cohort (seed 0, whose subjects are not in the default seed-1
#: cohort): lr and z-map median filter by ``qrvae sweep`` (lr 3e-4 / 1e-3, median 1 / 3; docs/benchmarks.md);
#: whole brain at 96 x 96 in-plane, 5 epochs (about the optimisation steps of 20 central-slice epochs, the same for
#: every VAE), through-plane context, score and quantile score by ``python -m benchmarks.whole_brain_choices``
#: (docs/benchmarks.md, "Whole-brain choices").
DEFAULTS: dict[str, MethodDefaults] = {
    "qrvae": replace(_VAE, lr=1e-3),
    "gaussian": replace(_VAE, lr=1e-3, score="flair_t2"),
    "mse": replace(_VAE, lr=3e-4, score_median=3, score="flair_t2"),
    # thresholding is pointwise: it looks at every brain voxel on the input's own grid (no resizing, every slice)
    "flair": replace(_VAE, epochs=0, score_median=1, image_size=None, num_slices=None, score="flair"),
}


def method_defaults(method: str) -> MethodDefaults:
    """The defaults of ``method``; raises ``ValueError`` for an unknown one."""
    if method not in DEFAULTS:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(DEFAULTS)}.")
    return DEFAULTS[method]
