"""Pure tensor functions that turn predicted quantiles into anomaly maps.

Quantiles -> (mu, sigma) under a Gaussian model of x given z, z-scores, p-values, Benjamini-Hochberg
false-discovery-rate masks, and the usual post-processing filters. No engine or file handling lives here.

Reference:
    Akrami, Joshi, Aydore, Leahy. "Addressing Variance Shrinkage in Variational Autoencoders using
    Quantile Regression", arXiv:2010.09042 (2020).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.layers import median_filter as _monai_median_filter
from monai.utils import convert_to_dst_type, convert_to_tensor
from scipy import ndimage
from scipy.stats import norm

__all__ = [
    "FLAIR_CHANNEL",
    "PPF_085",
    "check_quantiles",
    "split_quantiles",
    "quantiles_to_mu_sigma",
    "z_score",
    "quantile_function_score",
    "interpolate_normal_score",
    "p_value",
    "benjamini_hochberg",
    "median_filter",
    "remove_small_components",
    "anomaly_maps",
]

#: Index of the FLAIR channel in the (T1, T2, FLAIR) channel order used throughout the package.
FLAIR_CHANNEL = 2

#: ``Phi^-1(0.85)``: the number of standard deviations between the 0.15 and 0.5 quantiles of a Gaussian.
#: The authors' reference code omits this factor when it turns quantiles into sigma; we do not.
PPF_085 = float(norm.ppf(0.85))

_SQRT1_2 = 0.7071067811865476  # 1 / sqrt(2)


def _as_tensor(x: Any) -> torch.Tensor:
    """A plain ``torch.Tensor`` view of ``x`` (numpy arrays and MetaTensors accepted, metadata dropped)."""
    return convert_to_tensor(x, track_meta=False)


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype (float16, bfloat16, ints, bool) computes in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _broadcast_mask(mask: Any, shape: Sequence[int], device: torch.device, name: str = "mask") -> torch.Tensor:
    """Boolean mask (non-zero = inside) broadcast to ``shape``.

    Raises:
        ValueError: when ``mask`` cannot be broadcast to ``shape`` without changing ``shape``.
    """
    m = _as_tensor(mask).to(device)
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


def quantiles_to_mu_sigma(
    pred: torch.Tensor, quantiles: Sequence[float], sigma_floor: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian mean and standard deviation from predicted conditional quantiles.

    ``mu`` is the 0.5 quantile when it is predicted, otherwise the least-squares intercept of ``q_tau`` against
    ``Phi^-1(tau)``; ``sigma`` is the least-squares slope about ``mu``. For the paper's ``(0.15, 0.5)`` this is
    exactly ``(q_0.5 - q_0.15) / Phi^-1(0.85)`` (the authors' code drops the ``Phi^-1(0.85)`` factor; we keep it).
    Crossing quantiles give a negative slope, which the floor clamps, so sigma is always ``>= sigma_floor`` and
    never zero or NaN.

    Args:
        pred: quantile-major prediction ``(B, Q*C, spatial...)``.
        quantiles: the ``Q`` quantile levels, strictly increasing, at least two.
        sigma_floor: smallest sigma returned, ``> 0``.

    Returns:
        ``(mu, sigma)``, each ``(B, C, spatial...)``, float32 (float64 when ``pred`` is float64).

    Raises:
        ValueError: for fewer than two quantiles, a bad layout or a non-positive ``sigma_floor``.
    """
    q = check_quantiles(quantiles)
    if len(q) < 2:
        raise ValueError(f"at least two quantiles are needed to estimate sigma, got {q}.")
    if not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}.")
    pred = _as_tensor(pred)
    groups = split_quantiles(pred, len(q))
    groups = groups.to(_float_dtype(groups))
    ppf = torch.as_tensor(norm.ppf(q), dtype=groups.dtype, device=groups.device)
    ppf = ppf.view(1, len(q), *([1] * (groups.ndim - 2)))
    if 0.5 in q:
        mu = groups[:, q.index(0.5)]
        centred_ppf = ppf  # Phi^-1(0.5) = 0: the regression line goes through (0, mu)
    else:
        centred_ppf = ppf - ppf.mean(dim=1, keepdim=True)
        slope = (centred_ppf * groups).sum(1) / centred_ppf.pow(2).sum(1)
        mu = groups.mean(1) - slope * ppf.mean(dim=1)
    sigma = (centred_ppf * (groups - mu.unsqueeze(1))).sum(1) / centred_ppf.pow(2).sum(1)
    sigma = torch.nan_to_num(sigma, nan=sigma_floor).clamp_min(sigma_floor)
    return mu, sigma


