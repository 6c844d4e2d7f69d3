"""The ``threats`` group: one `splitnn-sim --threat T` process per row of the threats table.

A row is a threat model (``colluding``: the server colludes with a data holder; ``fsha``: a
malicious server hijacks the holder's training; ``passive``: the server alone, from the wire and
public data) against one defence of the data holder (none, Laplace b, NoPeek W, SplitGuard,
DP-SGD on part 1 at a target epsilon).
Each run has its own work folder (``RUNS_DIR/<dataset>/threats/<name>/``), model folder
(``MODEL_DIR/threats/<name>/``) and figure (``RESULTS_DIR/figures/threats/<name>.png``), so
runs side by side (``--jobs``) never share a file.
"""

from __future__ import annotations

import logging
from typing import Any

from splitnn.common.processes import ProcessError
from splitnn.common.reports import ReportError
from splitnn.experiments.grid import ThreatSpec, threat_specs
from splitnn.experiments.simulations import SimulationGroup
from splitnn.experiments.threat_records import (
    ThreatRecord,
    ThreatSummary,
)

logger = logging.getLogger(__name__)


def _flags(spec: ThreatSpec) -> list[str]:
    """The batch size is the study's for the defence (32 with NoPeek), given explicitly so the
    row does not depend on the simulation's default; so are DP-SGD's epsilon and delta."""
    defence = spec.setting.defence
    args = ["--threat", spec.setting.threat]
    if defence.guard is not None:
        args += ["--guard", defence.guard]
    args += ["--noise", repr(defence.noise), "--nopeek", repr(defence.nopeek)]
    dp = defence.dp
    if dp is not None:
        assert dp.epsilon is not None
        args += ["--dp-epsilon", repr(dp.epsilon), "--dp-delta", repr(dp.delta)]
    return [*args, "--batch-size", str(defence.batch_size)]


def _settings(spec: ThreatSpec) -> dict[str, Any]:
    """A DP-SGD row adds its target epsilon and delta; the others have no such keys, so their
    records from before DP-SGD still count."""
    defence = spec.setting.defence
    dp = defence.dp
    return {
        "threat": spec.setting.threat,
        "defence": defence.name,
        "noise": defence.noise,
        "nopeek": defence.nopeek,
        "guard": defence.guard,
        "batch_size": defence.batch_size,
        **({} if dp is None else {"dp_epsilon": dp.epsilon, "dp_delta": dp.delta}),
    }


def _figures(record: ThreatRecord) -> list[str]:
    return [record.report.figure]


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
    dp = defence.dp
    if (dp.delta if dp is not None else None) != report.dp_delta:
        raise ProcessError(
            f"splitnn-sim reported DP-SGD at delta {report.dp_delta} for the run "
            f"{'without DP-SGD' if dp is None else f'at delta {dp.delta:g}'}"
        )
    return report


THREATS = SimulationGroup(
    "threats", ThreatRecord, threat_specs, _flags, _checked, _settings, _figures
)
