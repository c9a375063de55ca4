"""Dictionary transforms that turn the anomaly network's output into z/p maps and a lesion mask.

They work on one decollated item (no batch dimension), as MONAI's post-processing transforms do, and are thin
wrappers of the pure functions in :mod:`monai_qrvae.anomaly`. The handlers in :mod:`monai_qrvae.handlers`
and the bundle's ``postprocessing`` use them.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from monai_qrvae.anomaly import FLAIR_CHANNEL, benjamini_hochberg, median_filter, p_value, remove_small_components
from monai_qrvae.calibration import Calibration

__all__ = [
    "AnomalyMapsd",
    "FDRMaskd",
    "LesionFilterd",
    "ConformalPValued",
    "VolumeThresholdd",
    "ClusterThresholdd",
    "THRESHOLDS",
    "label_free_transforms",
]

#: the label-free thresholds: BH on N(0, 1) p-values (the paper's), conformal BH, volume-level (max-statistic),
#: cluster-size (volume-level control of the largest cluster).
THRESHOLDS = ("gaussian", "conformal", "volume", "cluster")


def _like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Wrap ``value`` as a MetaTensor with the reference's metadata (affine, applied operations)."""
    if isinstance(reference, MetaTensor):
        out = MetaTensor(value, meta=dict(reference.meta), applied_operations=list(reference.applied_operations))
        return out
    return value


