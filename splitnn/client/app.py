"""A whole data-holder run: open a session, train (or resume), keep the best epoch, test, report."""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from splitnn.client.config import ClientConfig
from splitnn.client.dp import DPSGD, DPError, batch_bound, noise_multiplier_for, sample_rate
from splitnn.client.group import GroupRun, share_of, shares_body
from splitnn.client.resume import HolderState, ResumeError, load_state, resume_path
from splitnn.client.split_trainer import EVAL_BATCH_SIZE, SplitTrainer
from splitnn.client.training_run import (
    TrainingRun,
    eval_noise,
    holder_guard,
    member,
    resume_settings,
    training_noise,
    validation_noise,
)
from splitnn.client.transport import GroupSettings, ServerLink, SessionSettings
from splitnn.common.checkpoints import (
    CheckpointError,
    load_checkpoint,
    manifest_path,
    remove_checkpoint,
    setting_tag,
)
from splitnn.common.datasets import DatasetSplits, load_splits
from splitnn.common.devices import cpu_threads, use_device
from splitnn.common.models import build_body
from splitnn.common.noise import LaplaceNoise
from splitnn.common.reports import GroupReport, GuardScore, RunReport
from splitnn.common.seeds import seed_for

logger = logging.getLogger(__name__)


def default_run_name(cfg: ClientConfig) -> str:
    """E.g. ``mnist5k_05noise_00nopeek_seed0``: unique per setting, stable across restarts.

    A group member's is prefixed with the group and its index, e.g. ``clinics_h2_mnist5k_...``.
    """
    noise, nopeek = setting_tag(cfg.noise), setting_tag(cfg.nopeek)
    dp = f"_{cfg.dp.tag}" if cfg.dp is not None else ""
    name = f"{cfg.dataset}_{noise}noise_{nopeek}nopeek{dp}_seed{cfg.seed}"
    return name if cfg.group is None else f"{cfg.group}_h{cfg.holder}_{name}"


def run(cfg: ClientConfig) -> RunReport:
    """Trains through the server at `cfg.server`; see `ClientConfig` for the settings.

    Raises:
        DatasetError, ServerUnreachable, ServerRefused, ResumeError, CheckpointError: reported
        by the CLI as one line.
    """
    use_device(cfg.device)
    torch.set_num_threads(cfg.threads or cpu_threads())
    trained: dict[str, torch.Tensor] | None = None
    trained_run = ""
    if cfg.from_checkpoint is not None:
        trained, cfg, trained_run = _load_trained(cfg, cfg.from_checkpoint)
    splits = load_splits(cfg.dataset, root=cfg.data_dir)
    logger.info("dataset: %s", splits.description)
    group: GroupSettings | None = None
    shares: dict[str, Any] = {}
    if cfg.group is not None:
        splits, shares = share_of(cfg, splits)
        steps = math.ceil(len(splits.train) / cfg.batch_size)
        group = GroupSettings(
            name=cfg.group,
            holder=cfg.holder,
            batches_per_epoch=min(steps, cfg.max_steps or steps),
            samples=len(splits.train),
            epochs=cfg.epochs,
        )
        logger.info(
            "holder %d of group %s: %d training samples (%s partition, digest %s)",
            cfg.holder,
            cfg.group,
            len(splits.train),
            shares["scheme"],
            shares["digest"][:12],
        )
    if cfg.dp is not None and (cfg.group is not None or trained is not None):
        other = "--group" if cfg.group is not None else "--from-checkpoint"
        raise DPError(f"DP-SGD trains a lone holder's part 1: not with {other}")
    name = cfg.run or default_run_name(cfg)
    state_path = resume_path(cfg.model_dir, name)
    saved = _state_to_resume(cfg, state_path, name) if trained is None else None
    settings = SessionSettings(
        run=name,
        num_classes=splits.num_classes,
        lr=cfg.lr,
        seed=seed_for(cfg.seed, "head"),
        max_batch_size=max(
            batch_bound(cfg.batch_size) if cfg.dp is not None else cfg.batch_size,
            EVAL_BATCH_SIZE,
        ),
        resume=saved is not None,
        group=group,
    )
    with ServerLink(
        cfg.server,
        settings,
        connect_timeout=cfg.connect_timeout,
        step_timeout=cfg.step_timeout,
        reconnect_timeout=cfg.reconnect_timeout,
        resume_at=saved.step if saved is not None else None,
        credentials=cfg.credentials,
        group_timeout=cfg.group_timeout,
    ) as link:
        # A group that shares part 1 starts every holder from the same weights.
        own_body = not shares_body(link.topology)
        body = build_body(seed_for(cfg.seed, "body", member=member(cfg) if own_body else None))
        trainer = SplitTrainer(
            body=body,
            link=link,
            run=name,
            noise=training_noise(cfg),
            nopeek=cfg.nopeek,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=seed_for(cfg.seed, "batch_order", member=member(cfg)),
            send_indices=cfg.send_indices,
            guard=holder_guard(cfg, splits.num_classes),
            dp=dp_sgd(cfg, body, len(splits.train)) if trained is None else None,
        )
        if trained is not None:
            trainer.body.load_state_dict(trained)
            report = _evaluate_trained(cfg, splits, trainer, name, trained_run)
        elif group is not None:
            member_run = GroupRun(
                cfg=cfg, splits=splits, trainer=trainer, state_path=state_path, shares=shares
            )
            if saved is not None:
                member_run.load(saved)
            report = _train_and_report(cfg, splits, member_run, name, saved)
        else:
            training = TrainingRun(cfg=cfg, splits=splits, trainer=trainer, state_path=state_path)
            if saved is not None:
                training.load(saved)
            report = _train_and_report(cfg, splits, training, name, saved)
        link.close(finished=True)
    remove_checkpoint(state_path)
    return report


