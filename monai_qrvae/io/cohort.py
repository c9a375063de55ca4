"""Cohort runs of ``qrvae infer --datalist``: resume, kill -9 safety, ``torchrun`` sharing and ``cohort.csv``.

Each subject is analysed into a staging folder ``OUT/.partial/<subject>/`` and only then moved into place (its
files, or its folder for raw series); last of all its manifest ``OUT/.manifest/<subject>.json`` is written
atomically. The manifest records the inputs (size and mtime of every file, or of every file of a DICOM folder), the
sha256 of the model weights, configuration and calibration, the inference settings, the outputs (relative path and
size) and the subject's summary. A subject is skipped when its manifest matches all of these; otherwise (no
manifest: never run or killed part-way; a changed input, model or setting; an output missing or of another size)
it is redone. A kill -9 at any point thus leaves no truncated file (every write is atomic) and no subject counted
as done that is not; leftovers of a killed subject (its staging folder, temporary files) are removed when it is
redone.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process joins a ``gloo`` process group and takes the subjects
``rank::world_size`` of the datalist; after a barrier, rank 0 writes ``OUT/cohort.csv`` from all manifests.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from monai_qrvae.utils import atomic_write

__all__ = [
    "COHORT_COLUMNS",
    "MANIFEST_DIR",
    "PARTIAL_DIR",
    "input_stamp",
    "model_hashes",
    "distributed_share",
    "run_cohort",
    "write_cohort_csv",
]

#: the columns of ``cohort.csv`` (one row per subject).
COHORT_COLUMNS = ("subject", "lesions", "total_ml", "largest_lesion_ml", "site_mismatch", "seconds")
#: the folder of an output folder that holds the per-subject manifests, and the staging folder of unfinished subjects.
MANIFEST_DIR, PARTIAL_DIR = ".manifest", ".partial"


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def input_stamp(paths: list[str | os.PathLike]) -> dict[str, Any]:
    """Size and mtime (ns) of each input file; for a folder (a DICOM series), of each file in it."""
    stamp: dict[str, Any] = {}
    for p in paths:
        path = Path(p).resolve()
        if path.is_dir():
            stamp[str(path)] = {f.name: _file_stamp(f) for f in sorted(path.iterdir()) if f.is_file()}
        elif path.is_file():
            stamp[str(path)] = _file_stamp(path)
        else:
            stamp[str(path)] = None
    return stamp


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_hashes(model_dir: str | os.PathLike) -> dict[str, str | None]:
    """sha256 of the model folder's weights, configuration and calibration (``None`` for a missing file)."""
    from monai_qrvae.calibration import CALIBRATION_FILE

    folder = Path(model_dir)
    return {
        "model": _sha256(folder / "model.pt"),
        "config": _sha256(folder / "model_config.json"),
        "calibration": _sha256(folder / CALIBRATION_FILE),
    }


def distributed_share(n: int) -> tuple[list[int], int, int]:
    """``(indices this process takes, rank, world size)``: ``rank::world_size`` under ``torchrun``, else all.

    Joins (or reuses) a ``gloo`` process group when ``WORLD_SIZE`` > 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return list(range(n)), 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    return list(range(rank, n, world)), rank, world


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _summary(report_path: Path, seconds: float) -> dict[str, Any]:
    report = json.loads(report_path.read_text())
    lesions = report.get("lesions") or []
    site = report.get("site") or {}
    return {
        "lesions": int(report.get("n_lesions", len(lesions))),
        "total_ml": float(report.get("total_volume_ml", 0.0)),
        "largest_lesion_ml": max((float(e.get("volume_ml", 0.0)) for e in lesions), default=0.0),
        "site_mismatch": site.get("matches_calibration") is False,
        "seconds": round(seconds, 2),
    }


def _outputs(out: Path, rel: list[str]) -> dict[str, int]:
    return {r: (out / r).stat().st_size for r in rel}


def _is_complete(manifest_path: Path, expected: dict[str, Any], out: Path) -> bool:
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if any(manifest.get(k) != v for k, v in expected.items()):
        return False
    for rel, size in manifest.get("outputs", {}).items():
        path = out / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return bool(manifest.get("outputs"))


def _clean_leftovers(out: Path, name: str) -> None:
    """Remove a killed run's staging folder and temporary files of subject ``name``."""
    shutil.rmtree(out / PARTIAL_DIR / name, ignore_errors=True)
    shutil.rmtree(out / PARTIAL_DIR / f"{name}.old", ignore_errors=True)
    for tmp in (out / MANIFEST_DIR).glob(f".{name}.json.*"):
        tmp.unlink(missing_ok=True)


