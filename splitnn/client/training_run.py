"""A whole training run that can stop anywhere and go on: epochs, validation, the best epoch,
save points, and the way back to the last save when the server lost newer steps.

Everything a step depends on is either saved (part 1, optimizer, noise generators, position and
sums) or derived from the seed (each epoch's order), so a resumed run takes exactly the steps the
uninterrupted one would have and ends with the same parameters and the same report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from splitnn.client.config import ClientConfig
from splitnn.client.guard import GUARDS, SplitGuard
from splitnn.client.progress import Best, EpochRecord, Progress
from splitnn.client.resume import HolderState, ResumeError, load_state, save_state
from splitnn.client.split_trainer import EvalScore, SplitTrainer
from splitnn.client.transport import RolledBack
from splitnn.common import exits
from splitnn.common.checkpoints import (
    CheckpointError,
    classifier_stem,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from splitnn.common.codec import StepId
from splitnn.common.datasets import DatasetSplits
from splitnn.common.models import build_body, make_optimizer
from splitnn.common.noise import LaplaceNoise
from splitnn.common.seeds import SEEDING, seed_for

logger = logging.getLogger(__name__)

# What must not change between a run and its resumption.
_RESUME_SETTINGS = (
    "dataset",
    "noise",
    "nopeek",
    "eval_noise",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "max_steps",
    "group",
    "holder",
    "holders",
    "partition",
    "alpha",
)


def member(cfg: ClientConfig) -> int | None:
    """The holder's index when it trains in a group (its own random streams), else None."""
    return cfg.holder if cfg.group is not None else None


def training_noise(cfg: ClientConfig) -> LaplaceNoise:
    return LaplaceNoise(cfg.noise, seed=seed_for(cfg.seed, "train_noise", member=member(cfg)))


def eval_noise(cfg: ClientConfig) -> LaplaceNoise:
    """Noise for testing and deployment: --eval-noise if given, else the training noise."""
    scale = cfg.noise if cfg.eval_noise is None else cfg.eval_noise
    return LaplaceNoise(scale, seed=seed_for(cfg.seed, "eval_noise", member=member(cfg)))


def validation_noise(cfg: ClientConfig, *, scale: float | None = None) -> LaplaceNoise:
    """Noise for validation, on its own stream: `scale`, by default the training noise's."""
    seed = seed_for(cfg.seed, "val_noise", member=member(cfg))
    return LaplaceNoise(cfg.noise if scale is None else scale, seed=seed)


def holder_guard(cfg: ClientConfig, num_classes: int) -> SplitGuard | None:
    """The guard of `cfg` (None without one), fresh, on its own seeded stream."""
    if cfg.guard is None:
        return None
    settings, seed = cfg.guard_settings, seed_for(cfg.seed, "guard")
    return GUARDS[cfg.guard](settings, seed=seed, num_classes=num_classes)


