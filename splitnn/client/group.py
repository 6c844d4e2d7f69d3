"""A data holder's run as one member of a training group (see `splitnn/common/topology.py`).

The holder trains on its share of the training set (`partition`), waits for its turn before
every step (`Sync TURN`, which may hand it part 1 to continue from), hands in part 1 after each
epoch where the topology shares it, and once the whole group has finished (`Sync FINISHED`) takes
the final part 1, saves it, and tests it. A group run keeps its final epoch: there is no best
epoch to go back to, since the others trained on after it.

The per-epoch validation numbers are read while the other holders train on, so they depend on
timing; the parameters, the final validation and the test do not.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from splitnn.client.config import ClientConfig
from splitnn.client.progress import Best, EpochRecord
from splitnn.client.split_trainer import EvalScore, SplitTrainer
from splitnn.client.training_run import TrainingRun, body_manifest, eval_noise, validation_noise
from splitnn.client.transport import RolledBack
from splitnn.common.checkpoints import CheckpointError, classifier_stem, save_checkpoint
from splitnn.common.codec import CodecError, StepId, WeightsBlob
from splitnn.common.datasets import DatasetSplits
from splitnn.common.noise import LaplaceNoise
from splitnn.common.partitions import partition, subset_for
from splitnn.common.topology import topology
from splitnn.common.weights import from_blob, to_blob

logger = logging.getLogger(__name__)


def shares_body(name: str) -> bool:
    """Whether the topology the server named (empty: no group) hands part 1 around."""
    return bool(name) and topology(name).shares_body


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


class GroupRun(TrainingRun):
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
        super().__init__(cfg=cfg, splits=splits, trainer=trainer, state_path=state_path)
        self.shares = shares
        self.topology = topology(trainer.link.topology)

    def train(self) -> tuple[Best, EvalScore, LaplaceNoise]:
        """Trains with the group to the end, then validates and tests the final model.

        Returns the final epoch (as `Best`, with the final validation), the test result and the
        evaluation noise after the test (a deployment continues its stream of draws).

        Raises:
            CheckpointError: the server sent part 1 that is damaged or not part 1.
        """
        cfg, link = self.cfg, self.trainer.link
        while True:
            try:
                self._train_epochs()
                break
            except RolledBack as back:
                self._roll_back(back.step)
        logger.info("waiting for the group to finish")
        self._take(link.finish())
        val = self.trainer.evaluate(
            "val", self.splits.val, noise=validation_noise(cfg), tag=cfg.epochs + 1
        )
        best = self._save_final(val.accuracy)
        noise = eval_noise(cfg)
        return best, self.trainer.evaluate("test", self.splits.test, noise=noise), noise

    def _after_steps(self) -> None:
        """Hands in part 1 after the epoch's last step, where the topology shares it."""
        if self.topology.shares_body:
            self.trainer.link.hand_in(self.progress.epoch, to_blob(self.trainer.body.state_dict()))

    def _keep(self, record: EpochRecord) -> None:
        """Nothing: a group run keeps its final epoch."""

    def _before_step(self, step: StepId) -> None:
        """Waits for this holder's turn at `step`; takes the part 1 the group hands over."""
        self._take(self.trainer.link.turn(step.epoch, step.batch))

    def _take(self, blob: WeightsBlob | None) -> None:
        if blob is None:
            return
        try:
            weights = from_blob(blob)
        except CodecError as error:
            raise CheckpointError(f"part 1 from the group: {error}") from None
        self.trainer.body.load_state_dict(weights)

    def _save_final(self, val_accuracy: float) -> Best:
        """Writes the final part 1 here and asks the server to write the head."""
        cfg = self.cfg
        stem = group_stem(cfg, cfg.epochs)
        path = cfg.model_dir / "classifiers" / f"{stem}.ckpt"
        last = self.progress.history[-1]
        manifest = {
            **body_manifest(cfg, self.trainer.run, cfg.epochs, val_accuracy),
            "group": cfg.group,
            "topology": self.topology.name,
            "holder": cfg.holder,
            "holders": cfg.holders,
            "partition": self.shares,
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
