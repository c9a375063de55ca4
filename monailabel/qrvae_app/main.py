"""MONAI Label app: unsupervised brain-lesion detection with a QR-VAE (monai-qrvae), for 3D Slicer and other clients.

Start it with ``monailabel start_server --app monailabel/qrvae_app --studies STUDIES`` from the environment that
``make monailabel-env`` builds (``.venv-monailabel``). See README.md beside this file.

``--conf`` options:

- ``model_dir PATH``: a ``qrvae train`` output folder (``model.pt`` + ``model_config.json`` + ``calibration.pt``).
- ``bundle PATH``: a monai-qrvae MONAI bundle (the same files in its ``models/`` folder).
- ``zmap true|false``: also serve the banded z-map model ``qrvae_zmap`` (default ``true``).
- ``raw true|false``: also serve ``qrvae_raw_lesion`` (raw T1/T2/FLAIR series in, the label on the FLAIR grid;
  default ``true`` when the ``raw`` extra -- antspyx, deepbet -- is installed in the server's environment).
- ``threshold conformal|volume|gaussian``: the default label-free threshold (default ``conformal``, as
  ``qrvae infer``; it needs the model's ``calibration.pt``, ``gaussian`` does not). A request may override it with
  the option ``{"threshold": ...}``.

MONAI Label imports torch before this app, so start the server with ``OMP_WAIT_POLICY=PASSIVE`` in its environment
(idle OpenMP threads then sleep instead of spinning; see README.md); without it the app logs a one-line hint.

Without ``model_dir``/``bundle`` the app takes ``<app>/model/`` (a ``qrvae train`` folder's files) or else the
repository's ``bundle/models`` (the shipped model, the default of ``qrvae infer``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from lib.infers.qrvae import QRVAEInfer
from lib.infers.qrvae_raw import QRVAERawInfer
from lib.pipeline import CALIBRATION_FILE, load_model_source, resolve_model_source
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

import monai_qrvae
from monai_qrvae.threads import log_thread_settings

logger = logging.getLogger(__name__)

#: model names shown in the client (3D Slicer's MONAI Label panel lists them under "Auto Segmentation").
LESION_MODEL = "qrvae_lesion"
ZMAP_MODEL = "qrvae_zmap"
RAW_MODEL = "qrvae_raw_lesion"


class QRVAEApp(MONAILabelApp):
    """Serves ``qrvae_lesion`` (binary lesion mask) and ``qrvae_zmap`` (z-map bands) for 4D T1/T2/FLAIR studies, and
    ``qrvae_raw_lesion`` for raw studies (a FLAIR series with its T1 and T2 series in ``series/<study>/``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, Any]) -> None:
        kind, path = resolve_model_source(conf, app_dir)
        self.model = load_model_source(kind, path, threshold=str(conf.get("threshold") or "conformal").lower())
        self.with_zmap = str(conf.get("zmap", "true")).lower() in ("1", "true", "yes")
        raw_extra = all(importlib.util.find_spec(m) is not None for m in ("ants", "deepbet"))
        self.with_raw = str(conf.get("raw", "true")).lower() in ("1", "true", "yes") and raw_extra
        if not raw_extra:
            logger.info(f"+++ {RAW_MODEL} not served: the raw extra (antspyx, deepbet) is not installed")
        logger.info(f"+++ QR-VAE weights: {self.model.source}")
        if self.model.calibration is None and self.model.defaults["threshold"] != "gaussian":
            logger.warning(
                f"+++ {self.model.model_dir} has no {CALIBRATION_FILE}: lesion requests are refused unless they ask "
                "{'threshold': 'gaussian'} (or start the server with --conf threshold gaussian); "
                "run 'qrvae calibrate' to calibrate the model"
            )
        logger.info(f"+++ monai_qrvae {monai_qrvae.__version__} from {Path(monai_qrvae.__file__).parent}")
        # torch is loaded by MONAI Label before this app: OMP_WAIT_POLICY must come from the server's environment
        log_thread_settings(logger)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-qrvae: unsupervised brain lesion detection",
            description=(
                "QR-VAE trained on healthy T1/T2/FLAIR; a study is one 4D NIfTI (X, Y, Z, 3) with the contrasts "
                f"T1, T2, FLAIR in that order, skull-stripped and co-registered; {self.model.slices_text} analysed, "
                "label-free threshold calibrated on healthy scans. Research use only."
            ),
            version=monai_qrvae.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {LESION_MODEL: QRVAEInfer(self.model, output="lesion")}
        if self.with_zmap:
            infers[ZMAP_MODEL] = QRVAEInfer(self.model, output="zmap_bands")
        if self.with_raw:
            infers[RAW_MODEL] = QRVAERawInfer(self.model)
        return infers

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's infer, with an unknown model or study refused as HTTP 404 with one line (not a 500)."""
        model = request.get("model")
        if model not in self._infers:
            message = f"no model {model!r} on this server; it serves {sorted(self._infers)}."
            logger.warning(f"refused request: {message}")
            raise HTTPException(status_code=404, detail=message)
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not store.get_image_uri(image):
                message = f"no study {image!r} in the server's studies folder; see /datastore/ for the study ids."
                logger.warning(f"refused request: {message}")
                raise HTTPException(status_code=404, detail=message)
        return super().infer(request, datastore)
