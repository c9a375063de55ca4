"""Atomic, resumable checkpoints: re-exported from :mod:`monai_qrvae.handlers.checkpoint`, where they live."""

from __future__ import annotations

from monai_qrvae.handlers.checkpoint import (
    AtomicCheckpointSaver,
    ResumeFromCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    load_state_dict_file,
)

__all__ = [
    "AtomicCheckpointSaver",
    "ResumeFromCheckpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_state_dict_file",
]
