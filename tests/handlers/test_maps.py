"""Anomaly handlers on a real MONAI evaluator: maps, FDR masks, filters, metrics, NIfTI and PNG output."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from monai_qrvae.baselines import IntensityBaseline
from monai_qrvae.engines import create_anomaly_evaluator
from monai_qrvae.handlers.maps import AnomalyMapHandler, FDRHandler, LesionFilterHandler
from monai_qrvae.handlers.metrics import BestDice, LesionDice, MaskedAveragePrecision, MaskedROCAUC
from monai_qrvae.handlers.savers import AnomalyMapSaver, OverlaySaver
from monai_qrvae.preprocessing import volume_transforms
from monai_qrvae.utils import atomic_write

SHAPE = (40, 44, 36)


def _write_subject(folder, seed: int, lesion: bool = True):
    """A 4D NIfTI (X, Y, Z, 3) 'brain' ellipsoid with noise and a bright FLAIR cube lesion, plus label/mask."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    brain = (x**2 / 0.8 + y**2 / 0.8 + z**2 / 0.9) < 1
    image = np.zeros(SHAPE + (3,), np.float32)
    for c, level in enumerate((0.6, 0.4, 0.5)):
        image[..., c] = brain * (level + 0.03 * rng.standard_normal(SHAPE))
    label = np.zeros(SHAPE, np.uint8)
    if lesion:
        label[18:24, 20:26, 15:21] = 1
        image[..., 2][label > 0] += 0.4
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40, -44, -36]
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / "image.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), folder / "brain_mask.nii.gz")
    item = {"image": str(folder / "image.nii.gz"), "brain_mask": str(folder / "brain_mask.nii.gz")}
    if lesion:
        nib.save(nib.Nifti1Image(label, affine), folder / "label.nii.gz")
        item["label"] = str(folder / "label.nii.gz")
    return item, affine


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("handlers")
    items = [_write_subject(root / f"sub-{i}", seed=i)[0] for i in range(2)]
    pre = volume_transforms(image_size=32, num_slices=12)
    healthy = pre(dict(_write_subject(root / "healthy", seed=9, lesion=False)[0]))
    net = IntensityBaseline(3).fit([{"image": healthy["image"][None], "brain_mask": healthy["brain_mask"][None]}])
    loader = DataLoader(Dataset(items, pre), batch_size=1)
    saver = AnomalyMapSaver(root / "maps", preprocessing=pre)
    overlay = OverlaySaver(root / "png")
    evaluator = create_anomaly_evaluator(
        net,
        loader,
        roi_size=(32, 32),
        key_val_metric={"best_dice": BestDice()},
        additional_metrics={"dice_fdr": LesionDice(), "auroc": MaskedROCAUC(), "auprc": MaskedAveragePrecision()},
        val_handlers=[AnomalyMapHandler(), FDRHandler(alpha=0.05), LesionFilterHandler(min_size=3), saver, overlay],
    )
    evaluator.run()
    return evaluator, saver, overlay, items, root


def test_maps_and_mask_on_engine_output(evaluated):
    evaluator = evaluated[0]
    out = evaluator.state.output[0]
    assert out["z"].shape == (1, 32, 32, 12) and out["p"].shape == (1, 32, 32, 12)
    brain = out["brain_mask"] > 0 if "brain_mask" in out else evaluator.state.batch[0]["brain_mask"] > 0
    assert torch.all(out["p"][~brain] == 1) and torch.all(out["z"][~brain] == 0)
    assert ((out["p"] >= 0) & (out["p"] <= 1)).all()
    lesion = out["lesion"] > 0
    assert lesion.any() and not lesion[~brain].any()


def test_metrics_find_the_bright_lesion(evaluated):
    metrics = evaluated[0].state.metrics
    assert metrics["best_dice"] > 0.7  # partial-volume edges of the 2 mm cube after in-plane resizing
    assert metrics["auroc"] > 0.95
    assert metrics["auprc"] > 0.7
    assert 0.5 < metrics["dice_fdr"] <= metrics["best_dice"] + 1e-6


def test_saved_nifti_has_input_shape_and_affine(evaluated):
    _, saver, _, items, root = evaluated
    assert len(saver.saved) == 3 * len(items)
    original = nib.load(items[0]["image"])
    names = sorted(p.name for p in saver.saved)
    assert "sub-0_zmap.nii.gz" in names and "sub-0_lesion.nii.gz" in names
    for path in saver.saved:
        img = nib.load(path)
        assert img.shape == SHAPE, (path, img.shape)
        np.testing.assert_allclose(img.affine, original.affine, atol=1e-4)
    pmap = nib.load(root / "maps" / "sub-0_pmap.nii.gz").get_fdata()
    assert pmap[0, 0, 0] == pytest.approx(1.0) and pmap[..., 0].min() == pytest.approx(1.0), "unanalysed: p = 1"
    assert 0.0 <= pmap.min() < 1e-3
    lesion = nib.load(root / "maps" / "sub-0_lesion.nii.gz").get_fdata() > 0
    label = nib.load(items[0]["label"]).get_fdata() > 0
    dice = 2 * (lesion & label).sum() / (lesion.sum() + label.sum())
    assert dice > 0.5
    assert not list((root / "maps").glob(".*tmp*")), "temporary files left behind"


def test_overlay_png_written(evaluated):
    overlay = evaluated[2]
    assert len(overlay.saved) == 2
    for path in overlay.saved:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5000


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")

    def _fail(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, _fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_metric_handlers_read_items_with_from_engine():
    """One output item or a list of them gives lists per key; LesionDice reads ``lesion`` by default."""
    item = {"lesion": torch.ones(1, 2, 2, 2), "z": torch.zeros(1, 2, 2, 2), "label": torch.ones(1, 2, 2, 2)}
    item["roi"] = torch.ones(1, 2, 2, 2)
    dice = LesionDice(save_details=False)
    picked = dice._output_transform([item, item])
    assert len(picked) == 3 and all(len(v) == 2 for v in picked) and picked[0][0] is item["lesion"]
    assert [len(v) for v in dice._output_transform(item)] == [1, 1, 1]
    assert len(LesionDice("z", "label", None)._output_transform(item)) == 2
    dice.update(picked)
    assert float(dice.compute()) == pytest.approx(1.0)
    with pytest.raises(TypeError):
        LesionDice(lesion_key="lesion", unknown=1)
