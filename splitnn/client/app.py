"""A whole data-holder run: open a session, train, keep the best epoch, test it, report."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from splitnn.client.config import ClientConfig
from splitnn.client.trainer import EpochResult, SplitTrainer
from splitnn.client.transport import ServerLink, SessionSettings
from splitnn.common.checkpoints import (
    CheckpointError,
    classifier_stem,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    setting_tag,
)
from splitnn.common.datasets import DatasetSplits, load_splits
from splitnn.common.models import build_body
from splitnn.common.noise import LaplaceNoise

logger = logging.getLogger(__name__)

# Independent random streams derived from one --seed.
HEAD_SEED_OFFSET = 1
NOISE_SEED_OFFSET = 2
EVAL_NOISE_SEED_OFFSET = 3


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers; accuracies in percent."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    seconds: float


@dataclass(frozen=True)
class RunReport:
    """What a run measured; the CLI prints it, `--json` as one object."""

    run: str
    dataset: str
    dataset_description: str
    noise: float
    nopeek: float
    eval_noise: float
    epochs: int
    batch_size: int
    seed: int
    best_epoch: int
    train_accuracy: float | None  # None when a trained model was only evaluated
    val_accuracy: float
    test_accuracy: float
    samples_per_second: float
    train_seconds: float
    checkpoint: str
    head_checkpoint: str
    deploy_accuracy: float | None = None
    history: list[EpochRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_run_name(cfg: ClientConfig) -> str:
    """E.g. ``mnist5k_05noise_00nopeek_seed0``: unique per setting, stable across restarts."""
    noise, nopeek = setting_tag(cfg.noise), setting_tag(cfg.nopeek)
    return f"{cfg.dataset}_{noise}noise_{nopeek}nopeek_seed{cfg.seed}"


def run(cfg: ClientConfig) -> RunReport:
    """Trains through the server at `cfg.server`; see `ClientConfig` for the settings.

    Raises:
        DatasetError, ServerUnreachable, ServerRefused: reported by the CLI as one line.
    """
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    trained: dict[str, torch.Tensor] | None = None
    if cfg.from_checkpoint is not None:
        trained, cfg = _load_trained(cfg, cfg.from_checkpoint)
    splits = load_splits(cfg.dataset, root=cfg.data_dir)
    logger.info("dataset: %s", splits.description)
    name = cfg.run or default_run_name(cfg)
    settings = SessionSettings(
        run=name,
        num_classes=splits.num_classes,
        lr=cfg.lr,
        seed=cfg.seed + HEAD_SEED_OFFSET,
        max_batch_size=max(cfg.batch_size, 500),
    )
    with ServerLink(cfg.server, settings, connect_timeout=cfg.connect_timeout) as link:
        trainer = SplitTrainer(
            body=build_body(cfg.seed),
            link=link,
            run=name,
            noise=LaplaceNoise(cfg.noise, seed=cfg.seed + NOISE_SEED_OFFSET),
            nopeek=cfg.nopeek,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        if trained is not None:
            trainer.body.load_state_dict(trained)
            return _evaluate_trained(cfg, splits, trainer, name)
        return _train_and_report(cfg, splits, trainer, name)


def _load_trained(cfg: ClientConfig, path: Path) -> tuple[dict[str, torch.Tensor], ClientConfig]:
    """Part 1 of a finished run, and `cfg` with that run's settings (data set, noise, ...)."""
    state, manifest = load_checkpoint(path)
    if manifest.get("part") != "body":
        raise CheckpointError(f"{path} is not a data holder's checkpoint (no body manifest)")
    settings = replace(
        cfg,
        dataset=str(manifest["dataset"]),
        noise=float(manifest["noise"]),
        nopeek=float(manifest["nopeek"]),
        seed=int(manifest["seed"]),
        epochs=int(manifest["epoch"]),
        run=cfg.run or f"{path.name.removesuffix('.ckpt')}_eval",
    )
    return state, settings


def _evaluate_trained(
    cfg: ClientConfig, splits: DatasetSplits, trainer: SplitTrainer, name: str
) -> RunReport:
    """Serves a trained model again: the server loads the matching head; nothing is trained.

    With ``--eval-noise`` this is the study's post-training noise: the same model deployed with
    another noise scale than it was trained with.
    """
    assert cfg.from_checkpoint is not None
    stem = cfg.from_checkpoint.name.removesuffix(".ckpt")
    trainer.link.restore(stem)
    val = trainer.evaluate("val", splits.val, noise=_eval_noise(cfg))
    return _test_and_report(
        cfg, splits, trainer, name,
        best_epoch=cfg.epochs, train_accuracy=None, val_accuracy=val.accuracy,
        samples_per_second=0.0, train_seconds=0.0,
        checkpoint=str(cfg.from_checkpoint), head_checkpoint=f"{stem}.head.ckpt",
    )  # fmt: skip


