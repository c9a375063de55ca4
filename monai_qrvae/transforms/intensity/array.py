"""Masked intensity normalisation: per-channel statistics taken inside the brain mask only.

:class:`MaskedScaleIntensityPercentiles` (percentile scaling), :class:`MaskedZScore` (z-score) and
:class:`HistogramStandardize` (Nyul & Udupa piecewise-linear histogram standardisation).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple

from monai_qrvae.transforms.utils import (
    _masked_input,
    _percentiles,
    as_float,
    channel_mask,
    check_finite_image,
    prepare_mask,
)

__all__ = ["DEFAULT_LANDMARK_PERCENTILES", "MaskedScaleIntensityPercentiles", "MaskedZScore", "HistogramStandardize"]

DEFAULT_LANDMARK_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
"""Nyul & Udupa landmarks: the 1st and 99th percentiles (the standard-scale ends) and the deciles between."""


class MaskedScaleIntensityPercentiles(Transform):
    """Per-channel robust scaling with percentiles computed inside the brain mask only.

    For each channel, ``a = P_lower`` and ``b = P_upper`` of the voxels inside the mask are mapped to ``b_min``
    and ``b_max`` linearly (optionally clipped to ``[b_min, b_max]``); voxels outside the mask are set to
    ``background``. Cf. ``monai.transforms.ScaleIntensityRangePercentiles``, which uses all voxels.

    Args:
        lower: lower percentile in [0, 100].
        upper: upper percentile in [0, 100], greater than ``lower``.
        b_min: value ``P_lower`` maps to.
        b_max: value ``P_upper`` maps to.
        clip: clip the scaled brain voxels to ``[b_min, b_max]``.
        background: value of the voxels outside the mask.
        dtype: output data type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        lower: float = 1.0,
        upper: float = 99.0,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        background: float = 0.0,
        dtype: DtypeLike = np.float32,
    ) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(
                f"MaskedScaleIntensityPercentiles: expected 0 <= lower < upper <= 100, got {lower=}, {upper=}."
            )
        self.lower = lower
        self.upper = upper
        self.b_min = b_min
        self.b_max = b_max
        self.clip = clip
        self.background = background
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Scale ``img`` ``(C, *spatial)``; ``mask`` ``(1 or C, *spatial)``, None: non-zero voxels."""
        name = self.__class__.__name__
        img, img_t, mask_t = _masked_input(img, mask, name)
        out = torch.empty_like(img_t)
        for c in range(img_t.shape[0]):
            m = channel_mask(mask_t, c)
            a, b = _percentiles(img_t[c][m], [self.lower, self.upper])
            if b - a == 0.0:
                warnings.warn(
                    f"{name}: channel {c} is constant inside the mask (P{self.lower} = P{self.upper} = {a}); "
                    "only shifting it.",
                    stacklevel=2,
                )
                scaled = img_t[c] - a + self.b_min
            else:
                scaled = (img_t[c] - a) / (b - a) * (self.b_max - self.b_min) + self.b_min
            if self.clip:
                scaled = scaled.clamp(min(self.b_min, self.b_max), max(self.b_min, self.b_max))
            # dense arithmetic + where: faster than gathering and scattering the masked voxels
            out[c] = torch.where(m, scaled, torch.tensor(self.background, dtype=scaled.dtype))
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]


class MaskedZScore(Transform):
    """Per-channel z-score with the mean and (population) standard deviation of the voxels inside the mask.

    Brain voxels become ``(x - mean) / std`` (mean 0, std 1 inside the mask); voxels outside are set to
    ``background``. A channel that is constant inside the mask is only centred (with a warning), as
    ``monai.transforms.NormalizeIntensity`` does.

    Args:
        background: value of the voxels outside the mask.
        dtype: output data type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, background: float = 0.0, dtype: DtypeLike = np.float32) -> None:
        self.background = background
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Z-score ``img`` ``(C, *spatial)``; ``mask`` ``(1 or C, *spatial)``, None: non-zero voxels."""
        name = self.__class__.__name__
        img, img_t, mask_t = _masked_input(img, mask, name)
        out = torch.full_like(img_t, self.background)
        for c in range(img_t.shape[0]):
            m = channel_mask(mask_t, c)
            values = img_t[c][m].double()
            std, mean = torch.std_mean(values, correction=0)
            if float(std) == 0.0:
                warnings.warn(f"{name}: channel {c} is constant inside the mask; only centring it.", stacklevel=2)
                std = torch.ones_like(std)
            out[c][m] = ((values - mean) / std).to(out.dtype)
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]


def _piecewise_linear(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map through the points ``(xp, fp)`` with linear extrapolation by the end segments.

    Tied source landmarks (``xp[k] == xp[k - 1]``) are dropped, keeping the first of each run.
    """
    keep = torch.ones_like(xp, dtype=torch.bool)
    keep[1:] = xp[1:] > xp[:-1]
    xp, fp = xp[keep], fp[keep]
    if xp.numel() < 2:
        raise ValueError(
            "HistogramStandardize: the image is constant inside the mask (all landmarks equal); "
            "expected at least two distinct landmark intensities."
        )
    x64 = x.to(xp.dtype).contiguous()
    idx = torch.searchsorted(xp, x64).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return y0 + (x64 - x0) * (y1 - y0) / (x1 - x0)


