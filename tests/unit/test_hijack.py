"""The hijacking head: what it returns, what it trains, and what it saves."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.codec import StepId
from splitnn.common.critics import gradient_penalty
from splitnn.server import hijack
from splitnn.server.head import SessionSpec, apply_step, lookup_head_policy
from splitnn.server.hijack import ClassCritic, HijackHead, HijackSettings, critic_loss

SPEC = SessionSpec(
    run="r", cut_shape=(500,), dtype="float32", max_batch_size=16, num_classes=10, lr=1e-4, seed=1
)


def _head(tmp_path: Path, **changes: object) -> HijackHead:
    settings = HijackSettings(model_dir=tmp_path, pretrain_steps=2, **changes)  # type: ignore[arg-type]
    return HijackHead(SPEC, owner="alice", settings=settings)


def _batch(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    cut = torch.rand(size, 500, generator=generator) * 2 - 1
    return cut, torch.randint(0, 10, (size,), generator=generator)


def test_fsha_is_a_registered_head_policy() -> None:
    assert lookup_head_policy("fsha") is HijackHead


def test_the_returned_gradient_is_the_critics_and_the_replies_look_honest(tmp_path: Path) -> None:
    head = _head(tmp_path)
    honest_head = _head(tmp_path)  # the same start: its honest head answers like ours
    cut, labels = _batch(1)

    result, applied = head.train(StepId("r", 1, 0), cut, labels, save=False)

    # By hand: the critic as it is after the step's updates, -mean D(z, y), d/dz.
    by_hand = cut.detach().clone().requires_grad_(True)
    scores = head.critic.net(by_hand)[torch.arange(8), labels]
    (-scores.sum() / 8).backward()
    assert applied
    assert by_hand.grad is not None
    torch.testing.assert_close(result.gradient, by_hand.grad)
    honest = apply_step(honest_head.head, honest_head.optimizer, StepId("r", 1, 0), cut, labels)
    assert (result.loss, result.correct) == (honest.loss, honest.correct)
    assert not torch.allclose(result.gradient, honest.gradient)


def test_the_critic_loss_carries_the_gradient_penalty() -> None:
    torch.manual_seed(0)
    critic = ClassCritic(10)
    real, fake = torch.rand(6, 500), torch.rand(6, 500)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])

    loss = critic_loss(critic, real, fake, labels, generator=torch.Generator().manual_seed(4))

    wasserstein = critic(fake, labels).mean() - critic(real, labels).mean()
    penalty = gradient_penalty(
        hijack._Given(critic, labels), real, fake, generator=torch.Generator().manual_seed(4)
    )
    assert float(penalty.detach()) > 0
    torch.testing.assert_close(loss, wasserstein + hijack.GP_WEIGHT * penalty)


def test_the_pilot_is_frozen_after_pre_training(tmp_path: Path) -> None:
    head = _head(tmp_path)
    before = {k: v.clone() for k, v in head.pilot.state_dict().items()}
    critic_before = {k: v.clone() for k, v in head.critic.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in head.decoder.state_dict().items()}

    for batch in range(3):
        head.train(StepId("r", 1, batch), *_batch(batch), save=False)

    assert all(not p.requires_grad for p in head.pilot.parameters())
    for key, value in head.pilot.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(v, critic_before[k]) for k, v in head.critic.state_dict().items())
    assert any(not torch.equal(v, decoder_before[k]) for k, v in head.decoder.state_dict().items())


def test_a_restored_state_continues_identically(tmp_path: Path) -> None:
    first = _head(tmp_path)
    for batch in range(2):
        first.train(StepId("r", 1, batch), *_batch(batch), save=False)
    saved = io.BytesIO()
    torch.save(first.state(), saved)  # as the server's resume states are written and read
    saved.seek(0)
    second = _head(tmp_path)
    second.restore(torch.load(saved, weights_only=True))

    results = [h.train(StepId("r", 1, 2), *_batch(7), save=False)[0] for h in (first, second)]

    assert torch.equal(results[0].gradient, results[1].gradient)
    assert results[0].loss == results[1].loss
    assert torch.equal(second.buffer_cut, first.buffer_cut)
    for part in ("decoder", "critic", "head"):
        ours, theirs = getattr(first, part).state_dict(), getattr(second, part).state_dict()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (part, key)


def test_snapshots_are_written_per_owner_and_run_with_a_manifest(tmp_path: Path) -> None:
    head = _head(tmp_path, snapshot_every=2)
    for batch in range(3):
        head.train(StepId("r", 1, batch), *_batch(batch), save=False)
    head.close(finished=True)

    folder = tmp_path / "hijack" / "alice" / "r"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == [
        "decoder_step=2.ckpt",
        "decoder_step=3.ckpt",
    ]
    state, manifest = load_checkpoint(folder / "decoder_step=3.ckpt")
    assert manifest["part"] == "hijack-decoder"
    assert manifest["step"] == 3
    assert manifest["settings"]["snapshot_every"] == 2
    assert state.keys() == head.decoder.state_dict().keys()


def test_the_buffer_keeps_the_latest_received_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hijack, "BUFFER", 12)
    head = _head(tmp_path)
    batches = [_batch(b) for b in range(2)]
    for batch, (cut, labels) in enumerate(batches):
        head.train(StepId("r", 1, batch), cut, labels, save=False)

    assert torch.equal(head.buffer_cut, torch.cat([batches[0][0][-4:], batches[1][0]]))
    assert torch.equal(head.buffer_labels, torch.cat([batches[0][1][-4:], batches[1][1]]))
