"""Handlers that write each evaluated volume to disk: anomaly maps as NIfTI, overlays as PNG.

:class:`AnomalyMapSaver` puts the maps back on the input's grid (:func:`invert_to_input`) and writes NIfTI files
atomically; :class:`OverlaySaver` writes PNG overlays of the maps on the scan.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import Invertd
from monai.utils import ImageMetaKey

from monai_qrvae.anomaly import FLAIR_CHANNEL
from monai_qrvae.report import lesion_report, write_lesion_report
from monai_qrvae.utils import CONTRAST_NAMES, atomic_write, identity

logger = logging.getLogger("monai_qrvae")

__all__ = ["AnomalyMapSaver", "OverlaySaver", "invert_to_input", "output_stem"]


def output_stem(meta: dict, fallback: str) -> str:
    name = meta.get(ImageMetaKey.FILENAME_OR_OBJ) if meta else None
    if isinstance(name, (list, tuple)):
        name = name[-1] if name else None
    if not name:
        return fallback
    name = Path(str(name))
    stem = name.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nii.gz"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    # one subject per folder (image.nii.gz) is common: use the folder name then
    if stem in ("image", "flair", "t1", "t2") and name.parent.name:
        stem = f"{name.parent.name}_{stem}" if stem != "image" else name.parent.name
    return stem


def invert_to_input(
    maps: dict[str, Any],
    orig: Any,
    preprocessing: Callable | None,
    orig_key: str = "image",
    nearest_interp: dict[str, bool] | None = None,
    one_outside: Sequence[str] = (),
) -> dict[str, Any]:
    """Put maps computed on the preprocessed grid back onto the input's grid (shape, affine, orientation).

    The maps are inverted through ``preprocessing`` with ``monai.transforms.Invertd`` (slice selection, resizing,
    cropping and reorientation are undone). Voxels the preprocessing dropped (outside the analysed slices or the
    crop) come back as 0, or as 1 for the keys in ``one_outside`` (p-maps: nothing was tested there).

    Args:
        maps: ``{key: (C, spatial...)}`` maps on the preprocessed grid.
        orig: the preprocessed input (a ``MetaTensor`` carrying the transform history).
        preprocessing: the invertible chain applied to the input; ``None`` (or a plain tensor) returns the maps.
        orig_key: the key the chain was applied to.
        nearest_interp: per key, whether to invert with nearest-neighbour interpolation (default: masks only,
            i.e. keys named ``lesion``, ``roi`` or ``analysed``).
        one_outside: keys whose value outside the analysed region is 1.

    Returns:
        ``{key: MetaTensor}`` on the input's grid (or the maps unchanged when nothing can be inverted).
    """
    if preprocessing is None or not isinstance(orig, MetaTensor):
        return dict(maps)
    keys = list(maps)
    nearest = nearest_interp or {}
    data: dict[str, Any] = {orig_key: orig}
    for key in keys:
        value = torch.as_tensor(maps[key]).float()
        if key in one_outside:  # inversion pads with 0: invert 1 - p so unanalysed voxels get p = 1
            value = 1.0 - value
        data[key] = MetaTensor(value, meta=dict(orig.meta))
    inverter = Invertd(
        keys=keys,
        transform=preprocessing,
        orig_keys=orig_key,
        nearest_interp=[nearest.get(k, k in ("lesion", "roi", "analysed")) for k in keys],
        to_tensor=True,
    )
    data = inverter(data)
    for key in keys:
        if key in one_outside:
            data[key] = 1.0 - data[key]
    return {k: data[k] for k in keys}


def _input_brain(mask: Any, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The brain on the input grid, read back from the file the batch's brain mask came from (``None``: unknown).

    A mask read from a file is that file (non-zero voxels); a mask made from the image (:class:`BrainMaskd`) carries
    the image's file name, whose non-zero voxels (in any contrast) are the brain.
    """
    import nibabel as nib

    names = mask.meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(mask, MetaTensor) else None
    names = [names] if isinstance(names, str) else list(names or [])
    if not names or not all(isinstance(n, str) and os.path.isfile(n) for n in names):
        return None
    brain = None
    for name in names:
        array = np.asarray(nib.load(name).dataobj) != 0
        array = array.reshape(array.shape[:3] + (-1,)).any(-1) if array.ndim > 3 else array
        brain = array if brain is None else brain | array
    if brain is None or tuple(brain.shape) != tuple(shape):
        return None
    return torch.from_numpy(brain)


