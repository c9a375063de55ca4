"""Tests of monai_qrvae.transforms: slice selection (and its inverse), brain mask, masked normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Orientationd

from monai_qrvae.transforms.intensity.array import HistogramStandardize, MaskedScaleIntensityPercentiles, MaskedZScore
from monai_qrvae.transforms.intensity.dictionary import (
    HistogramStandardized,
    MaskedScaleIntensityPercentilesd,
    MaskedZScored,
)
from monai_qrvae.transforms.mask.array import BrainMask
from monai_qrvae.transforms.mask.dictionary import BrainMaskd
from monai_qrvae.transforms.slices.array import SLICE_INDEX_KEY, SLICE_INDICES_KEY, SelectSlices
from monai_qrvae.transforms.slices.dictionary import SelectSlicesd, slices_to_items

AFFINE = np.array([[2.0, 0, 0, -10.0], [0, 2.0, 0, -20.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1.0]])


def _volume(c: int = 3, shape: tuple[int, int, int] = (10, 12, 30), seed: int = 0) -> MetaTensor:
    """A (C, H, W, D) MetaTensor whose voxel values encode channel and slice index, with a non-trivial affine."""
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.rand((c, *shape), generator=g)
        + torch.arange(shape[-1]).float() * 10
        + torch.arange(c)[:, None, None, None]
    )
    return MetaTensor(x, affine=torch.as_tensor(AFFINE))


def _brain(shape: tuple[int, int, int] = (16, 16, 12), c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (C, H, W, D) image with positive intensities inside a box "brain" and 0 outside, and its (1, ...) mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros((1, *shape), dtype=torch.bool)
    mask[:, 3:13, 2:14, 2:10] = True
    img = (torch.rand((c, *shape), generator=g) * 100 + 50 + 20 * torch.arange(c)[:, None, None, None]) * mask
    return img, mask


# ------------------------------------------------------------------------------------------------- SelectSlices


def test_select_slices_centre_shape_indices_affine():
    x = _volume()
    y = SelectSlices(num_slices=10, mode="centre")(x)
    assert y.shape == (3, 10, 12, 10)
    assert y.meta[SLICE_INDICES_KEY].tolist() == list(range(10, 20))  # 30 // 2 - 10 // 2 = 10
    assert y.applied_operations[-1]["extra_info"]["orig_depth"] == 30
    torch.testing.assert_close(y.as_tensor(), x.as_tensor()[..., 10:20])
    expected = AFFINE.copy()
    expected[2, 3] += 3.0 * 10  # origin moves to slice 10, like a crop
    np.testing.assert_allclose(y.affine.numpy(), expected)
    np.testing.assert_allclose(x.affine.numpy(), AFFINE)  # input untouched
    assert SLICE_INDICES_KEY not in x.meta


def test_select_slices_odd_centre_and_full_depth():
    assert SelectSlices(num_slices=5)(_volume(shape=(4, 4, 10))).meta[SLICE_INDICES_KEY].tolist() == [3, 4, 5, 6, 7]
    assert SelectSlices(num_slices=10)(_volume(shape=(4, 4, 10))).meta[SLICE_INDICES_KEY].tolist() == list(range(10))


@pytest.mark.parametrize(
    "start, stop, num, expected",
    [
        (3, 7, 20, [3, 4, 5, 6]),
        (25, None, 20, [25, 26, 27, 28, 29]),
        (-4, None, None, [26, 27, 28, 29]),
        (None, 2, 20, [0, 1]),
        (28, 100, 20, [28, 29]),
    ],
)
def test_select_slices_range(start, stop, num, expected):
    y = SelectSlices(num_slices=num, mode="range", start=start, stop=stop)(_volume())
    assert y.meta[SLICE_INDICES_KEY].tolist() == expected
    assert y.shape[-1] == len(expected)


def test_select_slices_mask_centre_off_centre_mask():
    x = _volume()
    mask = torch.zeros(1, 10, 12, 30)
    mask[:, 2:8, 2:8, 3:12] = 1  # centre of mass at slice 7
    y = SelectSlices(num_slices=6, mode="mask_centre")(x, mask)
    assert y.meta[SLICE_INDICES_KEY].tolist() == [4, 5, 6, 7, 8, 9]
    # a heavier lower part pulls the centre down; the window is shifted to stay inside the volume
    mask2 = torch.zeros(10, 12, 30)  # no channel axis is accepted too
    mask2[..., 0:3] = 1
    y2 = SelectSlices(num_slices=6, mode="mask_center")(x, mask2)
    assert y2.meta[SLICE_INDICES_KEY].tolist() == list(range(6))


def test_select_slices_inverse_exact():
    x = _volume()
    slicer = SelectSlices(num_slices=8, mode="range", start=5)
    y = slicer(x)
    amap = y[:1] * 2.0 - 1.0  # a one-channel "anomaly map" on the selected slices, tracing kept
    back = slicer.inverse(amap)
    assert back.shape == (1, 10, 12, 30)
    torch.testing.assert_close(back.as_tensor()[..., 5:13], x.as_tensor()[:1, ..., 5:13] * 2.0 - 1.0)
    assert float(back.as_tensor()[..., :5].abs().sum()) == 0.0 and float(back.as_tensor()[..., 13:].abs().sum()) == 0.0
    np.testing.assert_allclose(back.affine.numpy(), AFFINE)
    assert back.applied_operations == [] and SLICE_INDICES_KEY not in back.meta

    filled = SelectSlices(num_slices=8, fill_value=-1.0)
    back2 = filled.inverse(filled(x))
    assert back2.shape == x.shape and bool((back2.as_tensor()[..., :11] == -1).all())
    torch.testing.assert_close(back2.as_tensor()[..., 11:19], x.as_tensor()[..., 11:19])


def test_select_slicesd_mask_centre_and_invertd():
    img, mask = _brain(shape=(16, 16, 20))
    mask[:, 3:13, 2:14, 14:] = True  # slices 2..9 and 14..19 of the same box: centre of mass (44 + 99) / 14 = 10.2
    data = {"image": MetaTensor(img, affine=torch.as_tensor(AFFINE)), "mask": MetaTensor(mask.float())}
    pre = Compose([SelectSlicesd(keys=["image", "mask"], num_slices=6, mode="mask_centre", mask_key="mask")])
    out = pre(data)
    assert out["image"].shape == (3, 16, 16, 6) and out["mask"].shape == (1, 16, 16, 6)
    assert out["image"].meta[SLICE_INDICES_KEY].tolist() == list(range(7, 13))
    torch.testing.assert_close(out["mask"].as_tensor(), mask.float()[..., 7:13])

    out["pred"] = out["image"][2:3] * 3.0 + 1.0  # a map computed on the selected slices (MetaTensor)
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(out)
    assert inv["pred"].shape == (1, 16, 16, 20)
    expected = torch.zeros(1, 16, 16, 20)
    expected[..., 7:13] = img[2:3, ..., 7:13] * 3.0 + 1.0
    torch.testing.assert_close(inv["pred"].as_tensor(), expected)
    np.testing.assert_allclose(inv["pred"].affine.numpy(), AFFINE)


def test_select_slicesd_same_slices_for_all_keys_and_inverse():
    d = {"image": _volume(), "label": _volume(c=1, seed=1)}
    t = SelectSlicesd(keys=["image", "label", "absent"], num_slices=4, allow_missing_keys=True)
    out = t(d)
    assert (
        out["label"].meta[SLICE_INDICES_KEY].tolist()
        == out["image"].meta[SLICE_INDICES_KEY].tolist()
        == [13, 14, 15, 16]
    )
    back = t.inverse(out)
    assert back["image"].shape == (3, 10, 12, 30) and back["label"].shape == (1, 10, 12, 30)
    torch.testing.assert_close(back["label"].as_tensor()[..., 13:17], d["label"].as_tensor()[..., 13:17])


def test_select_slices_errors():
    x = _volume(shape=(4, 4, 10))
    with pytest.raises(ValueError, match="exceeds the depth"):
        SelectSlices(num_slices=11)(x)
    with pytest.raises(ValueError, match="mode must be one of"):
        SelectSlices(mode="top")
    with pytest.raises(ValueError, match="positive int"):
        SelectSlices(num_slices=0)
    with pytest.raises(ValueError, match="empty range"):
        SelectSlices(mode="range", start=12, stop=15)(x)
    with pytest.raises(ValueError, match=r"\(C, H, W, D\)"):
        SelectSlices(num_slices=2)(torch.zeros(4, 4, 10))
    with pytest.raises(ValueError, match="needs a brain mask"):
        SelectSlices(num_slices=2, mode="mask_centre")(x)
    with pytest.raises(ValueError, match="empty brain mask"):
        SelectSlices(num_slices=2, mode="mask_centre")(x, torch.zeros(1, 4, 4, 10))
    with pytest.raises(ValueError, match=r"mask shape \(1, 4, 4, 9\) does not match image shape \(3, 4, 4, 10\)"):
        SelectSlices(num_slices=2, mode="mask_centre")(x, torch.ones(1, 4, 4, 9))
    with pytest.raises(ValueError, match="needs mask_key"):
        SelectSlicesd(keys="image", mode="mask_centre")
    with pytest.raises(ValueError, match="under key 'mask'"):
        SelectSlicesd(keys="image", num_slices=2, mode="mask_centre", mask_key="mask")({"image": x})
    slicer = SelectSlices(num_slices=4)
    y = slicer(x)
    with pytest.raises(ValueError, match=r"expected a \(C', H, W, 4\) map"):
        slicer.inverse(y[..., :3])


# ---------------------------------------------------------------------------------------------------- BrainMask


def test_brain_mask_and_erosion():
    img, mask = _brain()
    img[0, 5, 5, 5] = -3.0  # a negative value counts as non-zero
    img[1:, 5, 5, 5] = 0.0
    m = BrainMask()(img)
    assert m.shape == (1, 16, 16, 12) and m.dtype == torch.float32
    assert int(m.sum()) == 10 * 12 * 8 == int(mask.sum())
    eroded = BrainMask(erosion=1)(img)
    assert int(eroded.sum()) == 8 * 10 * 6  # one voxel off each face of the 10 x 12 x 8 box
    assert int(BrainMask(erosion=2)(img).sum()) == 6 * 8 * 4
    assert int(BrainMask(threshold=60.0)(img).sum()) < int(m.sum())  # some voxels of channel 0 fall below 60
    np_mask = BrainMask(dtype=bool)(img.numpy())
    assert isinstance(np_mask, MetaTensor) and np_mask.dtype == torch.bool and int(np_mask.sum()) == int(mask.sum())


def test_brain_maskd_keeps_meta_and_pools_keys():
    img, _ = _brain()
    t1 = MetaTensor(img[:1].clone(), affine=torch.as_tensor(AFFINE))
    other = torch.zeros(2, 16, 16, 12)
    other[:, 0, 0, 0] = 1.0
    d = BrainMaskd(keys="image", mask_key="brain")({"image": t1})
    assert isinstance(d["brain"], MetaTensor) and d["brain"].shape == (1, 16, 16, 12)
    np.testing.assert_allclose(d["brain"].affine.numpy(), AFFINE)
    pooled = BrainMaskd(keys=["image", "other"])({"image": t1, "other": other})
    assert int(pooled["mask"].sum()) == int(d["brain"].sum()) + 1
    np.testing.assert_allclose(pooled["mask"].affine.numpy(), AFFINE)
    given = torch.ones(1, 16, 16, 12)
    kept = BrainMaskd(keys="image", overwrite=False)({"image": t1, "mask": given})
    assert kept["mask"] is given
    assert int(BrainMaskd(keys="image", overwrite=False)({"image": t1})["mask"].sum()) == int(d["brain"].sum())


def test_brain_mask_errors():
    with pytest.raises(ValueError, match="empty brain mask: expected at least one voxel"):
        BrainMask()(torch.zeros(3, 4, 4, 4))
    with pytest.raises(ValueError, match="empty brain mask after erosion=2"):
        BrainMask(erosion=2)(torch.ones(1, 3, 3, 3))
    with pytest.raises(ValueError, match="NaN/Inf"):
        BrainMask()(torch.tensor([[[[1.0, float("nan")]]]]))
    with pytest.raises(ValueError, match="non-negative int"):
        BrainMask(erosion=-1)


# --------------------------------------------------------------------------------------------- normalisation


def test_masked_zscore_statistics():
    img, mask = _brain()
    out = MaskedZScore()(MetaTensor(img, affine=torch.as_tensor(AFFINE)), mask)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.affine.numpy(), AFFINE)
    inside = out.as_tensor()[:, mask[0]].double()
    torch.testing.assert_close(inside.mean(dim=1), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(inside.std(dim=1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    assert float(out.as_tensor()[:, ~mask[0]].abs().sum()) == 0.0
    # mask=None uses the non-zero voxels, which here are the same
    torch.testing.assert_close(MaskedZScore()(img), out.as_tensor())


def test_masked_zscore_background_ignored_and_numpy():
    img, mask = _brain()
    noisy = img + 1000.0 * (~mask)  # bright background must not change the statistics inside the mask
    out = MaskedZScore()(noisy.numpy(), mask.numpy())  # numpy in: MetaTensor out, as in MONAI
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out, MaskedZScore()(img, mask), atol=1e-5, rtol=0)


def test_masked_percentile_scaling_maps_percentiles_to_0_1():
    img, mask = _brain()
    scaler = MaskedScaleIntensityPercentiles(lower=5, upper=95, b_min=0.0, b_max=1.0, clip=False)
    out = scaler(img, mask)
    for c in range(3):
        values = img[c][mask[0]]
        scaled = out[c][mask[0]]
        lo, hi = np.percentile(values.numpy(), [5, 95])
        np.testing.assert_allclose(np.percentile(scaled.numpy(), [5, 95]), [0.0, 1.0], atol=1e-5)
        torch.testing.assert_close(scaled, (values - lo) / (hi - lo), atol=1e-5, rtol=1e-5)
    assert float(out[:, ~mask[0]].abs().sum()) == 0.0
    clipped = MaskedScaleIntensityPercentiles(lower=5, upper=95)(img, mask)
    inside = clipped[:, mask[0]]
    assert float(inside.min()) == 0.0 and float(inside.max()) == 1.0
    frac_low = float((inside == 0.0).float().mean())
    assert 0.04 < frac_low < 0.07  # about 5 % of the brain voxels are at or below P5
    d = MaskedScaleIntensityPercentilesd(keys="image", mask_key="mask", lower=5, upper=95)({"image": img, "mask": mask})
    torch.testing.assert_close(d["image"], clipped)


def test_masked_dict_forms_mask_key_none_and_missing():
    img, mask = _brain()
    d = MaskedZScored(keys=["image"])({"image": img})
    torch.testing.assert_close(d["image"], MaskedZScore()(img, mask))
    with pytest.raises(ValueError, match="under key 'brain'"):
        MaskedZScored(keys="image", mask_key="brain")({"image": img})
    assert MaskedZScored(keys="image", allow_missing_keys=True)({"x": 1}) == {"x": 1}


@pytest.mark.parametrize(
    "transform",
    [
        MaskedZScore(),
        MaskedScaleIntensityPercentiles(),
        HistogramStandardize(landmarks=[[0.0, 0.5, 1.0]], percentiles=(1, 50, 99)),
    ],
)
def test_normalisation_errors(transform):
    img, mask = _brain(c=1)
    bad = img.clone()
    bad[0, 5, 5, 5] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        transform(bad, mask)
    with pytest.raises(ValueError, match="empty mask"):
        transform(img, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="empty mask: mask=None"):
        transform(torch.zeros_like(img))
    with pytest.raises(ValueError, match=r"mask shape \(1, 16, 16, 11\) does not match image shape \(1, 16, 16, 12\)"):
        transform(img, mask[..., :11])


# ---------------------------------------------------------------------------------------- HistogramStandardize


def test_histogram_standardize_recovers_reference_landmarks():
    ref, mask = _brain(shape=(20, 20, 16), seed=3)
    ref = ref**1.5 / 50  # a skewed histogram
    hs = HistogramStandardize(output_range=None).fit([ref], [mask])  # match to a reference subject
    ref_landmarks = hs.image_landmarks(ref, mask)
    torch.testing.assert_close(hs.landmarks, ref_landmarks)
    rescaled = ref * torch.tensor([3.0, 0.5, 7.0])[:, None, None, None] + 40.0 * mask  # other scanner scale
    out = hs(rescaled, mask)
    torch.testing.assert_close(hs.image_landmarks(out, mask), ref_landmarks, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out[:, mask[0]], ref[:, mask[0]], atol=1e-3, rtol=1e-4)  # linear maps are undone
    assert float(out[:, ~mask[0]].abs().sum()) == 0.0


def test_histogram_standardize_standard_scale_and_mean_landmarks():
    a, mask = _brain(seed=1)
    b, _ = _brain(seed=2)
    hs = HistogramStandardize(output_range=(0.0, 100.0)).fit([a, 2.0 * b + 5.0 * mask], [mask, mask])
    assert hs.landmarks.shape == (3, 11)
    torch.testing.assert_close(hs.landmarks[:, [0, -1]], torch.tensor([[0.0, 100.0]] * 3, dtype=torch.float64))
    la = hs.image_landmarks(a, mask)
    lb = hs.image_landmarks(b, mask)
    norm = lambda lm: (lm - lm[:, :1]) / (lm[:, -1:] - lm[:, :1]) * 100.0  # noqa: E731
    torch.testing.assert_close(hs.landmarks, (norm(la) + norm(lb)) / 2)
    out = hs(a, mask)  # on the 0..100 scale; interpolated percentiles move a little across the kinks
    torch.testing.assert_close(hs.image_landmarks(out, mask), hs.landmarks, atol=2e-2, rtol=0)


def test_histogram_standardize_serialisation(tmp_path):
    img, mask = _brain()
    hs = HistogramStandardize().fit([img], [mask])
    state = json.loads(json.dumps(hs.state_dict()))
    hs2 = HistogramStandardize()
    hs2.load_state_dict(state)
    path = hs.to_json(tmp_path / "landmarks.json")
    for other in (hs2, HistogramStandardize.from_json(path), HistogramStandardize(landmarks=str(path))):
        torch.testing.assert_close(other.landmarks, hs.landmarks)
        torch.testing.assert_close(other(img, mask), hs(img, mask))
    d = HistogramStandardized(keys="image", mask_key="mask", landmarks=path)({"image": img, "mask": mask})
    torch.testing.assert_close(d["image"], hs(img, mask))
    fitted = HistogramStandardized(keys="image", mask_key="mask").fit([{"image": img, "mask": mask}])
    torch.testing.assert_close(fitted.standardizer.landmarks, hs.landmarks)


def test_histogram_standardize_errors(tmp_path):
    img, mask = _brain()
    with pytest.raises(ValueError, match="no standard landmarks"):
        HistogramStandardize()(img, mask)
    with pytest.raises(FileNotFoundError, match="not found"):
        HistogramStandardize(landmarks=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="strictly increasing"):
        HistogramStandardize(percentiles=(50, 10))
    with pytest.raises(ValueError, match=r"expected \(C, 3\)"):
        HistogramStandardize(landmarks=[[0.0, 1.0]], percentiles=(1, 50, 99))
    hs = HistogramStandardize().fit([img], [mask])
    with pytest.raises(ValueError, match="3 channels of the landmarks"):
        hs(img[:2], mask)
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        HistogramStandardize().fit([img, img], [mask])
    with pytest.raises(ValueError, match="equal first and last landmarks"):
        HistogramStandardize().fit([mask.float().expand(3, -1, -1, -1)], [mask])
    with pytest.raises(ValueError, match="missing keys"):
        HistogramStandardize().load_state_dict({"landmarks": None})


# ------------------------------------------------------------------------------------------- slices_to_items


def test_slices_to_items():
    data = {"image": _volume(), "mask": _volume(c=1, seed=1), "subject": "sub-001"}
    sliced = SelectSlicesd(keys=["image", "mask"], num_slices=4, mode="range", start=20)(data)
    sliced["score"] = [0.1, 0.2, 0.3, 0.4]
    items = slices_to_items(sliced, keys=["image", "mask"], slice_keys="score")
    assert len(items) == 4
    assert [it[SLICE_INDEX_KEY] for it in items] == [20, 21, 22, 23]
    assert [it["score"] for it in items] == [0.1, 0.2, 0.3, 0.4]
    it = items[2]
    assert it["image"].shape == (3, 10, 12) and it["mask"].shape == (1, 10, 12) and it["subject"] == "sub-001"
    torch.testing.assert_close(it["image"].as_tensor(), data["image"].as_tensor()[..., 22])
    assert it["image"].meta[SLICE_INDEX_KEY] == 22 and it["image"].applied_operations == []
    expected_affine = np.array([[2.0, 0, -10.0], [0, 2.0, -20.0], [0, 0, 1.0]])
    np.testing.assert_allclose(it["image"].affine.numpy(), expected_affine)
    plain = slices_to_items({"image": np.zeros((2, 3, 4, 5)), "id": 7}, keys="image")
    assert len(plain) == 5 and plain[4]["image"].shape == (2, 3, 4) and plain[4][SLICE_INDEX_KEY] == 4
    assert plain[0]["id"] == 7


def test_slices_to_items_errors():
    with pytest.raises(ValueError, match=r"keys \['mask'\] not found"):
        slices_to_items({"image": torch.zeros(1, 2, 2, 3)}, keys=["image", "mask"])
    with pytest.raises(ValueError, match="same number of slices"):
        slices_to_items({"image": torch.zeros(1, 2, 2, 3), "mask": torch.zeros(1, 2, 2, 4)}, keys=["image", "mask"])
    with pytest.raises(ValueError, match=r"expected \(C, H, W, N\)"):
        slices_to_items({"image": torch.zeros(2, 2, 3)}, keys="image")
    assert len(slices_to_items({"image": torch.zeros(1, 2, 2, 3)}, ["image", "mask"], allow_missing_keys=True)) == 3


# ----------------------------------------------------------------------------------------------- real NIfTI


def test_nifti_chain_and_invertd(tmp_path):
    rng = np.random.default_rng(0)
    shape = (12, 14, 16)
    brain = np.zeros(shape, dtype=bool)
    brain[2:10, 3:11, 1:12] = True  # lower in z than the volume centre (centre of mass z = 6)
    data = rng.uniform(50, 150, (*shape, 3)).astype(np.float32) * brain[..., None]
    affine = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -40.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1.0]])  # LAS
    path = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))

    pre = Compose(
        [
            LoadImaged(keys="image", reader="NibabelReader", image_only=True),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            BrainMaskd(keys="image", mask_key="mask", erosion=1),
            MaskedZScored(keys="image", mask_key="mask"),
            SelectSlicesd(keys=["image", "mask"], num_slices=6, mode="mask_centre", mask_key="mask"),
        ]
    )
    out = pre({"image": str(path)})
    img = out["image"]
    assert img.shape == (3, 12, 14, 6) and out["mask"].shape == (1, 12, 14, 6)
    assert img.meta[SLICE_INDICES_KEY].tolist() == [3, 4, 5, 6, 7, 8]  # eroded brain spans z 2..10, centre 6
    ras = np.array([[2.0, 0, 0, 30.0 - 2.0 * 11], [0, 2.0, 0, -40.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1.0]])
    expected = ras.copy()
    expected[2, 3] += 2.5 * 3
    np.testing.assert_allclose(img.affine.numpy(), expected)
    np.testing.assert_allclose(out["mask"].affine.numpy(), expected)
    inside = img.as_tensor()[:, out["mask"][0].bool()]
    assert float(inside.abs().max()) > 0 and float(img.as_tensor()[:, ~out["mask"][0].bool()].abs().sum()) == 0

    out["pred"] = img[2:3] * 2.0  # FLAIR-based "anomaly map" on the 6 slices
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(out)
    pred = inv["pred"]
    assert pred.shape == (1, *shape)  # back in the file's (LAS) orientation and depth
    np.testing.assert_allclose(pred.affine.numpy(), affine)
    flair = data[..., 2]
    eroded = np.zeros(shape, dtype=bool)
    eroded[3:9, 4:10, 2:11] = True
    vals = flair[eroded]
    z = np.where(eroded, (flair - vals.mean()) / vals.std(), 0.0) * 2.0
    expected_pred = np.zeros(shape)
    expected_pred[..., 3:9] = z[..., 3:9]
    np.testing.assert_allclose(pred.as_tensor()[0].numpy(), expected_pred, atol=1e-4)


def test_package_layout_aliases_and_old_import_paths():
    """Every dictionary transform has MONAI's ``D``/``Dict`` aliases; the old import paths give the same objects;
    the bundle configs' short ``_target_`` names of these transforms resolve to exactly one class."""
    import glob
    import re

    from monai.bundle.config_item import ComponentLocator

    import monai_qrvae.transforms as mt

    dict_names = [n for n in mt.__all__ if n.endswith("d") and isinstance(getattr(mt, n), type)]
    assert len(dict_names) == 13, dict_names  # + LesionThresholdd (issue 24), ModelSpacingd (issue 23)
    for name in dict_names:
        cls = getattr(mt, name)
        assert getattr(mt, name[:-1] + "D") is cls and getattr(mt, name[:-1] + "Dict") is cls, name
        assert cls.__module__.startswith("monai_qrvae.transforms.") and cls.__module__.endswith(
            (".dictionary", ".thresholds")
        ), cls.__module__

    locator = ComponentLocator()
    targets = set()
    for path in glob.glob(str(Path(__file__).parents[2] / "bundle" / "configs" / "*.json")):
        targets |= set(re.findall(r'"_target_":\s*"([A-Za-z_]+)"', Path(path).read_text()))
    ours = sorted(t for t in targets if t in mt.__all__)
    assert {"SelectSlicesd", "BrainMaskd", "MaskedScaleIntensityPercentilesd", "AnomalyMapsd"} <= set(ours)
    for name in ours:
        assert locator.get_component_module_name(name) == getattr(mt, name).__module__, name
