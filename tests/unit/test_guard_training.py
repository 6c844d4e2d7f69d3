"""Training with the guard: what a fake batch sends and leaves alone, what is scored, the alarm,
and a resumed run that scores exactly as the uninterrupted one. The server is an in-process
stand-in (no sockets): its own head, trained on what it receives."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from splitnn.client.config import ClientConfig
from splitnn.client.guard import GuardSettings, SplitGuard, StepPlan
from splitnn.client.progress import Progress
from splitnn.client.resume import load_state, resume_path
from splitnn.client.split_trainer import SplitTrainer
from splitnn.client.training_run import (
    TrainingRun,
    holder_guard,
    resume_settings,
    training_noise,
)
from splitnn.client.transport import EvalReply, StepReply
from splitnn.common import exits
from splitnn.common.codec import StepId
from splitnn.common.datasets import DatasetSplits, Subset, load_splits
from splitnn.common.models import build_body, build_head, make_optimizer
from splitnn.common.seeds import seed_for

RUN = "guarded"


class Stopped(Exception):
    """The stand-in server's way of killing the data holder before a step."""


class HeadLink:
    """A server in this process: a head trained with Adam on every batch it receives.

    `blind`: it trains on labels it makes up (all zero), never on the ones sent, like a server
    that steers part 1 towards an objective of its own. `stop_at`: it raises `Stopped` when this
    step arrives, before applying it. Save points keep the head's state for `resume`.
    """

    def __init__(self, *, blind: bool = False, stop_at: StepId | None = None) -> None:
        self.head = build_head(seed_for(0, "head"))
        self.optimizer = make_optimizer(self.head, 1e-3)
        self.blind = blind
        self.stop_at = stop_at
        self.received: list[torch.Tensor] = []
        self.saves: dict[StepId, Any] = {}
        self.position: StepId | None = None
        self.saved: StepId | None = None

    def train_step(
        self,
        step: StepId,
        sent: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        *,
        save: bool = False,
    ) -> StepReply:
        if step == self.stop_at:
            raise Stopped(str(step))
        self.received.append(labels.clone())
        received = sent.clone().requires_grad_(True)
        logits = self.head(received)
        target = torch.zeros_like(labels) if self.blind else labels
        loss = F.cross_entropy(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if save:
            self.saves[step] = copy.deepcopy((self.head.state_dict(), self.optimizer.state_dict()))
        assert received.grad is not None
        correct = int((logits.argmax(dim=1) == labels).sum())
        return StepReply(gradient=received.grad, loss=float(loss.detach()), correct=correct)

    def evaluate(
        self,
        step: StepId,
        sent: torch.Tensor,
        *,
        split: str,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
    ) -> EvalReply:
        with torch.no_grad():
            logits = self.head(sent)
        loss = float(F.cross_entropy(logits, labels))
        return EvalReply(logits, loss, int((logits.argmax(dim=1) == labels).sum()))

    def checkpoint(self, name: str, *, replace_previous: bool) -> str:
        return f"{name}.head.ckpt"

    def restore(self, name: str, *, run: str = "") -> int:
        return 0

    def resumed(self, step: StepId) -> HeadLink:
        """A fresh server continuing from its save of `step`, which it must hold."""
        head, optimizer = self.saves[step]
        other = HeadLink(blind=self.blind)
        other.head.load_state_dict(head)
        other.optimizer.load_state_dict(optimizer)
        return other


@pytest.fixture(scope="module")
def splits() -> DatasetSplits:
    """A small slice of mnist5k: 96 training images (12 batches of 8), 16 of each other split."""
    full = load_splits("mnist5k")

    def head(subset: Subset, n: int) -> Subset:
        return Subset(subset.images[:n], subset.labels[:n], subset.indices[:n])

    return DatasetSplits(
        name=full.name,
        num_classes=full.num_classes,
        description=full.description,
        train=head(full.train, 96),
        val=head(full.val, 16),
        test=head(full.test, 16),
        aux=head(full.aux, 16),
        attack=head(full.attack, 16),
    )


def config(tmp_path: Path, **changes: Any) -> ClientConfig:
    """A guarded run's settings; `changes` may name the guard's settings as `guard_<name>`."""
    guard: dict[str, Any] = {"start_after": 2, "fake_probability": 0.3}
    for name in [name for name in changes if name.startswith("guard_")]:
        guard[name.removeprefix("guard_")] = changes.pop(name)
    settings: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "save_every": 0,  # epoch ends only (each save writes part 1 and Adam's moments)
        "model_dir": tmp_path,
        "progress": False,
        "guard": "splitguard",
        "guard_settings": GuardSettings(**guard),
    }
    return ClientConfig(**{**settings, **changes})


