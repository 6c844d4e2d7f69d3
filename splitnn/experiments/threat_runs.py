"""The ``threats`` group: one `splitnn-sim --threat T` process per row of the threats table.

A row is a threat model (``colluding``: the server colludes with a data holder; ``fsha``: a
malicious server hijacks the holder's training; ``passive``: the server alone, from the wire and
public data) against one defence of the data holder (none, Laplace b, NoPeek W, SplitGuard).
Each run has its own work folder (``RUNS_DIR/<dataset>/threats/<name>/``), model folder
(``MODEL_DIR/threats/<name>/``) and figure (``RESULTS_DIR/figures/threats/<name>.png``), so
runs side by side (``--jobs``) never share a file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from splitnn.common.files import write_json_atomic
from splitnn.common.processes import ProcessError, log_tail, run_json
from splitnn.common.reports import ReportError
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import ThreatSpec, threat_specs
from splitnn.experiments.records import now
from splitnn.experiments.runner import Outcome, run_jobs
from splitnn.experiments.threat_records import (
    ThreatRecord,
    ThreatSummary,
    threat_record,
    threat_record_path,
    threat_run_settings,
)

logger = logging.getLogger(__name__)


def specs(cfg: ExperimentConfig) -> list[ThreatSpec]:
    """The group's runs with the epochs, seeds and steps of `cfg`."""
    return threat_specs(
        dataset=cfg.dataset, seeds=cfg.seeds, epochs=cfg.epochs, max_steps=cfg.max_steps
    )


def workdir(spec: ThreatSpec, cfg: ExperimentConfig) -> Path:
    return cfg.runs_dir / spec.dataset / "threats" / spec.name


def model_dir(spec: ThreatSpec, cfg: ExperimentConfig) -> Path:
    return cfg.model_dir / "threats" / spec.name


def figure_path(spec: ThreatSpec, cfg: ExperimentConfig) -> Path:
    return cfg.figures_dir / "threats" / f"{spec.name}.png"


def sim_args(spec: ThreatSpec, cfg: ExperimentConfig) -> list[str]:
    """The `splitnn-sim` flags of one run (floats as ``repr``: exact). The batch size is the
    study's for the defence (32 with NoPeek), given explicitly so the row does not depend on
    the simulation's default."""
    defence = spec.setting.defence
    args = ["--threat", spec.setting.threat]
    if defence.guard is not None:
        args += ["--guard", defence.guard]
    args += ["--noise", repr(defence.noise), "--nopeek", repr(defence.nopeek)]
    args += ["--batch-size", str(defence.batch_size)]
    args += ["--dataset", spec.dataset, "--epochs", str(spec.epochs)]
    if spec.max_steps is not None:
        args += ["--max-steps", str(spec.max_steps)]
    args += ["--seed", str(spec.seed), "--attack-epochs", str(cfg.attack_epochs)]
    args += ["--decoder", cfg.decoder, "--workdir", str(workdir(spec, cfg))]
    args += ["--model-dir", str(model_dir(spec, cfg)), "--figure", str(figure_path(spec, cfg))]
    return [*args, "--json", "-q"]


def _checked(spec: ThreatSpec, data: dict[str, object]) -> ThreatSummary:
    """The report parsed, and of the run asked for; ProcessError otherwise."""
    try:
        report = ThreatSummary.from_json(data)
    except ReportError as error:
        raise ProcessError(f"splitnn-sim: unexpected report: {error}") from None
    defence = spec.setting.defence
    asked = (spec.dataset, spec.setting.threat, defence.noise, defence.nopeek, spec.epochs)
    got = (report.dataset, report.threat, report.noise, report.nopeek, report.epochs)
    if got != asked:
        raise ProcessError(f"splitnn-sim reported {got} for the run {asked}")
    if defence.guard is None and report.guard_detected_at_step is not None:
        raise ProcessError("splitnn-sim reported a guard's detection for a run without a guard")
    return report


def simulate(spec: ThreatSpec, cfg: ExperimentConfig) -> ThreatRecord:
    """Runs one row to completion; writes and returns its record.

    Raises:
        ProcessError: splitnn-sim failed or reported something else (the message ends with
            its log).
    """
    path = threat_record_path(cfg.runs_dir, spec)
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
    record = ThreatRecord(
        settings=threat_run_settings(
            spec, attack_epochs=cfg.attack_epochs, decoder=cfg.decoder, data=cfg.data_fingerprint
        ),
        report=report,
        wall_seconds=time.monotonic() - started,
        finished_at=now(),
    )
    write_json_atomic(path, record.to_json())
    return record


def run_threats(cfg: ExperimentConfig) -> list[Outcome[ThreatSpec, ThreatRecord]]:
    """Runs every row of the group that is not done yet; see `runner.run_jobs`."""
    return run_jobs(
        specs(cfg),
        work=lambda spec: simulate(spec, cfg),
        done=lambda spec: threat_record(cfg, spec),
        label=lambda spec: spec.name,
        cfg=cfg,
        desc="threats",
    )


def threat_records(cfg: ExperimentConfig) -> list[tuple[ThreatSpec, ThreatRecord]]:
    """The group's runs that are done, with their records, in grid order."""
    found = [(spec, threat_record(cfg, spec)) for spec in specs(cfg)]
    return [(spec, record) for spec, record in found if record is not None]
