"""Benjamini-Hochberg false-discovery-rate detection masks over p-value maps, per volume or per slice."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import convert_to_dst_type

from monai_qrvae.anomaly.utils import _float_dtype, as_tensor, broadcast_mask

__all__ = ["benjamini_hochberg"]


def benjamini_hochberg(p: Any, alpha: float = 0.05, mask: Any = None, per: str = "volume") -> Any:
    """Benjamini-Hochberg false-discovery-rate detection mask.

    Within each group (one batch item and channel, or one last-axis slice of it for ``per="slice"``) the ``m``
    p-values inside the mask are sorted, ``k*`` is the largest rank with ``p_(k) <= k * alpha / m``, and every
    voxel with ``p <= p_(k*)`` is detected (the step-up rejection set; identical to
    ``scipy.stats.false_discovery_control(p) <= alpha``). Vectorised: one sort per call, no Python loop.

    Args:
        p: p-values ``(B, 1, H, W)`` (slices) or ``(B, 1, H, W, D)`` (volumes); torch, numpy or MetaTensor.
            Other channel counts are tested channel by channel.
        alpha: the false discovery rate, in (0, 1).
        mask: where to test, broadcastable to ``p`` (e.g. ``(B, 1, spatial...)``, bool or 0/1). Voxels outside
            the mask are never detected and do not count in ``m``; a group with an empty mask detects nothing.
            ``None`` tests every voxel.
        per: ``"volume"`` (one test per batch item) or ``"slice"`` (each slice along the last axis of a volume
            separately). For 2D input both mean one test per batch item.

    Returns:
        Boolean detections of ``p``'s shape, of ``p``'s type (a bool tensor, MetaTensor or numpy array).

    Raises:
        ValueError: for a bad shape, ``alpha`` or ``per``, a mask that does not broadcast, or p-values inside the
            mask that are NaN or outside ``[0, 1]``.
    """
    pt = as_tensor(p)
    if pt.ndim not in (4, 5):
        raise ValueError(f"p must be (B, 1, H, W) slices or (B, 1, H, W, D) volumes, got shape {tuple(pt.shape)}.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    if per not in ("volume", "slice"):
        raise ValueError(f"per must be 'volume' or 'slice', got {per!r}.")
    work = pt.to(_float_dtype(pt))
    inside = (
        torch.ones(work.shape, dtype=torch.bool, device=work.device)
        if mask is None
        else broadcast_mask(mask, work.shape, work.device)
    )
    bad = inside & ~((work >= 0) & (work <= 1))  # NaN fails both comparisons
    if bool(bad.any()):
        n_nan = int((inside & torch.isnan(work)).sum())
        raise ValueError(
            f"p-values inside the mask must lie in [0, 1], got {int(bad.sum())} invalid values ({n_nan} NaN)."
        )
    if per == "slice" and work.ndim == 5:  # (B, C, H, W, D) -> (B, C, D, H, W): one group per slice
        work, inside = work.movedim(-1, 2), inside.movedim(-1, 2)
        group_shape = work.shape[:3]
    else:
        group_shape = work.shape[:2]
    flat_p = work.reshape(int(np.prod(group_shape)), -1)
    flat_in = inside.reshape(flat_p.shape)
    n_tests = flat_in.sum(dim=1, keepdim=True)  # m per group
    sorted_p = torch.sort(torch.where(flat_in, flat_p, torch.full_like(flat_p, float("inf"))), dim=1).values
    ranks = torch.arange(1, flat_p.shape[1] + 1, device=flat_p.device, dtype=torch.float64).unsqueeze(0)
    # scipy's adjusted p = p * m / k; the step-up rule rejects up to the largest k with p_(k) * m / k <= alpha
    passing = (sorted_p.double() * n_tests / ranks <= alpha) & (ranks <= n_tests)
    k_star = torch.where(passing, ranks, torch.zeros_like(ranks)).amax(dim=1, keepdim=True).long()
    threshold = torch.gather(sorted_p, 1, (k_star - 1).clamp_min(0))
    detected = flat_in & (flat_p <= threshold) & (k_star > 0)
    detected = detected.reshape(work.shape)
    if per == "slice" and work.ndim == 5:
        detected = detected.movedim(2, -1)
    if isinstance(p, np.ndarray):
        return detected.cpu().numpy()
    if isinstance(p, MetaTensor):
        return convert_to_dst_type(detected.contiguous(), p, dtype=torch.bool)[0]
    return detected
