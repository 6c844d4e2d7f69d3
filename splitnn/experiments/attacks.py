"""The attack side of the grid: one `splitnn-attack run` process per attacker.

Every attacker reads the victim's deployment tensors from the wire log its classifier's server
wrote (collusion mode). Families:

- ``grid``: the honest attacker (trained and scored on what crossed the wire) for every
  classifier of every training group that exists.
- ``posttrain``: the plain model deployed with noise b added after training (b in 0.1 0.5 1.0).
- ``volume``: the plain model's attacker with a fraction of the auxiliary data.
- ``emnist``: the plain model's attacker trained on EMNIST letters (when they are on disk).
- ``clean``: the reference's shortcut (noise-free tensors) on every model of the ``noise``
  group, to set next to the honest attacker of the same model.

The variants run on the seed-0 classifiers only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnn.common.checkpoints import setting_tag
from splitnn.common.processes import (
    ProcessError,
    ServerProcess,
    log_tail,
    run_checked,
    run_json,
)
from splitnn.common.seeds import SEEDING
from splitnn.experiments import wirelogs
from splitnn.experiments.config import ExperimentConfig, locally_available
from splitnn.experiments.grid import (
    AUX_FRACTIONS,
    GROUPS,
    POSTTRAIN_ATTACK_NOISE,
    TrainSpec,
    grid_specs,
)
from splitnn.experiments.records import (
    attack_record_path,
    classifier_record,
    load_attack_record,
    now,
    write_json_atomic,
)
from splitnn.experiments.runner import Outcome, run_jobs

logger = logging.getLogger(__name__)

EMNIST = "emnist-letters"
ATTACK_SEED = 0


@dataclass(frozen=True)
class AttackSpec:
    """One attacker of one classifier."""

    classifier: TrainSpec
    family: str
    set_noise: float | None = None
    aux: str | None = None
    aux_fraction: float = 1.0
    protocol: str = "noisy"

    @property
    def key(self) -> str:
        """Unique per attacker of a data set, e.g. ``mnist5k_00noise_00nopeek_aux01``."""
        key = self.classifier.name
        if self.set_noise is not None:
            key += f"_set{setting_tag(self.set_noise)}noise"
        if self.aux is not None:
            key += f"_{self.aux}"
        if self.aux_fraction != 1.0:
            key += f"_aux{setting_tag(self.aux_fraction)}"
        if self.protocol != "noisy":
            key += f"_{self.protocol}"
        return key


def attack_specs(classifiers: Sequence[TrainSpec], cfg: ExperimentConfig) -> list[AttackSpec]:
    """The attackers of the given (trained) classifiers; see the module docstring."""
    specs = [AttackSpec(c, "grid") for c in classifiers]
    plain = GROUPS["plain"].settings[0]
    noise_settings = set(GROUPS["noise"].settings)
    for c in classifiers:
        if c.seed != 0:
            continue
        if c.setting == plain:
            specs += [AttackSpec(c, "posttrain", set_noise=b) for b in POSTTRAIN_ATTACK_NOISE]
            specs += [AttackSpec(c, "volume", aux_fraction=f) for f in AUX_FRACTIONS if f != 1.0]
            if locally_available(EMNIST, cfg.data_dir):
                specs.append(AttackSpec(c, "emnist", aux=EMNIST))
            else:
                logger.info("no %s in %s: its attacker is skipped", EMNIST, cfg.data_dir)
        if cfg.clean_comparison and c.setting in noise_settings:
            specs.append(AttackSpec(c, "clean", protocol="clean"))
    return specs


def trained_classifiers(cfg: ExperimentConfig) -> dict[TrainSpec, dict[str, Any]]:
    """The grid's classifiers that are done, with their records."""
    specs = grid_specs(
        dataset=cfg.dataset, seeds=cfg.seeds, epochs=cfg.epochs, max_steps=cfg.max_steps
    )
    found = {s: classifier_record(cfg, s) for s in specs}
    return {s: r for s, r in found.items() if r is not None}


def attack_settings(
    spec: AttackSpec, record: dict[str, Any], cfg: ExperimentConfig
) -> dict[str, Any]:
    """What makes two attacks the same; includes when its classifier finished training."""
    return {
        "classifier": record["report"]["checkpoint"],
        "classifier_finished_at": record["finished_at"],
        "wirelog": record["wirelog"],
        "set_noise": spec.set_noise,
        "aux": spec.aux,
        "aux_fraction": spec.aux_fraction,
        "protocol": spec.protocol,
        "decoder": cfg.decoder,
        "epochs": cfg.attack_epochs,
        "seed": ATTACK_SEED,
        "seeding": SEEDING,
    }


def figure_path(spec: AttackSpec, cfg: ExperimentConfig) -> Path:
    return cfg.figures_dir / "attacks" / f"{spec.key}_{cfg.decoder}.png"


def _victim_log(spec: AttackSpec, record: dict[str, Any], cfg: ExperimentConfig) -> Path:
    """The wire log to attack: the classifier's, or a post-training-noise redeployment's."""
    source = Path(record["wirelog"])
    if spec.set_noise is None:
        return source
    target = source.with_name(f"{spec.classifier.name}_deploy{setting_tag(spec.set_noise)}.wirelog")
    return _redeploy(record, target, scale=spec.set_noise, cfg=cfg)


