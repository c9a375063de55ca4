"""Atomic, resumable checkpoints for Ignite engines (training survives SIGTERM and SIGKILL).

``monai.handlers.CheckpointSaver`` writes with ``atomic=False``, so a kill during a save can leave a truncated
file. :class:`AtomicCheckpointSaver` uses Ignite's own ``Checkpoint`` with ``DiskSaver(atomic=True)``
(temporary file, then rename), and :class:`ResumeFromCheckpoint` loads the newest good checkpoint with
``torch.load(weights_only=True)`` when the engine starts. Both are plain Ignite handlers with ``attach``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver

__all__ = [
    "AtomicCheckpointSaver",
    "ResumeFromCheckpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_state_dict_file",
]

_PREFIX = "checkpoint"


def list_checkpoints(directory: str | os.PathLike, prefix: str = _PREFIX) -> list[Path]:
    """The checkpoints ``<prefix>_epoch=N.pt`` in ``directory``, newest (highest epoch) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob(f"{prefix}_epoch=*.pt"):
        match = re.search(r"_epoch=(\d+)\.pt$", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def latest_checkpoint(directory: str | os.PathLike, prefix: str = _PREFIX) -> Path | None:
    """The checkpoint of the highest epoch in ``directory`` (``<prefix>_epoch=N.pt``), or None."""
    found = list_checkpoints(directory, prefix)
    return found[0] if found else None


def load_state_dict_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or state-dict file safely (``weights_only=True``) with a clear error.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable PyTorch checkpoint of plain tensors (truncated, tampered with,
            or a pickle that needs code to load).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; expected a .pt file written by monai-qrvae.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / unsafe files
        raise ValueError(
            f"cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "Expected a plain state dict saved by torch.save (loaded with weights_only=True); the file may be "
            "truncated, corrupt or contain pickled code."
        ) from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dictionary (state dict).")
    return dict(obj)


class AtomicCheckpointSaver:
    """Save ``save_dict`` every ``save_interval`` epochs, atomically, keeping the last ``n_saved`` files.

    Files are ``<save_dir>/checkpoint_epoch=N.pt``, each a dictionary of state dicts (plain tensors and numbers,
    loadable with ``weights_only=True``). With ``save_final``, ``<save_dir>/<final_filename>`` is also written
    when the engine completes (as ``monai.handlers.CheckpointSaver(save_final=True)`` does, but atomically); a
    ``save_dict`` of one object is saved as that object's plain state dict (e.g. a bundle's ``models/model.pt``).
    In a distributed run only rank 0 writes.

    Args:
        save_dir: output folder.
        save_dict: objects with ``state_dict`` to save, e.g. ``{"network": net, "optimizer": opt, "trainer": t}``.
        save_interval: epochs between saves (0: no interval checkpoints).
        n_saved: how many checkpoints to keep.
        save_final: also save when the engine completes, to ``final_filename``.
        final_filename: file name of the final save.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: dict[str, Any],
        save_interval: int = 1,
        n_saved: int = 2,
        save_final: bool = False,
        final_filename: str = "model.pt",
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save.")
        if save_interval < 0:
            raise ValueError(f"save_interval must be a non-negative number of epochs, got {save_interval}.")
        self.save_dir = str(save_dir)
        self.save_dict = save_dict
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.save_final = save_final
        self.final_filename = final_filename

    def attach(self, engine: Any) -> None:
        """Register the checkpoint at ``EPOCH_COMPLETED(every=save_interval)`` and the final save at ``COMPLETED``."""
        disk = DiskSaver(self.save_dir, require_empty=False, atomic=True, create_dir=True)
        if self.save_interval > 0:
            self._checkpoint = Checkpoint(
                self.save_dict,
                disk,
                filename_prefix=_PREFIX,
                n_saved=self.n_saved,
                global_step_transform=lambda eng, _: eng.state.epoch,
                filename_pattern="{filename_prefix}_epoch={global_step}.{ext}",
            )
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._checkpoint)
        if self.save_final:
            self._final = Checkpoint(self.save_dict, disk, n_saved=1, filename_pattern=self.final_filename)
            engine.add_event_handler(Events.COMPLETED, self._final)


class ResumeFromCheckpoint:
    """At ``STARTED``, load the newest readable checkpoint in ``save_dir`` (if any) into ``load_dict``.

    Unreadable (truncated, tampered) checkpoints are skipped with a warning in favour of older good ones.

    Training then continues from the epoch after the checkpoint, with the optimiser state restored.

    Args:
        save_dir: the folder that :class:`AtomicCheckpointSaver` writes.
        load_dict: the same objects as the saver's ``save_dict``.
        map_location: device for the loaded tensors.
    """

    def __init__(
        self, save_dir: str | os.PathLike, load_dict: dict[str, Any], map_location: str | torch.device = "cpu"
    ) -> None:
        self.save_dir = Path(save_dir)
        self.load_dict = load_dict
        self.map_location = map_location
        self.loaded_from: Path | None = None

    def attach(self, engine: Any) -> None:
        """Register the loader at ``STARTED``."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        path, checkpoint = None, None
        for candidate in list_checkpoints(self.save_dir):
            try:
                checkpoint = load_state_dict_file(candidate, self.map_location)
                path = candidate
                break
            except ValueError as e:  # a damaged file (e.g. written by another tool and killed): try an older one
                engine.logger.warning(f"skipping unreadable checkpoint: {e}")
        if path is None or checkpoint is None:
            return
        missing = [k for k in self.load_dict if k not in checkpoint]
        if missing:
            raise ValueError(f"checkpoint {path} lacks {missing}; it holds {sorted(checkpoint)}.")
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(self.load_dict, checkpoint)
        # a longer run than the one that wrote the checkpoint: keep the requested number of epochs
        if "trainer" in self.load_dict and max_epochs is not None and max_epochs > engine.state.max_epochs:
            engine.state.max_epochs = max_epochs
        self.loaded_from = path
        engine.logger.info(f"resumed from {path} at epoch {engine.state.epoch}")
