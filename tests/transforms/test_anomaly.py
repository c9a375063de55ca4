"""Dictionary post-processing transforms: z/p maps from [mu, sigma, z], FDR masks, lesion filters."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
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


def _pred_channels(c: int = 3, shape=(4, 4, 2)) -> torch.Tensor:
    """A (3c, *shape) prediction whose every channel is constant and distinct (channel k is k + 1)."""
    return torch.stack([torch.full(shape, float(k + 1)) for k in range(3 * c)])


def test_anomaly_maps_defaults_write_z_p_roi_only_and_need_the_key():
    d = AnomalyMapsd()({"pred": _pred_channels()})
    assert sorted(d) == ["p", "pred", "roi", "z"]  # no mu/sigma unless asked
    assert torch.all(d["z"] == 9.0)  # FLAIR (channel 2) of the z block [6, 9)
    with pytest.raises(KeyError):
        AnomalyMapsd()({"image": torch.zeros(9, 4, 4)})


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_anomaly_maps_pick_one_channel_of_each_block(channel):
    # channels 1..3 are mu, 4..6 sigma, 7..9 z of T1, T2, FLAIR
    d = AnomalyMapsd(channel=channel, keep_mu_sigma=True, mask_key=None)({"pred": _pred_channels()})
    for key, value in (("mu", 1 + channel), ("sigma", 4 + channel), ("z", 7 + channel)):
        assert d[key].shape == (1, 4, 4, 2) and torch.all(d[key] == value), key


def test_anomaly_maps_channel_range():
    with pytest.raises(ValueError, match="out of range"):
        AnomalyMapsd(channel=3)({"pred": _pred_channels()})
    with pytest.raises(ValueError, match="out of range"):
        AnomalyMapsd(channel=-1)({"pred": _pred_channels()})


def test_anomaly_maps_flair_score_is_the_flair_map_whatever_the_channel():
    # score="flair" takes the FLAIR z-map (channel 2) even when another channel is named
    d = AnomalyMapsd(score="flair", channel=0, mask_key=None)({"pred": _pred_channels()})
    assert d["z"].shape == (1, 4, 4, 2) and torch.allclose(d["z"], torch.full((1, 4, 4, 2), 9.0))


def test_median_filter_of_a_volume_is_in_plane_and_of_a_slice_is_2d():
    # a 4 x 4 blob in the middle slice of three survives the (3, 3, 1) filter; a 3D window would erase it
    z = torch.zeros(12, 12, 3)
    z[4:8, 4:8, 1] = 6.0
    d = AnomalyMapsd(median_size=3, mask_key=None)({"pred": _pred(z)})
    assert torch.all(d["z"][0, 5:7, 5:7, 1] == 6.0) and d["z"][0, ..., [0, 2]].abs().sum() == 0
    # a 2D map is filtered with a 3 x 3 window: a one-voxel-wide line along the first axis (3 of 9) goes
    z2 = torch.zeros(9, 9)
    z2[:, 4] = 6.0
    z2[2:5, 6:9] = 6.0  # a 3 x 3 block keeps its centre
    d = AnomalyMapsd(median_size=3, mask_key=None)({"pred": _pred(z2)})
    assert torch.all(d["z"][0, :, 4] == 0.0) and d["z"][0, 3, 7] == 6.0


def test_median_size_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        AnomalyMapsd(median_size=2, mask_key=None)({"pred": _pred(torch.zeros(6, 6, 2))})
    with pytest.raises(ValueError, match="odd"):
        LesionFilterd(median_size=2)({"lesion": torch.zeros(1, 6, 6, 2)})


def test_fdr_mask_defaults_and_alpha_bounds():
    t = FDRMaskd()
    assert t.keys == ("p",) and t.alpha == 0.05 and t.per == "volume" and t.output_key == "lesion"
    p = torch.ones(1, 4, 4, 2)
    p[0, 0, 0, 0] = 0.04 / 32  # the only discovery at 5 % of 32 tests; 0.05 / 16 would pass at 10 %
    p[0, 1, 1, 1] = 0.05 / 16 * 1.5
    lesion = t({"p": p})["lesion"]
    assert lesion.sum() == 1 and lesion[0, 0, 0, 0] == 1
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match="alpha"):
            FDRMaskd(alpha=alpha)
    with pytest.raises(ValueError, match="per"):
        FDRMaskd(per="stack")
    with pytest.raises(KeyError):
        FDRMaskd()({"q": p})


def test_lesion_filter_defaults_leave_the_mask_untouched():
    soft = torch.zeros(1, 6, 6, 2)
    soft[0, 1:4, 1:4, 0] = 0.3  # not binary: any filtering would binarise it
    soft[0, 5, 5, 1] = 1.0
    t = LesionFilterd()
    assert t.median_size == 1 and t.min_size == 0 and t.connectivity == 1
    assert torch.equal(t({"lesion": soft})["lesion"], soft)
    with pytest.raises(KeyError):
        t({"mask": soft})


def test_lesion_filter_min_size_one_binarises_and_connectivity_counts_faces():
    soft = torch.zeros(1, 6, 6, 2)
    soft[0, 1:3, 1:3, 0] = 0.3
    assert torch.equal(LesionFilterd(min_size=1)({"lesion": soft})["lesion"], (soft > 0).float())
    diagonal = torch.zeros(1, 6, 6, 1)
    diagonal[0, 1, 1, 0] = diagonal[0, 2, 2, 0] = 1.0  # two face-separated voxels, one corner-connected pair
    assert LesionFilterd(min_size=2)({"lesion": diagonal})["lesion"].sum() == 0
    assert LesionFilterd(min_size=2, connectivity=2)({"lesion": diagonal})["lesion"].sum() == 2


def test_lesion_filter_median_keeps_voxels_above_one_half():
    half = torch.zeros(1, 6, 6, 1)
    half[0, 1:5, 1:5, 0] = 0.5  # a soft mask at exactly 0.5 is not a lesion after the median filter
    assert LesionFilterd(median_size=3)({"lesion": half})["lesion"].sum() == 0
    half[0, 1:5, 1:5, 0] = 0.6
    assert LesionFilterd(median_size=3)({"lesion": half})["lesion"][0, 2:4, 2:4, 0].sum() == 4


def test_alternatives_and_metadata_of_every_output():
    z = torch.tensor([-2.0, 0.0, 1.5, 3.0]).view(2, 2, 1)
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    pred = MetaTensor(_pred(z), affine=affine)
    mask = torch.ones(1, 2, 2, 1)
    mask[0, 1, 1, 0] = 0  # the 3.0 is outside the brain
    d = AnomalyMapsd(alternative="less", contrast_key="cz", keep_mu_sigma=True)({"pred": pred, "brain_mask": mask})
    expected = torch.as_tensor(norm.cdf(z.numpy()), dtype=torch.float32)
    expected[1, 1, 0] = 1.0
    torch.testing.assert_close(d["p"][0].as_tensor(), expected)
    for key in ("roi", "z", "p", "cz", "mu", "sigma"):
        assert isinstance(d[key], MetaTensor) and torch.equal(d[key].affine, affine.double()), key
    two_sided = AnomalyMapsd(alternative="two-sided", mask_key=None)({"pred": _pred(z)})["p"][0]
    torch.testing.assert_close(two_sided, torch.as_tensor(2 * norm.sf(abs(z.numpy())), dtype=torch.float32))
    lesion = FDRMaskd(alpha=0.5)(d)["lesion"]
    assert isinstance(lesion, MetaTensor) and torch.equal(lesion.affine, affine.double())
    filtered = LesionFilterd(min_size=1)({"lesion": lesion})["lesion"]
    assert isinstance(filtered, MetaTensor) and torch.equal(filtered.affine, affine.double())
