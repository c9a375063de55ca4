"""Dictionary transforms that turn the anomaly network's output into z/p maps and a Benjamini-Hochberg lesion mask.

They work on one decollated item (no batch dimension), as MONAI's post-processing transforms do, and are thin
wrappers of the pure functions in :mod:`monai_qrvae.anomaly`. The handlers in :mod:`monai_qrvae.handlers`
and the bundle's ``postprocessing`` use them; the calibrated thresholds are in
:mod:`monai_qrvae.transforms.anomaly.thresholds`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_qrvae.anomaly import (
    FLAIR_CHANNEL,
    benjamini_hochberg,
    combine_z,
    median_filter,
    p_value,
    remove_small_components,
    score_weights,
    signed_z,
)
from monai_qrvae.transforms.utils import _like

__all__ = [
    "AnomalyMapsd",
    "AnomalyMapsD",
    "AnomalyMapsDict",
    "FDRMaskd",
    "FDRMaskD",
    "FDRMaskDict",
    "LesionFilterd",
    "LesionFilterD",
    "LesionFilterDict",
]


def _median_in_plane(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter of a map ``(C, H, W[, D])`` with kernel ``size``, per axial slice for volumes ``(k, k, 1)``."""
    kernel = [size] * (x.ndim - 1)
    if x.ndim == 4:
        kernel[-1] = 1  # filter each axial slice: the 2D model sees slices independently
    return median_filter(x.unsqueeze(0), kernel)[0]


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
        score: combine the contrasts' z-maps instead of taking ``channel`` alone: a name of
            :data:`~monai_qrvae.anomaly.SCORES` (``"flair"``, ``"flair_t2"``, ``"all"``) or signed weights, one per
            channel (:func:`~monai_qrvae.anomaly.combine_z`); ``None``: the z-map of ``channel``.
        contrast_key: also write every contrast's z-map, turned so that positive means "like a lesion"
            (:func:`~monai_qrvae.anomaly.signed_z`), under this key (``(C, spatial...)``; for the lesion report).
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
        score: str | Sequence[float] | None = None,
        contrast_key: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.score = score
        self.contrast_key = contrast_key
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
            zc = torch.as_tensor(pred[2 * c : 3 * c]).float()
            if self.score is None or (self.score == "flair" and self.channel == FLAIR_CHANNEL < c):
                z = zc[self.channel : self.channel + 1]
            else:
                z = combine_z(zc, score_weights(self.score, c))
            if self.median_size > 1:
                z = _median_in_plane(z, self.median_size)
            if self.mask_key is not None and self.mask_key in d:
                mask = torch.as_tensor(d[self.mask_key]).to(z.device) > 0
                if mask.shape[1:] != z.shape[1:]:
                    raise ValueError(
                        f"brain mask shape {tuple(mask.shape)} does not match the prediction {tuple(pred.shape)}."
                    )
                z = torch.where(mask, z, torch.zeros_like(z))
                p = torch.where(mask, p_value(z, self.alternative), torch.ones_like(z))
                zc = torch.where(mask, zc, torch.zeros_like(zc))
            else:
                mask = torch.ones_like(z, dtype=torch.bool)
                p = p_value(z, self.alternative)
            d[self.roi_key] = _like(mask.float(), pred)
            d[self.z_key] = _like(z, pred)
            d[self.p_key] = _like(p, pred)
            if self.contrast_key is not None:
                d[self.contrast_key] = _like(signed_z(zc), pred)
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
                lesion = (_median_in_plane(lesion, self.median_size) > 0.5).float()
            if self.min_size > 0:
                lesion = remove_small_components(lesion.unsqueeze(0) > 0, self.min_size, self.connectivity)[0].float()
            d[key] = _like(lesion, d[key])
        return d


AnomalyMapsD = AnomalyMapsDict = AnomalyMapsd
FDRMaskD = FDRMaskDict = FDRMaskd
LesionFilterD = LesionFilterDict = LesionFilterd