def _redeploy(record: dict[str, Any], target: Path, *, scale: float, cfg: ExperimentConfig) -> Path:
    """Deploys a trained classifier again with noise `scale`, through a collusion-mode server.

    A real server and data-holder pair: the data holder serves its checkpoint with
    ``--from-checkpoint --eval-noise scale --deploy`` and the server logs what arrives.
    """
    target.unlink(missing_ok=True)
    log_path = target.with_suffix(".log")
    server_args = ["--model-dir", str(cfg.model_dir), "--tap-log", str(target), "-q"]
    with log_path.open("w") as log:
        try:
            with ServerProcess(server_args, log=log) as server:
                client = [
                    "--server", server.address,
                    "--from-checkpoint", record["report"]["checkpoint"],
                    "--eval-noise", repr(scale), "--deploy", "--send-indices",
                    "--model-dir", str(cfg.model_dir), "--data-dir", str(cfg.data_dir),
                    "--json", "-q",
                ]  # fmt: skip
                run_json("splitnn-client", client, log=log)
        except ProcessError as error:
            log.flush()
            raise ProcessError(f"{error}; {log_path} ends:\n{log_tail(log_path)}") from None
    wirelogs.compact(target)
    return target


def attack_args(spec: AttackSpec, record: dict[str, Any], cfg: ExperimentConfig) -> list[str]:
    """The `splitnn-attack` command line of one attacker (the victim's log made if needed)."""
    args = [
        "-q", "run",
        "--classifier", record["report"]["checkpoint"],
        "--from-log", str(_victim_log(spec, record, cfg)),
        "--decoder", cfg.decoder,
        "--protocol", spec.protocol,
        "--epochs", str(cfg.attack_epochs),
        "--seed", str(ATTACK_SEED),
        "--model-dir", str(cfg.model_dir),
        "--data-dir", str(cfg.data_dir),
        "--figure", str(figure_path(spec, cfg)),
        "--json",
    ]  # fmt: skip
    if spec.set_noise is not None:
        args += ["--set-noise", repr(spec.set_noise)]
    if spec.aux is not None:
        args += ["--aux", spec.aux]
    if spec.aux_fraction != 1.0:
        args += ["--aux-fraction", repr(spec.aux_fraction)]
    return args


def attack_one(spec: AttackSpec, record: dict[str, Any], cfg: ExperimentConfig) -> dict[str, Any]:
    """Runs one attacker process; writes and returns its record.

    Raises:
        ProcessError: the attacker failed (the message ends with its log).
    """
    path = attack_record_path(cfg.runs_dir, spec.classifier.dataset, spec.key)
    log_path = path.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    threads = {"OMP_NUM_THREADS": str(cfg.threads_per_job())}
    with log_path.open("w") as log:
        try:
            report = run_json(
                "splitnn-attack", attack_args(spec, record, cfg), log=log, env=threads
            )
        except ProcessError as error:
            log.flush()
            raise ProcessError(f"{error}; {log_path} ends:\n{log_tail(log_path)}") from None
    result = {
        "kind": "attack",
        "family": spec.family,
        "model": spec.classifier.model,
        "classifier_seed": spec.classifier.seed,
        "noise": spec.classifier.setting.noise,
        "nopeek": spec.classifier.setting.nopeek,
        "settings": attack_settings(spec, record, cfg),
        "report": report,
        "wall_seconds": time.monotonic() - started,
        "finished_at": now(),
    }
    write_json_atomic(path, result)
    return result


def _prepare_validator(cfg: ExperimentConfig) -> None:
    """Trains the attackers' validation classifier once, before attackers run side by side."""
    log_path = cfg.runs_dir / cfg.dataset / "attacks" / "validator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-q", "validator", "--dataset", cfg.dataset, "--seed", str(ATTACK_SEED)]
    args += ["--model-dir", str(cfg.model_dir), "--data-dir", str(cfg.data_dir)]
    with log_path.open("w") as log:
        run_checked("splitnn-attack", args, log=log)


def run_attacks(cfg: ExperimentConfig) -> list[Outcome[AttackSpec]]:
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

    def done(spec: AttackSpec) -> dict[str, Any] | None:
        settings = attack_settings(spec, classifiers[spec.classifier], cfg)
        return load_attack_record(cfg.runs_dir, cfg.dataset, spec.key, settings=settings)

    if cfg.jobs > 1 and (cfg.force or any(done(s) is None for s in specs)):
        _prepare_validator(cfg)
    return run_jobs(
        specs,
        work=lambda spec: attack_one(spec, classifiers[spec.classifier], cfg),
        done=done,
        label=lambda spec: spec.key,
        cfg=cfg,
        desc="attacks",
    )


def attack_records(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The records of every attacker that is done, for the tables and figures."""
    classifiers = trained_classifiers(cfg)
    out = []
    for spec in attack_specs(list(classifiers), cfg):
        settings = attack_settings(spec, classifiers[spec.classifier], cfg)
        record = load_attack_record(cfg.runs_dir, cfg.dataset, spec.key, settings=settings)
        if record is not None:
            out.append(record)
    return out
