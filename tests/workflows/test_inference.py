"""The written maps' convention outside the brain (z = 0, p = 1, lesion = 0) and the lesion report of ``infer``."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_qrvae.report import REPORT_COLUMNS
from monai_qrvae.workflows import ModelConfig, build_networks, infer


@pytest.fixture(scope="module")
def setup(cohort_factory, tmp_path_factory):
    datalist = cohort_factory("outside", n_healthy=2, n_lesion=1, seed=3, spacing=4.0)
    model = tmp_path_factory.mktemp("model")
    config = ModelConfig(
        image_size=32, quantiles=(0.025, 0.15, 0.5, 0.85, 0.975), score="flair_t2", quantile_score=True
    )
    torch.manual_seed(0)
    _, net = build_networks(config)
    config.save(model / "model_config.json")
    torch.save(net.state_dict(), model / "model.pt")
    entry = json.loads(datalist.read_text())["test"][0]
    item = {k: str(datalist.parent / entry[k]) for k in ("image", "brain_mask")}
    return model, item


@pytest.mark.parametrize("with_mask", [True, False])
def test_outside_the_brain_nothing_is_tested(setup, tmp_path, with_mask):
    model, item = setup
    image = item if with_mask else item["image"]  # without a mask file, the brain is the image's non-zero voxels
    written = infer(model, [image], tmp_path, threshold="gaussian", alpha=0.5, save_png=False)
    z, p, lesion = (np.asarray(nib.load(str(w)).dataobj) for w in written[:3])
    brain = np.asarray(nib.load(item["brain_mask"]).dataobj) > 0
    if not with_mask:
        brain = (np.asarray(nib.load(item["image"]).dataobj) != 0).any(-1)
    assert z.shape == p.shape == lesion.shape == brain.shape  # the whole input grid
    assert not z[~brain].any() and (p[~brain] == 1).all() and not lesion[~brain].any()
    # brain voxels are scored, except at the brain's edge where the model's grid (here a coarse 32 x 32 at 4 mm; at the
    # default 96 x 96 and 2 mm about 5 % of the brain) has no brain voxel: there too z = 0 and p = 1
    assert (z[brain] != 0).mean() > 0.7 and ((z[brain] != 0) == (p[brain] < 1)).mean() > 0.99
    assert lesion[brain].any()  # alpha 0.5 on a random network: something is detected, inside the brain only
    report = json.loads(written[3].read_text())
    assert report["n_lesions"] >= 1 and report["grid"]["shape"] == list(brain.shape)
    assert np.allclose(report["grid"]["affine"], nib.load(str(written[2])).affine)
    assert set(report["lesions"][0]["contrast_z"]) == {"T1", "T2", "FLAIR"}
    assert written[4].read_text().splitlines()[0] == ",".join(REPORT_COLUMNS)  # statistic, p, q empty for voxel BH
    assert written[4].read_text().splitlines()[0].startswith("id,voxels,volume_ml,x_mm,y_mm,z_mm,max_z,drivers")
