"""The MONAI Label app (monailabel/qrvae_app): its pipeline in-process, and a real `monailabel start_server`.

The fast tests load the app's MONAI-Label-free modules (``lib/pipeline.py``, ``make_studies.py``) in this
environment. The slow test starts the server from ``.venv-monailabel`` (``make monailabel-env``) on 127.0.0.1 with a
studies folder of embedded data, calls ``/info/`` and ``/infer/<model>?image=<id>`` over HTTP as 3D Slicer does, and
always stops the server (its whole process group) whatever happens.
"""

from __future__ import annotations

import email.parser
import email.policy
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from monai_qrvae.data import make_cohort
from monai_qrvae.workflows import ModelConfig, build_networks, train

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel" / "qrvae_app"
ML_VENV = Path(os.environ.get("QRVAE_MONAILABEL_VENV", REPO / ".venv-monailabel"))  # override: a venv elsewhere
REPO_BUNDLE = Path(os.environ.get("QRVAE_TEST_BUNDLE", REPO / "bundle"))  # override: another trained bundle
STARTUP_TIMEOUT_S = 240.0  # server start (imports + app init) on 2 shared cores: ~20-60 s measured
REQUEST_TIMEOUT_S = 180.0


def _load(name: str, path: Path) -> ModuleType:
    """Import one app file under a unique name (the app's own ``lib`` package name is too generic for sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pipeline = _load("qrvae_app_pipeline", APP_DIR / "lib" / "pipeline.py")
studies_tool = _load("qrvae_app_make_studies", APP_DIR / "make_studies.py")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small embedded cohort (2 mm, seed 3): 6 healthy subjects and 2 with lesions; returns the datalist."""
    return make_cohort(tmp_path_factory.mktemp("cohort"), n_healthy=6, n_lesion=2, seed=3, n_tuning=0)


def _lesion_subject(datalist: Path) -> tuple[Path, Path]:
    """(image, label) of the first lesion subject of the datalist's ``test`` section."""
    entry = json.loads(datalist.read_text())["test"][0]
    return datalist.parent / entry["image"], datalist.parent / entry["label"]


def _random_model_dir(path: Path) -> Path:
    """A ``qrvae train``-style folder with untrained weights (for plumbing tests that need no detection)."""
    import torch

    config = ModelConfig()
    _, net = build_networks(config)
    path.mkdir(parents=True, exist_ok=True)
    config.save(path / "model_config.json")
    torch.save(net.state_dict(), path / "model.pt")
    return path


def _t1_only(image: Path, out: Path) -> Path:
    """A 3D single-contrast NIfTI (the T1 volume of a study): a study without the expected contrasts."""
    img = nib.load(str(image))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj[..., 0], dtype=np.float32), img.affine), str(out))
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


# ---------------------------------------------------------------------------------------------------------------
# fast: the app's pipeline and tools in this environment


