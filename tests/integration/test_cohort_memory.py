"""Training on large cohorts with bounded memory: :class:`~monai_qrvae.workflows.PersistentSliceDataset`.

The bounded path (``train(..., cache_dir=...)``, ``qrvae train --cache-dir``) must give the slices, the order and so
the weights of the default in-memory path, hold at most ``cache_volumes`` volumes, and work under ``torchrun`` DDP
with a ``DistributedSampler`` (the bundle's ``multi_gpu_train.json``, 2 gloo processes on CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_qrvae.handlers.checkpoint import load_state_dict_file
from monai_qrvae.preprocessing import SliceDataset, volume_transforms
from monai_qrvae.workflows import PersistentSliceDataset, train

REPO = Path(__file__).parents[2]


def _cohort(root: Path, n_train: int = 5, n_val: int = 2, shape=(18, 20, 12)) -> Path:
    """A tiny cohort of noisy 4D (T1, T2, FLAIR) ellipsoids with brain masks, and its datalist (no labels)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    mask = ((grid**2).sum(0) < 0.9).astype(np.uint8)
    sections: dict[str, list] = {"training": [], "validation": []}
    for i in range(n_train + n_val):
        rng = np.random.default_rng(i)
        folder = root / f"sub-{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        image = (rng.uniform(0.2, 1.0, (*shape, 3)) * mask[..., None]).astype(np.float32)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(folder / "image.nii.gz"))
        nib.save(nib.Nifti1Image(mask, affine), str(folder / "brain_mask.nii.gz"))
        entry = {"image": f"{folder.name}/image.nii.gz", "brain_mask": f"{folder.name}/brain_mask.nii.gz"}
        sections["training" if i < n_train else "validation"].append(entry)
    (root / "datalist.json").write_text(json.dumps(sections))
    return root / "datalist.json"


def _items(datalist: Path, section: str = "training") -> list[dict]:
    return [{k: str(datalist.parent / v) for k, v in e.items()} for e in json.loads(datalist.read_text())[section]]


class _Counting:
    """The volume chain, counting the volumes it prepares."""

    def __init__(self, transform):
        self.transform, self.calls = transform, 0

    def __call__(self, data):
        self.calls += 1
        return self.transform(data)


def test_bounded_dataset_yields_the_in_memory_slices_and_holds_few_volumes(tmp_path):
    datalist = _cohort(tmp_path / "data")
    items = _items(datalist)
    vt = volume_transforms(image_size=16, num_slices=None)  # every slice: volumes of different slice counts
    reference = SliceDataset(items, vt, progress=False)
    counting = _Counting(vt)
    ds = PersistentSliceDataset(items, counting, tmp_path / "cache", cache_volumes=2, progress=False)
    assert counting.calls == len(items) == 5 and len(list((tmp_path / "cache").glob("*.pt"))) == 5
    assert len(ds) == len(reference) > 5 * 5
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    for i in order:  # random access, as a shuffling sampler reads
        expected, got = reference[i], ds[i]
        assert list(got) == list(expected) == ["image", "brain_mask", "slice_index"]
        assert got["slice_index"] == expected["slice_index"] and isinstance(got["slice_index"], int)
        for key in ("image", "brain_mask"):
            assert type(got[key]) is torch.Tensor and torch.equal(got[key], expected[key]), (i, key)
        assert len(ds._lru) <= 2  # never more than cache_volumes volumes in memory
    assert len(ds._lru) == 2 and torch.equal(ds[-1]["image"], reference[len(reference) - 1]["image"])
    # only the entries (paths) are held besides the LRU: no prepared volume
    assert ds.volumes.data == items
    with pytest.raises(IndexError, match=f"out of range for a dataset of {len(ds)} slices"):
        ds[len(ds)]

    # a second dataset (another run, or another torchrun process) reads the files: nothing is prepared again
    again = PersistentSliceDataset(items, counting, tmp_path / "cache", cache_volumes=1, progress=False)
    assert counting.calls == 5 and len(again) == len(ds)
    assert torch.equal(again[7]["image"], reference[7]["image"])
    # an image rewritten in place is a new entry: prepared again, the others are read
    path = Path(items[1]["image"])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    PersistentSliceDataset(items, counting, tmp_path / "cache", progress=False)
    assert counting.calls == 6 and len(list((tmp_path / "cache").glob("*.pt"))) == 6
    with pytest.raises(ValueError, match="cache_volumes must be at least 1, got 0"):
        PersistentSliceDataset(items, vt, tmp_path / "cache", cache_volumes=0)


