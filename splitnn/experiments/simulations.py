"""An experiment group whose every run is one `splitnn-sim` process: its runs, skipping what is
done, and their records.

The ``multi`` and ``threats`` groups are two `SimulationGroup`s. What they share is here: each run
has its own work folder (``RUNS_DIR/<dataset>/<folder>/<name>/``), model folder
(``MODEL_DIR/<folder>/<name>/``) and figure (``RESULTS_DIR/figures/<folder>/<name>.png``), so
runs side by side (``--jobs``) never share a file; its record is
``RUNS_DIR/<dataset>/<folder>/<name>.json``; the flags and settings every run has (data set,
epochs, steps, seed, the attack's epochs and decoder, the folders). What a group adds: its grid,
its own flags and settings, how its report is checked, and which files a record must still find.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from splitnn.common.files import write_json_atomic
from splitnn.common.seeds import SEEDING
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.records import SimulationRecord, now, parse_record
from splitnn.experiments.runner import Outcome, prepare_validators, run_jobs, simulate_json

logger = logging.getLogger(__name__)


class Spec(Protocol):
    """One run of a group: a setting on a data set with one seed."""

    @property
    def name(self) -> str: ...

    @property
    def dataset(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def epochs(self) -> int: ...

    @property
    def max_steps(self) -> int | None: ...


T = TypeVar("T", bound=Spec)
R = TypeVar("R", bound=SimulationRecord)


@dataclass(frozen=True)
class SimulationGroup(Generic[T, R]):
    """A group of `splitnn-sim` runs.

    Attributes:
        folder: the group's name, on its folders and its progress bar.
        record_type: its records' class; a record holds the run's settings and checked report.
        grid: the group's runs: (*, dataset, seeds, epochs, max_steps) -> specs.
        flags: the `splitnn-sim` flags of the run's setting (the shared ones are added).
        report: the run's JSON report parsed and checked to be of that run (ProcessError if not).
        own_settings: what else makes two runs the same run, beside the shared settings.
        files: the files a record names that must still exist for the run to count as done.
    """

    folder: str
    record_type: type[R]
    grid: Callable[..., list[T]]
    flags: Callable[[T], list[str]]
    report: Callable[[T, dict[str, Any]], Any]
    own_settings: Callable[[T], dict[str, Any]]
    files: Callable[[R], list[str]]

    def specs(self, cfg: ExperimentConfig) -> list[T]:
        """The group's runs with the epochs, seeds and steps of `cfg`; with `cfg.only`, those
        whose name matches one of its patterns."""
        specs = self.grid(
            dataset=cfg.dataset, seeds=cfg.seeds, epochs=cfg.epochs, max_steps=cfg.max_steps
        )
        if not cfg.only:
            return specs
        return [s for s in specs if any(fnmatchcase(s.name, p) for p in cfg.only)]

    def workdir(self, spec: T, cfg: ExperimentConfig) -> Path:
        return cfg.runs_dir / spec.dataset / self.folder / spec.name

    def model_dir(self, spec: T, cfg: ExperimentConfig) -> Path:
        return cfg.model_dir / self.folder / spec.name

    def figure_path(self, spec: T, cfg: ExperimentConfig) -> Path:
        return cfg.figures_dir / self.folder / f"{spec.name}.png"

    def record_path(self, runs_dir: Path, spec: T) -> Path:
        return runs_dir / spec.dataset / self.folder / f"{spec.name}.json"

    def sim_args(self, spec: T, cfg: ExperimentConfig) -> list[str]:
        """The `splitnn-sim` flags of one run (floats as ``repr``: exact)."""
        args = [*self.flags(spec), "--dataset", spec.dataset, "--epochs", str(spec.epochs)]
        if spec.max_steps is not None:
            args += ["--max-steps", str(spec.max_steps)]
        args += ["--seed", str(spec.seed), "--attack-epochs", str(cfg.attack_epochs)]
        args += ["--decoder", cfg.decoder, "--workdir", str(self.workdir(spec, cfg))]
        args += ["--model-dir", str(self.model_dir(spec, cfg))]
        # One validator per data set and seed, shared with the grid's attackers (prepared in
        # `run`): trained once instead of in every simulation.
        args += ["--validator-dir", str(cfg.model_dir)]
        args += ["--figure", str(self.figure_path(spec, cfg))]
        return [*args, "--json", "-q"]

    def settings(self, spec: T, cfg: ExperimentConfig) -> dict[str, Any]:
        """What makes two runs the same run (compared for skipping); ``data`` is the
        `records.fingerprint` of the data set's splits."""
        return {
            "dataset": spec.dataset,
            **self.own_settings(spec),
            "seed": spec.seed,
            "epochs": spec.epochs,
            "max_steps": spec.max_steps,
            "attack_epochs": cfg.attack_epochs,
            "decoder": cfg.decoder,
            "data": cfg.data_fingerprint,
            "seeding": SEEDING,
        }

    def load(self, cfg: ExperimentConfig, spec: T, *, settings: Mapping[str, Any]) -> R | None:
        """The record of `spec` if it ran with exactly `settings` and the files it names still
        exist, else None."""
        path = self.record_path(cfg.runs_dir, spec)
        record = parse_record(self.record_type, path)
        if record is None:
            return None
        if record.settings != dict(settings):
            logger.debug("%s: recorded with other settings", path)
            return None
        missing = [name for name in self.files(record) if not Path(name).is_file()]
        if missing:
            logger.debug("%s: missing %s", path, ", ".join(missing))
            return None
        return record

    def record(self, cfg: ExperimentConfig, spec: T) -> R | None:
        """The record of `spec` if it is done under `cfg`'s settings, else None."""
        return self.load(cfg, spec, settings=self.settings(spec, cfg))

    def simulate(self, spec: T, cfg: ExperimentConfig) -> R:
        """Runs one simulation to completion, from scratch (its work and model folders emptied
        first); writes and returns its record.

        Raises:
            ProcessError: splitnn-sim failed or reported something else (the message ends with
                its log).
        """
        path = self.record_path(cfg.runs_dir, spec)
        # A run that is not done starts over: what an interrupted attempt left in the run's own
        # folders (the server's group saves, the holders' states) would make the new parties
        # refuse to start afresh.
        for folder in (self.workdir(spec, cfg), self.model_dir(spec, cfg)):
            shutil.rmtree(folder, ignore_errors=True)
        report, seconds = simulate_json(
            self.sim_args(spec, cfg),
            log_path=path.with_suffix(".log"),
            cfg=cfg,
            check=lambda data: self.report(spec, data),
        )
        # Every simulation record adds its `report` to the fields of SimulationRecord.
        record = self.record_type(  # type: ignore[call-arg]
            settings=self.settings(spec, cfg),
            report=report,
            wall_seconds=seconds,
            finished_at=now(),
        )
        write_json_atomic(path, record.to_json())
        return record

    def run(self, cfg: ExperimentConfig) -> list[Outcome[T, R]]:
        """Runs every simulation of the group that is not done yet; see `runner.run_jobs`.
        The validators of their seeds are trained first (`runner.prepare_validators`)."""
        specs = self.specs(cfg)
        if cfg.only:  # each pattern that selects nothing, even beside others that do
            every = self.grid(
                dataset=cfg.dataset, seeds=cfg.seeds, epochs=cfg.epochs, max_steps=cfg.max_steps
            )
            for pattern in cfg.only:
                if not any(fnmatchcase(spec.name, pattern) for spec in every):
                    logger.warning(
                        "%s: --only %s matches none of its runs (their names are like %s)",
                        self.folder, pattern, every[0].name,
                    )  # fmt: skip
        to_run = specs if cfg.force else [s for s in specs if self.record(cfg, s) is None]
        if to_run:
            prepare_validators(cfg, {s.seed for s in to_run})
        return run_jobs(
            specs,
            work=lambda spec: self.simulate(spec, cfg),
            done=lambda spec: self.record(cfg, spec),
            label=lambda spec: spec.name,
            cfg=cfg,
            desc=self.folder,
        )

    def records(self, cfg: ExperimentConfig) -> list[tuple[T, R]]:
        """The group's simulations that are done, with their records, in grid order."""
        found = [(spec, self.record(cfg, spec)) for spec in self.specs(cfg)]
        return [(spec, record) for spec, record in found if record is not None]
