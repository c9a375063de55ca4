"""Tests for monai_qrvae.networks: shapes, non-crossing quantiles, eval determinism, training, the anomaly-map
wrapper (layout, TorchScript, SliceInferer), 3D, parameter counts and bundle-config names."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer
from monai.networks.nets import VarAutoEncoder

import monai_qrvae
from monai_qrvae.anomaly import quantiles_to_mu_sigma
from monai_qrvae.losses import QRVAELoss
from monai_qrvae.networks import ANOMALY_MAP_LAYOUT, QRVAE, AnomalyMapNet, GaussianVAE

TINY = {"in_shape": (3, 16, 16), "channels": (4, 8), "strides": (2, 2), "latent_size": 8}


def _randomise(net: torch.nn.Module, std: float = 1.0) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, std)


@pytest.mark.parametrize("quantiles", [(0.15, 0.5), (0.15, 0.5, 0.85)])
def test_qrvae_shapes(quantiles):
    torch.manual_seed(0)
    net = QRVAE(quantiles=quantiles, **TINY)
    assert isinstance(net, VarAutoEncoder)
    out, mu, logvar, z = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 3 * len(quantiles), 16, 16)
    assert mu.shape == logvar.shape == z.shape == (2, 8)


@pytest.mark.parametrize(
    "quantiles, anchor", [((0.15, 0.5), 1), ((0.05, 0.15, 0.5, 0.85, 0.95), 2), ((0.25, 0.75), 0), ((0.6, 0.9), 0)]
)
def test_qrvae_non_crossing_random_weights(quantiles, anchor):
    net = QRVAE(quantiles=quantiles, **TINY).eval()
    assert net.anchor_index == anchor
    num_q = len(quantiles)
    for seed in range(3):
        torch.manual_seed(seed)
        _randomise(net, std=0.5)
        out = net(3.0 * torch.randn(4, 3, 16, 16))[0]
        assert torch.isfinite(out).all()
        groups = out.view(4, num_q, 3, 16, 16)
        assert (groups.diff(dim=1) >= 0).all()  # ties only where softplus underflows (huge raw outputs)
    torch.manual_seed(0)
    out = QRVAE(quantiles=quantiles, **TINY).eval()(torch.randn(4, 3, 16, 16))[0]
    assert (out.view(4, num_q, 3, 16, 16).diff(dim=1) > 0).all()  # strictly ordered at a realistic scale


def test_qrvae_last_layer_is_conv_only_and_anchor_is_raw_head():
    torch.manual_seed(0)
    net = QRVAE(**TINY).eval()
    last = list(net.decode.children())[-1].conv
    assert [type(m).__name__ for m in last.children()] == ["ConvTranspose2d"]
    x = torch.randn(2, 3, 16, 16)
    mu, logvar = net.encode_forward(x)
    raw = net.decode_raw(mu).view(2, 2, 3, 16, 16)
    out = net(x)[0].view(2, 2, 3, 16, 16)
    torch.testing.assert_close(out[:, 1], raw[:, 1])  # 0.5 is the anchor: no activation on it
    torch.testing.assert_close(out[:, 0], raw[:, 1] - torch.nn.functional.softplus(raw[:, 0]))


def test_eval_is_deterministic_and_uses_posterior_mean():
    torch.manual_seed(0)
    net = QRVAE(**TINY)
    x = torch.randn(3, 3, 16, 16)
    net.train()
    z1, z2 = net(x)[3], net(x)[3]
    assert not torch.allclose(z1, z2)
    net.eval()
    out1, mu, _, z = net(x)
    out2 = net(x)[0]
    torch.testing.assert_close(z, mu)
    assert torch.equal(out1, out2)


def test_gaussian_vae_shapes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    assert GaussianVAE(**TINY)(x)[0].shape == (2, 6, 16, 16)
    assert GaussianVAE(learn_variance=False, **TINY)(x)[0].shape == (2, 3, 16, 16)


def test_hidden_size_layers_and_shapes():
    torch.manual_seed(0)
    net = QRVAE(hidden_size=32, **TINY).eval()
    assert net.hidden[0].in_features == 8 * 4 * 4 and net.hidden[0].out_features == 32
    assert net.mu.in_features == net.logvar.in_features == 32
    assert [type(m).__name__ for m in net.decodeL] == ["Linear", "ReLU", "Linear"]
    out, mu, _, _ = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 6, 16, 16) and mu.shape == (2, 8)


def test_few_adam_steps_lower_qrvae_loss():
    torch.manual_seed(0)
    net = QRVAE(**TINY)
    x = torch.rand(8, 3, 16, 16)
    mask = torch.zeros(8, 1, 16, 16)
    mask[..., 2:14, 2:14] = 1
    loss_fn = QRVAELoss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        out, mu, logvar, _ = net(x)
        loss = loss_fn(out, x, mu, logvar, mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _expected_maps(net, x, quantiles, floor):
    out = net(x)[0]
    mu, sigma = quantiles_to_mu_sigma(out, quantiles, sigma_floor=floor)
    return mu, sigma, (x - mu) / sigma


@pytest.mark.parametrize("quantiles", [(0.15, 0.5), (0.1, 0.3, 0.7, 0.9), (0.05, 0.15, 0.5, 0.85, 0.95)])
def test_anomaly_map_net_quantile_layout(quantiles):
    torch.manual_seed(0)
    net = QRVAE(quantiles=quantiles, **TINY).eval()
    _randomise(net, std=0.3)
    wrapper = AnomalyMapNet(net).eval()
    x = torch.randn(2, 3, 16, 16)
    maps = wrapper(x)
    assert isinstance(maps, torch.Tensor) and maps.shape == (2, 9, 16, 16)
    assert ANOMALY_MAP_LAYOUT == ("mu", "sigma", "z")
    mu, sigma, z = _expected_maps(net, x, quantiles, 1e-3)
    blocks = maps.view(2, 3, 3, 16, 16)
    torch.testing.assert_close(blocks[:, 0], mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blocks[:, 1], sigma, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blocks[:, 2], z, atol=1e-4, rtol=1e-4)
    assert (blocks[:, 1] >= 1e-3).all()
    if quantiles == (0.15, 0.5):
        q = net(x)[0].view(2, 2, 3, 16, 16)
        torch.testing.assert_close(blocks[:, 0], q[:, 1])
        torch.testing.assert_close(blocks[:, 1], ((q[:, 1] - q[:, 0]) / 1.0364333894937898).clamp_min(1e-3))


def test_anomaly_map_net_sigma_floor():
    torch.manual_seed(0)
    net = QRVAE(**TINY).eval()
    maps = AnomalyMapNet(net, sigma_floor=50.0).eval()(torch.randn(2, 3, 16, 16))
    sigma = maps.view(2, 3, 3, 16, 16)[:, 1]
    assert (sigma >= 50.0).all() and torch.allclose(sigma, torch.full_like(sigma, 50.0))


def test_anomaly_map_net_gaussian_and_mse():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    gauss = GaussianVAE(**TINY).eval()
    out = gauss(x)[0]
    maps = AnomalyMapNet(gauss).eval()(x).view(2, 3, 3, 16, 16)
    torch.testing.assert_close(maps[:, 0], out[:, :3])
    torch.testing.assert_close(maps[:, 1], (0.5 * out[:, 3:]).exp().clamp_min(1e-3))
    torch.testing.assert_close(maps[:, 2], (x - out[:, :3]) / maps[:, 1])
    mse = GaussianVAE(learn_variance=False, **TINY).eval()
    maps = AnomalyMapNet(mse, residual_sigma=0.2).eval()(x).view(2, 3, 3, 16, 16)
    torch.testing.assert_close(maps[:, 1], torch.full((2, 3, 16, 16), 0.2))
    torch.testing.assert_close(maps[:, 2], (x - mse(x)[0]) / 0.2)


@pytest.mark.parametrize("kind", ["qrvae", "gaussian", "mse"])
def test_anomaly_map_net_torchscript(kind):
    torch.manual_seed(0)
    if kind == "qrvae":
        net = QRVAE(quantiles=(0.15, 0.5, 0.85), **TINY)
    else:
        net = GaussianVAE(learn_variance=kind == "gaussian", **TINY)
    wrapper = AnomalyMapNet(net).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = wrapper(x)
    scripted = torch.jit.script(wrapper)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), expected)
    traced = torch.jit.trace(wrapper, x)
    torch.testing.assert_close(traced(x), expected)
    other = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(traced(other), wrapper(other))
    torch.testing.assert_close(scripted(other), wrapper(other))


def test_anomaly_map_net_slice_inferer():
    torch.manual_seed(0)
    wrapper = AnomalyMapNet(QRVAE(**TINY)).eval()
    volume = torch.randn(1, 3, 16, 16, 5)
    with torch.no_grad():
        out = SliceInferer(roi_size=(16, 16), spatial_dim=2, sw_batch_size=2, progress=False)(volume, wrapper)
        per_slice = torch.stack([wrapper(volume[..., k]) for k in range(5)], dim=-1)
    assert out.shape == (1, 9, 16, 16, 5)
    torch.testing.assert_close(out, per_slice, atol=1e-5, rtol=1e-5)


def test_3d_variants():
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 3, "in_shape": (2, 8, 8, 8), "channels": (4, 8), "strides": (2, 2), "latent_size": 4}
    x = torch.randn(2, 2, 8, 8, 8)
    qr = QRVAE(quantiles=(0.15, 0.5, 0.85), **kwargs).eval()
    out = qr(x)[0]
    assert out.shape == (2, 6, 8, 8, 8)
    assert (out.view(2, 3, 2, 8, 8, 8).diff(dim=1) >= 0).all()
    assert GaussianVAE(**kwargs)(x)[0].shape == (2, 4, 8, 8, 8)
    maps = AnomalyMapNet(qr).eval()(x)
    assert maps.shape == (2, 6, 8, 8, 8)
    torch.testing.assert_close(torch.jit.script(AnomalyMapNet(qr).eval())(x), maps)


def _num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_parameter_counts():
    with torch.device("meta"):
        paper_wide = QRVAE(hidden_size=2048)  # the paper's brain model: FC 16384 -> 2048 -> 128 and back
        paper = QRVAE()
    assert _num_params(paper_wide) == 69_980_358
    assert _num_params(paper) == 8_372_422
    small = QRVAE(channels=(32, 64, 128), latent_size=128)
    assert _num_params(small) == 3_674_342
    buffer = io.BytesIO()
    torch.save(small.state_dict(), buffer)
    assert len(buffer.getvalue()) < 25e6


def test_invalid_arguments():
    with pytest.raises(ValueError, match="increasing"):
        QRVAE(quantiles=(0.5, 0.15), **TINY)
    with pytest.raises(ValueError, match="open interval"):
        QRVAE(quantiles=(0.0, 0.5), **TINY)
    with pytest.raises(ValueError, match="divisible"):
        QRVAE(in_shape=(3, 18, 16), channels=(4, 8), strides=(2, 2))
    with pytest.raises(ValueError, match="in_shape"):
        GaussianVAE(spatial_dims=3, **TINY)
    with pytest.raises(ValueError, match="same length"):
        QRVAE(in_shape=(3, 16, 16), channels=(4, 8), strides=(2,))
    with pytest.raises(ValueError, match="QRVAE or a GaussianVAE"):
        AnomalyMapNet(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="two quantiles"):
        AnomalyMapNet(QRVAE(quantiles=(0.5,), **TINY))
    with pytest.raises(ValueError, match="sigma_floor"):
        AnomalyMapNet(QRVAE(**TINY), sigma_floor=0.0)


_TARGETS = {
    "QuantileLoss": "losses",
    "QRVAELoss": "losses",
    "GaussianVAELoss": "losses",
    "QRVAE": "networks",
    "GaussianVAE": "networks",
}


def _bundle_config(short: bool) -> dict:
    def target(name: str) -> str:
        return name if short else f"monai_qrvae.{_TARGETS[name]}.{name}"

    net_args = {"in_shape": [3, 16, 16], "channels": [4, 8], "strides": [2, 2], "latent_size": 8}
    return {
        "imports": ["$import monai_qrvae.losses", "$import monai_qrvae.networks"],
        "quantile_loss": {"_target_": target("QuantileLoss"), "quantiles": [0.15, 0.5]},
        "qrvae_loss": {"_target_": target("QRVAELoss"), "beta": 0.5},
        "gaussian_loss": {"_target_": target("GaussianVAELoss"), "learn_variance": False},
        "qrvae": dict({"_target_": target("QRVAE"), "quantiles": [0.15, 0.5, 0.85]}, **net_args),
        "gaussian": dict({"_target_": target("GaussianVAE")}, **net_args),
        "anomaly": {
            "_target_": "AnomalyMapNet" if short else "monai_qrvae.networks.AnomalyMapNet",
            "network": "@qrvae",
            "sigma_floor": 0.01,
        },
        "pinball": {
            "_target_": "pinball_loss" if short else "monai_qrvae.losses.pinball_loss",
            "_mode_": "callable",
        },
        "kl": {"_target_": "kl_divergence" if short else "monai_qrvae.losses.kl_divergence", "_mode_": "callable"},
    }


_CHECK = """
import json, sys
from monai.bundle import ConfigParser

