"""Multi-contrast anomaly scores: the per-contrast z-maps combined in the direction lesions take."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from monai_qrvae.anomaly.utils import FLAIR_CHANNEL

__all__ = ["SCORES", "LESION_DIRECTION", "score_weights", "combine_z", "signed_z"]

#: How the per-contrast z-maps (T1, T2, FLAIR) are combined into one anomaly score, as signed weights: a weighted
#: Stouffer sum ``sum_c w_c z_c / ||w||`` in the direction lesions take (FLAIR and T2 brighter, T1 darker). It is
#: N(0, 1) when its z-maps are independent N(0, 1); the healthy-calibrated (conformal) p-values of
#: :mod:`monai_qrvae.calibration` need no such assumption.
SCORES: dict[str, tuple[float, float, float]] = {
    "flair": (0.0, 0.0, 1.0),
    "flair_t2": (0.0, 1.0, 1.0),
    "all": (-1.0, 1.0, 1.0),
}

#: the direction of a lesion in each contrast (T1 darker, T2 and FLAIR brighter).
LESION_DIRECTION: tuple[float, float, float] = (-1.0, 1.0, 1.0)


def score_weights(score: str | Sequence[float], num_channels: int) -> torch.Tensor:
    """The signed contrast weights of a score name of :data:`SCORES` (or explicit weights), one per channel.

    ``"flair"`` also serves predictions with more than three channels (weight 1 on :data:`FLAIR_CHANNEL`).
    """
    if isinstance(score, str):
        if score not in SCORES:
            raise ValueError(f"score must be one of {tuple(SCORES)} or a sequence of weights, got {score!r}.")
        weights = SCORES[score]
        if len(weights) != num_channels:
            if score != "flair" or num_channels <= FLAIR_CHANNEL:
                raise ValueError(
                    f"score {score!r} combines the (T1, T2, FLAIR) z-maps; the prediction has "
                    f"{num_channels} channel(s)."
                )
            weights = tuple(float(c == FLAIR_CHANNEL) for c in range(num_channels))
    else:
        weights = tuple(float(w) for w in score)
        if len(weights) != num_channels:
            raise ValueError(f"got {len(weights)} score weights for a prediction of {num_channels} channel(s).")
    w = torch.tensor(weights, dtype=torch.float32)
    if not torch.isfinite(w).all() or float(w.norm()) == 0:
        raise ValueError(f"score weights must be finite and not all zero, got {weights}.")
    return w


def combine_z(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted Stouffer sum ``sum_c w_c z_c / ||w||`` of a ``(C, spatial...)`` z-map: ``(1, spatial...)``."""
    if z.shape[0] != weights.numel():
        raise ValueError(f"combine_z: {weights.numel()} weights for a z-map of {z.shape[0]} channel(s).")
    w = weights.to(device=z.device, dtype=z.dtype).reshape([-1] + [1] * (z.ndim - 1))
    return (z * w).sum(0, keepdim=True) / float(weights.norm())


def signed_z(z: torch.Tensor) -> torch.Tensor:
    """Per-contrast z-maps ``(3, spatial...)`` turned so that positive means "like a lesion" (T1 negated)."""
    if z.shape[0] != len(LESION_DIRECTION):
        return z
    sign = torch.tensor(LESION_DIRECTION, dtype=z.dtype, device=z.device).reshape([-1] + [1] * (z.ndim - 1))
    return z * sign
