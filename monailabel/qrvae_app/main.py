"""MONAI Label app: unsupervised brain-lesion detection with a QR-VAE (monai-qrvae), for 3D Slicer and other clients.

Start it with ``monailabel start_server --app monailabel/qrvae_app --studies STUDIES`` from the environment that
``make monailabel-env`` builds (``.venv-monailabel``). See README.md beside this file.

``--conf`` options:

- ``model_dir PATH``: a ``qrvae train`` output folder (``model.pt`` + ``model_config.json``).
- ``bundle PATH``: a monai-qrvae MONAI bundle (``configs/inference.json`` + ``models/model.pt``).
- ``zmap true|false``: also serve the banded z-map model ``qrvae_zmap`` (default ``true``).

Without ``model_dir``/``bundle`` the app takes ``<app>/model/`` (a ``qrvae train`` folder's files) or else the
repository's ``bundle/``.
"""

from __future__ import annotations

import logging
from typing import Any

from lib.infers.qrvae import QRVAEInfer
from lib.pipeline import load_model_source, resolve_model_source
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

import monai_qrvae

logger = logging.getLogger(__name__)

#: model names shown in the client (3D Slicer's MONAI Label panel lists them under "Auto Segmentation").
LESION_MODEL = "qrvae_lesion"
ZMAP_MODEL = "qrvae_zmap"


class QRVAEApp(MONAILabelApp):
    """Serves ``qrvae_lesion`` (binary lesion mask) and ``qrvae_zmap`` (z-map bands) for T1/T2/FLAIR studies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, Any]) -> None:
        kind, path = resolve_model_source(conf, app_dir)
        self.model = load_model_source(kind, path)
        self.with_zmap = str(conf.get("zmap", "true")).lower() in ("1", "true", "yes")
        logger.info(f"+++ QR-VAE weights: {self.model.source}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-qrvae: unsupervised brain lesion detection",
            description=(
                "QR-VAE trained on healthy T1/T2/FLAIR; a study is one 4D NIfTI (X, Y, Z, 3) with the contrasts "
                "T1, T2, FLAIR in that order, skull-stripped and co-registered. Research use only."
            ),
            version=monai_qrvae.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {LESION_MODEL: QRVAEInfer(self.model, output="lesion")}
        if self.with_zmap:
            infers[ZMAP_MODEL] = QRVAEInfer(self.model, output="zmap_bands")
        return infers
