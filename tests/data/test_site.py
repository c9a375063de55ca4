"""Scans from another site and another grid: the empirical null, the site check, the model's analysis grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_qrvae.anomaly.null import IQR_NORMAL, empirical_null, standardise
from monai_qrvae.calibration import Calibration
from monai_qrvae.data.io import common_spacing, ras_spacing
from monai_qrvae.transforms.anomaly.thresholds import SITE_KEY, ConformalPValued

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("method", ["robust", "central"])
def test_empirical_null_recovers_a_shifted_and_scaled_normal(method):
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(-2.4, 1.7, 200_000))
    centre, width = empirical_null(x, method=method)
    assert centre == pytest.approx(-2.4, abs=0.03) and width == pytest.approx(1.7, rel=0.03)


def test_central_matching_ignores_a_lesion_in_the_tail_the_median_does_not():
    rng = np.random.default_rng(0)
    healthy = rng.normal(0.0, 1.0, 180_000)
    x = torch.tensor(np.concatenate([healthy, rng.normal(6.0, 1.0, 20_000)]))  # 10 % of the brain is lesion
    central, robust = empirical_null(x, method="central"), empirical_null(x, method="robust")
    assert abs(central[0]) < 0.03 and central[1] == pytest.approx(1.0, rel=0.05)
    assert robust[0] > 0.1 and robust[1] > 1.1  # the median and IQR are pulled by the lesion


def test_empirical_null_mask_none_and_errors():
    rng = np.random.default_rng(0)
    x = torch.zeros(4, 5, 6)
    x[:2] = torch.tensor(rng.normal(3.0, 2.0, (2, 5, 6)))
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:2] = True
    centre, width = empirical_null(x, mask, "robust")
    inside = x[mask].numpy()
    q25, q50, q75 = np.percentile(inside, [25, 50, 75])
    assert (centre, width) == pytest.approx((q50, (q75 - q25) / IQR_NORMAL))
    assert empirical_null(x, mask, "none") == (0.0, 1.0)
    z, (c, w) = standardise(x, mask, "robust")
    assert torch.allclose(z, (x - c) / w)
    with pytest.raises(ValueError, match="method must be one of"):
        empirical_null(x, mask, "efron")
    with pytest.raises(ValueError, match="does not match"):
        empirical_null(x, mask[:, :, :3], "robust")
    with pytest.raises(ValueError, match="at least 10"):
        empirical_null(x, torch.zeros_like(mask), "central")


def _volumes(rng: np.random.Generator, n: int) -> list[torch.Tensor]:
    return [torch.tensor(rng.normal(0.0, 1.0, (24, 24, 16)), dtype=torch.float32) for _ in range(n)]


def test_calibration_with_a_null_compares_a_new_site_on_one_scale(tmp_path):
    """A site whose healthy scores are shifted by -2.4: on raw conformal p-values a lesion 6 site-widths above the
    site's centre is not significant, on standardised ones it is. A site whose scores are three times as wide: raw
    p-values flag its healthy tail, standardised ones do not. The site check warns for both."""
    rng = np.random.default_rng(0)
    volumes = _volumes(rng, 19)
    raw = Calibration.from_scores(volumes, null="none")
    central = Calibration.from_scores(volumes, null="central")
    assert central.null == "central" and central.null_params.shape == (19, 2)
    assert raw.null == "none" and raw.null_params.shape == (19, 2)  # the reference of the site check
    smallest = 1.0 / (central.voxel_scores.numel() + 1)
    shifted = torch.tensor(rng.normal(-2.4, 1.0, (24, 24, 16)), dtype=torch.float32)
    shifted[:3, :3, :3] = -2.4 + 6.0
    wide = torch.tensor(rng.normal(0.0, 3.0, (24, 24, 16)), dtype=torch.float32)
    for cal, detects, wide_share in ((raw, False, (0.08, 0.25)), (central, True, (0.0, 0.01))):
        t = ConformalPValued(calibration=cal, mask_key=None)
        out = t({"z": shifted[None]})
        assert bool((out["p"][0, :3, :3, :3] <= smallest + 1e-9).all()) is detects
        assert out[SITE_KEY]["matches_calibration"] is False and "qrvae calibrate" in out[SITE_KEY]["warning"]
        assert out[SITE_KEY]["shift"] == pytest.approx(-2.4, abs=0.3)
        out = t({"z": wide[None]})
        assert wide_share[0] <= float((out["p"] <= 0.001).float().mean()) <= wide_share[1]
        assert out[SITE_KEY]["width_ratio"] == pytest.approx(3.0, rel=0.15) and out[SITE_KEY]["warning"]
    healthy = ConformalPValued(calibration=central, mask_key=None)({"z": _volumes(rng, 1)[0][None]})
    assert healthy[SITE_KEY]["matches_calibration"] is True and healthy[SITE_KEY]["warning"] is None
    # save / load keeps the null; a calibration file of before (no null) loads as raw scores
    central.save(tmp_path / "cal.pt")
    back = Calibration.load(tmp_path / "cal.pt")
    assert back.null == "central" and torch.equal(back.null_params, central.null_params)
    state = central.state_dict()
    state["meta"].pop("null")
    state.pop("null_params")
    torch.save(state, tmp_path / "old.pt")
    old = Calibration.load(tmp_path / "old.pt")
    assert old.null == "none" and old.null_params is None
    assert old.site_check(0.0, 1.0) == {"centre": 0.0, "width": 1.0, "matches_calibration": None, "warning": None}
    with pytest.raises(ValueError, match="null must be one of"):
        Calibration.from_scores(volumes, null="efron")


def test_ras_spacing_and_common_spacing(tmp_path):
    affine = np.array([[0.0, 0.0, -2.5, 10.0], [-0.5, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0, 0, 0, 1.0]])
    assert ras_spacing(affine) == pytest.approx((2.5, 0.5, 1.0))  # axis 2 -> R, axis 0 -> A, axis 1 -> S
    items = []
    for i, pixdim in enumerate(((1.0, 1.0, 1.0), (1.0, 1.0, 3.0), (1.0, 1.0, 3.0))):
        path = tmp_path / f"img{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([*pixdim, 1.0])), path)
        items.append({"image": [str(path)] if i else str(path)})
    assert common_spacing(items) == (1.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="at least one"):
        common_spacing([])


def test_site_shift_changes_intensities_not_anatomy(tmp_path, cohort_factory):
    from monai_qrvae.data.site import make_shifted_datalist

    datalist = cohort_factory("site", n_healthy=4, n_lesion=1, seed=0, spacing=4.0)
    out = make_shifted_datalist(datalist, "test", tmp_path / "shifted", seed=3)
    entries = json.loads(out.read_text())["test"]
    original = json.loads(Path(datalist).read_text())["test"]
    assert len(entries) == len(original)
    for new, old in zip(entries, original):
        a = nib.load(Path(datalist).parent / old["image"]).get_fdata()
        b = nib.load(out.parent / new["image"]).get_fdata()
        assert a.shape == b.shape and np.array_equal(a == 0, b == 0)
        assert not np.allclose(a, b, rtol=0.05)
        assert new["label"] == str((Path(datalist).parent / old["label"]).resolve())
    again = make_shifted_datalist(datalist, "test", tmp_path / "again", seed=3)
    first = nib.load(out.parent / entries[0]["image"]).get_fdata()
    assert np.array_equal(first, nib.load(again.parent / entries[0]["image"]).get_fdata())  # seeded


def _resample_copy(image: Path, factor: int, out: Path) -> Path:
    """The same scan on a ``factor`` times finer grid (each voxel repeated), with the matching affine."""
    img = nib.load(image)
    data = np.asarray(img.dataobj, dtype=np.float32)
    for axis in range(3):
        data = np.repeat(data, factor, axis=axis)
    affine = img.affine @ np.diag([1.0 / factor] * 3 + [1.0])
    affine[:3, 3] = img.affine[:3, 3] - img.affine[:3, :3] @ np.full(3, 0.5 - 0.5 / factor)  # same field of view
    nib.save(nib.Nifti1Image(data, affine), out)
    return out


@pytest.mark.slow
def test_a_1mm_and_a_2mm_copy_give_the_same_lesion_report(tmp_path):
    """[shipped weights] The analysis runs on the model's 2 mm grid whatever the input's voxel size: a 1 mm copy of a
    2 mm lesion subject gives the same lesion volume (within 10 %) and lesions in the same places."""
    from monai_qrvae.data import make_cohort
    from monai_qrvae.workflows import infer

    datalist = json.loads(Path(make_cohort(tmp_path / "synth", n_healthy=2, n_lesion=2, seed=4)).read_text())
    entry = next(e for e in datalist["test"] if e["stratum"] != "healthy")
    image = tmp_path / "synth" / entry["image"]
    fine = _resample_copy(image, 2, tmp_path / "fine.nii.gz")
    reports = {}
    for name, path in (("2mm", image), ("1mm", fine)):
        written = infer(REPO / "bundle" / "models", [path], tmp_path / name, save_png=False)
        reports[name] = json.loads(next(p for p in written if p.name.endswith("_lesions.json")).read_text())
        if name == "1mm":
            assert nib.load(next(p for p in written if "_zmap" in p.name)).shape == nib.load(fine).shape[:3]
    coarse, fine_report = reports["2mm"], reports["1mm"]
    for report in reports.values():  # a synthetic subject matches the synthetic calibration: no site warning
        assert report["site"]["matches_calibration"] is True and report["site"]["warning"] is None, report["site"]
    assert coarse["total_volume_ml"] > 0.5
    assert fine_report["total_volume_ml"] == pytest.approx(coarse["total_volume_ml"], rel=0.10)
    big = [les for les in coarse["lesions"] if les["volume_ml"] >= 0.2]
    for les in big:  # every lesion of 0.2 mL or more is found again within a voxel
        dist = [np.linalg.norm(np.subtract(les["centroid_mm"], o["centroid_mm"])) for o in fine_report["lesions"]]
        assert min(dist) <= 2.0, (les, dist)
