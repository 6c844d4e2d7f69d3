"""The ``threats`` group's records: what `splitnn-sim --threat ... --json` printed for one row of
the threats table, kept as ``RUNS_DIR/<dataset>/threats/<run>.json`` with the settings it was run
with. A run is done when its record parses, its settings equal the ones asked for and the
figure it names is still there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from splitnn.common.reports import ReportError, checked
from splitnn.common.seeds import SEEDING
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import ThreatSpec
from splitnn.experiments.records import read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreatSummary:
    """The part of `splitnn-sim --json` that the threats table reads; accuracies in percent.

    `guard_detected_at_step` is the training step at which the data holder's guard flagged the
    server (None: not flagged, or no guard). The baselines are the MSE of reconstructing every
    image as the mean image and as its class's mean image, where the simulation reports them.
    """

    dataset: str
    threat: str
    noise: float
    nopeek: float
    epochs: int
    test_accuracy: float
    attack_mse: float
    attack_psnr: float
    attack_ssim: float
    attack_validator_accuracy: float
    guard_detected_at_step: int | None
    figure: str
    seconds: float
    best_epoch: int | None = None
    val_accuracy: float | None = None
    attack_dcor: float | None = None
    validator_accuracy_originals: float | None = None
    attack_images: int | None = None
    decoder: str | None = None
    attacker: str | None = None
    classifier: str | None = None
    wire_log: str | None = None
    attack_baseline_mean_mse: float | None = None
    attack_baseline_class_mse: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> ThreatSummary:
        """What `splitnn-sim --json` printed, checked field by field; fields this table does
        not read are left out.

        Raises:
            ReportError: not an object, or a missing or mistyped field.
        """
        if not isinstance(data, dict):
            raise ReportError(f"a simulation report is a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return checked(cls, {k: v for k, v in data.items() if k in known}, what="simulation")


@dataclass(frozen=True)
class ThreatRecord:
    """A finished row of the threats table: its settings and what `splitnn-sim` reported."""

    KIND: ClassVar[str] = "threat"

    settings: dict[str, Any]
    report: ThreatSummary
    wall_seconds: float
    finished_at: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.KIND, **asdict(self), "report": self.report.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ThreatRecord:
        """Raises ReportError: another kind of record, or a missing, unknown or mistyped field."""
        if data.get("kind") != cls.KIND:
            raise ReportError(f"expected a {cls.KIND} record, got kind {data.get('kind')!r}")
        body = {k: v for k, v in data.items() if k != "kind"}
        return checked(cls, body, what=f"{cls.KIND} record")


def threat_record_path(runs_dir: Path, spec: ThreatSpec) -> Path:
    return runs_dir / spec.dataset / "threats" / f"{spec.name}.json"


def threat_run_settings(
    spec: ThreatSpec, *, attack_epochs: int, decoder: str, data: str
) -> dict[str, Any]:
    """What makes two runs of a row the same run (compared for skipping); `data` is the
    `records.fingerprint` of the data set's splits."""
    defence = spec.setting.defence
    return {
        "dataset": spec.dataset,
        "threat": spec.setting.threat,
        "defence": defence.name,
        "noise": defence.noise,
        "nopeek": defence.nopeek,
        "guard": defence.guard,
        "batch_size": defence.batch_size,
        "seed": spec.seed,
        "epochs": spec.epochs,
        "max_steps": spec.max_steps,
        "attack_epochs": attack_epochs,
        "decoder": decoder,
        "data": data,
        "seeding": SEEDING,
    }


def load_threat_record(
    runs_dir: Path, spec: ThreatSpec, *, settings: Mapping[str, Any]
) -> ThreatRecord | None:
    """The record of `spec` if it ran with exactly `settings` and its figure still exists."""
    path = threat_record_path(runs_dir, spec)
    data = read_json(path)
    if data is None:
        return None
    try:
        record = ThreatRecord.from_json(data)
    except ReportError as error:
        logger.info("%s is not a record of this version (%s): it is run again", path, error)
        return None
    if record.settings != dict(settings):
        logger.debug("%s: recorded with other settings", path)
        return None
    if not Path(record.report.figure).is_file():
        logger.debug("%s: missing %s", path, record.report.figure)
        return None
    return record


def threat_record(cfg: ExperimentConfig, spec: ThreatSpec) -> ThreatRecord | None:
    """`load_threat_record` with the settings of `cfg`."""
    settings = threat_run_settings(
        spec, attack_epochs=cfg.attack_epochs, decoder=cfg.decoder, data=cfg.data_fingerprint
    )
    return load_threat_record(cfg.runs_dir, spec, settings=settings)