class _ItemSaver:
    """Ignite glue shared by the savers: at ``ITERATION_COMPLETED``, hand each decollated item to ``_save``."""

    def __init__(self, output_dir: str | os.PathLike, output_transform: Callable, batch_transform: Callable) -> None:
        self.output_dir = Path(output_dir)
        self.output_transform = output_transform
        self.batch_transform = batch_transform
        self.saved: list[Path] = []

    def attach(self, engine: Any) -> None:
        """Save at the end of every iteration."""
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        outputs = self.output_transform(engine.state.output)
        batches = self.batch_transform(engine.state.batch)
        if isinstance(outputs, dict):
            outputs, batches = [outputs], [batches]
        for index, (out, batch) in enumerate(zip(outputs, batches)):
            self._save(out, batch, fallback=f"volume_{engine.state.iteration:04d}_{index}")

    def _save(self, out: dict, batch: dict, fallback: str) -> None:
        raise NotImplementedError


class AnomalyMapSaver(_ItemSaver):
    """Write ``z``, ``p`` and ``lesion`` of each item as NIfTI on the input's grid (shape and affine).

    With ``preprocessing`` given, the maps are first inverted through it (``monai.transforms.Invertd``): slice
    selection, resizing, cropping and reorientation are undone, so the files overlay the input scan. Files are
    named ``<output_dir>/<input name>_<key>.nii.gz`` and written atomically.

    Args:
        output_dir: folder for the files.
        preprocessing: the (invertible) transform chain applied to the inputs, or ``None`` to save as is.
        keys: output keys to save.
        orig_key: the input key whose transform history is inverted.
        nearest_interp: per key, whether to invert with nearest-neighbour interpolation (masks).
        postfixes: file-name postfix per key (default ``zmap``, ``pmap``, ``lesion``).
        output_transform: picks the list of output items from ``engine.state.output``.
        batch_transform: picks the list of batch items from ``engine.state.batch``.
        one_outside: keys whose value outside the analysed slices and crop is 1, not 0 (p-maps: nothing was
            tested there, so nothing is significant).
        report: also write the lesion report ``<input name>_lesions.json`` and ``.csv`` (:mod:`monai_qrvae.report`)
            from the inverted ``lesion`` and ``z`` maps: count, volume in mL, world-mm centroids, peak score and,
            when the output has ``contrast_key`` (:class:`~monai_qrvae.transforms.AnomalyMapsd`), the contrasts that
            drive each lesion.
        contrast_key: the per-contrast lesion-signed z-maps used by the report (inverted, not saved).
        roi_key: the analysed brain mask of :class:`~monai_qrvae.transforms.AnomalyMapsd`; when the output has it,
            it is inverted too (nearest neighbour) and the written maps are set to ``z = 0``, ``p = 1`` and
            ``lesion = 0`` outside the brain on the input grid: the brain mask file the input's ``mask_key`` was
            read from (or, for a mask made from the image, the image's non-zero voxels), else the inverted ``roi``.
        mask_key: the brain mask of the batch (its ``filename_or_obj`` names the file read back).
        site_key: the calibrated thresholds' comparison of the scan with the healthy calibration
            (:meth:`~monai_qrvae.calibration.Calibration.site_check`); the report carries it as ``site``.
        lesion_stats_key: the lesion-level thresholds' per-lesion evidence (statistic, p, q); the report carries
            it per lesion and as ``inference``.
        lesion_labels_key: the kept candidates' labels on the analysed grid, inverted (nearest neighbour) to
            match the report's lesions to their evidence.

    Outside the brain the written maps are ``z = 0``, ``p = 1`` and ``lesion = 0`` (nothing was tested there).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        preprocessing: Callable | None = None,
        keys: Sequence[str] = ("z", "p", "lesion"),
        orig_key: str = "image",
        nearest_interp: Sequence[bool] = (False, False, True),
        postfixes: Sequence[str] | None = None,
        output_transform: Callable = identity,
        batch_transform: Callable = identity,
        one_outside: Sequence[str] = ("p",),
        report: bool = False,
        contrast_key: str = "zc",
        roi_key: str = "roi",
        mask_key: str = "brain_mask",
        site_key: str = "site",
        lesion_stats_key: str = "lesion_stats",
        lesion_labels_key: str = "lesion_labels",
    ) -> None:
        super().__init__(output_dir, output_transform, batch_transform)
        self.report = bool(report)
        self.site_key = site_key
        self.lesion_stats_key, self.lesion_labels_key = lesion_stats_key, lesion_labels_key
        self.contrast_key = contrast_key
        self.roi_key = roi_key
        self.mask_key = mask_key
        self.preprocessing = preprocessing
        self.keys = list(keys)
        self.one_outside = set(one_outside)
        self.orig_key = orig_key
        self.nearest_interp = list(nearest_interp)
        default = {"z": "zmap", "p": "pmap", "lesion": "lesion"}
        self.postfixes = list(postfixes) if postfixes is not None else [default.get(k, k) for k in self.keys]

    def _save(self, out: dict, batch: dict, fallback: str) -> None:
        self.save_item(out, batch, fallback=fallback)

    def save_item(self, out: dict, batch: dict, fallback: str = "volume") -> list[Path]:
        """Invert and write the maps of one item; return the written paths."""
        data, meta = self.invert(out, batch)
        stem = output_stem(meta, fallback)
        written = self.write_maps(data, stem, meta)
        if self.report:
            extra = [k for k in data if k not in self.keys and k != self.lesion_labels_key]
            written.extend(
                self._write_report(
                    data, stem, meta, extra, site=out.get(self.site_key), lesion_stats=out.get(self.lesion_stats_key)
                )
            )
        self.saved.extend(written)
        return written

    def invert(self, out: dict, batch: dict) -> tuple[dict[str, Any], dict]:
        """The maps of one item on the input's grid (with the report's per-contrast maps), and the input's meta."""
        orig = batch.get(self.orig_key, out.get(self.orig_key))
        missing = [k for k in self.keys if k not in out]
        if missing:
            raise KeyError(f"AnomalyMapSaver: output is missing {missing}; attach the anomaly handlers first.")
        meta = dict(orig.meta) if isinstance(orig, MetaTensor) else {}
        extra = [self.contrast_key] if self.report and self.contrast_key in out else []
        if self.report and self.lesion_labels_key in out and self.lesion_stats_key in out:
            extra.append(self.lesion_labels_key)
        roi = [self.roi_key] if self.roi_key in out and self.roi_key not in self.keys else []
        data = invert_to_input(
            {k: out[k] for k in [*self.keys, *extra, *roi]},
            orig,
            self.preprocessing,
            orig_key=self.orig_key,
            nearest_interp={
                **dict(zip(self.keys, self.nearest_interp)),
                **{k: False for k in extra},
                self.lesion_labels_key: True,
                self.roi_key: True,
            },
            one_outside=self.one_outside,
        )
        if roi:  # outside the brain (on the input grid): nothing was tested, nothing is detected
            inside = torch.as_tensor(data.pop(self.roi_key)) > 0.5
            brain = _input_brain(batch.get(self.mask_key), tuple(inside.shape[1:]))
            inside = inside if brain is None else brain[None]
            for key, value in data.items():
                outside_value = 1.0 if key in self.one_outside else 0.0
                t = torch.as_tensor(value)
                cleared = torch.where(inside, t, torch.full_like(t, outside_value))
                data[key] = MetaTensor(cleared, meta=dict(value.meta)) if isinstance(value, MetaTensor) else cleared
        return data, meta

    def write_maps(self, data: dict, stem: str, meta: dict) -> list[Path]:
        """Write the inverted maps of :meth:`invert` as ``<stem>_<postfix>.nii.gz``; return the paths."""
        written = []
        for key, postfix in zip(self.keys, self.postfixes):
            value = data[key]
            array = torch.as_tensor(value).detach().cpu().float()
            if key == "lesion":
                array = (array > 0.5).to(torch.uint8)
            item_meta = dict(value.meta) if isinstance(value, MetaTensor) else meta
            path = self.output_dir / f"{stem}_{postfix}.nii.gz"

            def _write(tmp: str, array: torch.Tensor = array, item_meta: dict = item_meta) -> None:
                writer = NibabelWriter(output_dtype=np.uint8 if array.dtype == torch.uint8 else np.float32)
                writer.set_data_array(array, channel_dim=0, squeeze_end_dims=True)
                writer.set_metadata(item_meta, resample=False)
                writer.write(tmp, verbose=False)

            written.append(atomic_write(path, _write))
        return written

    def _write_report(
        self,
        data: dict,
        stem: str,
        meta: dict,
        extra: list[str],
        site: dict | None = None,
        lesion_stats: dict | None = None,
    ) -> tuple[Path, Path]:
        """The lesion report of one item, on the grid of its written maps, with the calibrated thresholds' comparison
        of the scan with the calibration (``site``; its warning also goes to the log) and the lesion-level
        thresholds' per-lesion evidence (``lesion_stats``, matched through the inverted candidate labels)."""
        for key in ("lesion", "z"):
            if key not in data:
                raise KeyError(f"AnomalyMapSaver(report=True) needs {key!r} among its keys, got {self.keys}.")
        lesion = data["lesion"]
        affine = lesion.affine if isinstance(lesion, MetaTensor) else meta.get("affine", torch.eye(4))

        def as_np(x: Any) -> np.ndarray:
            return torch.as_tensor(x).detach().cpu().float().numpy()

        contrast_z = as_np(data[extra[0]]) if extra else None
        names = CONTRAST_NAMES if contrast_z is not None and contrast_z.shape[0] == 3 else None
        report = lesion_report(
            as_np(lesion)[0] > 0.5,
            as_np(affine).astype(np.float64),
            as_np(data["z"])[0],
            contrast_z,
            contrast_names=names or [str(c) for c in range(0 if contrast_z is None else contrast_z.shape[0])],
            lesion_labels=as_np(data[self.lesion_labels_key])[0] if self.lesion_labels_key in data else None,
            lesion_stats=lesion_stats if self.lesion_labels_key in data else None,
        )
        if site is not None:
            report["site"] = dict(site)
            if site.get("warning"):
                logger.warning("%s: %s", stem, site["warning"])
        return write_lesion_report(report, self.output_dir, stem)


