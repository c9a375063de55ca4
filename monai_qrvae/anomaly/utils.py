"""Helpers shared by the anomaly-map functions: tensor conversion, masks, channel selection, quantile layout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import convert_to_tensor

__all__ = ["FLAIR_CHANNEL", "as_tensor", "broadcast_mask", "check_quantiles", "split_quantiles"]

#: Index of the FLAIR channel in the (T1, T2, FLAIR) channel order used throughout the package.
FLAIR_CHANNEL = 2


def as_tensor(x: Any) -> torch.Tensor:
    """A plain ``torch.Tensor`` view of ``x`` (numpy arrays and MetaTensors accepted, metadata dropped)."""
    return convert_to_tensor(x, track_meta=False)


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype (float16, bfloat16, ints, bool) computes in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def broadcast_mask(mask: Any, shape: Sequence[int], device: torch.device, name: str = "mask") -> torch.Tensor:
    """Boolean mask (non-zero = inside) broadcast to ``shape``.

    Raises:
        ValueError: when ``mask`` cannot be broadcast to ``shape`` without changing ``shape``.
    """
    m = as_tensor(mask).to(device)
    m = m if m.dtype == torch.bool else m != 0
    try:
        ok = tuple(torch.broadcast_shapes(m.shape, tuple(shape))) == tuple(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(m.shape)} cannot be broadcast to the data shape {tuple(shape)}; "
            "expected the same shape or size-1 dimensions, e.g. (B, 1, spatial...)."
        )
    return m.expand(tuple(shape))


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Validate a quantile tuple: non-empty, strictly increasing, each in the open interval (0, 1).

    Args:
        quantiles: the quantile levels.

    Returns:
        The quantiles as a tuple of Python floats.

    Raises:
        ValueError: when the quantiles are empty, unsorted, repeated or outside (0, 1).
    """
    q = tuple(float(t) for t in quantiles)
    if len(q) == 0:
        raise ValueError("quantiles must contain at least one value in (0, 1), got an empty sequence.")
    if any(not 0.0 < t < 1.0 for t in q):
        raise ValueError(f"quantiles must lie in the open interval (0, 1), got {q}.")
    if any(b <= a for a, b in zip(q[:-1], q[1:])):
        raise ValueError(f"quantiles must be strictly increasing, got {q}.")
    return q


def split_quantiles(pred: torch.Tensor, num_quantiles: int) -> torch.Tensor:
    """View a quantile-major prediction ``(B, Q*C, ...)`` as ``(B, Q, C, ...)``.

    Args:
        pred: quantile-major prediction ``(B, Q*C, spatial...)``.
        num_quantiles: ``Q``.

    Returns:
        ``pred`` reshaped to ``(B, Q, C, spatial...)``; ``[:, k]`` is quantile ``k`` of every channel.

    Raises:
        ValueError: when ``pred`` is not batched or its channel count is not a multiple of ``num_quantiles``.
    """
    if pred.ndim < 3:
        raise ValueError(f"expected a batched prediction (B, Q*C, spatial...), got shape {tuple(pred.shape)}.")
    if num_quantiles < 1 or pred.shape[1] % num_quantiles != 0:
        raise ValueError(
            f"prediction has {pred.shape[1]} channels, expected a multiple of the {num_quantiles} quantiles "
            "(quantile-major layout Q*C)."
        )
    return pred.reshape(pred.shape[0], num_quantiles, pred.shape[1] // num_quantiles, *pred.shape[2:])


def _select_channel(x: torch.Tensor, channel: int | None, name: str) -> torch.Tensor:
    if x.ndim < 3:
        raise ValueError(f"{name} must be batched (B, C, spatial...), got shape {tuple(x.shape)}.")
    if channel is None or x.shape[1] == 1:
        return x
    if not -x.shape[1] <= channel < x.shape[1]:
        raise ValueError(f"channel {channel} is out of range for {name} with {x.shape[1]} channels.")
    c = channel % x.shape[1]
    return x[:, c : c + 1]
