"""The attack side of the grid: one `splitnn-attack run` process per attacker.

Every attacker reads the victim's deployment tensors from the wire log its classifier's server
wrote (collusion mode). Families:

- ``grid``: the honest attacker (trained and scored on what crossed the wire) for every
  classifier of every training group that exists (the ``dp`` group's too, when trained).
- ``posttrain``: the plain model deployed with noise b added after training (b in 0.1 0.5 1.0).
- ``volume``: the plain model's attacker with a fraction of the auxiliary data.
- ``emnist``: the plain model's attacker trained on EMNIST letters (when they are on disk).
- ``clean``: the reference's shortcut (noise-free tensors) on every model of the ``noise``
  group, to set next to the honest attacker of the same model.

Every family runs on every seed's classifier, and the attacker of classifier seed k has seed k
(its decoder's initial weights, its batch order and its validation classifier): seeds are
repeated runs of the whole attack, not of the victim alone. A classifier of seed k > 0 is named
``..._seed<k>`` and so is every attacker of it (checkpoint, record, figure, redeployment), so
seeds never share a file. The tables average each attack over its seeds (`attack_report`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnn.common.checkpoints import attacker_stem, setting_tag
from splitnn.common.commands import AttackCommand, ClientCommand, run_attacker, run_client
from splitnn.common.datasets import locally_available
from splitnn.common.files import write_json_atomic
from splitnn.common.processes import (
    ProcessError,
    ServerProcess,
    log_tail,
)
from splitnn.common.seeds import SEEDING
from splitnn.experiments import wirelogs
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import (
    AUX_FRACTIONS,
    GROUPS,
    POSTTRAIN_ATTACK_NOISE,
    TrainSpec,
    grid_specs,
)
from splitnn.experiments.records import (
    AttackRecord,
    ClassifierRecord,
    attack_record_path,
    classifier_record,
    load_attack_record,
    now,
)
from splitnn.experiments.runner import Outcome, prepare_validators, run_jobs

logger = logging.getLogger(__name__)

EMNIST = "emnist-letters"


@dataclass(frozen=True)
class AttackSpec:
    """One attacker of one classifier."""

    classifier: TrainSpec
    family: str
    set_noise: float | None = None
    aux: str | None = None
    aux_fraction: float = 1.0
    protocol: str = "noisy"
    decoder: str = "deep"

    @property
    def seed(self) -> int:
        """The attacker's seed: its classifier's."""
        return self.classifier.seed

    @property
    def key(self) -> str:
        """Unique per attacker of a data set: the attacker's name (`attacker_stem`) with the
        classifier's run name in place of its checkpoint, e.g.
        ``mnist_attacker_modelmnist5k_00noise_00nopeek_aux01_deep``."""
        return attacker_stem(
            classifier=self.classifier.name,
            aux=self.aux or self.classifier.dataset,
            set_noise=self.set_noise,
            aux_fraction=self.aux_fraction,
            decoder=self.decoder,
            protocol=self.protocol,
        )


def attack_specs(classifiers: Sequence[TrainSpec], cfg: ExperimentConfig) -> list[AttackSpec]:
    """The attackers of the given (trained) classifiers, every seed's; see the module
    docstring."""
    decoder = cfg.decoder
    specs = [AttackSpec(c, "grid", decoder=decoder) for c in classifiers]
    plain = GROUPS["plain"].settings[0]
    noise_settings = set(GROUPS["noise"].settings)
    for c in classifiers:
        if c.setting == plain:
            specs += [
                AttackSpec(c, "posttrain", set_noise=b, decoder=decoder)
                for b in POSTTRAIN_ATTACK_NOISE
            ]
            specs += [
                AttackSpec(c, "volume", aux_fraction=f, decoder=decoder)
                for f in AUX_FRACTIONS
                if f != 1.0
            ]
            if locally_available(EMNIST, cfg.data_dir):
                specs.append(AttackSpec(c, "emnist", aux=EMNIST, decoder=decoder))
            else:
                logger.info("no %s in %s: its attacker is skipped", EMNIST, cfg.data_dir)
        if cfg.clean_comparison and c.setting in noise_settings:
            specs.append(AttackSpec(c, "clean", protocol="clean", decoder=decoder))
    return specs


def trained_classifiers(cfg: ExperimentConfig) -> dict[TrainSpec, ClassifierRecord]:
    """The grid's classifiers that are done (the extra groups' too), with their records."""
    specs = grid_specs(
        dataset=cfg.dataset,
        seeds=cfg.seeds,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        extra=True,
    )
    found = {s: classifier_record(cfg, s) for s in specs}
    return {s: r for s, r in found.items() if r is not None}


def attack_settings(
    spec: AttackSpec, record: ClassifierRecord, cfg: ExperimentConfig
) -> dict[str, Any]:
    """What makes two attacks the same; includes when its classifier finished training."""
    return {
        "classifier": record.report.checkpoint,
        "classifier_finished_at": record.finished_at,
        "wirelog": record.wirelog,
        "set_noise": spec.set_noise,
        "aux": spec.aux,
        "aux_fraction": spec.aux_fraction,
        "protocol": spec.protocol,
        "decoder": spec.decoder,
        "epochs": cfg.attack_epochs,
        "seed": spec.seed,
        "seeding": SEEDING,
    }


def figure_path(spec: AttackSpec, cfg: ExperimentConfig) -> Path:
    return cfg.figures_dir / "attacks" / f"{spec.key}.png"


def deployment_log(spec: AttackSpec, record: ClassifierRecord, cfg: ExperimentConfig) -> Path:
    """The wire log to attack: the classifier's own, or for a post-training-noise attacker a
    redeployment's (see `redeploy_with_noise`), made here when the attacker runs."""
    source = Path(record.wirelog)
    if spec.set_noise is None:
        return source
    target = source.with_name(f"{spec.classifier.name}_deploy{setting_tag(spec.set_noise)}.wirelog")
    return redeploy_with_noise(record, target, scale=spec.set_noise, cfg=cfg)


