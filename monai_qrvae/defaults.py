"""The defaults every entry point reads (CLI, workflows, bundle tests, benchmarks): one place, chosen on ``tuning``.

Each method has its own training budget and post-processing, chosen on the ``tuning`` split (lesion subjects that
are never reported) by ``qrvae sweep``; the sweep, what was tried and what was picked are in
docs/benchmarks.md. The ``test`` split was never used to choose any of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["MethodDefaults", "DEFAULTS", "method_defaults"]


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
        num_slices: central axial slices analysed (``None``: every slice of the brain).
    """

    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    score_median: int = 3
    alpha: float = 0.05
    image_size: int | None = 64
    num_slices: int | None = 20

    def as_dict(self) -> dict[str, Any]:
        """The defaults as a plain dictionary."""
        return asdict(self)


_VAE = MethodDefaults()
#: per method, as picked by ``qrvae sweep`` on the default cohort's ``tuning`` split (best tuning AUPRC among lr 3e-4
#: and 1e-3, 10 and 20 epochs, z-map median filter 1 and 3; docs/benchmarks.md has the whole sweep).
DEFAULTS: dict[str, MethodDefaults] = {
    "qrvae": replace(_VAE, lr=1e-3, epochs=20, score_median=1),
    "gaussian": replace(_VAE, lr=1e-3, epochs=20, score_median=1),
    "mse": replace(_VAE, lr=3e-4, epochs=10, score_median=3),
    # thresholding is pointwise: it looks at every brain voxel on the input's own grid (no resizing, every slice)
    "flair": replace(_VAE, epochs=0, score_median=1, image_size=None, num_slices=None),
}


def method_defaults(method: str) -> MethodDefaults:
    """The defaults of ``method``; raises ``ValueError`` for an unknown one."""
    if method not in DEFAULTS:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(DEFAULTS)}.")
    return DEFAULTS[method]