class HistogramStandardize(Transform):
    """Nyul & Udupa piecewise-linear histogram standardisation, per channel, inside the brain mask.

    Nyul, Udupa, Zhang, "New variants of a method of MRI scale standardization", IEEE TMI 19(2), 2000.

    Training (:meth:`fit`): for every training volume and channel, the intensity landmarks at ``percentiles``
    (default 1, 10, 20, ..., 90, 99) are taken inside the mask and, when ``output_range=(s1, s2)`` is given,
    mapped linearly so that the first and last landmarks land on ``s1`` and ``s2``; the standard landmarks are
    their mean over volumes. With ``output_range=None`` the raw landmarks are averaged, so fitting on a single
    reference volume histogram-matches every subject to that reference (the QR-VAE paper's preprocessing).

    Transform (:meth:`__call__`): the landmarks of the new volume are computed the same way and the brain voxels
    are mapped piecewise-linearly from them to the standard landmarks (linear extrapolation beyond the first
    and last landmarks); voxels outside the mask are set to ``background``.

    The landmarks ``(C, L)`` round-trip through :meth:`state_dict` / :meth:`load_state_dict` and
    :meth:`to_json` / :meth:`from_json` (``landmarks=`` also accepts the JSON path).

    Args:
        landmarks: standard landmarks ``(C, L)`` (array, nested list), a JSON file written by :meth:`to_json`,
            or None (call :meth:`fit` before use).
        percentiles: strictly increasing landmark percentiles in [0, 100], at least two.
        output_range: ``(s1, s2)`` standard scale of the first and last landmarks, or None (reference scale).
        background: value of the voxels outside the mask.
        dtype: output data type.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        landmarks: NdarrayOrTensor | Sequence[Sequence[float]] | str | Path | None = None,
        percentiles: Sequence[float] = DEFAULT_LANDMARK_PERCENTILES,
        output_range: Sequence[float] | None = (0.0, 1.0),
        background: float = 0.0,
        dtype: DtypeLike = np.float32,
    ) -> None:
        self.percentiles = self._check_percentiles(percentiles)
        self.output_range = self._check_output_range(output_range)
        self.background = background
        self.dtype = dtype
        self.landmarks: torch.Tensor | None = None
        if isinstance(landmarks, (str, Path)):
            path = Path(landmarks)
            if not path.is_file():
                raise FileNotFoundError(f"HistogramStandardize: landmarks file {str(path)!r} not found.")
            self.load_state_dict(json.loads(path.read_text()))
        elif landmarks is not None:
            self.landmarks = self._check_landmarks(landmarks)

    @staticmethod
    def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
        p = tuple(float(v) for v in ensure_tuple(percentiles))
        if len(p) < 2 or any(b <= a for a, b in zip(p, p[1:])) or p[0] < 0.0 or p[-1] > 100.0:
            raise ValueError(
                f"HistogramStandardize: percentiles must be at least two strictly increasing values in [0, 100], "
                f"got {percentiles}."
            )
        return p

    @staticmethod
    def _check_output_range(output_range: Sequence[float] | None) -> tuple[float, float] | None:
        if output_range is None:
            return None
        r = tuple(float(v) for v in ensure_tuple(output_range))
        if len(r) != 2 or not r[0] < r[1]:
            raise ValueError(f"HistogramStandardize: output_range must be (s1, s2) with s1 < s2, got {output_range}.")
        return r  # type: ignore[return-value]

    def _check_landmarks(self, landmarks: Any) -> torch.Tensor:
        lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))
        if lm.ndim != 2 or lm.shape[1] != len(self.percentiles):
            raise ValueError(
                f"HistogramStandardize: landmarks of shape {tuple(lm.shape)} do not match the {len(self.percentiles)} "
                f"percentiles; expected (C, {len(self.percentiles)})."
            )
        if not bool(torch.isfinite(lm).all()) or bool((lm[:, 1:] <= lm[:, :-1]).any()):
            raise ValueError(
                f"HistogramStandardize: landmarks must be finite and increase strictly per channel, got {lm.tolist()}."
            )
        return lm

    def image_landmarks(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> torch.Tensor:
        """Landmarks ``(C, L)`` (float64) of ``img`` ``(C, *spatial)`` inside ``mask`` (None: non-zero voxels)."""
        img_t = as_float(img).double()
        check_finite_image(img_t, "HistogramStandardize")
        mask_t = prepare_mask(img_t, mask, "HistogramStandardize")
        return self._landmarks(img_t, mask_t)

    def _landmarks(self, img_t: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
        rows = [
            torch.as_tensor(_percentiles(img_t[c][channel_mask(mask_t, c)], self.percentiles), dtype=torch.float64)
            for c in range(img_t.shape[0])
        ]
        return torch.stack(rows).cpu()

    def fit(
        self, images: Iterable[NdarrayOrTensor], masks: Iterable[NdarrayOrTensor | None] | None = None
    ) -> HistogramStandardize:
        """Learn the standard landmarks from training volumes.

        Args:
            images: volumes ``(C, *spatial)`` with the same channels.
            masks: one brain mask per volume (``(1 or C, *spatial)``, or None for the non-zero voxels), or None.

        Returns:
            ``self``, fitted.

        Raises:
            ValueError: no image, image/mask counts differ, channel counts differ, NaN/Inf, empty mask, or a
                volume whose first and last landmarks coincide when ``output_range`` is set.
        """
        images = list(images)
        masks = [None] * len(images) if masks is None else list(masks)
        if not images:
            raise ValueError("HistogramStandardize.fit: expected at least one training image, got none.")
        if len(masks) != len(images):
            raise ValueError(f"HistogramStandardize.fit: got {len(images)} images but {len(masks)} masks.")
        all_landmarks = []
        for i, (img, mask) in enumerate(zip(images, masks)):
            lm = self.image_landmarks(img, mask)
            if self.output_range is not None:
                span = lm[:, -1:] - lm[:, :1]
                if bool((span <= 0).any()):
                    raise ValueError(
                        f"HistogramStandardize.fit: image {i} has equal first and last landmarks in channel(s) "
                        f"{(span[:, 0] <= 0).nonzero().flatten().tolist()}; expected a non-constant brain."
                    )
                s1, s2 = self.output_range
                lm = s1 + (lm - lm[:, :1]) / span * (s2 - s1)
            if all_landmarks and lm.shape != all_landmarks[0].shape:
                raise ValueError(
                    f"HistogramStandardize.fit: image {i} has {lm.shape[0]} channels, image 0 has "
                    f"{all_landmarks[0].shape[0]}; expected the same channels in all images."
                )
            all_landmarks.append(lm)
        self.landmarks = self._check_landmarks(torch.stack(all_landmarks).mean(dim=0))
        return self

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Standardise ``img`` ``(C, *spatial)``; ``mask`` ``(1 or C, *spatial)``, None: non-zero voxels."""
        if self.landmarks is None:
            raise ValueError(
                "HistogramStandardize: no standard landmarks; call fit(images, masks), pass landmarks=..., "
                "or load_state_dict() first."
            )
        img = convert_to_tensor(img, track_meta=get_track_meta())
        img_t = as_float(img)
        if img_t.ndim < 2 or img_t.shape[0] != self.landmarks.shape[0]:
            raise ValueError(
                f"HistogramStandardize: image of shape {tuple(img_t.shape)} has not the {self.landmarks.shape[0]} "
                "channels of the landmarks; expected (C, *spatial) with the fitted C."
            )
        check_finite_image(img_t, "HistogramStandardize")
        mask_t = prepare_mask(img_t, mask, "HistogramStandardize")
        source = self._landmarks(img_t.double(), mask_t).to(img_t.device)
        target = self.landmarks.to(img_t.device)
        out = torch.full_like(img_t, self.background)
        for c in range(img_t.shape[0]):
            m = channel_mask(mask_t, c)
            out[c][m] = _piecewise_linear(img_t[c][m], source[c], target[c]).to(out.dtype)
        return convert_to_dst_type(out, dst=img, dtype=self.dtype)[0]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: ``percentiles``, ``output_range`` and ``landmarks`` (``(C, L)`` or None)."""
        return {
            "percentiles": list(self.percentiles),
            "output_range": None if self.output_range is None else list(self.output_range),
            "landmarks": None if self.landmarks is None else self.landmarks.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`.

        Raises:
            ValueError: a key is missing or a value is invalid.
        """
        missing = {"percentiles", "output_range", "landmarks"} - set(state)
        if missing:
            raise ValueError(
                f"HistogramStandardize.load_state_dict: missing keys {sorted(missing)}, got keys {sorted(state)}."
            )
        self.percentiles = self._check_percentiles(state["percentiles"])
        self.output_range = self._check_output_range(state["output_range"])
        self.landmarks = None if state["landmarks"] is None else self._check_landmarks(state["landmarks"])

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` as JSON to ``path`` and return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.state_dict(), indent=2))
        return path

    @classmethod
    def from_json(cls, path: str | Path, **kwargs: Any) -> HistogramStandardize:
        """A transform with the state of the JSON file ``path`` (``kwargs``: ``background``, ``dtype``)."""
        return cls(landmarks=path, **kwargs)