def redeploy_with_noise(
    record: ClassifierRecord, target: Path, *, scale: float, cfg: ExperimentConfig
) -> Path:
    """Deploys a trained classifier again with noise `scale` through a collusion-mode server
    logging to `target`; returns `target`.

    A real server and data-holder pair: the data holder serves its checkpoint with
    ``--from-checkpoint --eval-noise scale --deploy`` and the server logs what arrives.

    Raises:
        ProcessError: the server or the data holder failed (the message ends with their log).
    """
    target.unlink(missing_ok=True)
    log_path = target.with_suffix(".log")
    server_args = ["--model-dir", str(cfg.model_dir), "--tap-log", str(target), "-q"]
    with log_path.open("w") as log:
        try:
            with ServerProcess(server_args, log=log) as server:
                command = ClientCommand(
                    server=server.address,
                    from_checkpoint=Path(record.report.checkpoint),
                    eval_noise=scale,
                    model_dir=cfg.model_dir,
                    data_dir=cfg.data_dir,
                    deploy=True,
                    send_indices=True,
                    quiet=True,
                )
                run_client(command, log=log)
        except ProcessError as error:
            log.flush()
            raise ProcessError(f"{error}; {log_path} ends:\n{log_tail(log_path)}") from None
    wirelogs.compact(target)
    return target


def attack_command(
    spec: AttackSpec, record: ClassifierRecord, cfg: ExperimentConfig, *, log: Path
) -> AttackCommand:
    """The `splitnn-attack run` command of one attacker, attacking wire log `log`."""
    return AttackCommand(
        classifier=Path(record.report.checkpoint),
        from_log=log,
        aux=spec.aux,
        aux_fraction=spec.aux_fraction if spec.aux_fraction != 1.0 else None,
        set_noise=spec.set_noise,
        decoder=spec.decoder,
        protocol=spec.protocol,
        epochs=cfg.attack_epochs,
        seed=spec.seed,
        model_dir=cfg.model_dir,
        data_dir=cfg.data_dir,
        figure=figure_path(spec, cfg),
        quiet=True,
    )


def attack_one(spec: AttackSpec, record: ClassifierRecord, cfg: ExperimentConfig) -> AttackRecord:
    """Runs one attacker process (after a redeployment, for post-training noise); writes and
    returns its record.

    Raises:
        ProcessError: the attacker or the redeployment failed (the message ends with its log).
    """
    path = attack_record_path(cfg.runs_dir, spec.classifier.dataset, spec.key)
    log_path = path.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    threads = {"OMP_NUM_THREADS": str(cfg.threads_per_job())}
    command = attack_command(spec, record, cfg, log=deployment_log(spec, record, cfg))
    with log_path.open("w") as log:
        try:
            report = run_attacker(command, log=log, env=threads)
        except ProcessError as error:
            log.flush()
            raise ProcessError(f"{error}; {log_path} ends:\n{log_tail(log_path)}") from None
    result = AttackRecord(
        family=spec.family,
        model=spec.classifier.model,
        classifier_seed=spec.classifier.seed,
        noise=spec.classifier.setting.noise,
        nopeek=spec.classifier.setting.nopeek,
        settings=attack_settings(spec, record, cfg),
        report=report,
        wall_seconds=time.monotonic() - started,
        finished_at=now(),
        dp_epsilon=spec.classifier.setting.dp_epsilon,
    )
    write_json_atomic(path, result.to_json())
    return result


def run_attacks(cfg: ExperimentConfig) -> list[Outcome[AttackSpec, AttackRecord]]:
    """Runs every attacker of the trained classifiers that is not done yet."""
    classifiers = trained_classifiers(cfg)
    if not classifiers:
        logger.warning(
            "no classifiers of %s trained with these settings (--epochs, --max-steps, --lr) "
            "to attack: run a training group first",
            cfg.dataset,
        )
        return []
    specs = attack_specs(list(classifiers), cfg)

    def done(spec: AttackSpec) -> AttackRecord | None:
        settings = attack_settings(spec, classifiers[spec.classifier], cfg)
        return load_attack_record(cfg.runs_dir, cfg.dataset, spec.key, settings=settings)

    if cfg.jobs > 1:
        to_run = specs if cfg.force else [s for s in specs if done(s) is None]
        prepare_validators(cfg, {s.seed for s in to_run})
    return run_jobs(
        specs,
        work=lambda spec: attack_one(spec, classifiers[spec.classifier], cfg),
        done=done,
        label=lambda spec: spec.key,
        cfg=cfg,
        desc="attacks",
    )


def attack_records(cfg: ExperimentConfig) -> list[AttackRecord]:
    """The records of every attacker that is done (every seed's), for the tables and figures."""
    classifiers = trained_classifiers(cfg)
    out = []
    for spec in attack_specs(list(classifiers), cfg):
        settings = attack_settings(spec, classifiers[spec.classifier], cfg)
        record = load_attack_record(cfg.runs_dir, cfg.dataset, spec.key, settings=settings)
        if record is not None:
            out.append(record)
    return out
