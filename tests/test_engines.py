"""Trainer, prepare_batch, loss adapter and resumable checkpoints on real engines."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from torch.utils.data import DistributedSampler

from monai_qrvae.engines import VAELossAdapter, VAEPrepareBatch, create_loss_evaluator, create_trainer
from monai_qrvae.handlers.checkpoint import (
    AtomicCheckpointSaver,
    ResumeFromCheckpoint,
    latest_checkpoint,
    load_state_dict_file,
)
from monai_qrvae.handlers.training import EpochSeedHandler, LossHistory, LossPartsHandler
from monai_qrvae.losses import QRVAELoss
from monai_qrvae.networks import QRVAE


def _slices(n: int = 24, size: int = 16, seed: int = 0) -> list[dict]:
    """Smooth blobs inside a disc 'brain' mask: a learnable distribution of 3-channel slices."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    mask = ((xx**2 + yy**2) < 0.8).float()[None]
    items = []
    for _ in range(n):
        cx, cy = (torch.rand(2, generator=g) - 0.5).tolist()
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.2)
        image = torch.stack([blob, 1 - blob, 0.5 * blob]) * mask + 0.02 * torch.randn(3, size, size, generator=g) * mask
        items.append({"image": image.float(), "brain_mask": mask.clone()})
    return items


def _tiny_qrvae() -> QRVAE:
    return QRVAE(in_shape=(3, 16, 16), channels=(8, 16), strides=(2, 2), latent_size=8, kernel_size=3, up_kernel_size=3)


def _run(tmp_path, epochs: int, resume: bool, seed: int = 0, stop_after: int | None = None):
    torch.manual_seed(seed)
    net = _tiny_qrvae()
    ds = Dataset(_slices())
    loader = DataLoader(
        ds, batch_size=8, sampler=DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=seed)
    )
    loss = QRVAELoss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    history = LossHistory()
    trainer = create_trainer(
        net, loss, loader, max_epochs=epochs, optimizer=opt, train_handlers=[EpochSeedHandler(seed), history]
    )
    save = {"network": net, "optimizer": opt, "trainer": trainer}
    if resume:
        ResumeFromCheckpoint(tmp_path, save).attach(trainer)
    AtomicCheckpointSaver(tmp_path, save, n_saved=1).attach(trainer)
    if stop_after is not None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    trainer.run()
    return trainer, net, history


def test_prepare_batch_uses_image_as_target():
    batch = {"image": torch.rand(2, 3, 8, 8), "brain_mask": torch.ones(2, 1, 8, 8)}
    image, (target, mask) = VAEPrepareBatch()(batch, device="cpu")
    assert torch.equal(image, batch["image"]) and torch.equal(target, batch["image"])
    assert torch.equal(mask, batch["brain_mask"])
    _, (_, no_mask) = VAEPrepareBatch(mask_key=None)(batch)
    assert no_mask is None
    with pytest.raises(ValueError, match="'image'"):
        VAEPrepareBatch()({"img": torch.rand(1)})


def test_loss_adapter_matches_direct_call():
    torch.manual_seed(0)
    net = _tiny_qrvae()
    x = torch.rand(4, 3, 16, 16)
    mask = torch.ones(4, 1, 16, 16)
    mask[..., :4] = 0
    net.eval()
    pred = net(x)
    loss = QRVAELoss()
    direct = loss(pred[0], x, pred[1], pred[2], mask=mask)
    adapted = VAELossAdapter(QRVAELoss())(pred, (x, mask))
    assert torch.allclose(direct, adapted)
    assert set(VAELossAdapter(loss).parts) >= {"recon", "kl", "q0.15", "q0.5"}
    with pytest.raises(ValueError, match="mu, logvar"):
        VAELossAdapter(loss)(pred[0], (x, mask))


def test_short_training_lowers_loss_and_logs_parts(tmp_path):
    trainer, _, history = _run(tmp_path, epochs=8, resume=False)
    losses = [row["loss"] for row in history.rows]
    assert len(losses) == 8
    assert losses[-1] < 0.6 * losses[0], losses
    assert {"loss_recon", "loss_kl", "loss_q0.15", "loss_q0.5"} <= set(history.rows[-1])
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch=8.pt"


def test_resume_gives_same_weights_as_uninterrupted(tmp_path):
    _, reference, _ = _run(tmp_path / "a", epochs=4, resume=True)
    # interrupted after epoch 2, then the same command again
    first, _, _ = _run(tmp_path / "b", epochs=4, resume=True, stop_after=2)
    assert first.state.epoch == 2
    trainer, resumed, _ = _run(tmp_path / "b", epochs=4, resume=True, seed=0)
    assert trainer.state.epoch == 4
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_is_loadable_weights_only_and_tampering_is_reported(tmp_path):
    _run(tmp_path, epochs=1, resume=False)
    path = latest_checkpoint(tmp_path)
    state = load_state_dict_file(path)
    assert {"network", "optimizer", "trainer"} <= set(state)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_state_dict_file(path)
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(tmp_path / "missing.pt")


def test_loss_evaluator_reports_val_loss():
    torch.manual_seed(0)
    net = _tiny_qrvae()
    loader = DataLoader(Dataset(_slices(8)), batch_size=4)
    evaluator = create_loss_evaluator(net, QRVAELoss(), loader)
    evaluator.run()
    val = evaluator.state.metrics["val_loss"]
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            pred = net(batch["image"])
            value = QRVAELoss()(pred[0], batch["image"], pred[1], pred[2], mask=batch["brain_mask"]).item()
            total += value * batch["image"].shape[0]
            count += batch["image"].shape[0]
    assert val == pytest.approx(total / count, rel=1e-5)
    assert val > 0


def test_loss_parts_handler_averages_over_epoch():
    class _Loss:
        parts = {"kl": torch.tensor(2.0)}

    from ignite.engine import Engine

    engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
    LossPartsHandler(_Loss()).attach(engine)
    engine.run([1, 2, 3], max_epochs=1)
    assert engine.state.metrics["loss"] == pytest.approx(2.0)
    assert engine.state.metrics["loss_kl"] == pytest.approx(2.0)
