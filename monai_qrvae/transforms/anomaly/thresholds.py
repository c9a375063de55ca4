"""Label-free thresholds calibrated on healthy volumes: conformal p-values, volume- and cluster-level thresholds.

:func:`label_free_transforms` chains them (or :class:`~monai_qrvae.transforms.anomaly.dictionary.FDRMaskd` for the
paper's N(0, 1) Benjamini-Hochberg) after :class:`~monai_qrvae.transforms.anomaly.dictionary.AnomalyMapsd`. The
calibration itself is :class:`monai_qrvae.calibration.Calibration`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from monai_qrvae.anomaly import (
    bh_q_values,
    cluster_statistics,
    lesion_candidates,
    remove_small_components,
    voxel_volume_ml,
)
from monai_qrvae.calibration import Calibration
from monai_qrvae.transforms.anomaly.dictionary import FDRMaskd
from monai_qrvae.transforms.utils import _like

__all__ = [
    "THRESHOLDS",
    "SITE_KEY",
    "ConformalPValued",
    "ConformalPValueD",
    "ConformalPValueDict",
    "VolumeThresholdd",
    "VolumeThresholdD",
    "VolumeThresholdDict",
    "ClusterThresholdd",
    "ClusterThresholdD",
    "ClusterThresholdDict",
    "LESION_STATISTIC",
    "LESION_STATS_KEY",
    "LESION_LABELS_KEY",
    "LesionThresholdd",
    "LesionThresholdD",
    "LesionThresholdDict",
    "label_free_transforms",
]

#: the label-free thresholds: BH on N(0, 1) p-values (the paper's), conformal BH, volume-level (max-statistic),
#: cluster-size (volume-level control of the largest cluster), lesion-level BH (``"lesion"``: false discovery rate
#: over candidate lesions) and the lesion-level volume threshold (``"lesion-volume"``: any false lesion on a healthy
#: scan with probability at most alpha).
THRESHOLDS = ("gaussian", "conformal", "volume", "cluster", "lesion", "lesion-volume")
#: the cluster statistic of the lesion-level thresholds (chosen on the ``tuning`` split, docs/experiments.md).
LESION_STATISTIC = "mass"
#: key of the per-lesion evidence (statistic, p- and q-value) of the lesion-level thresholds, for the lesion report.
LESION_STATS_KEY = "lesion_stats"
#: key of the kept candidates' labels on the analysed grid (matches the report's lesions to ``LESION_STATS_KEY``).
LESION_LABELS_KEY = "lesion_labels"
#: key of the comparison of a scored volume with the calibration (shift and width of its score distribution, and
#: a warning when it is off the calibration), which the lesion report carries.
SITE_KEY = "site"


def _calibration(calibration: Calibration | str | os.PathLike) -> Calibration:
    """A :class:`~monai_qrvae.calibration.Calibration`, or one read from a file or model folder."""
    return calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)


def _brain(d: Mapping[Hashable, torch.Tensor], mask_key: str | None, shape: torch.Size) -> torch.Tensor:
    """The boolean brain mask of an item (every voxel when absent), checked against the score map's shape."""
    if mask_key is None or mask_key not in d:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.as_tensor(d[mask_key]) > 0
    if mask.shape != shape:
        raise ValueError(f"brain mask shape {tuple(mask.shape)} does not match the score map {tuple(shape)}.")
    return mask