def _move_into_place(stage: Path, out: Path, name: str, as_folder: bool) -> list[str]:
    """Move a subject's staged outputs to ``out`` (its folder ``out/name``, or its files): their relative paths."""
    if as_folder:
        target = out / name
        old = out / PARTIAL_DIR / f"{name}.old"
        if target.exists():
            os.replace(target, old)
        os.replace(stage, target)
        shutil.rmtree(old, ignore_errors=True)
        return sorted(str(p.relative_to(out)) for p in target.rglob("*") if p.is_file())
    moved = []
    for path in sorted(stage.rglob("*")):
        if path.is_file():
            rel = path.relative_to(stage)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, out / rel)
            moved.append(str(rel))
    shutil.rmtree(stage, ignore_errors=True)
    return moved


def run_cohort(
    subjects: list[tuple[str, list[str]]],
    analyse: Callable[[str, list[str], Path], Path],
    out_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    settings: dict[str, Any],
    as_folders: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``analyse`` over the subjects this process takes, skipping those already complete; write ``cohort.csv``.

    Args:
        subjects: ``(name, input paths)`` per subject, in datalist order (every process gets the same list).
        analyse: ``analyse(name, inputs, stage_dir)`` writes one subject's outputs into ``stage_dir`` and returns the
            path of its lesion report JSON (inside ``stage_dir``).
        out_dir: output folder.
        model_dir: model folder (its files' hashes go into the manifests).
        settings: inference settings (a change redoes every subject).
        as_folders: each subject's outputs are the folder ``out_dir/<name>`` (else files directly in ``out_dir``).
        log: progress lines (default: stderr).

    Returns:
        ``{"done": [...], "skipped": [...], "rank", "world_size", "cohort_csv": path or None, "written": [...]}``.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    out = Path(out_dir)
    hashes = model_hashes(model_dir)
    mine, rank, world = distributed_share(len(subjects))
    done, skipped, written = [], [], []
    for index in mine:
        name, inputs = subjects[index]
        manifest_path = out / MANIFEST_DIR / f"{name}.json"
        expected = {"subject": name, "inputs": input_stamp(inputs), "hashes": hashes, "settings": settings}
        if _is_complete(manifest_path, expected, out):
            skipped.append(name)
            continue
        _clean_leftovers(out, name)
        manifest_path.unlink(missing_ok=True)  # from here on the subject counts as not done
        stage = out / PARTIAL_DIR / name
        stage.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        report = analyse(name, inputs, stage)
        summary = _summary(Path(report), time.perf_counter() - start)
        report_rel = str(Path(report).relative_to(stage))
        rel = _move_into_place(stage, out, name, as_folders)
        report_rel = f"{name}/{report_rel}" if as_folders else report_rel
        manifest = {**expected, "outputs": _outputs(out, rel), "report": report_rel, "summary": summary}
        text = json.dumps(manifest, indent=1)
        atomic_write(manifest_path, lambda tmp, text=text: Path(tmp).write_text(text))
        written += [str(out / r) for r in rel]
        done.append(name)
        log(f"[rank {rank}/{world}] {name}: {summary['lesions']} lesions, {summary['seconds']:.1f} s")
    if skipped:
        log(f"[rank {rank}/{world}] skipped {len(skipped)} complete subject(s) (manifests in {out / MANIFEST_DIR})")
    _barrier(world)
    csv_path = None
    if rank == 0:
        csv_path = write_cohort_csv(out, [name for name, _ in subjects])
        try:
            (out / PARTIAL_DIR).rmdir()  # only when empty (nothing staged is left behind)
        except OSError:
            pass
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return {
        "done": done,
        "skipped": skipped,
        "rank": rank,
        "world_size": world,
        "cohort_csv": str(csv_path) if csv_path else None,
        "written": written,
    }


def _rows(out: Path, names: list[str]) -> Iterator[dict[str, Any]]:
    for name in names:
        path = out / MANIFEST_DIR / f"{name}.json"
        if path.is_file():
            yield {"subject": name, **json.loads(path.read_text())["summary"]}


def write_cohort_csv(out_dir: str | os.PathLike, names: list[str]) -> Path:
    """Write ``out_dir/cohort.csv`` (:data:`COHORT_COLUMNS`) from the subjects' manifests, atomically."""
    out = Path(out_dir)
    rows = list(_rows(out, names))

    def _write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COHORT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    for tmp in out.glob(".cohort.csv.*"):
        tmp.unlink(missing_ok=True)
    return atomic_write(out / "cohort.csv", _write)