def dp_sgd(cfg: ClientConfig, body: torch.nn.Module, samples: int) -> DPSGD | None:
    """DP-SGD on `body` for a run over `samples` training samples (None without --dp-*): the
    sampling rate q = B / N, and the noise multiplier for the run's steps (epochs x ceil(N / B),
    or --max-steps per epoch) unless it is given."""
    if cfg.dp is None:
        return None
    rate = sample_rate(cfg.batch_size, samples)
    per_epoch = math.ceil(samples / cfg.batch_size)
    steps = cfg.epochs * min(per_epoch, cfg.max_steps or per_epoch)
    sigma = noise_multiplier_for(cfg.dp, sample_rate=rate, steps=steps)
    logger.info(
        "DP-SGD: sigma %.4f, C %g, q %.5f over %d steps, delta %g",
        sigma,
        cfg.dp.max_grad_norm,
        rate,
        steps,
        cfg.dp.delta,
    )
    return DPSGD(
        body=body,
        noise_multiplier=sigma,
        max_grad_norm=cfg.dp.max_grad_norm,
        expected_batch_size=cfg.batch_size,
        noise_seed=seed_for(cfg.seed, "dp_noise"),
        delta=cfg.dp.delta,
        sample_rate=rate,
    )


def _state_to_resume(cfg: ClientConfig, path: Path, run: str) -> HolderState | None:
    """The saved state `--resume` continues; refuses to overwrite one silently.

    Raises:
        ResumeError: --resume without a state (or with other settings), or a state left by an
            interrupted run without --resume or --restart.
    """
    if cfg.resume:
        return load_state(path, settings=resume_settings(cfg), run=run)
    if path.exists() and not cfg.restart:
        try:
            epoch, batch = json.loads(manifest_path(path).read_text())["step"]
            where = f" after epoch {epoch} batch {batch}"
        except (OSError, ValueError, KeyError):
            where = ""
        raise ResumeError(
            f"run {run!r} was interrupted{where} (its state: {path}): add --resume to "
            "continue it, or --restart to start it over"
        )
    remove_checkpoint(path)
    return None


def _load_trained(
    cfg: ClientConfig, path: Path
) -> tuple[dict[str, torch.Tensor], ClientConfig, str]:
    """Part 1 of a finished run, `cfg` with that run's settings (data set, noise, ...), and the
    name of the run that trained it (whose head the server holds)."""
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
    return state, settings, str(manifest.get("run") or default_run_name(settings))