def _eval_noise(cfg: ClientConfig) -> LaplaceNoise:
    """Noise for testing and deployment: --eval-noise if given, else the training noise."""
    scale = cfg.noise if cfg.eval_noise is None else cfg.eval_noise
    return LaplaceNoise(scale, seed=cfg.seed + EVAL_NOISE_SEED_OFFSET)


def _test_and_report(
    cfg: ClientConfig, splits: DatasetSplits, trainer: SplitTrainer, name: str, **measured: Any
) -> RunReport:
    """Tests the model as it now stands (and deploys it if asked); the report of the run."""
    noise = _eval_noise(cfg)
    test = trainer.evaluate("test", splits.test, noise=noise)
    deploy = trainer.evaluate("attack", splits.attack, noise=noise) if cfg.deploy else None
    return RunReport(
        run=name, dataset=splits.name, dataset_description=splits.description,
        noise=cfg.noise, nopeek=cfg.nopeek, eval_noise=noise.scale, epochs=cfg.epochs,
        batch_size=cfg.batch_size, seed=cfg.seed, test_accuracy=test.accuracy,
        deploy_accuracy=deploy.accuracy if deploy else None, **measured,
    )  # fmt: skip


def _train_and_report(
    cfg: ClientConfig, splits: DatasetSplits, trainer: SplitTrainer, name: str
) -> RunReport:
    val_noise = LaplaceNoise(cfg.noise, seed=cfg.seed + EVAL_NOISE_SEED_OFFSET)
    history: list[EpochRecord] = []
    samples = 0
    best: tuple[float, int, dict[str, torch.Tensor], EpochResult] | None = None
    paths: tuple[Path, str] | None = None
    for epoch in range(1, cfg.epochs + 1):
        result = trainer.train_epoch(
            epoch, splits.train, max_steps=cfg.max_steps, progress=cfg.progress
        )
        val = trainer.evaluate("val", splits.val, noise=val_noise, tag=epoch)
        samples += result.samples
        history.append(
            EpochRecord(epoch, result.loss, result.accuracy, val.accuracy, result.seconds)
        )
        logger.info(
            "epoch %d: train loss %.4f acc %.2f%%, val acc %.2f%% (%.1f s)",
            epoch,
            result.loss,
            result.accuracy,
            val.accuracy,
            result.seconds,
        )
        if best is None or val.accuracy > best[0]:
            state = {k: v.detach().clone() for k, v in trainer.body.state_dict().items()}
            best = (val.accuracy, epoch, state, result)
            paths = _save_best(cfg, trainer, epoch, val.accuracy, previous=paths)
    assert best is not None and paths is not None
    val_accuracy, best_epoch, best_state, best_result = best
    trainer.body.load_state_dict(best_state)
    trainer.link.restore(paths[0].name.removesuffix(".ckpt"))
    seconds = sum(h.seconds for h in history)
    return _test_and_report(
        cfg, splits, trainer, name,
        best_epoch=best_epoch, train_accuracy=best_result.accuracy, val_accuracy=val_accuracy,
        samples_per_second=samples / seconds if seconds > 0 else 0.0, train_seconds=seconds,
        checkpoint=str(paths[0]), head_checkpoint=paths[1], history=history,
    )  # fmt: skip


def _save_best(
    cfg: ClientConfig,
    trainer: SplitTrainer,
    epoch: int,
    val_accuracy: float,
    *,
    previous: tuple[Path, str] | None,
) -> tuple[Path, str]:
    """Writes part 1 here and asks the server to write part 2; drops the previous best."""
    stem = classifier_stem(
        dataset=cfg.dataset, noise=cfg.noise, nopeek=cfg.nopeek, epoch=epoch, seed=cfg.seed
    )
    path = cfg.model_dir / "classifiers" / f"{stem}.ckpt"
    manifest = {
        "part": "body",
        "dataset": cfg.dataset,
        "noise": cfg.noise,
        "nopeek": cfg.nopeek,
        "epoch": epoch,
        "val_accuracy": val_accuracy,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "noise_seed": cfg.seed + NOISE_SEED_OFFSET,
        "server": cfg.server,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_checkpoint(path, trainer.body.state_dict(), manifest)
    head = trainer.link.checkpoint(stem, replace_previous=True)
    if previous is not None and previous[0] != path:
        remove_checkpoint(previous[0])
    return path, head
