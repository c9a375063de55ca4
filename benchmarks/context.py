"""What every benchmark receives (:class:`Context`): the work folder, the cached cohort and untrained models, and the
defaults a user gets from the workflows."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ROOT",
    "DEFAULT_WORK_DIR",
    "DEFAULT_DOC",
    "Context",
    "bench_cohort",
    "untrained_model_dir",
    "trained_model_dir",
    "pipeline_defaults",
    "anomaly_transforms",
]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK_DIR = ROOT / "outputs" / "bench"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"


@dataclass
class Context:
    """What every benchmark receives: where to work, how hard to try, and the shared data."""

    work_dir: Path = DEFAULT_WORK_DIR
    doc: Path | None = DEFAULT_DOC
    repeats: int = 5
    quick: bool = False
    n_healthy: int = 10
    n_lesion: int = 4
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        self.doc = Path(self.doc) if self.doc is not None else None

    @property
    def datalist(self) -> Path:
        """The benchmark cohort (made once, reused while its settings do not change)."""
        return bench_cohort(self.work_dir / "data", self.n_healthy, self.n_lesion, self.seed)

    def items(self, section: str) -> list[dict]:
        """Absolute-path entries of one datalist section."""
        from monai_qrvae.data.datalist import load_datalist

        return load_datalist(self.datalist, section=section, check=False)

    def inputs(self, section: str) -> list[dict]:
        """The entries of one datalist section without their labels: what inference receives."""
        return [{k: v for k, v in item.items() if k != "label"} for item in self.items(section)]

    def model_dir(self, name: str = "small", **config: Any) -> Path:
        """An untrained model folder (config + weights) of :func:`monai_qrvae.workflows.load_model`'s layout.

        Timing and memory do not depend on the weights' values, so no training is needed.
        """
        return untrained_model_dir(self.work_dir / "models" / name, **config)


def bench_cohort(out_dir: Path, n_healthy: int, n_lesion: int, seed: int) -> Path:
    """Make (or reuse) the synthetic cohort of the benchmarks; return its datalist."""
    from monai_qrvae.data import make_cohort

    out_dir = Path(out_dir)
    stamp = out_dir / "bench_stamp.json"
    settings = {"n_healthy": n_healthy, "n_lesion": n_lesion, "seed": seed}
    datalist = out_dir / "datalist.json"
    if datalist.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return datalist
    start = time.perf_counter()
    print(f"[bench] making the benchmark cohort ({n_healthy} healthy, {n_lesion} lesion) in {out_dir}", flush=True)
    datalist = Path(make_cohort(out_dir, n_healthy=n_healthy, n_lesion=n_lesion, seed=seed))
    stamp.write_text(json.dumps(settings))
    print(f"[bench] cohort ready in {time.perf_counter() - start:.1f} s", flush=True)
    return datalist


def untrained_model_dir(path: Path, **config: Any) -> Path:
    """Write ``model_config.json`` and ``model.pt`` of an untrained network (reused if the config matches)."""
    from monai_qrvae.workflows import CONFIG_FILE, WEIGHTS_FILE, ModelConfig, build_networks

    path = Path(path)
    cfg = ModelConfig(**config)
    wanted = asdict(cfg)
    cfg_file = path / CONFIG_FILE
    if (
        (path / WEIGHTS_FILE).is_file()
        and cfg_file.is_file()
        and json.loads(cfg_file.read_text()) == json.loads(json.dumps(wanted))
    ):
        return path
    torch.manual_seed(0)
    _, net = build_networks(cfg)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path / WEIGHTS_FILE)
    cfg.save(cfg_file)
    return path


def pipeline_defaults() -> dict[str, Any]:
    """The defaults a user gets from :mod:`monai_qrvae.workflows` (read from the signatures, so they track the code)."""
    import inspect

    from monai_qrvae import workflows
    from monai_qrvae.defaults import method_defaults
    from monai_qrvae.preprocessing import volume_transforms

    out: dict[str, Any] = method_defaults("qrvae").as_dict()
    for fn, names in (
        (workflows.train, ("epochs", "batch_size", "lr", "num_slices", "image_size", "preset")),
        (workflows.infer, ("alpha", "per", "median_size", "min_size", "score_median", "save_png")),
        (volume_transforms, ("lower", "upper", "clip")),
    ):
        params = inspect.signature(fn).parameters
        out.update({n: params[n].default for n in names if n in params and params[n].default not in (None, "default")})
    return out


def trained_model_dir(path: Path) -> Path:
    """A quickly trained default model folder (weights, config, ``calibration.pt``), reused once written.

    ``train(datalist, out, epochs=1)`` with every default (whole brain, 96 px, 5 quantiles, quantile-function score,
    FLAIR+T2 score) on ``make_cohort(n_healthy=6, n_lesion=2, seed=3, spacing=2.0)`` (2 mm volumes of the default
    grid), about half a minute on 2 cores. Timing does not depend on the weights' values, but the conformal threshold
    needs the calibration that :func:`~monai_qrvae.workflows.train` writes.
    """
    from monai_qrvae.calibration import CALIBRATION_FILE
    from monai_qrvae.data.synthetic import make_cohort
    from monai_qrvae.workflows import CONFIG_FILE, WEIGHTS_FILE, train

    path = Path(path)
    model = path / "model"
    if all((model / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE, CALIBRATION_FILE)):
        return model
    start = time.perf_counter()
    print(f"[bench] training the default model for 1 epoch in {model}", flush=True)
    datalist = make_cohort(path / "data", n_healthy=6, n_lesion=2, seed=3, spacing=2.0)
    train(datalist, model, epochs=1, progress=False)
    print(f"[bench] model ready in {time.perf_counter() - start:.1f} s", flush=True)
    return model


def anomaly_transforms(model_dir: Path | None = None, threshold: str | None = None) -> list[Any]:
    """The post-processing transforms that :func:`monai_qrvae.workflows.infer` attaches (maps, threshold, filter).

    With ``model_dir``, those of that model (its score; ``threshold`` default: ``"conformal"`` when the folder has a
    calibration, else ``"gaussian"``); without, those of the default configuration with the ``"gaussian"`` threshold.
    """
    from monai_qrvae.calibration import CALIBRATION_FILE
    from monai_qrvae.workflows import ModelConfig, Pipeline

    d = pipeline_defaults()
    if model_dir is not None:
        pipeline = Pipeline.from_model_dir(model_dir).load()
    else:
        pipeline = Pipeline.from_model_dir(".", config=ModelConfig())
    if threshold is None:
        calibrated = model_dir is not None and (Path(model_dir) / CALIBRATION_FILE).is_file()
        threshold = "conformal" if calibrated else "gaussian"
    post = pipeline.anomaly_handlers(
        threshold, d["alpha"], d["per"], d["median_size"], d["min_size"], d["score_median"]
    )
    return [h.transform for h in post]
