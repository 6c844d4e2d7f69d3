"""One `splitnn-experiments` invocation: its groups, in order, and what became of every run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from splitnn.common.datasets import load_splits, locally_available
from splitnn.experiments.attack_report import write_attack_tables
from splitnn.experiments.attacks import run_attacks
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import GROUPS, train_specs
from splitnn.experiments.multi_holder_report import write_multi_tables
from splitnn.experiments.multi_holder_runs import MULTI
from splitnn.experiments.performance import NothingToMeasure, write_classifier_tables
from splitnn.experiments.records import fingerprint
from splitnn.experiments.runner import Outcome, train_all
from splitnn.experiments.threat_report import write_threat_tables
from splitnn.experiments.threat_runs import THREATS

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Summary:
    """Counts of runs per status, the failures, the text of the reports, the wall time."""

    counts: dict[str, int] = field(default_factory=lambda: {"ran": 0, "skipped": 0, "failed": 0})
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcomes: Sequence[Outcome[T, Any]], label: Callable[[T], str]) -> None:
        for outcome in outcomes:
            self.counts[outcome.status] += 1
            if outcome.status == "failed":
                self.failures.append(f"{label(outcome.item)}: {outcome.error}")


def _train_group(name: str, cfg: ExperimentConfig, summary: Summary) -> None:
    specs = train_specs(
        name, dataset=cfg.dataset, seeds=cfg.seeds, epochs=cfg.epochs, max_steps=cfg.max_steps
    )
    outcomes = train_all(specs, cfg, desc=name)
    summary.add(outcomes, lambda spec: spec.name)


def _attack_group(cfg: ExperimentConfig, summary: Summary) -> None:
    outcomes = run_attacks(cfg)
    summary.add(outcomes, lambda spec: spec.key)


def _multi_group(cfg: ExperimentConfig, summary: Summary, *, test_images: int) -> None:
    outcomes = MULTI.run(cfg)
    summary.add(outcomes, lambda spec: spec.name)
    summary.lines += write_multi_tables(cfg, test_images=test_images)


def _threats_group(cfg: ExperimentConfig, summary: Summary, *, test_images: int) -> None:
    outcomes = THREATS.run(cfg)
    summary.add(outcomes, lambda spec: spec.name)
    summary.lines += write_threat_tables(cfg, test_images=test_images)


def _report_group(cfg: ExperimentConfig, summary: Summary) -> None:
    try:
        summary.lines += write_classifier_tables(cfg)
    except NothingToMeasure as nothing:
        summary.failures.append(f"performance: {nothing}")
    summary.lines += ["", *write_attack_tables(cfg)]


def run(cfg: ExperimentConfig) -> Summary:
    """Runs `cfg.groups` in order; a failed run is counted and the next one goes on."""
    summary = Summary()
    started = time.monotonic()
    logger.info(
        "groups %s on %s: %d epochs, %d seed(s), %d job(s)",
        " ".join(cfg.groups), cfg.dataset, cfg.epochs, cfg.seeds, cfg.jobs,
    )  # fmt: skip
    if not locally_available(cfg.dataset, cfg.data_dir):
        # Once here, rather than by every run at once; a missing data set fails in one line.
        logger.info("fetching %s into %s", cfg.dataset, cfg.data_dir)
    splits = load_splits(cfg.dataset, root=cfg.data_dir)
    cfg = replace(cfg, data_fingerprint=fingerprint(splits))
    for name in cfg.groups:
        kind = GROUPS[name].kind
        group_started = time.monotonic()
        if kind == "train":
            _train_group(name, cfg, summary)
        elif kind == "attack":
            _attack_group(cfg, summary)
        elif kind == "multi":
            _multi_group(cfg, summary, test_images=len(splits.test))
        elif kind == "threats":
            _threats_group(cfg, summary, test_images=len(splits.test))
        else:
            _report_group(cfg, summary)
        logger.info("%s: %.0f s", name, time.monotonic() - group_started)
    summary.seconds = time.monotonic() - started
    return summary