def z_score(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, sigma_floor: float = 1e-3) -> torch.Tensor:
    """``(x - mu) / max(sigma, sigma_floor)``, computed in float32 so reduced precision cannot overflow.

    Args:
        x: observed intensities.
        mu: predicted mean, same shape as ``x``.
        sigma: predicted standard deviation, same shape as ``x``.
        sigma_floor: smallest sigma used, ``> 0``.

    Returns:
        Finite z-scores (float32, float64 for float64 input): NaN becomes 0, infinities become ``+-1e6``.

    Raises:
        ValueError: when the shapes differ or ``sigma_floor <= 0``.
    """
    if x.shape != mu.shape or mu.shape != sigma.shape:
        raise ValueError(
            f"x, mu and sigma must have the same shape, got {tuple(x.shape)}, {tuple(mu.shape)}, "
            f"{tuple(sigma.shape)}."
        )
    if not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}.")
    dtype = torch.float64 if torch.float64 in (x.dtype, mu.dtype, sigma.dtype) else torch.float32
    sigma_ = torch.nan_to_num(sigma.to(dtype), nan=sigma_floor).clamp_min(sigma_floor)
    z = (x.to(dtype) - mu.to(dtype)) / sigma_
    return torch.nan_to_num(z, nan=0.0, posinf=1e6, neginf=-1e6)


def quantile_function_score(
    x: Any, pred: Any, quantiles: Sequence[float], sigma_floor: float = 1e-3, channel: int | None = None
) -> torch.Tensor:
    """Score read from the predicted quantile function: where ``x`` lies between the predicted quantiles.

    The predicted quantiles ``q_1 <= ... <= q_Q`` at levels ``tau_1 < ... < tau_Q`` give the points
    ``(q_k, Phi^-1(tau_k))`` of the conditional distribution on the normal-score scale; the score is their piecewise
    linear interpolant at ``x``, continued linearly beyond ``q_1`` and ``q_Q`` with the slope of the outer segments
    (a Gaussian tail matched to the two outer quantiles). So ``Phi(score)`` is the predicted CDF at ``x`` between the
    outer quantiles, and ``p_value(score)`` its upper tail. For two quantiles it equals the Gaussian z-score
    ``(x - mu) / sigma`` of :func:`quantiles_to_mu_sigma` when one of them is 0.5; with tail quantiles (e.g. 0.025,
    0.15, 0.5, 0.85, 0.975) skewed or heavy tails are followed instead of extrapolated from the centre.

    Args:
        x: observed intensities ``(B, C, spatial...)`` (or ``(B, 1, ...)`` with ``channel``).
        pred: quantile-major prediction ``(B, Q*C, spatial...)``.
        quantiles: the ``Q >= 2`` levels, strictly increasing.
        sigma_floor: smallest quantile spacing per unit of normal score (as the sigma floor of the z-score): keeps
            the score finite where predicted quantiles coincide.
        channel: score only this input channel (``x`` may then have one channel); ``None``: every channel.

    Returns:
        Finite scores ``(B, C, spatial...)`` (``(B, 1, ...)`` with ``channel``), float32 (float64 for float64 input).
        Crossing predictions are sorted first.

    Raises:
        ValueError: for fewer than two quantiles, mismatched shapes or a non-positive ``sigma_floor``.
    """
    q = check_quantiles(quantiles)
    if len(q) < 2:
        raise ValueError(f"at least two quantiles are needed for a quantile-function score, got {q}.")
    if not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}.")
    groups = split_quantiles(_as_tensor(pred), len(q))
    groups = groups.to(_float_dtype(groups))
    if channel is not None:
        groups = _select_channel(groups.movedim(1, -1), channel, "pred").movedim(-1, 1)
    xt = _as_tensor(x).to(device=groups.device)
    if channel is not None and xt.shape[1] != 1:
        xt = _select_channel(xt, channel, "x")
    if tuple(xt.shape) != tuple(groups[:, 0].shape):
        raise ValueError(
            f"x of shape {tuple(xt.shape)} does not match the {len(q)} predicted quantiles "
            f"{tuple(groups[:, 0].shape)}."
        )
    nscore = torch.as_tensor(norm.ppf(q), dtype=groups.dtype, device=groups.device)
    return interpolate_normal_score(xt.to(groups.dtype), groups, nscore, sigma_floor)