class AnomalyMapsd(MapTransform):
    """Pick the z-map of one channel from an ``[mu, sigma, z]`` prediction and compute its p-map.

    Adds ``z`` and ``p`` (and optionally ``mu``/``sigma``) of shape ``(1, spatial...)``. Outside the brain
    mask ``z = 0`` and ``p = 1``, so nothing there can be detected.

    Args:
        keys: the prediction key (output of :class:`~monai_qrvae.networks.AnomalyMapNet`, ``3C`` channels).
        mask_key: brain mask key; ``None`` uses every voxel.
        channel: input channel to score (FLAIR by default).
        alternative: ``"greater"`` for hyperintense lesions, ``"less"``, or ``"two-sided"``.
        z_key: output key of the z-map.
        p_key: output key of the p-map.
        keep_mu_sigma: also write ``mu`` and ``sigma`` of that channel.
        median_size: in-plane median filter of the z-map before p-values (1 = off; the field's usual
            post-processing, Baur et al. 2021). Null p-values of a filtered map are conservative.
        roi_key: output key of the analysis mask actually used (a copy of the brain mask), so that metric
            handlers, which only see ``engine.state.output``, can restrict themselves to the brain.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        mask_key: str | None = "brain_mask",
        channel: int = FLAIR_CHANNEL,
        alternative: str = "greater",
        z_key: str = "z",
        p_key: str = "p",
        keep_mu_sigma: bool = False,
        median_size: int = 1,
        roi_key: str = "roi",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.median_size = median_size
        self.mask_key = mask_key
        self.roi_key = roi_key
        self.channel = channel
        self.alternative = alternative
        self.z_key = z_key
        self.p_key = p_key
        self.keep_mu_sigma = keep_mu_sigma

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.shape[0] % 3 != 0:
                raise ValueError(f"{key!r} must have 3C channels [mu, sigma, z], got shape {tuple(pred.shape)}.")
            c = pred.shape[0] // 3
            if not 0 <= self.channel < c:
                raise ValueError(f"channel {self.channel} is out of range for a prediction of {c} input channel(s).")
            z = torch.as_tensor(pred[2 * c + self.channel : 2 * c + self.channel + 1]).float()
            if self.median_size > 1:
                size = [self.median_size] * (z.ndim - 1)
                if z.ndim == 4:
                    size[-1] = 1  # filter each axial slice: the 2D model sees slices independently
                z = median_filter(z.unsqueeze(0), size)[0]
            if self.mask_key is not None and self.mask_key in d:
                mask = torch.as_tensor(d[self.mask_key]).to(z.device) > 0
                if mask.shape[1:] != z.shape[1:]:
                    raise ValueError(
                        f"brain mask shape {tuple(mask.shape)} does not match the prediction {tuple(pred.shape)}."
                    )
                z = torch.where(mask, z, torch.zeros_like(z))
                p = torch.where(mask, p_value(z, self.alternative), torch.ones_like(z))
            else:
                mask = torch.ones_like(z, dtype=torch.bool)
                p = p_value(z, self.alternative)
            d[self.roi_key] = _like(mask.float(), pred)
            d[self.z_key] = _like(z, pred)
            d[self.p_key] = _like(p, pred)
            if self.keep_mu_sigma:
                d["mu"] = _like(torch.as_tensor(pred[self.channel : self.channel + 1]).float(), pred)
                d["sigma"] = _like(torch.as_tensor(pred[c + self.channel : c + self.channel + 1]).float(), pred)
        return d


class FDRMaskd(MapTransform):
    """Benjamini-Hochberg lesion mask from a p-map, at false discovery rate ``alpha`` inside the brain.

    Args:
        keys: p-map key(s), ``(1, H, W[, D])``.
        mask_key: brain mask key (voxels outside are never tested).
        alpha: the false discovery rate.
        per: ``"volume"`` (one test over the whole stack) or ``"slice"`` (each axial slice separately).
        output_key: key of the binary lesion mask (float 0/1).
    """

    def __init__(
        self,
        keys: KeysCollection = "p",
        mask_key: str | None = "brain_mask",
        alpha: float = 0.05,
        per: str = "volume",
        output_key: str = "lesion",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
        if per not in ("volume", "slice"):
            raise ValueError(f"per must be 'volume' or 'slice', got {per!r}.")
        self.mask_key = mask_key
        self.alpha = alpha
        self.per = per
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            p = torch.as_tensor(d[key]).float()
            mask = None
            if self.mask_key is not None and self.mask_key in d:
                mask = (torch.as_tensor(d[self.mask_key]) > 0).unsqueeze(0)
            lesion = benjamini_hochberg(p.unsqueeze(0), alpha=self.alpha, mask=mask, per=self.per)[0]
            d[self.output_key] = _like(lesion.float(), d[key])
        return d


class LesionFilterd(MapTransform):
    """Clean a binary lesion mask: in-plane median filter, then drop connected components below a size.

    Args:
        keys: lesion mask key(s).
        median_size: median filter size (1 = off); applied per axial slice (kernel ``(k, k, 1)``).
        min_size: smallest connected component kept, in voxels (0 = off).
        connectivity: connectivity of the components (1 = faces, up to the number of spatial dims).
    """

    def __init__(
        self,
        keys: KeysCollection = "lesion",
        median_size: int = 1,
        min_size: int = 0,
        connectivity: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.median_size = median_size
        self.min_size = min_size
        self.connectivity = connectivity

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            lesion = torch.as_tensor(d[key]).float()
            if self.median_size > 1:
                size = [self.median_size] * (lesion.ndim - 1)
                if lesion.ndim == 4:
                    size[-1] = 1
                lesion = (median_filter(lesion.unsqueeze(0), size)[0] > 0.5).float()
            if self.min_size > 0:
                lesion = remove_small_components(lesion.unsqueeze(0) > 0, self.min_size, self.connectivity)[0].float()
            d[key] = _like(lesion, d[key])
        return d


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


class ConformalPValued(MapTransform):
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
        super().__init__(keys, allow_missing_keys)
        self.calibration = _calibration(calibration)
        if score:
            self.calibration.check_score(**score)
        self.mask_key = mask_key
        self.p_key = p_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            s = torch.as_tensor(d[key]).float()
            inside = _brain(d, self.mask_key, s.shape)
            p = torch.where(inside, self.calibration.p_values(s), torch.ones((), dtype=torch.float32))
            d[self.p_key] = _like(p, d[key])
        return d


class VolumeThresholdd(MapTransform):
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
        super().__init__(keys, allow_missing_keys)
        self.calibration = _calibration(calibration)
        if score:
            self.calibration.check_score(**score)
        self.alpha = alpha
        self.threshold = self.calibration.volume_threshold(alpha)  # raises for too few volumes
        self.mask_key = mask_key
        self.output_key = output_key
        self.p_key = p_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            s = torch.as_tensor(d[key]).float()
            inside = _brain(d, self.mask_key, s.shape)
            d[self.output_key] = _like((inside & (s > self.threshold)).float(), d[key])
            if self.p_key is not None:
                p = torch.where(inside, self.calibration.volume_p_values(s), torch.ones((), dtype=torch.float32))
                d[self.p_key] = _like(p, d[key])
        return d


class ClusterThresholdd(MapTransform):
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
        super().__init__(keys, allow_missing_keys)
        self.calibration = _calibration(calibration)
        if score:
            self.calibration.check_score(**score)
        self.alpha = alpha
        self.min_size = self.calibration.cluster_size_threshold(alpha) + 1
        self.connectivity = int(self.calibration.score.get("cluster_connectivity", 1))
        self.mask_key = mask_key
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            s = torch.as_tensor(d[key]).float()
            inside = _brain(d, self.mask_key, s.shape)
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