assert "monai_qrvae" not in sys.modules
configs = json.loads(sys.argv[1])
no_imports = dict(configs["short"])
no_imports.pop("imports")
try:
    ConfigParser(no_imports).get_parsed_content("qrvae_loss")
    raise SystemExit("a short name resolved without importing monai_qrvae")
except (ModuleNotFoundError, RuntimeError):
    pass
assert "monai_qrvae" not in sys.modules
result = {}
for kind in ("short", "full"):  # short first: its locator only sees monai_qrvae through the config's imports
    parser = ConfigParser(configs[kind])
    out = {}
    for key in ("quantile_loss", "qrvae_loss", "gaussian_loss", "qrvae", "gaussian", "anomaly"):
        obj = parser.get_parsed_content(key)
        out[key] = f"{type(obj).__module__}.{type(obj).__qualname__}"
    for key in ("pinball", "kl"):
        obj = parser.get_parsed_content(key)
        out[key] = f"{obj.__module__}.{obj.__qualname__}"
    out["anomaly_floor"] = parser.get_parsed_content("anomaly").sigma_floor
    result[kind] = out
print(json.dumps(result))
"""


def test_bundle_config_targets():
    """Fresh interpreter: only the config's ``imports`` bring monai_qrvae in, as in ``monai.bundle run``."""
    root = str(Path(monai_qrvae.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    configs = {"short": _bundle_config(short=True), "full": _bundle_config(short=False)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(configs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {
        "quantile_loss": "monai_qrvae.losses.QuantileLoss",
        "qrvae_loss": "monai_qrvae.losses.QRVAELoss",
        "gaussian_loss": "monai_qrvae.losses.GaussianVAELoss",
        "qrvae": "monai_qrvae.networks.QRVAE",
        "gaussian": "monai_qrvae.networks.GaussianVAE",
        "anomaly": "monai_qrvae.networks.AnomalyMapNet",
        "pinball": "monai_qrvae.losses.pinball_loss",
        "kl": "monai_qrvae.losses.kl_divergence",
        "anomaly_floor": 0.01,
    }
    assert result == {"short": expected, "full": expected}


def test_bundle_config_in_process_values():
    parser = ConfigParser(_bundle_config(short=True))
    loss = parser.get_parsed_content("qrvae_loss")
    assert loss.beta == 0.5 and loss.quantiles == (0.15, 0.5)
    net = parser.get_parsed_content("qrvae")
    assert net.quantiles == (0.15, 0.5, 0.85) and net(torch.randn(1, 3, 16, 16))[0].shape == (1, 9, 16, 16)
