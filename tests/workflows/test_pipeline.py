"""The one pipeline behind every entry point: :class:`monai_qrvae.workflows.Pipeline`."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_qrvae.workflows import (
    CHECKED_SCORE_KEYS,
    CONFIG_FILE,
    WEIGHTS_FILE,
    InputError,
    ModelConfig,
    Pipeline,
    build_networks,
)


@pytest.fixture()
def flair_model(tmp_path):
    """A FLAIR-thresholding model folder (no trained weights needed), without calibration."""
    folder = tmp_path / "model"
    config = ModelConfig(method="flair", image_size=None, num_slices=None, score="flair")
    _, net = build_networks(config)
    folder.mkdir()
    torch.save(net.state_dict(), folder / WEIGHTS_FILE)
    config.save(folder / CONFIG_FILE)
    return folder


def test_pipeline_owns_the_model_score_and_thresholds(flair_model):
    pipeline = Pipeline.from_model_dir(flair_model)
    assert pipeline.config.method == "flair" and pipeline.roi_size == (256, 256)
    assert pipeline.calibration is None and pipeline.calibration_for("gaussian") is None
    definition = pipeline.score_definition()
    assert definition["method"] == "flair" and definition["score_name"] == "z[FLAIR]"
    assert set(CHECKED_SCORE_KEYS) <= set(definition)
    with pytest.raises(FileNotFoundError, match="no calibration.pt.*qrvae calibrate"):
        pipeline.threshold_transforms("conformal")
    with pytest.raises(ValueError, match="threshold must be one of"):
        pipeline.threshold_transforms("otsu")
    assert [type(t).__name__ for t in pipeline.post_transforms("gaussian")] == [
        "AnomalyMapsd",
        "Compose",
        "LesionFilterd",
    ]
    assert [type(t).__name__ for t in pipeline.post_transforms("gaussian")[1].transforms] == ["FDRMaskd"]
    handlers = pipeline.anomaly_handlers("gaussian")
    assert [type(h.transform).__name__ for h in handlers] == ["AnomalyMapsd", "Compose", "LesionFilterd"]
    assert handlers[0].transform.contrast_key == "zc"


def test_input_errors_inside_monai_transforms_are_one_line_naming_the_file(flair_model, tmp_path):
    """A file MONAI cannot read, or one with the wrong contrasts, is one line: the file and what was expected."""
    pipeline = Pipeline.from_model_dir(flair_model)
    broken = tmp_path / "broken.nii.gz"
    broken.write_text("not an image")
    with pytest.raises(InputError) as err:
        pipeline.run([{"image": str(broken)}], [])
    message = str(err.value)
    assert str(broken) in message and "expected" in message and "\n" not in message
    assert "applying transform" not in message and " object at 0x" not in message
    nan = tmp_path / "nan.nii.gz"
    volume = np.ones((8, 8, 8, 3), np.float32)
    volume[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), nan)
    with pytest.raises(InputError, match=r"nan.nii.gz: .*NaN.*expected") as err:
        pipeline.prepare({"image": str(nan)}, pipeline.pre_transforms())
    assert " object at 0x" not in str(err.value)