def trainer(cfg: ClientConfig, link: HeadLink, num_classes: int = 10) -> SplitTrainer:
    return SplitTrainer(
        body=build_body(seed_for(cfg.seed, "body")),
        link=link,  # type: ignore[arg-type]
        run=RUN,
        noise=training_noise(cfg),
        nopeek=cfg.nopeek,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=seed_for(cfg.seed, "batch_order"),
        guard=holder_guard(cfg, num_classes),
    )


def training(cfg: ClientConfig, splits: DatasetSplits, link: HeadLink) -> TrainingRun:
    state = resume_path(cfg.model_dir, RUN)
    return TrainingRun(cfg=cfg, splits=splits, trainer=trainer(cfg, link), state_path=state)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(8, 1, 28, 28, generator=generator)
    return images, torch.randint(0, 10, (8,), generator=generator)


def test_a_fake_batch_sends_shifted_labels_records_and_takes_no_step(tmp_path: Path) -> None:
    link = HeadLink()
    split = trainer(config(tmp_path), link)
    before = copy.deepcopy(split.body.state_dict())
    images, labels = batch()

    split.step(StepId(RUN, 1, 0), images, labels, plan=StepPlan(label_shift=3), index=7)

    assert torch.equal(link.received[0], (labels + 3) % 10)
    for name, value in split.body.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not split.optimizer.state  # Adam never stepped: no moments either
    assert split.guard is not None
    assert (split.guard.fake.count, split.guard.r1.count, split.guard.r2.count) == (1, 0, 0)
    first = split.body.features[0]
    assert isinstance(first, torch.nn.Conv2d) and first.bias is not None
    assert split.guard.fake.total is not None
    assert split.guard.fake.total.numel() == first.weight.numel() + first.bias.numel()


def test_a_regular_batch_trains_with_the_true_labels_and_feeds_its_set(tmp_path: Path) -> None:
    link = HeadLink()
    split = trainer(config(tmp_path), link)
    before = copy.deepcopy(split.body.state_dict())
    images, labels = batch()

    split.step(StepId(RUN, 1, 0), images, labels, plan=StepPlan(regular_set=2), index=7)

    assert torch.equal(link.received[0], labels)
    weight = "features.0.weight"
    assert not torch.equal(split.body.state_dict()[weight], before[weight])
    assert split.guard is not None
    assert (split.guard.fake.count, split.guard.r1.count, split.guard.r2.count) == (0, 0, 1)


def test_the_guard_judges_the_servers_gradient_without_the_nopeek_term(tmp_path: Path) -> None:
    recorded = []
    for nopeek in (0.0, 0.5):
        split = trainer(config(tmp_path, nopeek=nopeek), HeadLink())
        split.step(StepId(RUN, 1, 0), *batch(), plan=StepPlan(regular_set=1), index=3)
        assert split.guard is not None and split.guard.r1.total is not None
        recorded.append(split.guard.r1.total)

    torch.testing.assert_close(recorded[0], recorded[1])


def test_fake_batches_count_as_steps_but_not_in_the_training_metrics(
    tmp_path: Path, splits: DatasetSplits
) -> None:
    split = trainer(config(tmp_path, guard_start_after=0, guard_fake_probability=0.5), HeadLink())
    progress = Progress()

    split.train_epoch(splits.train, progress, show_progress=False)

    assert split.guard is not None
    plans = [split.guard.plan(index) for index in range(12)]
    fakes = sum(plan.fake for plan in plans)
    assert 0 < fakes < 12
    assert progress.batch == 12
    assert progress.samples == 8 * (12 - fakes)
    assert split.guard.fake.count == fakes


def test_an_honest_server_scores_high_without_an_alarm(
    tmp_path: Path, splits: DatasetSplits
) -> None:
    run = training(config(tmp_path), splits, HeadLink())

    run.train()

    guard = run.trainer.guard
    assert guard is not None and len(guard.scores) >= 3
    assert min(score for _, score in guard.scores) > 0.5
    assert guard.detected_at_step is None


def test_a_blind_server_raises_the_alarm_and_warn_trains_on(
    tmp_path: Path, splits: DatasetSplits, caplog: pytest.LogCaptureFixture
) -> None:
    run = training(config(tmp_path), splits, HeadLink(blind=True))

    run.train()

    guard = run.trainer.guard
    assert guard is not None and guard.detected_at_step is not None
    assert run.progress.epoch == 3  # both epochs trained
    alarms = [r for r in caplog.records if "GUARD ALARM" in r.getMessage()]
    assert len(alarms) == 1 and alarms[0].levelname == "WARNING"