class OverlaySaver(_ItemSaver):
    """Write a PNG per item: FLAIR slices with the z-map, the detected lesions (red) and the label (green).

    Args:
        output_dir: folder for the PNG files.
        image_key: the preprocessed image ``(C, H, W, N)``.
        score_key: the score map ``(1, H, W, N)``.
        lesion_key: the detected lesion mask, if present.
        label_key: the ground-truth label, if present.
        channel: image channel shown (FLAIR).
        num_slices: slices shown (those with the most label or detection, else central ones).
        z_max: top of the z colour scale.
        output_transform: picks the list of output items from ``engine.state.output``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        image_key: str = "image",
        score_key: str = "z",
        lesion_key: str = "lesion",
        label_key: str = "label",
        channel: int = FLAIR_CHANNEL,
        num_slices: int = 6,
        z_max: float = 6.0,
        output_transform: Callable = identity,
        batch_transform: Callable = identity,
    ) -> None:
        super().__init__(output_dir, output_transform, batch_transform)
        self.image_key = image_key
        self.score_key = score_key
        self.lesion_key = lesion_key
        self.label_key = label_key
        self.channel = channel
        self.num_slices = num_slices
        self.z_max = z_max

    def _save(self, out: dict, batch: dict, fallback: str) -> None:
        merged = {**batch, **out}
        meta = merged[self.image_key].meta if isinstance(merged[self.image_key], MetaTensor) else {}
        self.save_item(merged, output_stem(meta, fallback))

    def save_item(self, data: dict, stem: str) -> Path:
        """Render one item to ``<output_dir>/<stem>_overlay.png``."""
        from matplotlib.figure import Figure  # no pyplot: leaves the user's backend (e.g. notebooks) alone

        image = torch.as_tensor(data[self.image_key])[self.channel].float().cpu().numpy()
        score = torch.as_tensor(data[self.score_key])[0].float().cpu().numpy()
        lesion = torch.as_tensor(data[self.lesion_key])[0].cpu().numpy() > 0.5 if self.lesion_key in data else None
        label = torch.as_tensor(data[self.label_key])[0].cpu().numpy() > 0.5 if self.label_key in data else None
        weight = np.zeros(image.shape[-1])
        for m in (label, lesion):
            if m is not None:
                weight += m.reshape(-1, m.shape[-1]).sum(0)
        n = min(self.num_slices, image.shape[-1])
        if weight.sum() > 0:
            chosen = sorted(np.argsort(-weight, kind="stable")[:n].tolist())
        else:
            mid = image.shape[-1] // 2
            chosen = list(range(max(0, mid - n // 2), max(0, mid - n // 2) + n))
        fig = Figure(figsize=(2.0 * n, 6.4))
        axes = fig.subplots(3, n, squeeze=False)
        for col, s in enumerate(chosen):
            flair = np.rot90(image[..., s])
            axes[0, col].imshow(flair, cmap="gray", vmin=0, vmax=1)
            axes[0, col].set_title(f"slice {s}", fontsize=8)
            axes[1, col].imshow(np.rot90(score[..., s]), cmap="magma", vmin=0, vmax=self.z_max)
            axes[2, col].imshow(flair, cmap="gray", vmin=0, vmax=1)
            if lesion is not None and lesion[..., s].any():
                axes[2, col].imshow(
                    np.ma.masked_equal(np.rot90(lesion[..., s]).astype(float), 0),
                    cmap="autumn_r",
                    vmin=0,
                    vmax=1,
                    alpha=0.75,
                    interpolation="nearest",
                )
            if label is not None and label[..., s].any():
                axes[2, col].contour(np.rot90(label[..., s]), levels=[0.5], colors="lime", linewidths=0.9)
            for row in range(3):
                axes[row, col].axis("off")
        fig.suptitle(
            f"{stem}: FLAIR; z-map (0 to {self.z_max:g}); detected lesions (red) and label outline (green)", fontsize=9
        )
        # fixed margins: tight_layout measures every (hidden) axis; 10-25 % of the overlay's time (docs/benchmarks.md)
        fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=0.9, wspace=0.03, hspace=0.1)
        path = self.output_dir / f"{stem}_overlay.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        self.saved.append(path)
        return path