def _evaluate_trained(
    cfg: ClientConfig, splits: DatasetSplits, trainer: SplitTrainer, name: str, trained_run: str
) -> RunReport:
    """Serves a trained model again: the server loads the matching head; nothing is trained.

    With ``--eval-noise`` this is the study's post-training noise: the same model deployed with
    another noise scale than it was trained with.
    """
    assert cfg.from_checkpoint is not None
    stem = cfg.from_checkpoint.name.removesuffix(".ckpt")
    trainer.link.restore(stem, run=trained_run)
    noise = eval_noise(cfg)
    val = trainer.evaluate("val", splits.val, noise=validation_noise(cfg, scale=noise.scale))
    test = trainer.evaluate("test", splits.test, noise=noise)
    return _report(
        cfg,
        splits,
        trainer,
        name,
        noise,
        test_accuracy=test.accuracy,
        test_samples=test.samples,
        best_epoch=cfg.epochs,
        train_accuracy=None,
        val_accuracy=val.accuracy,
        samples_per_second=0.0,
        train_seconds=0.0,
        checkpoint=str(cfg.from_checkpoint),
        head_checkpoint=f"{stem}.head.ckpt",
    )


def _train_and_report(
    cfg: ClientConfig,
    splits: DatasetSplits,
    training: TrainingRun,
    name: str,
    saved: HolderState | None,
) -> RunReport:
    best, test, noise = training.train()
    history = training.progress.history
    seconds = sum(h.seconds for h in history)
    samples = sum(h.samples for h in history)
    return _report(
        cfg,
        splits,
        training.trainer,
        name,
        noise,
        test_accuracy=test.accuracy,
        test_samples=test.samples,
        best_epoch=best.epoch,
        train_accuracy=best.train_accuracy,
        val_accuracy=best.val_accuracy,
        samples_per_second=samples / seconds if seconds > 0 else 0.0,
        train_seconds=seconds,
        checkpoint=best.checkpoint,
        head_checkpoint=best.head_checkpoint,
        history=history,
        resumed_from=str(saved.step) if saved is not None else None,
        group=_group_report(cfg, training),
    )


def _group_report(cfg: ClientConfig, training: TrainingRun) -> GroupReport | None:
    if not isinstance(training, GroupRun):
        return None
    assert cfg.group is not None
    return GroupReport(
        name=cfg.group,
        topology=training.topology.name,
        holders=cfg.holders,
        holder=cfg.holder,
        partition=cfg.partition,
        alpha=cfg.alpha,
        train_samples=len(training.splits.train),
        partition_digest=training.shares["digest"],
    )


def _report(
    cfg: ClientConfig,
    splits: DatasetSplits,
    trainer: SplitTrainer,
    name: str,
    noise: LaplaceNoise,
    **measured: Any,
) -> RunReport:
    """The run's report; with --deploy, first puts the attack-evaluation images through it.

    `noise` is the evaluation noise that the test used, whose draws the deployment continues.
    """
    deploy = trainer.evaluate("attack", splits.attack, noise=noise) if cfg.deploy else None
    steps_ms = [1000 * s for s in trainer.step_seconds]
    guard, dp = trainer.guard, trainer.dp
    if dp is not None:
        assert cfg.dp is not None
        measured |= {
            "dp_epsilon": dp.epsilon(),
            "dp_delta": cfg.dp.delta,
            "dp_noise_multiplier": dp.noise_multiplier,
            "dp_max_grad_norm": dp.max_grad_norm,
            "dp_sample_rate": dp.sample_rate,
        }
    return RunReport(
        run=name,
        dataset=splits.name,
        dataset_description=splits.description,
        noise=cfg.noise,
        nopeek=cfg.nopeek,
        eval_noise=noise.scale,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        deploy_accuracy=deploy.accuracy if deploy else None,
        step_ms_p50=statistics.median(steps_ms) if steps_ms else None,
        step_ms_p95=_percentile(steps_ms, 0.95),
        guard=cfg.guard,
        guard_scores=[GuardScore(step, score) for step, score in guard.scores] if guard else [],
        guard_detected_at_step=guard.detected_at_step if guard is not None else None,
        **measured,
    )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