@pytest.mark.slow
def test_train_with_cache_dir_gives_the_in_memory_weights(tmp_path):
    """The bounded path changes nothing but memory: same slices, same order, same losses and weights."""
    datalist = _cohort(tmp_path / "data", n_train=3, n_val=1)
    settings = dict(epochs=1, batch_size=8, image_size=16, num_slices=6, progress=False, resume=False)
    memory = train(datalist, tmp_path / "memory", **settings)
    bounded = train(datalist, tmp_path / "bounded", cache_dir=tmp_path / "cache", **settings)
    assert bounded["train_slices"] == memory["train_slices"] == 3 * 6
    assert bounded["final_loss"] == memory["final_loss"] and bounded["final_val_loss"] == memory["final_val_loss"]
    a, b = (load_state_dict_file(tmp_path / d / "model.pt") for d in ("memory", "bounded"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (folder,) = (tmp_path / "cache").glob("slices_size-16_n-6*")  # one folder per slice setting and model grid
    assert len(list(folder.glob("*.pt"))) == 3 + 1


@pytest.mark.slow
def test_bounded_path_under_torchrun_ddp_with_a_distributed_sampler(tmp_path):
    """The bundle's multi-GPU training (DDP, ``DistributedSampler``) on 2 gloo processes, slices from the disk cache."""
    datalist = _cohort(tmp_path / "data", n_train=4, n_val=2, shape=(22, 26, 24))
    cache = tmp_path / "cache"
    dataset = {
        "_target_": "monai_qrvae.workflows.PersistentSliceDataset",
        "transform": "@preprocessing",
        "cache_dir": str(cache),
        "keys": ["image", "brain_mask"],
        "cache_volumes": 2,
        "progress": False,
    }
    override = tmp_path / "bounded.json"
    override.write_text(
        json.dumps(
            {
                "train#dataset": {**dataset, "data": "@train#datalist"},
                "validate#dataset": {**dataset, "data": "@validate#datalist"},
            }
        )
    )
    configs = REPO / "bundle" / "configs"
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    options = {
        "config_file": f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}','{override}']",
        "bundle_root": REPO / "bundle",
        "dataset_dir": datalist.parent,
        "ckpt_dir": tmp_path / "models",
        "output_dir": tmp_path / "eval",
        "train#trainer#max_epochs": 1,
    }
    cmd = [*launcher, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    cmd += [arg for key, value in options.items() for arg in (f"--{key}", str(value))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("SupervisedTrainer - INFO - Engine run finished") == 2  # both ranks trained
    assert out.count("Epoch[1] Metrics -- loss") == 1  # rank 0 logged
    assert len(list(cache.glob("*.pt"))) == 4 + 2  # every volume prepared once, shared by both processes
    state = load_state_dict_file(tmp_path / "models" / "model.pt")
    assert state and all(k.startswith("network.") for k in state)


def test_qrvae_train_cache_dir_reaches_train(monkeypatch, tmp_path):
    """``qrvae train --cache-dir DIR`` passes DIR to :func:`train`; without it the in-memory default (None)."""
    from monai_qrvae import cli, workflows

    calls = []
    monkeypatch.setattr(workflows, "train", lambda *args, **kwargs: calls.append(kwargs) or {"model_dir": "m"})
    argv = ["train", "--datalist", str(tmp_path / "d.json"), "--out", str(tmp_path / "m"), "--no-progress"]
    assert cli.main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert cli.main(argv) == 0
    assert [c["cache_dir"] for c in calls] == [str(tmp_path / "cache"), None]
