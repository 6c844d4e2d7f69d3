"""The ``multi`` group: one `splitnn-sim --holders K` process per multi-holder simulation.

Holder 0 colludes with the server (noise-free); every other holder is a victim with the setting's
noise b and NoPeek weight W, attacked by the server from what crossed the wire. Each simulation
has its own work folder (``RUNS_DIR/<dataset>/multi/<name>/``), model folder
(``MODEL_DIR/multi/<name>/``) and figure (``RESULTS_DIR/figures/multi/<name>.png``), so
simulations running side by side (``--jobs``) never share a file.
"""

from __future__ import annotations

import logging
from typing import Any

from splitnn.common.processes import ProcessError
from splitnn.common.reports import MultiSummary, ReportError
from splitnn.experiments.grid import MultiSpec, multi_specs
from splitnn.experiments.records import (
    MultiRecord,
)
from splitnn.experiments.simulations import SimulationGroup

logger = logging.getLogger(__name__)

COLLUDER = 0


def _flags(spec: MultiSpec) -> list[str]:
    setting = spec.setting
    args = ["--holders", str(setting.holders), "--topology", setting.topology]
    args += ["--partition", setting.partition]
    if setting.alpha is not None:
        args += ["--alpha", repr(setting.alpha)]
    args += ["--noise", repr(setting.noise), "--nopeek", repr(setting.nopeek)]
    return [*args, "--colluder", str(COLLUDER), "--colluder-noise", repr(0.0)]


def _settings(spec: MultiSpec) -> dict[str, Any]:
    """Holder COLLUDER colludes, noise-free."""
    setting = spec.setting
    return {
        "holders": setting.holders,
        "topology": setting.topology,
        "partition": setting.partition,
        "alpha": setting.alpha,
        "noise": setting.noise,
        "nopeek": setting.nopeek,
        "colluder": COLLUDER,
        "colluder_noise": 0.0,
    }


def _figures(record: MultiRecord) -> list[str]:
    return [v.figure for v in record.report.victims if v.figure]


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


MULTI = SimulationGroup("multi", MultiRecord, multi_specs, _flags, _checked, _settings, _figures)
