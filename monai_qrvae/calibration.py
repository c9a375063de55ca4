"""Label-free thresholds calibrated on healthy scans: conformal p-values and volume-level (max-statistic) control.

The score that ships (for example the median-filtered FLAIR z-map) is not exactly N(0, 1) on healthy tissue, so
``1 - Phi(z)`` p-values do not mean what they say. Here the null distribution is taken from healthy
``calibration`` volumes, scored with exactly the post-processing that ships:

- **conformal p-values** (Bates et al. 2023, "Testing for outliers with conformal p-values"): for a score ``s``,
  ``p = (1 + #{calibration scores >= s}) / (n + 1)`` over the ``n`` calibration brain voxels, pooled or within a
  stratum (for example bins of slice position). Benjamini-Hochberg on them is *conformal BH*
  (:func:`conformal_bh`). The guarantee assumes healthy voxels exchangeable with the calibration voxels; BH's FDR
  control further assumes independence or positive dependence of the voxels, which spatially smooth maps only
  approximate.
- **volume-level control** (the max-statistic of permutation testing in SPM/FSL): with ``M_1..M_n`` the maximum
  score of each of ``n`` healthy calibration volumes, the threshold ``t`` is the ``k``-th smallest ``M_i``,
  ``k = ceil((n + 1)(1 - alpha))``; a new healthy volume exchangeable with them has a voxel above ``t`` with
  probability at most ``alpha`` (:func:`volume_threshold`). It needs ``n + 1 >= 1 / alpha`` volumes. The
  equivalent adjusted p-map is ``(1 + #{M_i >= s}) / (n + 1)`` (:func:`conformal_p_values` against the maxima).
- optionally a **minimum cluster size** calibrated the same way: the largest connected component above a
  cluster-forming threshold, per calibration volume (:func:`max_cluster_size`, :func:`volume_threshold`).

:class:`Calibration` keeps what is needed (sorted voxel scores, per-volume maxima, the score definition) and is
saved beside the model weights as ``calibration.pt``; :func:`fit_calibration` computes it from a datalist section
with the shipped pipeline, collecting the scores with an Ignite handler (:class:`CalibrationCollector`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from scipy import ndimage

__all__ = [
    "CALIBRATION_FILE",
    "MAX_VOXELS",
    "STRATIFY",
    "Calibration",
    "CalibrationCollector",
    "conformal_p_values",
    "stratified_p_values",
    "slice_strata",
    "conformal_bh",
    "order_statistic_index",
    "min_volumes",
    "volume_threshold",
    "max_cluster_size",
    "subsample_sorted",
    "run_shipped_score",
    "fit_calibration",
    "load_calibration",
]

#: file name of a model's calibration, beside ``model.pt``.
CALIBRATION_FILE = "calibration.pt"
#: voxel scores kept: above this the sorted scores are thinned to evenly spaced order statistics.
MAX_VOXELS = 2_000_000
#: stratifications of the voxel scores: ``"none"`` (pooled) or ``"slice"`` (bins of slice position in the stack).
STRATIFY = ("none", "slice")
_FORMAT_VERSION = 1


def _flat(x: Any) -> torch.Tensor:
    """A plain float tensor view of ``x`` (numpy, MetaTensor or tensor), metadata dropped."""
    t = convert_to_tensor(x, track_meta=False)
    return t if t.is_floating_point() else t.float()


def conformal_p_values(scores: Any, sorted_calibration: torch.Tensor) -> torch.Tensor:
    """Conformal p-values ``(1 + #{c >= s}) / (n + 1)`` of ``scores`` against ``n`` calibration scores ``c``.

    Vectorised with ``torch.searchsorted``; NaN scores get ``p = 1``.

    Args:
        scores: scores of any shape (tensor, MetaTensor or numpy array).
        sorted_calibration: the ``n`` calibration scores, 1-D, sorted ascending (NaN-free).

    Returns:
        p-values of ``scores``' shape in ``[1 / (n + 1), 1]``, float32 (float64 for float64 scores).

    Raises:
        ValueError: when ``sorted_calibration`` is not 1-D.
    """
    s = _flat(scores)
    cal = torch.as_tensor(sorted_calibration).to(s.device)
    if cal.ndim != 1:
        raise ValueError(f"sorted_calibration must be 1-D, got shape {tuple(cal.shape)}.")
    n = cal.numel()
    work_dtype = torch.float64 if torch.float64 in (s.dtype, cal.dtype) else torch.float32
    below = torch.searchsorted(cal.to(work_dtype).contiguous(), s.to(work_dtype).contiguous(), right=False)
    p = (1.0 + (n - below).double()) / (n + 1.0)
    p = torch.where(torch.isnan(s), torch.ones_like(p), p)
    return p.to(torch.float64 if s.dtype == torch.float64 else torch.float32)


def slice_strata(shape: Sequence[int], num_strata: int) -> torch.Tensor:
    """Stratum of every voxel by its slice position: slice ``i`` of ``N`` (last axis) is in ``floor(i K / N)``.

    Args:
        shape: the map's shape; the last axis is the slice axis.
        num_strata: ``K``, the number of bins, ``>= 1``.

    Returns:
        int64 stratum indices of ``shape``.
    """
    if num_strata < 1:
        raise ValueError(f"num_strata must be >= 1, got {num_strata}.")
    n = int(shape[-1])
    ids = torch.div(torch.arange(n) * num_strata, max(n, 1), rounding_mode="floor")
    return ids.expand(tuple(shape)).clone()


def stratified_p_values(
    scores: Any, strata: torch.Tensor, sorted_scores: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """Conformal p-values with one calibration set per stratum.

    Args:
        scores: scores of any shape.
        strata: int stratum index of every score (same shape).
        sorted_scores: the calibration scores of all strata, stratum after stratum, each sorted ascending.
        offsets: ``K + 1`` int boundaries: stratum ``k``'s scores are ``sorted_scores[offsets[k]:offsets[k + 1]]``.

    Returns:
        p-values of ``scores``' shape (float32; float64 for float64 scores).

    Raises:
        ValueError: for a shape mismatch, a stratum index out of range or an empty calibration stratum in use.
    """
    s = _flat(scores)
    st = torch.as_tensor(strata).to(s.device)
    if st.shape != s.shape:
        raise ValueError(f"strata shape {tuple(st.shape)} does not match the scores {tuple(s.shape)}.")
    k = len(offsets) - 1
    if st.numel() and (int(st.min()) < 0 or int(st.max()) >= k):
        raise ValueError(f"stratum indices must be in [0, {k}), got [{int(st.min())}, {int(st.max())}].")
    p = torch.ones(s.shape, dtype=torch.float64 if s.dtype == torch.float64 else torch.float32, device=s.device)
    for j in range(k):
        sel = st == j
        if not bool(sel.any()):
            continue
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        if hi <= lo:
            raise ValueError(f"calibration stratum {j} has no score but {int(sel.sum())} voxels fall in it.")
        p[sel] = conformal_p_values(s[sel], sorted_scores[lo:hi]).to(p.dtype)
    return p


def order_statistic_index(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``: the rank (1-based) of the calibration maximum used as threshold.

    Raises:
        ValueError: when ``alpha`` is not in (0, 1) or ``n < 0``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    return int(math.ceil((n + 1) * (1.0 - alpha) - 1e-9))  # 1e-9: (n + 1) * 0.95 must not round up past an integer


def min_volumes(alpha: float) -> int:
    """The fewest healthy calibration volumes for a volume-level threshold at ``alpha`` (``n + 1 >= 1 / alpha``)."""
    n = 0
    while order_statistic_index(n, alpha) > n:
        n += 1
    return n


def volume_threshold(maxima: Any, alpha: float) -> float:
    """Volume-level threshold: the ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` healthy per-volume maxima.

    A new healthy volume exchangeable with the calibration volumes has any score ``> threshold`` with probability
    at most ``alpha``.

    Args:
        maxima: the per-volume maximum score of each calibration volume (1-D).
        alpha: the tolerated fraction of healthy volumes with any detection, in (0, 1).

    Returns:
        The threshold (detect ``score > threshold``).

    Raises:
        ValueError: when ``n + 1 < 1 / alpha`` (too few volumes for ``alpha``).
    """
    m = torch.sort(_flat(maxima).flatten().double()).values
    n = m.numel()
    k = order_statistic_index(n, alpha)
    if k > n:
        raise ValueError(
            f"a volume-level threshold needs at least {min_volumes(alpha)} healthy calibration volumes for alpha "
            f"{alpha:g} (n + 1 >= 1 / alpha), got {n}; add healthy volumes to the calibration section or use a "
            f"larger alpha (the smallest possible with {n} is {1.0 / (n + 1):.3g})."
        )
    return float(m[k - 1])


def max_cluster_size(mask: Any, connectivity: int = 1) -> int:
    """Size in voxels of the largest connected component of a binary map (0 when empty).

    Args:
        mask: binary map (non-zero = foreground), any number of spatial axes, no channel axis.
        connectivity: 1 = faces, up to the number of axes (see ``scipy.ndimage.generate_binary_structure``).
    """
    arr = np.asarray(convert_to_tensor(mask, track_meta=False).cpu()) != 0
    if not arr.any():
        return 0
    labels, _ = ndimage.label(arr, structure=ndimage.generate_binary_structure(arr.ndim, connectivity))
    return int(np.bincount(labels.ravel())[1:].max())


def subsample_sorted(sorted_scores: torch.Tensor, max_count: int) -> torch.Tensor:
    """Thin sorted scores to ``max_count`` evenly spaced order statistics (deterministic; unchanged if fewer)."""
    n = sorted_scores.numel()
    if n <= max_count:
        return sorted_scores
    index = torch.div((2 * torch.arange(max_count, dtype=torch.int64) + 1) * n, 2 * max_count, rounding_mode="floor")
    return sorted_scores[index]


def _sorted_strata(
    scores: torch.Tensor, strata: torch.Tensor | None, num_strata: int, max_voxels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the scores within each stratum and thin them to ``max_voxels`` in all (shared out by stratum size)."""
    if strata is None:
        num_strata, strata = 1, torch.zeros_like(scores, dtype=torch.int64)
    n = scores.numel()
    parts, offsets = [], [0]
    for j in range(num_strata):
        part = torch.sort(scores[strata == j]).values
        budget = max(1, int(max_voxels * part.numel() / max(n, 1))) if part.numel() else 0
        part = subsample_sorted(part, budget)
        parts.append(part)
        offsets.append(offsets[-1] + part.numel())
    return torch.cat(parts).float(), torch.tensor(offsets, dtype=torch.int64)


@dataclass(eq=False)  # tensors: compare fields explicitly
class Calibration:
    """Healthy-calibrated null distribution of one score definition, saved beside a model's weights.

    Attributes:
        voxel_scores: float32 calibration brain-voxel scores, sorted ascending within each stratum, strata one
            after the other (thinned to evenly spaced order statistics above :data:`MAX_VOXELS`).
        offsets: ``K + 1`` int64 stratum boundaries in ``voxel_scores`` (``[0, len]`` when pooled).
        volume_maxima: float32 maximum brain score of each calibration volume, in datalist order.
        score: the score definition it was computed for: ``method``, ``score_median``, ``channel``, ``score_key``
            and ``score_name`` (e.g. ``"z[FLAIR]"``).
        stratify: ``"none"`` or ``"slice"`` (``K`` bins of slice position of the analysed stack).
        n_voxels: calibration brain voxels before thinning.
        cluster_threshold: cluster-forming score threshold of the cluster-size calibration (``None``: not fitted).
        max_cluster_sizes: largest component above ``cluster_threshold`` of each calibration volume (int64).
        names: the calibration volumes (file names), for the record.
    """

    voxel_scores: torch.Tensor
    offsets: torch.Tensor
    volume_maxima: torch.Tensor
    score: dict[str, Any] = field(default_factory=dict)
    stratify: str = "none"
    n_voxels: int = 0
    cluster_threshold: float | None = None
    max_cluster_sizes: torch.Tensor | None = None
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.stratify not in STRATIFY:
            raise ValueError(f"stratify must be one of {STRATIFY}, got {self.stratify!r}.")
        self.voxel_scores = torch.as_tensor(self.voxel_scores, dtype=torch.float32).flatten()
        self.offsets = torch.as_tensor(self.offsets, dtype=torch.int64).flatten()
        self.volume_maxima = torch.as_tensor(self.volume_maxima, dtype=torch.float32).flatten()
        if self.max_cluster_sizes is not None:
            self.max_cluster_sizes = torch.as_tensor(self.max_cluster_sizes, dtype=torch.int64).flatten()
        if len(self.offsets) < 2 or int(self.offsets[0]) != 0 or int(self.offsets[-1]) != self.voxel_scores.numel():
            raise ValueError(
                f"offsets must run from 0 to the {self.voxel_scores.numel()} voxel scores, got {self.offsets.tolist()}."
            )
        if bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError(f"offsets must be non-decreasing, got {self.offsets.tolist()}.")
        if self.stratify == "none" and self.num_strata != 1:
            raise ValueError(f"stratify 'none' needs one stratum, got {self.num_strata}.")
        if self.voxel_scores.numel() == 0:
            raise ValueError("a calibration needs at least one voxel score, got none.")
        if not bool(torch.isfinite(self.voxel_scores).all()):
            raise ValueError("calibration voxel scores must be finite (NaN or Inf found).")

    @property
    def n_volumes(self) -> int:
        """``n``: the number of calibration volumes."""
        return self.volume_maxima.numel()

    @property
    def num_strata(self) -> int:
        """``K``: the number of strata (1 when pooled)."""
        return len(self.offsets) - 1

    @classmethod
    def from_scores(
        cls,
        volumes: Sequence[Any],
        masks: Sequence[Any] | None = None,
        score: dict[str, Any] | None = None,
        stratify: str = "none",
        num_strata: int = 1,
        max_voxels: int = MAX_VOXELS,
        cluster_p: float | None = None,
        connectivity: int = 1,
        names: Sequence[str] = (),
    ) -> Calibration:
        """Build a calibration from the score maps of healthy volumes.

        Args:
            volumes: one score map per calibration volume (any shape; the last axis is the slice axis).
            masks: the brain (analysis) mask of each, same shapes; ``None`` uses every voxel.
            score: the score definition (see the class attributes).
            stratify: ``"none"`` or ``"slice"``.
            num_strata: slice-position bins for ``stratify="slice"``.
            max_voxels: most voxel scores kept (evenly spaced order statistics beyond).
            cluster_p: also calibrate the largest cluster size: components of voxels whose pooled conformal
                p-value is ``<= cluster_p`` (``None``: skip).
            connectivity: connectivity of those clusters.
            names: volume names for the record.

        Raises:
            ValueError: for no volume, mismatched masks, an empty brain mask or a bad stratification.
        """
        if not volumes:
            raise ValueError("a calibration needs at least one healthy volume, got none.")
        if stratify not in STRATIFY:
            raise ValueError(f"stratify must be one of {STRATIFY}, got {stratify!r}.")
        if stratify == "none":
            num_strata = 1
        if masks is not None and len(masks) != len(volumes):
            raise ValueError(f"got {len(masks)} masks for {len(volumes)} volumes.")
        values, strata, maxima, maps = [], [], [], []
        for i, vol in enumerate(volumes):
            s = _flat(vol).detach().cpu().float()
            m = torch.ones_like(s, dtype=torch.bool) if masks is None else _flat(masks[i]).cpu() > 0
            if m.shape != s.shape:
                raise ValueError(f"volume {i}: mask shape {tuple(m.shape)} does not match the scores {tuple(s.shape)}.")
            if not bool(m.any()):
                raise ValueError(f"volume {i}: the brain mask is empty; expected brain voxels to calibrate on.")
            values.append(s[m])
            maxima.append(float(s[m].max()))
            if stratify == "slice":
                strata.append(slice_strata(s.shape, num_strata)[m])
            maps.append(torch.where(m, s, torch.full_like(s, -torch.inf)))
        pooled = torch.cat(values)
        sorted_scores, offsets = _sorted_strata(pooled, torch.cat(strata) if strata else None, num_strata, max_voxels)
        cal = cls(
            voxel_scores=sorted_scores,
            offsets=offsets,
            volume_maxima=torch.tensor(maxima),
            score=dict(score or {}),
            stratify=stratify,
            n_voxels=pooled.numel(),
            names=list(names),
        )
        if cluster_p is not None:
            cal.fit_clusters(maps, cluster_p, connectivity)
        return cal

    def fit_clusters(self, maps: Sequence[torch.Tensor], cluster_p: float, connectivity: int = 1) -> None:
        """Calibrate the largest cluster size above the pooled ``1 - cluster_p`` voxel quantile (see ``from_scores``).

        ``maps`` are the calibration score maps with ``-inf`` outside the brain.
        """
        if not 0.0 < cluster_p < 1.0:
            raise ValueError(f"cluster_p must be in (0, 1), got {cluster_p}.")
        pooled = torch.sort(self.voxel_scores).values
        # smallest t with conformal p(s) <= cluster_p for every s > t: (1 + #{c >= s}) / (n + 1) <= cluster_p
        n = pooled.numel()
        allowed = int(math.floor(cluster_p * (n + 1) + 1e-9)) - 1  # most calibration scores >= s allowed
        self.cluster_threshold = float(pooled[max(n - 1 - allowed, 0)]) if allowed >= 0 else float(pooled[-1])
        self.max_cluster_sizes = torch.tensor(
            [max_cluster_size(m > self.cluster_threshold, connectivity) for m in maps], dtype=torch.int64
        )
        self.score["cluster_p"] = float(cluster_p)
        self.score["cluster_connectivity"] = int(connectivity)

    # --- using it -----------------------------------------------------------------------------------------------
    def p_values(self, scores: Any, strata: torch.Tensor | None = None) -> torch.Tensor:
        """Conformal p-values of ``scores`` (pooled, or per stratum; ``strata`` defaults to slice bins)."""
        if self.num_strata == 1:
            return conformal_p_values(scores, self.voxel_scores)
        s = _flat(scores)
        if strata is None:
            strata = slice_strata(s.shape, self.num_strata)
        return stratified_p_values(s, strata, self.voxel_scores, self.offsets)

    def volume_threshold(self, alpha: float) -> float:
        """The volume-level threshold at ``alpha`` (see :func:`volume_threshold`)."""
        return volume_threshold(self.volume_maxima, alpha)

    def volume_p_values(self, scores: Any) -> torch.Tensor:
        """Max-statistic adjusted p-values ``(1 + #{M_i >= s}) / (n + 1)``: ``p <= alpha`` iff above the threshold."""
        return conformal_p_values(scores, torch.sort(self.volume_maxima).values)

    def cluster_size_threshold(self, alpha: float) -> int:
        """Smallest cluster size a healthy volume exceeds with probability at most ``alpha`` (keep ``size > it``)."""
        if self.max_cluster_sizes is None or self.cluster_threshold is None:
            raise ValueError("this calibration has no cluster-size calibration; run it with a cluster_p.")
        return int(volume_threshold(self.max_cluster_sizes.float(), alpha))

    def check_score(self, **expected: Any) -> None:
        """Raise ``ValueError`` when the calibration was computed for another score definition.

        Example: ``cal.check_score(method="qrvae", score_median=3)``; keys the calibration does not record are
        not checked.
        """
        wrong = {k: (self.score[k], v) for k, v in expected.items() if k in self.score and self.score[k] != v}
        if wrong:
            details = ", ".join(f"{k}: calibrated {a!r}, used {b!r}" for k, (a, b) in wrong.items())
            raise ValueError(
                f"the calibration was computed for another score ({details}); run 'qrvae calibrate' again for the "
                "post-processing in use."
            )

    def summary(self, alphas: Sequence[float] = (0.01, 0.05, 0.1)) -> dict[str, Any]:
        """A short description: sizes, score definition, smallest p-value, volume thresholds where ``n`` allows."""
        pooled = torch.sort(self.voxel_scores).values
        out: dict[str, Any] = {
            "n_volumes": self.n_volumes,
            "n_voxels": self.n_voxels,
            "voxel_scores_kept": self.voxel_scores.numel(),
            "smallest_p": 1.0 / (self.voxel_scores.numel() + 1),
            "stratify": self.stratify,
            "num_strata": self.num_strata,
            "score": dict(self.score),
            "voxel_quantiles": {str(q): float(pooled[int(q * (pooled.numel() - 1))]) for q in (0.5, 0.99, 0.999)},
            "volume_maxima": [round(float(v), 4) for v in self.volume_maxima],
        }
        thresholds = {}
        for a in alphas:
            thresholds[str(a)] = (
                self.volume_threshold(a) if order_statistic_index(self.n_volumes, a) <= self.n_volumes else None
            )
        out["volume_thresholds"] = thresholds
        if self.max_cluster_sizes is not None:
            out["cluster_threshold"] = self.cluster_threshold
            out["max_cluster_sizes"] = self.max_cluster_sizes.tolist()
        return out

    # --- files --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and Python values only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "format_version": _FORMAT_VERSION,
            "voxel_scores": self.voxel_scores.contiguous(),
            "offsets": self.offsets.contiguous(),
            "volume_maxima": self.volume_maxima.contiguous(),
            "max_cluster_sizes": None if self.max_cluster_sizes is None else self.max_cluster_sizes.contiguous(),
            "meta": {
                "score": dict(self.score),
                "stratify": self.stratify,
                "n_voxels": int(self.n_voxels),
                "cluster_threshold": self.cluster_threshold,
                "names": list(self.names),
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration atomically (``torch.save`` of :meth:`state_dict`); a folder gets ``calibration.pt``."""
        from monai_qrvae.handlers import atomic_write

        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_FILE
        state = self.state_dict()
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read a calibration written by :meth:`save` (a file, or a model folder holding ``calibration.pt``).

        Raises:
            FileNotFoundError: when there is no such file.
            ValueError: when the file is not a calibration of a known format.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"calibration file {path} does not exist; run 'qrvae calibrate --model <model folder> --datalist "
                "<datalist>' on healthy scans first."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file
            raise ValueError(f"cannot read calibration {path}: {e}") from e
        if not isinstance(state, dict) or state.get("format_version") != _FORMAT_VERSION:
            found = state.get("format_version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{path} is not a calibration of format {_FORMAT_VERSION} (found {found!r}).")
        meta = state["meta"]
        return cls(
            voxel_scores=state["voxel_scores"],
            offsets=state["offsets"],
            volume_maxima=state["volume_maxima"],
            score=dict(meta["score"]),
            stratify=meta["stratify"],
            n_voxels=int(meta["n_voxels"]),
            cluster_threshold=meta["cluster_threshold"],
            max_cluster_sizes=state["max_cluster_sizes"],
            names=list(meta["names"]),
        )


def load_calibration(model_dir: str | os.PathLike, required: bool = False) -> Calibration | None:
    """The calibration beside a model's weights, or ``None`` when there is none (``required``: raise instead)."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file() and not required:
        return None
    return Calibration.load(path)


def conformal_bh(
    scores: Any,
    calibration: Calibration,
    alpha: float = 0.05,
    mask: Any = None,
    per: str = "volume",
    strata: torch.Tensor | None = None,
) -> Any:
    """Conformal Benjamini-Hochberg: BH (:func:`monai_qrvae.anomaly.benjamini_hochberg`) on conformal p-values.

    Args:
        scores: ``(B, 1, H, W, D)`` (or ``(B, 1, H, W)``) score maps.
        calibration: the healthy calibration of that score.
        alpha: the false discovery rate.
        mask: brain mask broadcastable to ``scores`` (voxels outside are not tested).
        per: ``"volume"`` or ``"slice"``, see ``benjamini_hochberg``.
        strata: stratum index per voxel for a stratified calibration (default: slice bins).

    Returns:
        Boolean detections of ``scores``' shape.
    """
    from monai_qrvae.anomaly import benjamini_hochberg

    return benjamini_hochberg(calibration.p_values(scores, strata), alpha=alpha, mask=mask, per=per)


# --- fitting ----------------------------------------------------------------------------------------------------
def _identity(x: Any) -> Any:
    return x


class CalibrationCollector:
    """Ignite handler that keeps each item's score map and brain (analysis) mask, for :class:`Calibration`.

    Attach after :class:`~monai_qrvae.handlers.AnomalyMapHandler`: at ``ITERATION_COMPLETED`` the decollated
    output items' ``score_key`` map and ``mask_key`` mask (the ``roi`` the anomaly handler writes) are stored on
    the CPU, on the analysed grid; ``calibration(...)`` then builds the :class:`Calibration`.

    Args:
        score_key: the score map key.
        mask_key: the analysis mask key.
        label_key: also keep this label (bool; all ``False`` when an item has none) in ``labels``; ``None``: don't.
        output_transform: picks the list of output items from ``engine.state.output``.
    """

    def __init__(
        self,
        score_key: str = "z",
        mask_key: str = "roi",
        label_key: str | None = None,
        output_transform: Callable = _identity,
    ) -> None:
        self.score_key = score_key
        self.mask_key = mask_key
        self.label_key = label_key
        self.output_transform = output_transform
        self.scores: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.names: list[str] = []

    def attach(self, engine: Any) -> None:
        """Collect at the end of every iteration; forget previous runs at the start of each."""
        from ignite.engine import Events

        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)

    def reset(self, engine: Any = None) -> None:
        """Forget the collected volumes."""
        self.scores, self.masks, self.labels, self.names = [], [], [], []

    def __call__(self, engine: Any) -> None:
        outputs = self.output_transform(engine.state.output)
        for out in [outputs] if isinstance(outputs, dict) else outputs:
            missing = [k for k in (self.score_key, self.mask_key) if k not in out]
            if missing:
                raise KeyError(
                    f"CalibrationCollector: output is missing {missing}; attach the AnomalyMapHandler first."
                )
            score = out[self.score_key]
            self.scores.append(_flat(score).detach().cpu()[0])
            self.masks.append(_flat(out[self.mask_key]).detach().cpu()[0] > 0)
            if self.label_key is not None:
                label = out.get(self.label_key)
                self.labels.append(
                    _flat(label).detach().cpu()[0] > 0 if label is not None else torch.zeros_like(self.masks[-1])
                )
            meta = getattr(score, "meta", {}) or {}
            name = meta.get("filename_or_obj", f"volume_{len(self.names):04d}")
            self.names.append(str(name[0] if isinstance(name, (list, tuple)) and name else name))

    def calibration(self, **kwargs: Any) -> Calibration:
        """:meth:`Calibration.from_scores` of the collected maps (keyword arguments passed on)."""
        return Calibration.from_scores(self.scores, self.masks, names=self.names, **kwargs)


def _check_healthy(items: Sequence[dict], section: str, label_key: str = "label") -> None:
    """Raise ``ValueError`` when an entry of the calibration section has a non-empty lesion label."""
    from monai.transforms import LoadImage

    loader = LoadImage(image_only=True)
    lesional = []
    for item in items:
        path = item.get(label_key)
        if path and bool(np.asarray(loader(path)).any()):
            lesional.append(Path(str(path)).name)
    if lesional:
        raise ValueError(
            f"section {section!r} must hold healthy subjects only (all-zero or no labels), but {len(lesional)} "
            f"have lesions: {lesional[:5]}{' ...' if len(lesional) > 5 else ''}."
        )


def run_shipped_score(
    model_dir: str | os.PathLike,
    items: Sequence[dict],
    handlers: Sequence[Any],
    score_median: int | None = None,
    device: str = "cpu",
    model: tuple[Any, Any] | None = None,
) -> Any:
    """Run the shipped scoring of a model over datalist entries, with ``handlers`` attached after the z-map.

    The preprocessing (:func:`~monai_qrvae.preprocessing.volume_transforms`), the slice-wise network
    (:func:`~monai_qrvae.engines.create_anomaly_evaluator`) and :class:`~monai_qrvae.handlers.AnomalyMapHandler`
    with ``score_median`` (``None``: the method's default) are those of ``qrvae evaluate``/``infer``; each output
    item then holds ``z`` (the score), ``p`` (its N(0, 1) p-value) and ``roi`` (the brain on the analysed grid).

    Args:
        model_dir: model folder written by ``qrvae train``.
        items: datalist entries (``image``, ``brain_mask``, optionally ``label``).
        handlers: Ignite handlers with ``attach(engine)``, run after the z-map (e.g. a :class:`CalibrationCollector`).
        score_median: in-plane median filter of the z-map.
        device: torch device.
        model: an already loaded ``(config, network)`` of ``model_dir``.

    Returns:
        The model's :class:`~monai_qrvae.workflows.ModelConfig`.
    """
    from monai.data import DataLoader, Dataset

    from monai_qrvae.anomaly import FLAIR_CHANNEL
    from monai_qrvae.defaults import method_defaults
    from monai_qrvae.engines import create_anomaly_evaluator
    from monai_qrvae.handlers import AnomalyMapHandler
    from monai_qrvae.preprocessing import volume_transforms
    from monai_qrvae.workflows import load_model

    config, net = model if model is not None else load_model(model_dir, device)
    score_median = method_defaults(config.method).score_median if score_median is None else score_median
    pre = volume_transforms(image_size=config.image_size, num_slices=config.num_slices)
    loader = DataLoader(Dataset(list(items), pre), batch_size=1, num_workers=0)
    evaluator = create_anomaly_evaluator(
        net,
        loader,
        device=device,
        roi_size=(config.image_size, config.image_size),
        val_handlers=[AnomalyMapHandler(median_size=score_median, channel=FLAIR_CHANNEL), *handlers],
    )
    evaluator.run()
    return config


def fit_calibration(
    model_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    section: str = "calibration",
    alpha: float | None = None,
    score_median: int | None = None,
    stratify: str = "none",
    num_strata: int = 4,
    max_voxels: int = MAX_VOXELS,
    cluster_p: float | None = None,
    device: str = "cpu",
    save: bool = True,
    model: tuple[Any, Any] | None = None,
) -> Calibration:
    """Calibrate a trained model's shipped score on the healthy volumes of a datalist section.

    Runs the same preprocessing, network and anomaly post-processing as ``qrvae evaluate``/``infer``
    (:func:`~monai_qrvae.workflows.load_model`, :func:`~monai_qrvae.preprocessing.volume_transforms`,
    :func:`~monai_qrvae.engines.create_anomaly_evaluator`, :class:`~monai_qrvae.handlers.AnomalyMapHandler` with the
    method's ``score_median``) and collects the z-map inside the brain on the analysed grid with a
    :class:`CalibrationCollector`.

    Args:
        model_dir: model folder written by ``qrvae train``; ``calibration.pt`` is written there when ``save``.
        datalist: datalist JSON.
        section: the healthy section (``calibration``).
        alpha: the volume-level alpha the calibration must support (``n + 1 >= 1 / alpha``); ``None`` takes the
            method's default alpha from :mod:`monai_qrvae.defaults`.
        score_median: in-plane median filter of the z-map; ``None``: the method's default.
        stratify: ``"none"`` or ``"slice"``.
        num_strata: slice-position bins for ``stratify="slice"``.
        max_voxels: most voxel scores kept.
        cluster_p: also calibrate the largest cluster above the voxel-level ``cluster_p`` (``None``: skip).
        device: torch device.
        save: write ``model_dir/calibration.pt``.
        model: an already loaded ``(config, network)`` of ``model_dir`` (e.g. with
            ``AnomalyMapNet.quantile_score`` switched on); ``None`` loads it.

    Raises:
        ValueError: no such or an empty section, entries with lesion labels, too few volumes for ``alpha``.
    """
    from monai_qrvae.anomaly import FLAIR_CHANNEL
    from monai_qrvae.defaults import method_defaults
    from monai_qrvae.workflows import _datalist, load_model

    config, net = model if model is not None else load_model(model_dir, device)
    defaults = method_defaults(config.method)
    alpha = defaults.alpha if alpha is None else alpha
    score_median = defaults.score_median if score_median is None else score_median
    items = _datalist(datalist, section)
    needed = min_volumes(alpha)
    if len(items) < needed:
        raise ValueError(
            f"datalist {datalist}, section {section!r}: a volume-level threshold needs at least {needed} healthy "
            f"calibration volumes for alpha {alpha:g} (n + 1 >= 1 / alpha), got {len(items)}; add healthy volumes to "
            f"the section or pass a larger alpha (the smallest possible with {len(items)} is "
            f"{1.0 / (len(items) + 1):.3g})."
        )
    _check_healthy(items, section)
    items = [{k: v for k, v in item.items() if k != "label"} for item in items]
    collector = CalibrationCollector(score_key="z", mask_key="roi")
    run_shipped_score(model_dir, items, [collector], score_median=score_median, device=device, model=(config, net))
    channel_names = ("T1", "T2", "FLAIR")
    quantile_score = bool(getattr(net, "quantile_score", False))
    contrast = channel_names[FLAIR_CHANNEL] if config.in_channels == 3 else str(FLAIR_CHANNEL)
    score = {
        "method": config.method,
        "score_median": int(score_median),
        "channel": FLAIR_CHANNEL,
        "score_key": "z",
        "quantile_score": quantile_score,
        "score_name": f"{'qf' if quantile_score else 'z'}[{contrast}]",
    }
    cal = collector.calibration(
        score=score, stratify=stratify, num_strata=num_strata, max_voxels=max_voxels, cluster_p=cluster_p
    )
    cal.names = [_short(n) for n in cal.names]
    if save:
        cal.save(Path(model_dir) / CALIBRATION_FILE)
    return cal


def _short(path: str) -> str:
    p = Path(path)
    stem = p.name.split(".")[0]
    return p.parent.name if stem in ("image", "flair", "t1", "t2") and p.parent.name else stem
