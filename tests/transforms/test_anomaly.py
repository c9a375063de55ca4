"""Dictionary post-processing transforms: z/p maps from [mu, sigma, z], FDR masks, lesion filters."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import false_discovery_control, norm

from monai_qrvae.transforms import AnomalyMapsd, FDRMaskd, LesionFilterd


def _pred(z_flair: torch.Tensor) -> torch.Tensor:
    """A (9, H, W, D) [mu, sigma, z] prediction whose FLAIR z-map is ``z_flair``."""
    shape = z_flair.shape
    pred = torch.zeros(9, *shape)
    pred[3:6] = 1.0
    pred[8] = z_flair
    return pred


def test_anomaly_maps_pick_flair_and_mask_background():
    z = torch.randn(8, 8, 4)
    mask = torch.zeros(1, 8, 8, 4)
    mask[:, 2:6, 2:6] = 1
    d = AnomalyMapsd()({"pred": _pred(z), "brain_mask": mask})
    inside = mask[0] > 0
    assert torch.equal(d["z"][0][inside], z[inside])
    assert torch.all(d["z"][0][~inside] == 0) and torch.all(d["p"][0][~inside] == 1)
    expected_p = torch.as_tensor(norm.sf(z[inside].numpy()), dtype=torch.float32)
    assert torch.allclose(d["p"][0][inside], expected_p, atol=1e-6)
    assert torch.equal(d["roi"], mask)


def test_median_filter_removes_a_single_hot_voxel_but_keeps_a_blob():
    z = torch.zeros(16, 16, 2)
    z[3, 3, 0] = 10.0  # isolated spike
    z[8:12, 8:12, 1] = 6.0  # a 4 x 4 lesion
    d = AnomalyMapsd(median_size=3, mask_key=None)({"pred": _pred(z)})
    assert d["z"][0, 3, 3, 0] == 0.0
    assert torch.all(d["z"][0, 9:11, 9:11, 1] == 6.0)
    assert d["z"][0, 9, 9, 0] == 0.0, "slices must be filtered independently"


def test_anomaly_maps_errors():
    with pytest.raises(ValueError, match="3C channels"):
        AnomalyMapsd()({"pred": torch.zeros(4, 8, 8)})
    with pytest.raises(ValueError, match="does not match"):
        AnomalyMapsd()({"pred": torch.zeros(9, 8, 8), "brain_mask": torch.ones(1, 4, 4)})


@pytest.mark.parametrize("per", ["volume", "slice"])
def test_fdr_mask_matches_scipy(per):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(1, 10, 10, 3, generator=g) ** 3
    mask = torch.ones(1, 10, 10, 3)
    mask[:, :2] = 0
    d = FDRMaskd(alpha=0.05, per=per)({"p": p, "brain_mask": mask})
    lesion = d["lesion"][0] > 0
    inside = mask[0] > 0
    expected = torch.zeros_like(lesion)
    groups = [slice(None)] if per == "volume" else [k for k in range(3)]
    for k in groups:
        sel = inside.clone()
        if per == "slice":
            sel[..., [j for j in range(3) if j != k]] = False
        q = false_discovery_control(p[0][sel].numpy())
        expected[sel] = torch.as_tensor(q <= 0.05)
    assert torch.equal(lesion, expected)
    assert not lesion[~inside].any()


def test_lesion_filter_drops_small_components_and_smooths():
    lesion = torch.zeros(1, 16, 16, 2)
    lesion[0, 2, 2, 0] = 1  # one voxel
    lesion[0, 6:11, 6:11, 1] = 1  # 25 voxels
    out = LesionFilterd(min_size=5)({"lesion": lesion})["lesion"]
    assert out.sum() == 25 and out[0, 2, 2, 0] == 0
    smoothed = LesionFilterd(median_size=3)({"lesion": lesion})["lesion"]
    assert smoothed[0, 2, 2, 0] == 0 and smoothed[0, 8, 8, 1] == 1
    with pytest.raises(ValueError, match="alpha"):
        FDRMaskd(alpha=1.5)
