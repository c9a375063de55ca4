"""Label-free thresholds calibrated on healthy volumes: conformal p-values, volume- and cluster-level thresholds.

:func:`label_free_transforms` chains them (or :class:`~monai_qrvae.transforms.anomaly.dictionary.FDRMaskd` for the
paper's N(0, 1) Benjamini-Hochberg) after :class:`~monai_qrvae.transforms.anomaly.dictionary.AnomalyMapsd`. The
calibration itself is :class:`monai_qrvae.calibration.Calibration`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from monai_qrvae.anomaly import remove_small_components
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
    "label_free_transforms",
]

#: the label-free thresholds: BH on N(0, 1) p-values (the paper's), conformal BH, volume-level (max-statistic),
#: cluster-size (volume-level control of the largest cluster).
THRESHOLDS = ("gaussian", "conformal", "volume", "cluster")
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
) -> list[Transform]:
    """The transforms that turn a score map (after :class:`AnomalyMapsd`) into the label-free lesion mask.

    - ``"gaussian"``: Benjamini-Hochberg on the N(0, 1) p-values of :class:`AnomalyMapsd` (the paper's);
    - ``"conformal"``: :class:`ConformalPValued` (replaces ``p_key``) then :class:`FDRMaskd` (conformal BH);
    - ``"volume"``: :class:`VolumeThresholdd` (at most ``alpha`` of healthy volumes with any detection);
    - ``"cluster"``: :class:`ClusterThresholdd` (the same for clusters; needs a calibration with ``cluster_p``).

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
    return [ClusterThresholdd(score_key, cal, alpha, mask_key, output_key, score=score)]


ConformalPValueD = ConformalPValueDict = ConformalPValued
VolumeThresholdD = VolumeThresholdDict = VolumeThresholdd
ClusterThresholdD = ClusterThresholdDict = ClusterThresholdd
