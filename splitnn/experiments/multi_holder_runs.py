"""The ``multi`` group: one `splitnn-sim --holders K` process per multi-holder simulation.

Holder 0 colludes with the server (noise-free); every other holder is a victim with the setting's
noise b and NoPeek weight W, attacked by the server from what crossed the wire. Each simulation
has its own work folder (``RUNS_DIR/<dataset>/multi/<name>/``), model folder
(``MODEL_DIR/multi/<name>/``) and figure (``RESULTS_DIR/figures/multi/<name>.png``), so
simulations running side by side (``--jobs``) never share a file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from splitnn.common.files import write_json_atomic
from splitnn.common.processes import ProcessError, log_tail, run_json
from splitnn.common.reports import MultiSummary, ReportError
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import MultiSpec, multi_specs
from splitnn.experiments.records import (
    MultiRecord,
    multi_record,
    multi_record_path,
    multi_run_settings,
    now,
)
from splitnn.experiments.runner import Outcome, run_jobs

logger = logging.getLogger(__name__)

COLLUDER = 0


def specs(cfg: ExperimentConfig) -> list[MultiSpec]:
    """The group's simulations with the epochs, seeds and steps of `cfg`."""
    return multi_specs(
        dataset=cfg.dataset, seeds=cfg.seeds, epochs=cfg.epochs, max_steps=cfg.max_steps
    )


def workdir(spec: MultiSpec, cfg: ExperimentConfig) -> Path:
    return cfg.runs_dir / spec.dataset / "multi" / spec.name


def model_dir(spec: MultiSpec, cfg: ExperimentConfig) -> Path:
    return cfg.model_dir / "multi" / spec.name


def figure_path(spec: MultiSpec, cfg: ExperimentConfig) -> Path:
    return cfg.figures_dir / "multi" / f"{spec.name}.png"


def sim_args(spec: MultiSpec, cfg: ExperimentConfig) -> list[str]:
    """The `splitnn-sim` flags of one simulation (floats as ``repr``: exact)."""
    setting = spec.setting
    args = ["--holders", str(setting.holders), "--topology", setting.topology]
    args += ["--partition", setting.partition]
    if setting.alpha is not None:
        args += ["--alpha", repr(setting.alpha)]
    args += ["--noise", repr(setting.noise), "--nopeek", repr(setting.nopeek)]
    args += ["--colluder", str(COLLUDER), "--colluder-noise", repr(0.0)]
    args += ["--dataset", spec.dataset, "--epochs", str(spec.epochs)]
    if spec.max_steps is not None:
        args += ["--max-steps", str(spec.max_steps)]
    args += ["--seed", str(spec.seed), "--attack-epochs", str(cfg.attack_epochs)]
    args += ["--decoder", cfg.decoder, "--workdir", str(workdir(spec, cfg))]
    args += ["--model-dir", str(model_dir(spec, cfg)), "--figure", str(figure_path(spec, cfg))]
    return [*args, "--json", "-q"]


def _checked(spec: MultiSpec, data: dict[str, object]) -> MultiSummary:
    """The report parsed, and of the simulation asked for; ProcessError otherwise."""
    try:
        report = MultiSummary.from_json(data)
    except ReportError as error:
        raise ProcessError(f"splitnn-sim: unexpected report: {error}") from None
    setting = spec.setting
    asked = (setting.topology, setting.holders, setting.partition, spec.seed, COLLUDER)
    got = (report.topology, report.holders, report.partition, report.seed, report.colluder)
    if got != asked:
        raise ProcessError(f"splitnn-sim reported {got} for the simulation {asked}")
    return report


def simulate(spec: MultiSpec, cfg: ExperimentConfig) -> MultiRecord:
    """Runs one simulation to completion; writes and returns its record.

    Raises:
        ProcessError: splitnn-sim failed or reported something else (the message ends with
            its log).
    """
    path = multi_record_path(cfg.runs_dir, spec)
    log_path = path.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    threads = {"OMP_NUM_THREADS": str(cfg.threads_per_job())}
    started = time.monotonic()
    with log_path.open("w") as log:
        try:
            data = run_json("splitnn-sim", sim_args(spec, cfg), log=log, env=threads)
            report = _checked(spec, data)
        except ValueError as error:  # a line starting with "{" that is not JSON
            raise ProcessError(f"splitnn-sim printed no JSON result: {error}") from None
        except ProcessError as error:
            log.flush()
            raise ProcessError(f"{error}; {log_path} ends:\n{log_tail(log_path)}") from None
    record = MultiRecord(
        settings=multi_run_settings(
            spec, attack_epochs=cfg.attack_epochs, decoder=cfg.decoder, data=cfg.data_fingerprint
        ),
        report=report,
        wall_seconds=time.monotonic() - started,
        finished_at=now(),
    )
    write_json_atomic(path, record.to_json())
    return record


def run_simulations(cfg: ExperimentConfig) -> list[Outcome[MultiSpec, MultiRecord]]:
    """Runs every simulation of the group that is not done yet; see `runner.run_jobs`."""
    return run_jobs(
        specs(cfg),
        work=lambda spec: simulate(spec, cfg),
        done=lambda spec: multi_record(cfg, spec),
        label=lambda spec: spec.name,
        cfg=cfg,
        desc="multi",
    )


def multi_records(cfg: ExperimentConfig) -> list[tuple[MultiSpec, MultiRecord]]:
    """The group's simulations that are done, with their records, in grid order."""
    found = [(spec, multi_record(cfg, spec)) for spec in specs(cfg)]
    return [(spec, record) for spec, record in found if record is not None]