def interpolate_normal_score(
    x: torch.Tensor, groups: torch.Tensor, normal_scores: torch.Tensor, sigma_floor: float
) -> torch.Tensor:
    """The core of :func:`quantile_function_score` (plain torch, TorchScript-compatible, no checks).

    Args:
        x: ``(B, C, spatial...)`` intensities.
        groups: ``(B, Q, C, spatial...)`` predicted quantiles (sorted here).
        normal_scores: ``(Q,)`` ``Phi^-1(tau_k)``, increasing.
        sigma_floor: smallest quantile spacing per unit of normal score.
    """
    num_q = groups.shape[1]
    groups = torch.sort(groups, dim=1).values
    shape = [1, num_q] + [1] * (groups.dim() - 2)
    nscore = normal_scores.to(groups.dtype).reshape(shape).expand_as(groups)
    xt = x.unsqueeze(1)
    # segment j joins quantiles j and j + 1: the last quantile <= x, clamped to the outer segments for extrapolation
    below = (groups <= xt).sum(dim=1, keepdim=True)
    j = (below - 1).clamp(0, num_q - 2)
    q_lo = groups.gather(1, j)
    q_hi = groups.gather(1, j + 1)
    n_lo = nscore.gather(1, j)
    n_hi = nscore.gather(1, j + 1)
    width = torch.maximum(q_hi - q_lo, sigma_floor * (n_hi - n_lo))
    score = (n_lo + (xt - q_lo) * (n_hi - n_lo) / width).squeeze(1)
    return torch.nan_to_num(score, nan=0.0, posinf=1e6, neginf=-1e6)


def p_value(z: torch.Tensor, alternative: str = "greater") -> torch.Tensor:
    """p-value of a standard-normal z-score.

    Args:
        z: z-scores.
        alternative: ``"greater"`` (hyperintense anomalies, ``1 - Phi(z)``), ``"less"`` (``Phi(z)``) or
            ``"two-sided"`` (``2 * (1 - Phi(|z|))``).

    Returns:
        p-values in ``[0, 1]``, float32 (float64 for float64 input).

    Raises:
        ValueError: for an unknown ``alternative``.
    """
    # 0.5 * erfc(z / sqrt(2)) keeps full relative precision in the upper tail; torch.special.ndtr(-z) computes
    # 1 - Phi(z) there and returns 0 for z > 5.5 in float32 (and loses digits in float64).
    z = z.to(_float_dtype(z)) * _SQRT1_2
    if alternative == "greater":
        return 0.5 * torch.special.erfc(z)
    if alternative == "less":
        return 0.5 * torch.special.erfc(-z)
    if alternative == "two-sided":
        return torch.special.erfc(z.abs()).clamp_max(1.0)
    raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}.")


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
    pt = _as_tensor(p)
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
        else _broadcast_mask(mask, work.shape, work.device)
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


def median_filter(x: Any, size: int | Sequence[int] = 3) -> Any:
    """Median filter over the spatial axes of ``(B, C, spatial...)`` data, with MONAI's ``median_filter``.

    The window is ``size`` voxels along every spatial axis (3 x 3 for slices, 3 x 3 x 3 for volumes), or one odd
    size per spatial axis (e.g. ``(3, 3, 1)`` filters each axial slice of a volume); borders are
    replicate-padded. Reduced-precision and boolean inputs are filtered in float32 and cast back.

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, H, W, D)`` tensor, MetaTensor or numpy array.
        size: odd window size ``>= 1``, or one per spatial axis.

    Returns:
        The filtered data, same shape, type and dtype as ``x``.

    Raises:
        ValueError: for an even or non-positive ``size`` or input without 1-3 spatial axes.
    """
    xt = _as_tensor(x)
    spatial_dims = xt.ndim - 2
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"x must be (B, C, spatial...) with 1-3 spatial axes, got shape {tuple(xt.shape)}.")
    sizes = [size] * spatial_dims if isinstance(size, (int, float)) else list(size)
    if len(sizes) != spatial_dims or any(int(k) != k or k < 1 or k % 2 == 0 for k in sizes):
        raise ValueError(f"size must be an odd integer >= 1 or {spatial_dims} of them, got {size}.")
    if all(k == 1 for k in sizes):
        return x
    work = xt.to(_float_dtype(xt))
    out = _monai_median_filter(work, kernel_size=[int(k) for k in sizes], spatial_dims=spatial_dims)
    if xt.dtype == torch.bool:
        out = out > 0.5
    return convert_to_dst_type(out, x)[0]


