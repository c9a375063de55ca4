"""The :class:`Calibration` object (healthy null distribution of a score, saved as ``calibration.pt``) and
conformal Benjamini-Hochberg on it."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_qrvae.anomaly.lesions import (
    LESION_STATISTICS,
    LesionTail,
    cluster_statistics,
    fit_lesion_tail,
    lesion_candidates,
    lesion_p_values,
)
from monai_qrvae.anomaly.null import NULL_METHODS, empirical_null, standardise
from monai_qrvae.calibration.conformal import (
    _flat,
    _sorted_strata,
    conformal_p_values,
    slice_strata,
    stratified_p_values,
)
from monai_qrvae.calibration.thresholds import max_cluster_size, order_statistic_index, volume_threshold

__all__ = [
    "CALIBRATION_FILE",
    "MAX_VOXELS",
    "STRATIFY",
    "SITE_NULL",
    "SITE_MARGIN",
    "LESION_P",
    "Calibration",
    "load_calibration",
    "conformal_bh",
    "voxel_ml_of",
]

#: file name of a model's calibration, beside ``model.pt``.
CALIBRATION_FILE = "calibration.pt"
#: voxel scores kept: above this the sorted scores are thinned to evenly spaced order statistics.
MAX_VOXELS = 2_000_000
#: stratifications of the voxel scores: ``"none"`` (pooled) or ``"slice"`` (bins of slice position in the stack).
STRATIFY = ("none", "slice")
_FORMAT_VERSION = 1
#: the empirical null used to describe a volume's score distribution for :meth:`Calibration.site_check` when the
#: calibration itself standardises with none.
SITE_NULL = "central"
#: a scan matches the calibration when its centre and width lie within the calibration volumes' own range widened
#: by this factor (:meth:`Calibration.site_limits`).
SITE_MARGIN = 1.5
#: fewest brain voxels of a volume whose empirical null is estimated.
MIN_NULL_VOXELS = 10
#: conformal voxel p-value of the primary (cluster-forming) threshold of lesion-level inference.
LESION_P = 1e-4
#: voxel volume (mL) assumed for a calibration map without an affine: 1 mm isotropic.
_DEFAULT_VOXEL_ML = 1e-3


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
        null: per-volume empirical null the scores are standardised with before anything else (one of
            :data:`~monai_qrvae.anomaly.null.NULL_METHODS`; ``"none"``: raw scores).
        null_params: ``(n, 2)`` float32 ``(centre, width)`` of each calibration volume's raw scores (the reference
            for :meth:`site_check`); ``None`` for calibrations written before it was recorded.
        lesion_threshold: primary threshold of lesion-level inference (the pooled calibration voxel score at
            conformal p ``score["lesion_p"]``); ``None``: not fitted (calibrations written before it).
        lesion_stats: each :data:`~monai_qrvae.anomaly.lesions.LESION_STATISTICS` (``extent`` mL, ``mass`` mL,
            ``peak``) of every healthy calibration cluster (26-connected, above ``lesion_threshold``), float64.
        lesion_volume_max: each statistic's largest value per calibration volume (``0`` for extent and mass, the
            threshold for peak, in a volume without cluster), float64, in datalist order.
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
    null: str = "none"
    null_params: torch.Tensor | None = None
    lesion_threshold: float | None = None
    lesion_stats: dict[str, torch.Tensor] | None = None
    lesion_volume_max: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.null not in NULL_METHODS:
            raise ValueError(f"null must be one of {NULL_METHODS}, got {self.null!r}.")
        if self.null_params is not None:
            self.null_params = torch.as_tensor(self.null_params, dtype=torch.float32).reshape(-1, 2)
        if self.stratify not in STRATIFY:
            raise ValueError(f"stratify must be one of {STRATIFY}, got {self.stratify!r}.")
        self.voxel_scores = torch.as_tensor(self.voxel_scores, dtype=torch.float32).flatten()
        self.offsets = torch.as_tensor(self.offsets, dtype=torch.int64).flatten()
        self.volume_maxima = torch.as_tensor(self.volume_maxima, dtype=torch.float32).flatten()
        if self.max_cluster_sizes is not None:
            self.max_cluster_sizes = torch.as_tensor(self.max_cluster_sizes, dtype=torch.int64).flatten()
        for name in ("lesion_stats", "lesion_volume_max"):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, {k: torch.as_tensor(v, dtype=torch.float64).flatten() for k, v in values.items()})
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
        null: str = "none",
        lesion_p: float | None = None,
        voxel_ml: float | Sequence[float] | None = None,
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
            null: standardise each volume's scores by its own empirical null first (see
                :mod:`monai_qrvae.anomaly.null`); the same is done to every scored volume.
            lesion_p: also fit lesion-level inference (:meth:`fit_lesions`) with the primary threshold at this
                conformal voxel p-value (``None``: skip).
            voxel_ml: voxel volume in mL of every map (or one per map); ``None`` reads each map's affine (a
                MetaTensor's), 1 mm isotropic without one.

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
        if null not in NULL_METHODS:
            raise ValueError(f"null must be one of {NULL_METHODS}, got {null!r}.")
        values, strata, maxima, maps, params = [], [], [], [], []
        for i, vol in enumerate(volumes):
            s = _flat(vol).detach().cpu().float()
            m = torch.ones_like(s, dtype=torch.bool) if masks is None else _flat(masks[i]).cpu() > 0
            if m.shape != s.shape:
                raise ValueError(f"volume {i}: mask shape {tuple(m.shape)} does not match the scores {tuple(s.shape)}.")
            if not bool(m.any()):
                raise ValueError(f"volume {i}: the brain mask is empty; expected brain voxels to calibrate on.")
            if null != "none":
                s, centre_width = standardise(s, m, null)
                params.append(centre_width)
            elif int(m.sum()) >= MIN_NULL_VOXELS:  # the raw scores' null: the reference of site_check
                params.append(empirical_null(s, m, SITE_NULL))
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
            null=null,
            null_params=torch.tensor(params) if len(params) == len(volumes) else None,
        )
        if cluster_p is not None:
            cal.fit_clusters(maps, cluster_p, connectivity)
        if lesion_p is not None:
            if voxel_ml is None:
                voxel_ml = [voxel_ml_of(v) for v in volumes]
            cal.fit_lesions(maps, lesion_p, voxel_ml)
        return cal

    def primary_threshold(self, p: float) -> float:
        """Smallest pooled calibration voxel score ``t`` such that every score ``s > t`` has conformal p ``<= p``."""
        if not 0.0 < p < 1.0:
            raise ValueError(f"the primary p-value must be in (0, 1), got {p}.")
        pooled = torch.sort(self.voxel_scores).values
        # smallest t with conformal p(s) <= p for every s > t: (1 + #{c >= s}) / (n + 1) <= p
        n = pooled.numel()
        allowed = int(math.floor(p * (n + 1) + 1e-9)) - 1  # most calibration scores >= s allowed
        return float(pooled[max(n - 1 - allowed, 0)]) if allowed >= 0 else float(pooled[-1])

    def fit_lesions(
        self, maps: Sequence[Any], lesion_p: float = LESION_P, voxel_ml: float | Sequence[float] = 1e-3
    ) -> None:
        """Calibrate lesion-level inference: the cluster statistics of the healthy calibration volumes.

        Clusters are the 26-connected components of brain voxels above :meth:`primary_threshold` of ``lesion_p``;
        every cluster's ``extent``, ``mass`` and ``peak`` go to ``lesion_stats`` and each volume's largest to
        ``lesion_volume_max``.

        Args:
            maps: the calibration score maps (standardised as calibrated) with ``-inf`` outside the brain.
            lesion_p: conformal voxel p-value of the primary threshold.
            voxel_ml: voxel volume in mL, one for all maps or one per map.
        """
        threshold = self.primary_threshold(lesion_p)
        sizes = [float(voxel_ml)] * len(maps) if isinstance(voxel_ml, (int, float)) else [float(v) for v in voxel_ml]
        if len(sizes) != len(maps):
            raise ValueError(f"got {len(sizes)} voxel volumes for {len(maps)} maps.")
        stats: dict[str, list[float]] = {k: [] for k in LESION_STATISTICS}
        volume_max: dict[str, list[float]] = {k: [] for k in LESION_STATISTICS}
        for m, ml in zip(maps, sizes):
            s = _flat(m).cpu().double().numpy()
            labels, n = lesion_candidates(s, threshold, mask=np.isfinite(s))
            values = cluster_statistics(s, labels, n, threshold, ml)
            for k in LESION_STATISTICS:
                stats[k].extend(values[k].tolist())
                empty = threshold if k == "peak" else 0.0
                volume_max[k].append(float(values[k].max()) if n else empty)
        self.lesion_threshold = threshold
        self.lesion_stats = {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()}
        self.lesion_volume_max = {k: torch.tensor(v, dtype=torch.float64) for k, v in volume_max.items()}
        self.score["lesion_p"] = float(lesion_p)

    def fit_clusters(self, maps: Sequence[torch.Tensor], cluster_p: float, connectivity: int = 1) -> None:
        """Calibrate the largest cluster size above the pooled ``1 - cluster_p`` voxel quantile (see ``from_scores``).

        ``maps`` are the calibration score maps with ``-inf`` outside the brain.
        """
        if not 0.0 < cluster_p < 1.0:
            raise ValueError(f"cluster_p must be in (0, 1), got {cluster_p}.")
        self.cluster_threshold = self.primary_threshold(cluster_p)
        self.max_cluster_sizes = torch.tensor(
            [max_cluster_size(m > self.cluster_threshold, connectivity) for m in maps], dtype=torch.int64
        )
        self.score["cluster_p"] = float(cluster_p)
        self.score["cluster_connectivity"] = int(connectivity)

    # --- using it -----------------------------------------------------------------------------------------------
    def standardise(self, scores: Any, mask: Any = None) -> tuple[torch.Tensor, tuple[float, float] | None]:
        """A scored volume standardised as the calibration volumes were, and its raw ``(centre, width)``.

        The centre and width are those of :data:`SITE_NULL` (``"central"``) when the calibration uses none, so
        that :meth:`site_check` can compare the volume with the calibration (``None`` for fewer than
        :data:`MIN_NULL_VOXELS` brain voxels).
        """
        s = torch.as_tensor(scores).float()
        if self.null == "none":
            inside = s.numel() if mask is None else int((torch.as_tensor(mask) > 0).sum())
            return s, empirical_null(s, mask, SITE_NULL) if inside >= MIN_NULL_VOXELS else None
        standardised, params = standardise(s, mask, self.null)
        return standardised, params

    def site_limits(self) -> tuple[float, float, float] | None:
        """``(largest |shift|, smallest and largest width ratio)`` of a scan that matches the calibration.

        Shifts are in calibration widths from the calibration volumes' median centre, ratios to their median width
        (:meth:`site_check`). The limits are the calibration volumes' own range, widened by :data:`SITE_MARGIN`:
        ``max |shift_i| * SITE_MARGIN`` and ``[min ratio_i / SITE_MARGIN, max ratio_i * SITE_MARGIN]``. ``None``
        without ``null_params``.
        """
        if self.null_params is None:
            return None
        centres, widths = self.null_params[:, 0].double(), self.null_params[:, 1].double()
        ref_centre, ref_width = float(centres.median()), float(widths.median())
        shifts = (centres - ref_centre).abs() / ref_width
        ratios = widths / ref_width
        return (
            max(float(shifts.max()) * SITE_MARGIN, 0.1),
            float(ratios.min()) / SITE_MARGIN,
            float(ratios.max()) * SITE_MARGIN,
        )

    def site_check(self, centre: float, width: float) -> dict[str, Any]:
        """How far a volume's score distribution lies from the calibration volumes' (see :meth:`site_limits`).

        Returns ``{"centre", "width", "calibration_centre", "calibration_width", "shift", "width_ratio", "limits",
        "matches_calibration", "warning"}``: ``shift`` is the difference of centres in calibration widths,
        ``width_ratio`` the ratio of widths; the warning (``None`` when it matches) says that ``qrvae calibrate`` on
        the site's own healthy scans is the remedy.
        """
        out: dict[str, Any] = {"centre": round(float(centre), 4), "width": round(float(width), 4)}
        limits = self.site_limits()
        if limits is None or self.null_params is None:
            out.update(matches_calibration=None, warning=None)
            return out
        ref_centre = float(self.null_params[:, 0].median())
        ref_width = float(self.null_params[:, 1].median())
        shift = (float(centre) - ref_centre) / ref_width
        ratio = float(width) / ref_width
        max_shift, low, high = limits
        matches = abs(shift) <= max_shift and low <= ratio <= high
        adapt = (
            f"The thresholds adapt (scores standardised by the scan's own empirical null, '{self.null}'), "
            if self.null != "none"
            else "The thresholds do not adapt to it, "
        )
        out.update(
            calibration_centre=round(ref_centre, 4),
            calibration_width=round(ref_width, 4),
            shift=round(shift, 3),
            width_ratio=round(ratio, 3),
            limits={"shift": round(max_shift, 3), "width_ratio": [round(low, 3), round(high, 3)]},
            matches_calibration=bool(matches),
            warning=(
                None
                if matches
                else (
                    f"this scan's anomaly scores are off the healthy calibration (centre shifted by {shift:+.2f} "
                    f"calibration widths, width x{ratio:.2f}; the calibration volumes, widened by {SITE_MARGIN:g}, lie "
                    f"within +-{max_shift:.2f} and x{low:.2f}-x{high:.2f}): a scanner or protocol it never saw. "
                    + adapt
                    + "so for thresholds you can rely on, run 'qrvae calibrate --model <model folder> --datalist D' "
                    "with D's 'calibration' section listing healthy scans from this scanner."
                )
            ),
        )
        return out

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

    def _lesion_fitted(self, statistic: str) -> None:
        if self.lesion_stats is None or self.lesion_volume_max is None or self.lesion_threshold is None:
            raise ValueError(
                "this calibration has no lesion-level calibration (written before it); run 'qrvae calibrate' again."
            )
        if statistic not in LESION_STATISTICS:
            raise ValueError(f"statistic must be one of {LESION_STATISTICS}, got {statistic!r}.")

    def lesion_tail(self, statistic: str) -> LesionTail | None:
        """The generalised Pareto tail of the healthy clusters' ``statistic`` (:func:`fit_lesion_tail`)."""
        self._lesion_fitted(statistic)
        return fit_lesion_tail(self.lesion_stats[statistic].numpy())  # type: ignore[index]

    def lesion_p_values(self, statistics: Any, statistic: str, tail: bool = True) -> np.ndarray:
        """Conformal lesion p-values ``(1 + #{healthy clusters >= s}) / (N + 1)`` of candidates' ``statistic``.

        With ``tail``, candidates beyond the largest healthy cluster get the fitted tail's p-value
        (:meth:`lesion_tail`) when it is smaller than the floor ``1 / (N + 1)``.
        """
        self._lesion_fitted(statistic)
        healthy = self.lesion_stats[statistic].numpy()  # type: ignore[index]
        return lesion_p_values(statistics, healthy, self.lesion_tail(statistic) if tail else None)

    def lesion_volume_threshold(self, statistic: str, alpha: float) -> float:
        """The volume-level threshold of ``statistic`` (keep candidates ``> it``): at most ``alpha`` of healthy
        volumes get any lesion (:func:`volume_threshold` of the per-volume maxima)."""
        self._lesion_fitted(statistic)
        return volume_threshold(self.lesion_volume_max[statistic], alpha)  # type: ignore[index]

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
            "null": self.null,
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
        if self.lesion_stats is not None and self.lesion_volume_max is not None:
            out["lesion_threshold"] = self.lesion_threshold
            out["lesion_clusters"] = int(self.lesion_stats["extent"].numel())
            out["lesion_volume_max"] = {k: [round(float(v), 4) for v in t] for k, t in self.lesion_volume_max.items()}
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
            "null_params": None if self.null_params is None else self.null_params.contiguous(),
            "lesion_stats": (
                None if self.lesion_stats is None else {k: v.contiguous() for k, v in self.lesion_stats.items()}
            ),
            "lesion_volume_max": (
                None
                if self.lesion_volume_max is None
                else {k: v.contiguous() for k, v in self.lesion_volume_max.items()}
            ),
            "meta": {
                "null": self.null,
                "score": dict(self.score),
                "stratify": self.stratify,
                "n_voxels": int(self.n_voxels),
                "cluster_threshold": self.cluster_threshold,
                "lesion_threshold": self.lesion_threshold,
                "names": list(self.names),
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration atomically (``torch.save`` of :meth:`state_dict`); a folder gets ``calibration.pt``."""
        from monai_qrvae.utils import atomic_write

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
            null=meta.get("null", "none"),  # calibrations written before the empirical null: raw scores
            null_params=state.get("null_params"),
            lesion_threshold=meta.get("lesion_threshold"),  # calibrations written before lesion-level inference
            lesion_stats=state.get("lesion_stats"),
            lesion_volume_max=state.get("lesion_volume_max"),
        )


def voxel_ml_of(volume: Any) -> float:
    """Voxel volume (mL) of a score map: from a MetaTensor's affine, else 1 mm isotropic."""
    from monai.data import MetaTensor

    from monai_qrvae.anomaly.lesions import voxel_volume_ml

    if isinstance(volume, MetaTensor):
        return voxel_volume_ml(volume.affine)
    return _DEFAULT_VOXEL_ML


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