def test_stop_saves_the_state_at_the_alarm_and_a_resumed_run_goes_on(
    tmp_path: Path, splits: DatasetSplits
) -> None:
    cfg = config(tmp_path, epochs=3, guard_action="stop")
    link = HeadLink(blind=True)
    run = training(cfg, splits, link)

    with pytest.raises(exits.Alarm, match="GUARD ALARM") as raised:
        run.train()

    assert exits.exit_code(raised.value) == exits.ALARM
    guard = run.trainer.guard
    assert guard is not None and guard.detected_at_step is not None
    state = load_state(run.state_path, settings=resume_settings(cfg), run=RUN)
    assert state.guard is not None and state.guard["detected_at_step"] == guard.detected_at_step
    per_epoch = 12
    at = state.step
    assert (at.epoch - 1) * per_epoch + at.batch == guard.detected_at_step
    # The server snapshots the alarm's step when the session closes; here: take the head as is.
    link.saves[at] = copy.deepcopy((link.head.state_dict(), link.optimizer.state_dict()))

    resumed = training(cfg, splits, link.resumed(at))
    resumed.load(state)
    resumed.train()  # no second alarm: its step is behind

    assert resumed.trainer.guard is not None
    assert resumed.trainer.guard.detected_at_step == guard.detected_at_step
    assert resumed.progress.epoch == 4


def test_the_guard_action_may_change_on_resume_but_not_its_settings(tmp_path: Path) -> None:
    cfg = config(tmp_path)

    assert resume_settings(cfg) == resume_settings(config(tmp_path, guard_action="stop"))
    assert resume_settings(cfg) != resume_settings(config(tmp_path, guard_threshold=0.4))
    assert resume_settings(cfg) != resume_settings(config(tmp_path, guard=None))
    assert resume_settings(config(tmp_path, guard=None))["guard"] is None


def test_a_resumed_run_makes_the_same_decisions_and_scores(
    tmp_path: Path, splits: DatasetSplits
) -> None:
    whole = training(config(tmp_path / "whole"), splits, HeadLink())
    whole.train()
    cfg = config(tmp_path / "parts", save_every=5)
    stop_at = StepId(RUN, 2, 3)  # 12 batches an epoch, a save point every 5: the last at (2, 2)
    first = HeadLink(stop_at=stop_at)
    broken = training(cfg, splits, first)
    with pytest.raises(Stopped):
        broken.train()

    state = load_state(broken.state_path, settings=resume_settings(cfg), run=RUN)
    assert state.step == StepId(RUN, 2, 2)
    resumed = training(cfg, splits, first.resumed(state.step))
    resumed.load(state)
    resumed.train()

    mine, theirs = whole.trainer.guard, resumed.trainer.guard
    assert mine is not None and theirs is not None
    assert len(mine.scores) >= 2
    assert theirs.scores == mine.scores
    assert theirs.detected_at_step == mine.detected_at_step
    for name, value in whole.trainer.body.state_dict().items():
        assert torch.equal(resumed.trainer.body.state_dict()[name], value), name


def test_a_state_without_the_guards_part_is_refused(tmp_path: Path, splits: DatasetSplits) -> None:
    plain = config(tmp_path, guard=None)
    run = training(plain, splits, HeadLink())
    run._save(StepId(RUN, 1, 0))
    state = load_state(run.state_path, settings=resume_settings(plain), run=RUN)

    guarded = training(config(tmp_path), splits, HeadLink())
    with pytest.raises(exits.BadUsage, match="no guard state"):
        guarded.load(state)


def test_no_guard_means_no_plan_and_the_labels_as_they_are(tmp_path: Path) -> None:
    link = HeadLink()
    split = trainer(config(tmp_path, guard=None), link)
    images, labels = batch()

    split.step(StepId(RUN, 1, 0), images, labels)

    assert split.guard is None
    assert torch.equal(link.received[0], labels)


def test_the_guard_seed_is_its_own_stream(tmp_path: Path) -> None:
    guard = holder_guard(config(tmp_path, seed=3), 10)
    assert isinstance(guard, SplitGuard)
    assert guard.seed == seed_for(3, "guard")
    assert guard.settings == GuardSettings(start_after=2, fake_probability=0.3)
    assert holder_guard(config(tmp_path, guard=None), 10) is None