def remove_small_components(mask: Any, min_size: int, connectivity: int = 1) -> Any:
    """Remove connected components smaller than ``min_size`` voxels, per batch item and channel.

    Components are labelled with ``scipy.ndimage.label``; a component of exactly ``min_size`` voxels is kept.

    Args:
        mask: ``(B, C, spatial...)`` binary mask (non-zero = foreground), torch, MetaTensor or numpy.
        min_size: smallest component size kept, in voxels.
        connectivity: neighbourhood of ``scipy.ndimage.generate_binary_structure``: 1 = faces (4/6-connected),
            up to the number of spatial axes (8/26-connected).

    Returns:
        ``mask`` with the small components set to zero, same type, dtype and device.

    Raises:
        ValueError: for an unbatched mask, a negative ``min_size`` or a bad ``connectivity``.
    """
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim < 3:
        raise ValueError(f"mask must be batched (B, C, spatial...), got shape {tuple(arr.shape)}.")
    spatial = arr.ndim - 2
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}.")
    if not 1 <= connectivity <= spatial:
        raise ValueError(f"connectivity must be in [1, {spatial}] for {spatial} spatial axes, got {connectivity}.")
    structure = ndimage.generate_binary_structure(spatial, connectivity)
    foreground = arr != 0
    keep = np.zeros_like(foreground)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            labels, _ = ndimage.label(foreground[b, c], structure=structure)
            sizes = np.bincount(labels.ravel())
            large = sizes >= min_size
            large[0] = False  # background
            keep[b, c] = large[labels]
    out = np.where(keep, arr, np.zeros((), dtype=arr.dtype)).astype(arr.dtype, copy=False)
    return convert_to_dst_type(out, mask)[0]


def _select_channel(x: torch.Tensor, channel: int | None, name: str) -> torch.Tensor:
    if x.ndim < 3:
        raise ValueError(f"{name} must be batched (B, C, spatial...), got shape {tuple(x.shape)}.")
    if channel is None or x.shape[1] == 1:
        return x
    if not -x.shape[1] <= channel < x.shape[1]:
        raise ValueError(f"channel {channel} is out of range for {name} with {x.shape[1]} channels.")
    c = channel % x.shape[1]
    return x[:, c : c + 1]


def anomaly_maps(
    image: Any,
    mu: Any,
    sigma: Any,
    channel: int | None = FLAIR_CHANNEL,
    mask: Any = None,
    alternative: str = "greater",
    sigma_floor: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """z-score and p-value maps of one contrast (FLAIR by default) under the predicted Gaussian.

    Args:
        image: observed intensities ``(B, C, spatial...)``.
        mu: predicted mean, ``(B, C, spatial...)`` or already one channel ``(B, 1, spatial...)``.
        sigma: predicted standard deviation, same layout as ``mu``.
        channel: the channel scored (``FLAIR_CHANNEL`` = 2). Inputs with one channel are used as they are;
            ``None`` scores every channel.
        mask: brain mask broadcastable to the selected ``(B, 1, spatial...)``; outside it ``z = 0`` and ``p = 1``.
        alternative: ``"greater"`` (hyperintense lesions), ``"less"`` or ``"two-sided"``, see :func:`p_value`.
        sigma_floor: smallest sigma used in the z-score.

    Returns:
        ``{"z": z, "p": p}``, each ``(B, 1, spatial...)`` (``(B, C, ...)`` for ``channel=None``), float32
        (float64 for float64 input), finite; a MetaTensor ``image`` passes its metadata on.

    Raises:
        ValueError: for mismatched shapes, a bad channel, mask or alternative.
    """
    x = _select_channel(_as_tensor(image), channel, "image")
    m = _select_channel(_as_tensor(mu), channel, "mu").to(x.device)
    s = _select_channel(_as_tensor(sigma), channel, "sigma").to(x.device)
    z = z_score(x, m, s, sigma_floor=sigma_floor)
    p = p_value(z, alternative=alternative)
    if mask is not None:
        inside = _broadcast_mask(mask, z.shape, z.device)
        z = torch.where(inside, z, torch.zeros((), dtype=z.dtype, device=z.device))
        p = torch.where(inside, p, torch.ones((), dtype=p.dtype, device=p.device))
    if isinstance(image, MetaTensor):  # keep the image's metadata (affine, filename) for saving
        z = convert_to_dst_type(z, image, dtype=z.dtype)[0]
        p = convert_to_dst_type(p, image, dtype=p.dtype)[0]
    return {"z": z, "p": p}