def test_make_studies_links_4d_and_stacks_contrasts(cohort: Path, tmp_path: Path) -> None:
    written = studies_tool.make_studies(cohort, tmp_path / "studies", sections=("test",))
    names = sorted(p.name for p in written)
    assert names == ["sub-007.nii.gz", "sub-008.nii.gz"]
    assert nib.load(str(written[0])).shape[-1] == 3
    # per-contrast files (a user's own data) are stacked into one 4D study
    image, _ = _lesion_subject(cohort)
    img = nib.load(str(image))
    parts = []
    for i, contrast in enumerate(studies_tool.CONTRASTS):
        parts.append(tmp_path / f"p01_{contrast}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj[..., i]), img.affine), str(parts[-1]))
    stacked = studies_tool.stack_contrasts(parts, tmp_path / "p01.nii.gz")
    out = nib.load(str(stacked))
    assert out.shape == img.shape and np.allclose(out.affine, img.affine)
    np.testing.assert_allclose(np.asarray(out.dataobj), np.asarray(img.dataobj), rtol=1e-6)
    with pytest.raises(ValueError, match="expected 3 files"):
        studies_tool.stack_contrasts(parts[:2], tmp_path / "bad.nii.gz")


def test_model_source_resolution(tmp_path: Path) -> None:
    model_dir = _random_model_dir(tmp_path / "m")
    assert pipeline.resolve_model_source({"model_dir": str(model_dir)}, tmp_path) == ("model_dir", model_dir)
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        pipeline.resolve_model_source({"model_dir": str(tmp_path)}, tmp_path)
    with pytest.raises(FileNotFoundError, match="configs/inference.json"):
        pipeline.resolve_model_source({"bundle": str(tmp_path)}, tmp_path)
    app = tmp_path / "a" / "b" / "app"
    with pytest.raises(FileNotFoundError, match="--conf model_dir"):
        pipeline.resolve_model_source({}, app)
    shutil.copytree(model_dir, app / "model")
    assert pipeline.resolve_model_source({}, app) == ("model_dir", (app / "model").resolve())


def test_pipeline_returns_label_on_input_grid_and_refuses_single_contrast(cohort: Path, tmp_path: Path) -> None:
    model = pipeline.load_model_source("model_dir", _random_model_dir(tmp_path / "m"))
    image, _ = _lesion_subject(cohort)
    img = nib.load(str(image))
    lesion, affine = pipeline.run_study(model, image)
    assert lesion.shape == img.shape[:3] and lesion.dtype == np.uint8
    np.testing.assert_allclose(affine, img.affine, atol=1e-4)
    bands, _ = pipeline.run_study(model, image, output="zmap_bands")
    assert bands.shape == img.shape[:3] and set(np.unique(bands)) <= {0, 1, 2, 3}
    z, _ = pipeline.run_study(model, image, output="zmap")
    assert z.dtype == np.float32 and np.isfinite(z).all()
    with pytest.raises(pipeline.StudyError, match="T1, T2, FLAIR"):
        pipeline.run_study(model, _t1_only(image, tmp_path / "t1.nii.gz"))
    with pytest.raises(pipeline.StudyError, match="alpha"):
        pipeline.run_study(model, image, alpha="2")


@pytest.mark.skipif(not (REPO_BUNDLE / "configs" / "inference.json").is_file(), reason="no bundle/configs yet")
def test_bundle_source_loads_the_bundle_network(tmp_path: Path) -> None:
    import torch

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    _, net = build_networks(ModelConfig())  # the bundle's network is the package's `small` preset
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    model = pipeline.load_model_source(*pipeline.resolve_model_source({"bundle": str(bundle)}, tmp_path))
    assert (model.image_size, model.num_slices, model.in_channels) == (64, 20, 3)
    assert model.defaults["alpha"] == pytest.approx(0.05)


# ---------------------------------------------------------------------------------------------------------------
# slow: a real MONAI Label server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, params: dict | None = None) -> tuple[int, str, bytes]:
    body = urllib.parse.urlencode({"params": json.dumps(params or {})}).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """The fields of a multipart/form-data answer (what 3D Slicer's client receives): ``params`` and ``image``."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


@pytest.fixture(scope="module")
def monailabel_cli() -> Path:
    """The ``monailabel`` script of .venv-monailabel; skips outside CI when the environment was not built."""
    monailabel = ML_VENV / "bin" / "monailabel"
    if not monailabel.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{monailabel} is missing in CI: `make test` must build it first (make monailabel-env).")
        pytest.skip(f"{ML_VENV} is missing: run `make monailabel-env` (about 8 GB) to run the MONAI Label server test.")
    return monailabel


@pytest.fixture(scope="module")
def server_model(monailabel_cli: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--conf`` for the server: the repository's trained bundle when it has weights, else a model trained here.

    The fallback (16 healthy subjects, 30 epochs: about 2-3 min on 2 cores) is the smallest training measured to
    find the test subject's lesion (Dice 0.14; the bundle's weights: 0.69); a 3-epoch model finds nothing at FDR 0.05.
    """
    if (REPO_BUNDLE / "models" / "model.pt").is_file() and (REPO_BUNDLE / "configs" / "inference.json").is_file():
        return ["--conf", "bundle", str(REPO_BUNDLE)]
    healthy = make_cohort(tmp_path_factory.mktemp("healthy"), n_healthy=16, n_lesion=0, seed=4)
    out = tmp_path_factory.mktemp("model")
    train(healthy, out, epochs=30, progress=False)
    return ["--conf", "model_dir", str(out)]


@pytest.fixture(scope="module")
def server(monailabel_cli: Path, cohort: Path, server_model: list[str], tmp_path_factory: pytest.TempPathFactory):
    """A running ``monailabel start_server`` (from .venv-monailabel) with the app and a studies folder."""
    monailabel = monailabel_cli
    root = tmp_path_factory.mktemp("monailabel")
    app = root / "app"  # a copy: start_server writes logs/, model/ and bin/ into the app folder
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model", "bin"))
    studies = root / "studies"
    studies_tool.make_studies(cohort, studies, sections=("test",), copy=True)
    image, label = _lesion_subject(cohort)
    _t1_only(image, studies / "t1only.nii.gz")
    port = _free_port()
    env = dict(os.environ)
    env.update(
        PATH=f"{ML_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        MONAILABEL_PYEXE=str(ML_VENV / "bin" / "python"),
        MONAI_LABEL_SESSIONS="false",
        MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)
    command = [str(monailabel), "start_server", "--app", str(app), "--studies", str(studies)]
    command += ["--host", "127.0.0.1", "--port", str(port), *server_model]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        info = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"monailabel start_server exited with {process.returncode}:\n{log_tail()}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as response:
                    info = json.loads(response.read())
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
        if info is None:
            pytest.fail(f"no answer from {url}/info/ within {STARTUP_TIMEOUT_S:.0f} s:\n{log_tail()}")
        yield {"url": url, "info": info, "image": image, "label": label, "log": log_text}
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


@pytest.mark.slow
def test_server_info_lists_the_models(server: dict) -> None:
    models = server["info"]["models"]
    assert models["qrvae_lesion"]["type"] == "segmentation" and models["qrvae_lesion"]["labels"] == {"lesion": 1}
    assert models["qrvae_lesion"]["dimension"] == 3
    assert models["qrvae_zmap"]["labels"] == {"z 2-3": 1, "z 3-4": 2, "z >= 4": 3}
    assert server["info"]["datastore"]["total"] == 3  # two lesion subjects and the single-contrast study


@pytest.mark.slow
def test_server_infer_returns_lesion_label_on_the_input_grid(server: dict, tmp_path: Path) -> None:
    study = server["image"].parent.name  # make_studies names a study after its subject folder
    status, content_type, body = _post(f"{server['url']}/infer/qrvae_lesion?image={study}")
    assert status == 200, body[:2000]
    fields = _multipart(content_type, body)
    params = json.loads(fields["params"])
    result = tmp_path / "result.nii.gz"
    result.write_bytes(fields["image"])
    returned, scan = nib.load(str(result)), nib.load(str(server["image"]))
    assert returned.shape == scan.shape[:3]
    np.testing.assert_allclose(returned.affine, scan.affine, atol=1e-4)
    lesion = np.asarray(returned.dataobj)
    assert set(np.unique(lesion)) <= {0, 1}
    truth = np.asarray(nib.load(str(server["label"])).dataobj)
    assert params["lesion_voxels"] == int(lesion.sum()) and params["label_names"] == {"lesion": 1}
    assert _dice(lesion, truth) > 0.0, f"no overlap with the synthetic lesion: {params}"

    status, content_type, body = _post(f"{server['url']}/infer/qrvae_zmap?image={study}&output=image")
    assert status == 200, body[:2000]
    result.write_bytes(body)
    bands = nib.load(str(result))
    assert bands.shape == scan.shape[:3] and set(np.unique(np.asarray(bands.dataobj))) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_server_refuses_a_study_without_the_three_contrasts(server: dict) -> None:
    status, content_type, body = _post(f"{server['url']}/infer/qrvae_lesion?image=t1only")
    text = body.decode(errors="replace")
    assert status == 422, text
    assert content_type.startswith("application/json")
    detail = json.loads(text)["detail"]
    assert "T1, T2, FLAIR" in detail and "4D NIfTI" in detail and "1 volume" in detail
    assert "Traceback" not in text
    assert "Traceback" not in server["log"](), "the refusal should be logged as one line, not a stack trace"
    # and the server is still serving
    with urllib.request.urlopen(f"{server['url']}/info/", timeout=30) as response:
        assert response.status == 200