def body_manifest(cfg: ClientConfig, run: str, epoch: int, val_accuracy: float) -> dict[str, Any]:
    """The manifest of a saved part 1: its run, settings and validation accuracy."""
    return {
        "part": "body",
        "run": run,
        "dataset": cfg.dataset,
        "noise": cfg.noise,
        "nopeek": cfg.nopeek,
        "epoch": epoch,
        "val_accuracy": val_accuracy,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "seeding": SEEDING,
        "dp": asdict(cfg.dp) if cfg.dp is not None else None,
        "server": cfg.server,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def resume_settings(cfg: ClientConfig) -> dict[str, Any]:
    """What a resumption must repeat. The guard's settings make its decisions, so they are
    here; what it does at the alarm (`guard_action`) is not: a run stopped by its alarm may go
    on with a warning instead."""
    settings = {name: getattr(cfg, name) for name in _RESUME_SETTINGS}
    guard = None
    if cfg.guard is not None:
        guard = {"name": cfg.guard, **asdict(cfg.guard_settings)}
        del guard["action"]
    dp = asdict(cfg.dp) if cfg.dp is not None else None
    return {**settings, "guard": guard, "dp": dp}


class TrainingRun:
    """Trains `trainer` for `cfg.epochs` epochs, keeping the best-validation epoch.

    Args:
        cfg: the run's settings.
        splits: the data set.
        trainer: part 1 and its session with the server.
        state_path: where this side's resume state is saved at every save point.
    """

    def __init__(
        self, *, cfg: ClientConfig, splits: DatasetSplits, trainer: SplitTrainer, state_path: Path
    ) -> None:
        self.cfg = cfg
        self.splits = splits
        self.trainer = trainer
        self.state_path = state_path
        self.progress = Progress()
        self.val_noise = validation_noise(cfg)

    def load(self, state: HolderState) -> None:
        """Continues from a saved state (the server continues from the same step)."""
        self.trainer.body.load_state_dict(state.body)
        self.trainer.optimizer.load_state_dict(state.optimizer)
        self.trainer.noise.set_state(state.noise)
        self.val_noise.set_state(state.val_noise)
        self.progress = state.progress
        guard = self.trainer.guard
        if guard is not None:
            if state.guard is None:
                raise ResumeError(f"the state of run {self.trainer.run!r} has no guard state")
            try:
                guard.load_state_dict(state.guard)
            except ValueError as error:
                raise ResumeError(str(error)) from None
        dp = self.trainer.dp
        if dp is not None:
            if state.dp is None:
                raise ResumeError(f"the state of run {self.trainer.run!r} has no DP accountant")
            try:
                dp.accountant.load_state_dict(state.dp)
            except (ValueError, KeyError, TypeError) as error:
                raise ResumeError(f"the saved DP accountant: {error}") from None
        self.trainer.link.position = self.trainer.link.saved = state.step
        logger.info("continuing run %s after %s", self.trainer.run, state.step)

    def train(self) -> tuple[Best, EvalScore, LaplaceNoise]:
        """Trains to the end, then loads the best epoch on both sides and tests it.

        Returns the best epoch, its test result and the evaluation noise after the test (a
        deployment continues its stream of draws).

        Raises:
            CheckpointError: the server went back to a step this side has no save of.
        """
        while True:
            try:
                self._train_epochs()
                best = self.progress.best
                assert best is not None
                self._load_best(best)
                noise = eval_noise(self.cfg)
                return best, self.trainer.evaluate("test", self.splits.test, noise=noise), noise
            except RolledBack as back:
                self._roll_back(back.step)

    def _train_epochs(self) -> None:
        cfg, progress = self.cfg, self.progress
        while progress.epoch <= cfg.epochs:
            self.trainer.train_epoch(
                self.splits.train,
                progress,
                max_steps=cfg.max_steps,
                save_every=cfg.save_every,
                on_save=self._save,
                before_step=self._before_step,
                on_alarm=self._alarm,
                show_progress=cfg.progress,
            )
            self._after_steps()
            val = self.trainer.evaluate(
                "val", self.splits.val, noise=self.val_noise, tag=progress.epoch
            )
            dp = self.trainer.dp
            record = progress.next_epoch(
                val.accuracy, dp_epsilon=dp.epsilon() if dp is not None else None
            )
            logger.info(
                "epoch %d: train loss %.4f acc %.2f%%, val acc %.2f%% (%.1f s)",
                record.epoch,
                record.train_loss,
                record.train_accuracy,
                record.val_accuracy,
                record.seconds,
            )
            self._keep(record)

    def _before_step(self, step: StepId) -> None:
        """Runs before every training step (a group member waits for its turn here)."""

    def _after_steps(self) -> None:
        """Runs after an epoch's last step, before its validation."""

    def _alarm(self, step: StepId) -> None:
        """The guard's first score below its threshold: warn, or save this side and stop.

        Raises:
            exits.Alarm: with ``--guard-action stop`` (exit 4); the state saved here, and the
                server's snapshot of the same step when the session closes, let ``--resume``
                go on past the alarm.
        """
        guard = self.trainer.guard
        assert guard is not None and guard.detected_at_step is not None
        score = guard.scores[-1][1]
        message = (
            f"GUARD ALARM: {self.cfg.guard} scored {score:.3f} < {guard.settings.threshold:g} "
            f"at training step {guard.detected_at_step} (epoch {step.epoch}, batch {step.batch}): "
            "the server's gradients do not follow the labels (a hijacking server?)"
        )
        if guard.settings.action == "warn":
            logger.warning("%s; training goes on", message)
            return
        self._save(step)
        raise exits.Alarm(
            f"{message}; stopped, the state saved to {self.state_path} (--resume goes on past "
            "the alarm)"
        )

    def _keep(self, record: EpochRecord) -> None:
        """Keeps the best-validation epoch: part 1 here, part 2 on the server."""
        progress = self.progress
        if progress.best is None or record.val_accuracy > progress.best.val_accuracy:
            progress.best = self._save_best(record, previous=progress.best)

    def _save(self, step: StepId) -> None:
        """Saves this side at a save point (the server has saved the same step)."""
        state = HolderState(
            step=step,
            progress=self.progress,
            body=self.trainer.body.state_dict(),
            optimizer=self.trainer.optimizer.state_dict(),
            noise=self.trainer.noise.get_state(),
            val_noise=self.val_noise.get_state(),
            guard=self.trainer.guard.state_dict() if self.trainer.guard is not None else None,
            dp=self.trainer.dp.accountant.state_dict() if self.trainer.dp is not None else None,
        )
        save_state(self.state_path, state, settings=resume_settings(self.cfg), run=self.trainer.run)
        self.trainer.link.saved = step

    def _roll_back(self, step: StepId | None) -> None:
        """Reloads this side's state at `step` (None: the initial state)."""
        logger.warning(
            "the server continues from %s: this side goes back there too", step or "the start"
        )
        if step is None:
            self._reset()
            return
        state = load_state(
            self.state_path, settings=resume_settings(self.cfg), run=self.trainer.run
        )
        if state.step != step:
            raise CheckpointError(
                f"the server continues from {step} but this side saved {state.step} last"
            )
        self.load(state)

    def _reset(self) -> None:
        cfg, trainer = self.cfg, self.trainer
        trainer.body.load_state_dict(build_body(seed_for(cfg.seed, "body")).state_dict())
        trainer.optimizer = make_optimizer(trainer.body, cfg.lr)
        trainer.noise = training_noise(cfg)
        if trainer.guard is not None:
            trainer.guard = holder_guard(cfg, trainer.guard.num_classes)
        if trainer.dp is not None:
            trainer.dp.reset()
        self.val_noise = validation_noise(cfg)
        self.progress = Progress()
        trainer.link.position = trainer.link.saved = None

    def _save_best(self, record: EpochRecord, *, previous: Best | None) -> Best:
        """Writes part 1 here and asks the server to write part 2; drops the previous best."""
        cfg = self.cfg
        stem = classifier_stem(
            dataset=cfg.dataset,
            noise=cfg.noise,
            nopeek=cfg.nopeek,
            epoch=record.epoch,
            seed=cfg.seed,
            dp=cfg.dp.tag if cfg.dp is not None else "",
        )
        path = cfg.model_dir / "classifiers" / f"{stem}.ckpt"
        manifest = body_manifest(cfg, self.trainer.run, record.epoch, record.val_accuracy)
        save_checkpoint(path, self.trainer.body.state_dict(), manifest)
        head = self.trainer.link.checkpoint(stem, replace_previous=True)
        if previous is not None and previous.checkpoint != str(path):
            remove_checkpoint(Path(previous.checkpoint))
        return Best(
            epoch=record.epoch,
            val_accuracy=record.val_accuracy,
            train_accuracy=record.train_accuracy,
            checkpoint=str(path),
            head_checkpoint=head,
        )

    def _load_best(self, best: Best) -> None:
        weights: dict[str, torch.Tensor] = load_checkpoint(Path(best.checkpoint))[0]
        self.trainer.body.load_state_dict(weights)
        self.trainer.link.restore(Path(best.checkpoint).name.removesuffix(".ckpt"))
