"""A data holder's run as one member of a training group (see `splitnn/server/groups.py`).

The holder trains on its share of the training set (`partition`), waits for its turn before
every step (`Sync TURN`, which may hand it part 1 to continue from), hands in part 1 after each
epoch in round-robin and splitfed, and once the whole group has finished (`Sync FINISHED`) takes
the final part 1, saves it, and tests it. A group run keeps its final epoch: there is no best
epoch to go back to, since the others trained on after it.

The per-epoch validation numbers are read while the other holders train on, so they depend on
timing; the parameters, the final validation and the test do not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from splitnn.client.config import ClientConfig
from splitnn.client.progress import Best, Progress
from splitnn.client.resume import HolderState, save_state
from splitnn.client.trainer import EvalResult, SplitTrainer
from splitnn.client.training import eval_noise, resume_settings, validation_noise
from splitnn.common.checkpoints import CheckpointError, classifier_stem, save_checkpoint
from splitnn.common.codec import CodecError, StepId
from splitnn.common.datasets import DatasetSplits
from splitnn.common.partitions import partition, subset_for
from splitnn.common.seeds import SEEDING
from splitnn.common.weights import from_blob, to_blob
from splitnn.proto import splitnn_pb2 as pb

logger = logging.getLogger(__name__)

SHARED_BODY_TOPOLOGIES = ("round-robin", "splitfed")


def share_of(cfg: ClientConfig, splits: DatasetSplits) -> tuple[DatasetSplits, dict[str, Any]]:
    """`splits` with this holder's share of the training set, and the partition's manifest
    (scheme, K, alpha, seed, every holder's size and label counts, and a digest).

    Every holder of a group computes the same partition from the same --seed, --holders,
    --partition and --alpha (a simulation of K holders from one data set).
    """
    shares = partition(
        splits.train.labels,
        holders=cfg.holders,
        scheme=cfg.partition,
        alpha=0.5 if cfg.alpha is None else cfg.alpha,
        seed=cfg.seed,
    )
    manifest = shares.to_manifest(splits.train.labels, splits.num_classes)
    return replace(splits, train=subset_for(splits.train, shares, cfg.holder)), manifest


def group_stem(cfg: ClientConfig, epoch: int) -> str:
    """The group member's checkpoint name, e.g. ``g_h1_mnist5k_05noise_00nopeek_epoch=10``."""
    base = classifier_stem(
        dataset=cfg.dataset, noise=cfg.noise, nopeek=cfg.nopeek, epoch=epoch, seed=cfg.seed
    )
    return f"{cfg.group}_h{cfg.holder}_{base}"


class GroupRun:
    """Trains `trainer` as holder `cfg.holder` of group `cfg.group` for `cfg.epochs` epochs.

    Args:
        cfg: the run's settings.
        splits: the data set, its training split already this holder's share.
        trainer: part 1 and its session with the server (joined to the group).
        state_path: where this side's resume state is saved at every save point.
        shares: the partition's manifest (see `share_of`), recorded with part 1.
    """

    def __init__(
        self,
        *,
        cfg: ClientConfig,
        splits: DatasetSplits,
        trainer: SplitTrainer,
        state_path: Path,
        shares: dict[str, Any],
    ) -> None:
        self.cfg = cfg
        self.shares = shares
        self.splits = splits
        self.trainer = trainer
        self.state_path = state_path
        self.progress = Progress()
        self.val_noise = validation_noise(cfg)
        self.noise = eval_noise(cfg)
        self.topology = trainer.link.topology

    def load(self, state: HolderState) -> None:
        """Continues from a saved state; the group replays this holder's steps after it."""
        self.trainer.body.load_state_dict(state.body)
        self.trainer.optimizer.load_state_dict(state.optimizer)
        self.trainer.noise.set_state(state.noise)
        self.val_noise.set_state(state.val_noise)
        self.progress = state.progress
        self.trainer.link.position = self.trainer.link.saved = state.step
        logger.info(
            "continuing holder %d of group %s after %s", self.cfg.holder, self.cfg.group, state.step
        )

    def train(self) -> tuple[Best, EvalResult]:
        """Trains with the group to the end, then validates and tests the final model.

        Returns the final epoch (as `Best`, with the final validation) and the test result. The
        evaluation noise's stream (`self.noise`) continues into a deployment.

        Raises:
            CheckpointError: the server sent part 1 that is damaged or not part 1.
        """
        cfg, progress, link = self.cfg, self.progress, self.trainer.link
        while progress.epoch <= cfg.epochs:
            self.trainer.train_epoch(
                self.splits.train,
                progress,
                max_steps=cfg.max_steps,
                save_every=cfg.save_every,
                on_save=self._save,
                before_step=self._turn,
                show_progress=cfg.progress,
            )
            if self.topology in SHARED_BODY_TOPOLOGIES:
                link.sync(
                    pb.SyncRequest.HAND_IN,
                    epoch=progress.epoch,
                    weights=to_blob(self.trainer.body.state_dict()),
                )
            val = self.trainer.evaluate(
                "val", self.splits.val, noise=self.val_noise, tag=progress.epoch
            )
            record = progress.next_epoch(val.accuracy)
            logger.info(
                "epoch %d: train loss %.4f acc %.2f%%, val acc %.2f%% (%.1f s)",
                record.epoch,
                record.train_loss,
                record.train_accuracy,
                record.val_accuracy,
                record.seconds,
            )
        logger.info("waiting for the group to finish")
        self._take(link.sync(pb.SyncRequest.FINISHED))
        val = self.trainer.evaluate(
            "val", self.splits.val, noise=validation_noise(cfg), tag=cfg.epochs + 1
        )
        best = self._save_final(val.accuracy)
        return best, self.trainer.evaluate("test", self.splits.test, noise=self.noise)

    def _turn(self, step: StepId) -> None:
        """Waits for this holder's turn at `step`; takes the part 1 the group hands over."""
        self._take(self.trainer.link.sync(pb.SyncRequest.TURN, epoch=step.epoch, batch=step.batch))

    def _take(self, blob: pb.WeightsBlob | None) -> None:
        if blob is None:
            return
        try:
            weights = from_blob(blob)
        except CodecError as error:
            raise CheckpointError(f"part 1 from the group: {error}") from None
        self.trainer.body.load_state_dict(weights)

    def _save(self, step: StepId) -> None:
        state = HolderState(
            step=step,
            progress=self.progress,
            body=self.trainer.body.state_dict(),
            optimizer=self.trainer.optimizer.state_dict(),
            noise=self.trainer.noise.get_state(),
            val_noise=self.val_noise.get_state(),
        )
        save_state(self.state_path, state, settings=resume_settings(self.cfg), run=self.trainer.run)
        self.trainer.link.saved = step

    def _save_final(self, val_accuracy: float) -> Best:
        """Writes the final part 1 here and asks the server to write the head."""
        cfg = self.cfg
        stem = group_stem(cfg, cfg.epochs)
        path = cfg.model_dir / "classifiers" / f"{stem}.ckpt"
        last = self.progress.history[-1]
        manifest = {
            "part": "body",
            "run": self.trainer.run,
            "dataset": cfg.dataset,
            "noise": cfg.noise,
            "nopeek": cfg.nopeek,
            "epoch": cfg.epochs,
            "val_accuracy": val_accuracy,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "seeding": SEEDING,
            "server": cfg.server,
            "group": cfg.group,
            "topology": self.topology,
            "holder": cfg.holder,
            "holders": cfg.holders,
            "partition": self.shares,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        save_checkpoint(path, self.trainer.body.state_dict(), manifest)
        head = self.trainer.link.checkpoint(stem, replace_previous=True)
        return Best(
            epoch=cfg.epochs,
            val_accuracy=val_accuracy,
            train_accuracy=last.train_accuracy,
            checkpoint=str(path),
            head_checkpoint=head,
        )
