"""MONAI Label infer task: QR-VAE lesion detection (or the z-map) on a T1/T2/FLAIR study.

The same model files, preprocessing, score and label-free threshold as ``qrvae infer`` (see ``lib/pipeline.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.inferers import Inferer
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from ..pipeline import (
    INPUT_BRAIN_KEY,
    ZMAP_BANDS,
    LoadedModel,
    PostOptions,
    StudyError,
    build_inferer,
    build_pre_transforms,
    postprocess,
    threshold_transforms,
)

logger = logging.getLogger(__name__)

#: labels of the banded z-map model: value k marks ZMAP_BANDS[k-1] <= z < ZMAP_BANDS[k].
ZMAP_LABELS = {
    **{f"z {lo:g}-{hi:g}": i + 1 for i, (lo, hi) in enumerate(zip(ZMAP_BANDS[:-1], ZMAP_BANDS[1:]))},
    f"z >= {ZMAP_BANDS[-1]:g}": len(ZMAP_BANDS),
}


class QRVAEInfer(BasicInferTask):
    """Detect lesions in a 3-contrast brain MRI with a QR-VAE (one 3D label volume on the input's grid).

    Args:
        model: the loaded model (shared by the app's tasks).
        output: ``"lesion"`` (binary lesion mask, label ``lesion`` = 1, from the label-free threshold of
            ``qrvae infer``: conformal BH on the model's healthy calibration unless the request says
            ``{"threshold": "gaussian"}`` or ``"volume"``) or ``"zmap_bands"`` (the model's score z-map as labels
            1..3 for z >= 2, 3, 4; a request may ask ``{"zmap_output": "zmap"}`` for the float z-map or
            ``{"zmap_output": "pmap"}`` for the p-map of the threshold).

    Outside the brain: ``z = 0``, ``p = 1``, ``lesion = 0`` (as the CLI and the bundle).
    """

    def __init__(self, model: LoadedModel, output: str = "lesion") -> None:
        if output not in ("lesion", "zmap_bands"):
            raise ValueError(f"output must be 'lesion' or 'zmap_bands', got {output!r}.")
        self.model = model
        self.output = output
        self._pre = build_pre_transforms(model)  # one chain per task: the inversion needs these instances
        if output == "lesion":
            labels: dict[str, int] = {"lesion": 1}
            config: dict[str, Any] = {
                k: model.defaults[k] for k in ("threshold", "alpha", "fdr_per", "median_size", "min_size")
            }
            description = (
                "QR-VAE unsupervised lesion detection (T1, T2, FLAIR in one 4D NIfTI): voxels the healthy model does "
                f"not explain (score {model.config.score}), {config['threshold']} threshold at alpha "
                f"{config['alpha']:g}; {model.slices_text} analysed"
            )
        else:
            labels = dict(ZMAP_LABELS)
            config = {"zmap_output": "zmap_bands"}
            description = (
                f"QR-VAE z-map of the score {model.config.score} (T1, T2, FLAIR in one 4D NIfTI) in bands: 1 = z 2-3, "
                "2 = z 3-4, 3 = z >= 4; params {'zmap_output': 'zmap'} return the float z-map instead, "
                "{'zmap_output': 'pmap'} the p-map"
            )
        super().__init__(
            path=str(model.weights),
            network=None,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=description,
            config=config,
        )

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return list(self._pre.transforms)

    def inferer(self, data: Any = None) -> Inferer:
        return build_inferer(self.model)

    def inverse_transforms(self, data: Any = None) -> None:
        return None  # the post-processing inverts (it needs the maps, not the raw network output)

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return [self._to_input_grid]

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        return self.model.on(device)

    def _to_input_grid(self, data: dict[str, Any]) -> dict[str, Any]:
        """Anomaly maps, FDR mask and filters, inverted onto the study's grid; a summary for the result JSON."""
        options = PostOptions.from_request(data, self.output, self.model.defaults)
        data["pred"] = torch.as_tensor(data["pred"]).detach().cpu()
        array, affine = postprocess(data, self._pre, options, self.model, pred_key="pred")
        data.pop(INPUT_BRAIN_KEY, None)
        site = data.pop("site", None)
        lesion_stats = data.pop("lesion_stats", None)
        data["pred"] = array
        data["pred_meta_dict"] = {"affine": affine}
        data["result_dtype"] = "float32" if options.output in ("zmap", "pmap") else "uint8"
        voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
        summary: dict[str, Any] = {"model": self.model.source, "output": options.output, "shape": list(array.shape)}
        if options.output == "lesion":
            count = int(array.sum())
            summary.update(
                threshold=options.threshold,
                alpha=options.alpha,
                fdr_per=options.fdr_per,
                lesion_voxels=count,
                lesion_volume_ml=round(count * voxel_ml, 3),
            )
        elif options.output == "zmap_bands":
            summary["band_voxels"] = {name: int((array == value).sum()) for name, value in ZMAP_LABELS.items()}
        elif options.output == "zmap":
            summary["z_max"] = float(array.max())
        else:
            summary.update(threshold=options.threshold, p_min=float(array.min()))
        if site is not None:  # how far the study's scores lie from the calibration; a warning names the remedy
            summary["site"] = site
        if lesion_stats is not None and options.output == "lesion":  # lesion-level evidence: statistic, p, q
            summary["lesion_inference"] = lesion_stats
        data["result"] = summary
        # one readable line per study (MONAI Label logs the request and its timings; this is the answer)
        study = os.path.basename(str(data.get("image_path", "?")))
        shown = ("lesion_voxels", "lesion_volume_ml", "band_voxels", "z_max", "p_min")
        found = {k: summary[k] for k in shown if k in summary}
        logger.info(f"{study}: {options.output} {found}")
        return data

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict[str, Any]]:
        try:
            options = PostOptions.from_request(request, self.output, self.model.defaults)
            if options.needs_threshold:
                threshold_transforms(self.model, options)  # an uncalibrated model is refused before the study is read
            return super().__call__(request, callbacks)
        except StudyError as e:
            logger.warning(f"refused study {request.get('image')!r}: {e}")
            raise HTTPException(status_code=422, detail=str(e)) from None