class _CalibratedMapTransform(MapTransform):
    """Base of the transforms that compare score maps with a healthy calibration (read, and checked against
    ``score``, once at construction); :meth:`_score_maps` yields each present key's score map and brain mask."""

    def __init__(
        self,
        keys: KeysCollection,
        calibration: Calibration | str | os.PathLike,
        mask_key: str | None,
        score: Mapping[str, object] | None,
        allow_missing_keys: bool,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.calibration = _calibration(calibration)
        if score:
            self.calibration.check_score(**score)
        self.mask_key = mask_key
        self.site_key = SITE_KEY

    def _score_maps(self, d: dict[Hashable, Any]) -> Iterator[tuple[Hashable, torch.Tensor, torch.Tensor]]:
        """``(key, float score map, boolean brain mask)`` for every present key of ``d``, the score standardised by
        the volume's empirical null as the calibration's were (:meth:`Calibration.standardise`); the comparison of
        the volume with the calibration (:meth:`Calibration.site_check`) goes to ``d[self.site_key]``."""
        for key in self.key_iterator(d):
            s = torch.as_tensor(d[key]).float()
            inside = _brain(d, self.mask_key, s.shape)
            s, params = self.calibration.standardise(s, inside)
            if self.site_key is not None and params is not None:
                d[self.site_key] = self.calibration.site_check(*params)
            yield key, s, inside


def _p_inside(inside: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``p`` inside the brain, 1 outside."""
    return torch.where(inside, p, torch.ones((), dtype=torch.float32))


class ConformalPValued(_CalibratedMapTransform):
    """Conformal p-values of a score map from a healthy calibration, ``p = 1`` outside the brain mask.

    ``p = (1 + #{calibration scores >= s}) / (n + 1)`` (see :mod:`monai_qrvae.calibration`); with a stratified
    calibration each voxel is compared with its stratum (bins of slice position along the last axis).
    :class:`FDRMaskd` on the result is conformal Benjamini-Hochberg.

    Args:
        keys: score map key(s), ``(1, H, W[, D])`` (the z-map after its filter, exactly as calibrated).
        calibration: a :class:`~monai_qrvae.calibration.Calibration`, or the path of its file or model folder.
        mask_key: brain mask key (``None``: every voxel).
        p_key: output key of the p-map (default ``"p"``, replacing the N(0, 1) p-map).
        score: the score definition in use, checked against the calibration's (e.g.
            ``{"method": "qrvae", "score_median": 3}``); ``None`` checks nothing.
    """

    def __init__(
        self,
        keys: KeysCollection = "z",
        calibration: Calibration | str | os.PathLike = "calibration.pt",
        mask_key: str | None = "brain_mask",
        p_key: str = "p",
        score: Mapping[str, object] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, calibration, mask_key, score, allow_missing_keys)
        self.p_key = p_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, s, inside in self._score_maps(d):
            d[self.p_key] = _like(_p_inside(inside, self.calibration.p_values(s)), d[key])
        return d


class VolumeThresholdd(_CalibratedMapTransform):
    """Lesion mask ``score > t`` inside the brain, ``t`` the volume-level threshold of a healthy calibration.

    ``t`` is the ``ceil((n + 1)(1 - alpha))``-th smallest per-volume maximum of the ``n`` calibration volumes, so at
    most ``alpha`` of healthy volumes (exchangeable with them) get any detection. ``p_key`` also writes the
    max-statistic adjusted p-map ``(1 + #{maxima >= s}) / (n + 1)`` (``p <= alpha`` exactly where detected).

    Args:
        keys: score map key(s), ``(1, H, W[, D])``.
        calibration: a :class:`~monai_qrvae.calibration.Calibration`, or the path of its file or model folder.
        alpha: tolerated fraction of healthy volumes with any detection.
        mask_key: brain mask key (``None``: every voxel).
        output_key: key of the lesion mask (float 0/1).
        p_key: key of the adjusted p-map, or ``None`` for none.
        score: the score definition in use, checked against the calibration's.

    Raises:
        ValueError: when the calibration has fewer than the ``1 / alpha - 1`` volumes ``alpha`` needs.
    """

    def __init__(
        self,
        keys: KeysCollection = "z",
        calibration: Calibration | str | os.PathLike = "calibration.pt",
        alpha: float = 0.05,
        mask_key: str | None = "brain_mask",
        output_key: str = "lesion",
        p_key: str | None = None,
        score: Mapping[str, object] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, calibration, mask_key, score, allow_missing_keys)
        self.alpha = alpha
        self.threshold = self.calibration.volume_threshold(alpha)  # raises for too few volumes
        self.output_key = output_key
        self.p_key = p_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, s, inside in self._score_maps(d):
            d[self.output_key] = _like((inside & (s > self.threshold)).float(), d[key])
            if self.p_key is not None:
                d[self.p_key] = _like(_p_inside(inside, self.calibration.volume_p_values(s)), d[key])
        return d


class ClusterThresholdd(_CalibratedMapTransform):
    """Lesion mask of the clusters above a calibrated cluster-forming threshold that are larger than healthy ones.

    Voxels with ``score > calibration.cluster_threshold`` inside the brain form clusters (connected components with
    the calibration's connectivity); clusters of more voxels than the ``ceil((n + 1)(1 - alpha))``-th smallest
    per-volume largest healthy cluster are kept, so at most ``alpha`` of healthy volumes get any detection.

    Args:
        keys: score map key(s), ``(1, H, W[, D])``.
        calibration: a calibration fitted with ``cluster_p`` (or the path of one).
        alpha: tolerated fraction of healthy volumes with any detection.
        mask_key: brain mask key (``None``: every voxel).
        output_key: key of the lesion mask (float 0/1).
        score: the score definition in use, checked against the calibration's.
    """

    def __init__(
        self,
        keys: KeysCollection = "z",
        calibration: Calibration | str | os.PathLike = "calibration.pt",
        alpha: float = 0.05,
        mask_key: str | None = "brain_mask",
        output_key: str = "lesion",
        score: Mapping[str, object] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, calibration, mask_key, score, allow_missing_keys)
        self.alpha = alpha
        self.min_size = self.calibration.cluster_size_threshold(alpha) + 1
        self.connectivity = int(self.calibration.score.get("cluster_connectivity", 1))
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, s, inside in self._score_maps(d):
            above = inside & (s > float(self.calibration.cluster_threshold))  # type: ignore[arg-type]
            lesion = remove_small_components(above.unsqueeze(0), self.min_size, self.connectivity)[0]
            d[self.output_key] = _like(lesion.float(), d[key])
        return d


class LesionThresholdd(_CalibratedMapTransform):
    """Lesion mask of the candidate lesions that are significant against the healthy calibration's clusters.

    Candidates are the 26-connected components of brain voxels above the calibration's primary threshold
    (``calibration.lesion_threshold``: the pooled healthy voxel score at conformal p ``lesion_p``); each gets its
    ``statistic`` (``extent`` in mL, ``mass`` = sum of ``(score - threshold) * voxel mL``, or ``peak``). With
    ``mode="fdr"`` each candidate's conformal p-value ``(1 + #{healthy clusters >= s}) / (N + 1)`` enters
    Benjamini-Hochberg over the volume's candidates at ``alpha`` (expected share of reported lesions that are false
    <= alpha, for p-values independent or PRDS and healthy clusters exchangeable with false candidates); with
    ``mode="volume"`` candidates whose statistic is ``>`` the volume-level threshold of the healthy per-volume
    maxima are kept (P(any false lesion on a healthy scan) <= alpha).

    Writes ``output_key`` (float 0/1 mask), ``labels_key`` (kept candidates' labels, 0 elsewhere), ``stats_key``
    (``{"threshold", "alpha", "statistic", "primary_threshold", "candidates", "calibration", "lesions": [...]}``,
    one entry per kept candidate: ``label``, ``voxels``, ``extent_ml``, ``mass_ml``, ``peak``, ``value``, ``p`` and
    ``q`` (BH-adjusted) or ``volume_threshold`` and ``above_volume_threshold``) and, with ``p_key``, the map of
    each candidate's p-value (1 elsewhere).

    Args:
        keys: score map key(s), ``(1, H, W, D)``.
        calibration: a calibration with lesion statistics (:meth:`Calibration.fit_lesions`), or its path.
        alpha: lesion-level FDR (``"fdr"``) or tolerated fraction of healthy volumes with any lesion (``"volume"``).
        mode: ``"fdr"`` or ``"volume"``.
        statistic: one of :data:`~monai_qrvae.anomaly.LESION_STATISTICS`.
        mask_key: brain mask key (``None``: every voxel).
        output_key: key of the lesion mask.
        stats_key: key of the per-lesion evidence.
        labels_key: key of the kept candidates' label map.
        p_key: key of the lesion p-value map, or ``None``.
        voxel_ml: voxel volume in mL; ``None`` reads the score map's affine (1 mm isotropic without one).
        score: the score definition in use, checked against the calibration's.
    """

    def __init__(
        self,
        keys: KeysCollection = "z",
        calibration: Calibration | str | os.PathLike = "calibration.pt",
        alpha: float = 0.05,
        mode: str = "fdr",
        statistic: str = LESION_STATISTIC,
        mask_key: str | None = "brain_mask",
        output_key: str = "lesion",
        stats_key: str = LESION_STATS_KEY,
        labels_key: str | None = LESION_LABELS_KEY,
        p_key: str | None = None,
        voxel_ml: float | None = None,
        score: Mapping[str, object] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, calibration, mask_key, score, allow_missing_keys)
        if mode not in ("fdr", "volume"):
            raise ValueError(f"mode must be 'fdr' or 'volume', got {mode!r}.")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
        self.calibration._lesion_fitted(statistic)  # raises for a calibration without lesion statistics
        self.alpha, self.mode, self.statistic = alpha, mode, statistic
        self.volume_threshold = self.calibration.lesion_volume_threshold(statistic, alpha) if mode == "volume" else None
        self.output_key, self.stats_key, self.labels_key, self.p_key = output_key, stats_key, labels_key, p_key
        self.voxel_ml = voxel_ml

    def _voxel_ml(self, score: Any) -> float:
        if self.voxel_ml is not None:
            return float(self.voxel_ml)
        return voxel_volume_ml(score.affine) if isinstance(score, MetaTensor) else 1e-3

    def evidence(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(kept, p, q)`` of candidates with statistic ``values`` (``q`` NaN for ``mode="volume"``)."""
        cal = self.calibration
        if self.mode == "fdr":
            p = cal.lesion_p_values(values, self.statistic)
            q = bh_q_values(p)
            return q <= self.alpha, p, q
        maxima = torch.sort(cal.lesion_volume_max[self.statistic]).values.numpy()  # type: ignore[index]
        p = (1.0 + maxima.size - np.searchsorted(maxima, values, side="left")) / (maxima.size + 1.0)
        return values > self.volume_threshold, p, np.full(values.shape, np.nan)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        cal = self.calibration
        t = float(cal.lesion_threshold)  # type: ignore[arg-type]
        for key, s, inside in self._score_maps(d):
            if s.ndim != 4 or s.shape[0] != 1:
                raise ValueError(f"LesionThresholdd: expected a (1, H, W, D) score map, got shape {tuple(s.shape)}.")
            ml = self._voxel_ml(d[key])
            labels, n = lesion_candidates(s[0].numpy(), t, inside[0].numpy())
            stats = cluster_statistics(s[0].numpy(), labels, n, t, ml)
            kept, p, q = self.evidence(stats[self.statistic])
            healthy = cal.lesion_stats[self.statistic]  # type: ignore[index]
            healthy_max = float(healthy.max()) if healthy.numel() else float("inf")
            keep_ids = np.flatnonzero(kept) + 1
            lookup = np.zeros(n + 1, dtype=np.int32)
            lookup[keep_ids] = keep_ids
            kept_labels = lookup[labels]
            d[self.output_key] = _like(torch.from_numpy(kept_labels > 0).float()[None], d[key])
            if self.labels_key is not None:
                d[self.labels_key] = _like(torch.from_numpy(kept_labels).float()[None], d[key])
            if self.p_key is not None:
                p_lookup = np.concatenate([[1.0], p]).astype(np.float32)
                d[self.p_key] = _like(torch.from_numpy(p_lookup[labels])[None], d[key])
            lesions = []
            for i in keep_ids:
                entry: dict[str, Any] = {
                    "label": int(i),
                    "voxels": int(stats["voxels"][i - 1]),
                    "extent_ml": round(float(stats["extent"][i - 1]), 5),
                    "mass_ml": round(float(stats["mass"][i - 1]), 5),
                    "peak": round(float(stats["peak"][i - 1]), 4),
                    "value": float(stats[self.statistic][i - 1]),
                    "p": float(p[i - 1]),
                }
                if self.mode == "fdr":
                    entry["q"] = float(q[i - 1])
                    entry["p_from_tail"] = bool(stats[self.statistic][i - 1] > healthy_max)
                else:
                    entry["above_volume_threshold"] = True
                lesions.append(entry)
            tail = cal.lesion_tail(self.statistic) if self.mode == "fdr" else None
            d[self.stats_key] = {
                "threshold": "lesion" if self.mode == "fdr" else "lesion-volume",
                "alpha": self.alpha,
                "statistic": self.statistic,
                "primary_threshold": t,
                "primary_p": cal.score.get("lesion_p"),
                "volume_threshold": self.volume_threshold,
                "voxel_ml": ml,
                "candidates": n,
                "calibration": {
                    "n_volumes": cal.n_volumes,
                    "names": list(cal.names),
                    "healthy_clusters": int(healthy.numel()),
                    "healthy_max": healthy_max,
                    "tail": None if tail is None else dataclasses.asdict(tail),
                },
                "lesions": lesions,
            }
        return d


def label_free_transforms(
    threshold: str = "gaussian",
    calibration: Calibration | str | os.PathLike | None = None,
    alpha: float = 0.05,
    per: str = "volume",
    score_key: str = "z",
    p_key: str = "p",
    mask_key: str | None = "brain_mask",
    output_key: str = "lesion",
    score: Mapping[str, object] | None = None,
    statistic: str = LESION_STATISTIC,
) -> list[Transform]:
    """The transforms that turn a score map (after :class:`AnomalyMapsd`) into the label-free lesion mask.

    - ``"gaussian"``: Benjamini-Hochberg on the N(0, 1) p-values of :class:`AnomalyMapsd` (the paper's);
    - ``"conformal"``: :class:`ConformalPValued` (replaces ``p_key``) then :class:`FDRMaskd` (conformal BH);
    - ``"volume"``: :class:`VolumeThresholdd` (at most ``alpha`` of healthy volumes with any detection);
    - ``"cluster"``: :class:`ClusterThresholdd` (the same for clusters; needs a calibration with ``cluster_p``);
    - ``"lesion"``: :class:`LesionThresholdd` (BH over candidate lesions: lesion-level FDR; replaces ``p_key`` by
      each candidate's lesion p-value);
    - ``"lesion-volume"``: :class:`LesionThresholdd` with ``mode="volume"`` (at most ``alpha`` of healthy volumes
      with any lesion).

    ``statistic`` is the lesion-level thresholds' cluster statistic (default :data:`LESION_STATISTIC`).

    Raises:
        ValueError: for an unknown ``threshold`` or a calibrated one without ``calibration``.
    """
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}.")
    if threshold == "gaussian":
        return [FDRMaskd(p_key, mask_key, alpha, per, output_key)]
    if calibration is None:
        raise ValueError(
            f"threshold {threshold!r} needs a healthy calibration (calibration.pt beside the model: run "
            "'qrvae calibrate'), got none."
        )
    cal = _calibration(calibration)
    if threshold == "conformal":
        return [
            ConformalPValued(score_key, cal, mask_key, p_key, score=score),
            FDRMaskd(p_key, mask_key, alpha, per, output_key),
        ]
    if threshold == "volume":
        return [VolumeThresholdd(score_key, cal, alpha, mask_key, output_key, score=score)]
    if threshold in ("lesion", "lesion-volume"):
        mode = "fdr" if threshold == "lesion" else "volume"
        return [
            LesionThresholdd(score_key, cal, alpha, mode, statistic, mask_key, output_key, p_key=p_key, score=score)
        ]
    return [ClusterThresholdd(score_key, cal, alpha, mask_key, output_key, score=score)]


ConformalPValueD = ConformalPValueDict = ConformalPValued
VolumeThresholdD = VolumeThresholdDict = VolumeThresholdd
ClusterThresholdD = ClusterThresholdDict = ClusterThresholdd
LesionThresholdD = LesionThresholdDict = LesionThresholdd
