"""The data holder's resume state: Progress arithmetic and round trips, save_state, load_state."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from splitnn.client.progress import Best, EpochRecord, Progress
from splitnn.client.resume import HolderState, ResumeError, load_state, resume_path, save_state
from splitnn.common.codec import StepId
from splitnn.common.models import Body, build_body, make_optimizer
from splitnn.common.noise import LaplaceNoise

RUN = "mnist_run"
SETTINGS: dict[str, Any] = {
    "dataset": "mnist",
    "noise": 0.5,
    "nopeek": 0.0,
    "eval_noise": None,
    "epochs": 3,
    "batch_size": 8,
}


def make_progress() -> Progress:
    """A run in its third epoch, with two epochs of history and a best epoch."""
    return Progress(
        epoch=3,
        batch=17,
        loss_sum=12.5,
        correct=40,
        samples=68,
        seconds=1.25,
        history=[
            EpochRecord(1, 0.9, 71.5, 80.25, 10.5, 600),
            EpochRecord(2, 0.4, 88.0, 90.5, 9.75, 600),
        ],
        best=Best(2, 90.5, 88.0, "mnist_05noise_epoch=2", "head_epoch=2"),
    )


def images(seed: int, rows: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((rows, 1, 28, 28), generator=generator)


def train_once(body: Body, optimizer: torch.optim.Optimizer, seed: int) -> None:
    """One optimizer step of part 1 on a loss drawn from `seed`."""
    optimizer.zero_grad(set_to_none=True)
    loss = body(images(seed)).pow(2).mean()
    loss.backward()
    optimizer.step()


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- Progress -----------------------------------------------------------------------------


def test_progress_round_trips_through_its_state() -> None:
    progress = make_progress()

    restored = Progress.from_state(progress.to_state())

    assert restored == progress
    assert restored.history[1].val_accuracy == 90.5
    assert restored.best is not None
    assert restored.best.head_checkpoint == "head_epoch=2"


def test_progress_without_best_round_trips() -> None:
    progress = Progress(epoch=2, batch=3, history=[EpochRecord(1, 1.0, 50.0, 60.0, 2.0, 10)])

    state = progress.to_state()
    restored = Progress.from_state(state)

    assert state["best"] == {}
    assert restored.best is None
    assert restored == progress


def test_progress_state_holds_plain_types_only() -> None:
    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (int, float, str))

    assert plain(make_progress().to_state())


def test_add_step_sums_the_running_epoch() -> None:
    progress = Progress()

    progress.add_step(loss=2.0, correct=3, samples=4, seconds=0.5)
    progress.add_step(loss=1.0, correct=1, samples=2, seconds=0.25)

    assert (progress.epoch, progress.batch) == (1, 2)
    assert progress.loss_sum == pytest.approx(10.0)
    assert progress.train_loss == pytest.approx(10.0 / 6)
    assert progress.train_accuracy == pytest.approx(100.0 * 4 / 6)
    assert (progress.correct, progress.samples) == (4, 6)
    assert progress.seconds == pytest.approx(0.75)


def test_an_epoch_without_samples_reports_zeros() -> None:
    progress = Progress()

    assert progress.train_loss == 0.0
    assert progress.train_accuracy == 0.0


def test_next_epoch_records_the_epoch_and_resets_the_sums() -> None:
    progress = Progress(epoch=2, history=[EpochRecord(1, 1.0, 50.0, 60.0, 2.0, 10)])
    progress.add_step(loss=0.5, correct=3, samples=4, seconds=1.5)
    progress.add_step(loss=1.5, correct=1, samples=4, seconds=0.5)

    record = progress.next_epoch(72.5)

    assert record == EpochRecord(
        epoch=2, train_loss=1.0, train_accuracy=50.0, val_accuracy=72.5, seconds=2.0, samples=8
    )
    assert progress.history[-1] == record
    assert len(progress.history) == 2
    assert (progress.epoch, progress.batch) == (3, 0)
    assert (progress.loss_sum, progress.correct, progress.samples, progress.seconds) == (
        0.0,
        0,
        0,
        0.0,
    )


# --- save_state / load_state --------------------------------------------------------------


def test_resume_path_is_per_run_under_client() -> None:
    assert resume_path(Path("/m"), RUN) == Path("/m") / "client" / f"{RUN}.ckpt"


def test_state_round_trips_part_one_optimizer_noise_and_progress(tmp_path: Path) -> None:
    # Prepare: part 1 after one Adam step; both noise streams advanced by a few draws.
    body = build_body(3)
    optimizer = make_optimizer(body, 1e-3)
    train_once(body, optimizer, seed=1)
    noise = LaplaceNoise(0.5, seed=11)
    val_noise = LaplaceNoise(0.5, seed=12)
    noise.sample((3, 500), dtype=torch.float32)
    val_noise.sample((2, 500), dtype=torch.float32)
    state = HolderState(
        step=StepId(RUN, 3, 17),
        progress=make_progress(),
        body=body.state_dict(),
        optimizer=optimizer.state_dict(),
        noise=noise.get_state(),
        val_noise=val_noise.get_state(),
    )
    path = resume_path(tmp_path, RUN)

    save_state(path, state, settings=SETTINGS, run=RUN)
    loaded = load_state(path, settings=dict(SETTINGS), run=RUN)

    assert loaded.step == StepId(RUN, 3, 17)
    assert loaded.progress == make_progress()
    assert_same_tensors(loaded.body, body.state_dict())
    # A fresh part 1 (other seed) given the loaded state trains exactly like the original.
    resumed_body = build_body(4)
    resumed_optimizer = make_optimizer(resumed_body, 1e-3)
    resumed_body.load_state_dict(loaded.body)
    resumed_optimizer.load_state_dict(loaded.optimizer)
    train_once(body, optimizer, seed=2)
    train_once(resumed_body, resumed_optimizer, seed=2)
    assert_same_tensors(resumed_body.state_dict(), body.state_dict())
    # Fresh generators (other seeds) given the loaded states draw what the originals draw next.
    resumed_noise = LaplaceNoise(0.5, seed=0)
    resumed_val_noise = LaplaceNoise(0.5, seed=0)
    resumed_noise.set_state(loaded.noise)
    resumed_val_noise.set_state(loaded.val_noise)
    expected = noise.sample((4, 500), dtype=torch.float32)
    expected_val = val_noise.sample((4, 500), dtype=torch.float32)
    assert torch.equal(resumed_noise.sample((4, 500), dtype=torch.float32), expected)
    assert torch.equal(resumed_val_noise.sample((4, 500), dtype=torch.float32), expected_val)
    assert not torch.equal(expected, expected_val)


def test_the_optimizer_step_changed_part_one() -> None:
    """Guards the round trip above: a trained part 1 differs from a fresh one of the same seed."""
    body = build_body(3)
    optimizer = make_optimizer(body, 1e-3)

    train_once(body, optimizer, seed=1)

    with pytest.raises(AssertionError):
        assert_same_tensors(body.state_dict(), build_body(3).state_dict())


def save_small(path: Path, settings: dict[str, Any]) -> None:
    """A state with a tiny stand-in for part 1 (the settings check does not look at it)."""
    state = HolderState(
        step=StepId(RUN, 1, 2),
        progress=Progress(epoch=1, batch=2),
        body={"w": torch.ones(2)},
        optimizer={"state": {}, "param_groups": []},
        noise=LaplaceNoise(0.0, seed=1).get_state(),
        val_noise=LaplaceNoise(0.0, seed=2).get_state(),
    )
    save_state(path, state, settings=settings, run=RUN)


@pytest.mark.parametrize(
    ("changed", "value"), [("noise", 1.0), ("batch_size", 16), ("eval_noise", 0.5)]
)
def test_other_settings_are_refused_naming_the_setting(
    tmp_path: Path, changed: str, value: object
) -> None:
    path = resume_path(tmp_path, RUN)
    save_small(path, SETTINGS)

    with pytest.raises(ResumeError) as refused:
        load_state(path, settings={**SETTINGS, changed: value}, run=RUN)

    message = str(refused.value)
    assert f"{changed}={SETTINGS[changed]!r}" in message
    assert RUN in message
    unchanged = [k for k in SETTINGS if k != changed]
    assert not any(re.search(rf"\b{k}=", message) for k in unchanged)


def test_a_setting_missing_on_either_side_is_refused(tmp_path: Path) -> None:
    path = resume_path(tmp_path, RUN)
    save_small(path, SETTINGS)

    with pytest.raises(ResumeError, match=r"seed=None"):
        load_state(path, settings={**SETTINGS, "seed": 1}, run=RUN)
    with pytest.raises(ResumeError, match=r"epochs=3"):
        load_state(path, settings={k: v for k, v in SETTINGS.items() if k != "epochs"}, run=RUN)


def test_a_missing_state_is_a_resume_error(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="nothing to resume"):
        load_state(resume_path(tmp_path, RUN), settings=SETTINGS, run=RUN)


def test_an_unreadable_state_is_a_resume_error(tmp_path: Path) -> None:
    path = resume_path(tmp_path, RUN)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")

    with pytest.raises(ResumeError, match="cannot read"):
        load_state(path, settings=SETTINGS, run=RUN)
