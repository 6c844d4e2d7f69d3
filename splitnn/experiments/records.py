"""Run records: what each finished run printed, kept as JSON, and whether a run is done.

A training run's record is ``RUNS_DIR/<dataset>/<run>.json``; an attack's is
``RUNS_DIR/<dataset>/attacks/<attack>.json``; a multi-holder simulation's is
``RUNS_DIR/<dataset>/multi/<simulation>.json``. Each holds the settings it was run with, the
program's JSON report and when it finished. A run is done when its record exists, its settings
equal the ones asked for, and the files it names (checkpoints, wire log, the attack figures) are
still there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from splitnn.common.checkpoints import load_checkpoint, manifest_path
from splitnn.common.datasets import DatasetSplits
from splitnn.common.reports import AttackReport, MultiSummary, ReportError, RunReport, checked
from splitnn.common.seeds import SEEDING
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import TrainSpec

logger = logging.getLogger(__name__)

# Manifest keys of the part-1 checkpoint that must agree with the run's settings.
_MANIFEST_KEYS = ("dataset", "noise", "nopeek", "seed", "batch_size")


class Record:
    """What every record does: to JSON with its kind, and back, checked field by field.

    Subclasses are frozen dataclasses with a `KIND` and a `report` that has its own `to_json`.
    """

    KIND: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        return {"kind": self.KIND, **data, "report": getattr(self, "report").to_json()}  # noqa: B009

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """`data` as a record of this kind: every field checked by `reports.checked` (the report
        by its own `from_json`).

        Raises:
            ReportError: another kind of record, or a missing, unknown or mistyped field.
        """
        if data.get("kind") != cls.KIND:
            raise ReportError(f"expected a {cls.KIND} record, got kind {data.get('kind')!r}")
        fields = {k: v for k, v in data.items() if k != "kind"}
        return checked(cls, fields, what=f"{cls.KIND} record")


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class ClassifierRecord(Record):
    """A finished training run: its settings, the data holder's report, its wire log."""

    KIND: ClassVar[str] = "classifier"

    settings: dict[str, Any]
    report: RunReport
    wirelog: str
    wall_seconds: float
    finished_at: str


@dataclass(frozen=True)
class AttackRecord(Record):
    """A finished attack: which classifier family and setting it attacked, its settings, the
    attacker's report. `dp_epsilon` is the attacked classifier's DP-SGD target epsilon (None:
    trained without DP-SGD; records from before DP-SGD have none)."""

    KIND: ClassVar[str] = "attack"

    family: str
    model: str
    classifier_seed: int
    noise: float
    nopeek: float
    settings: dict[str, Any]
    report: AttackReport
    wall_seconds: float
    finished_at: str
    dp_epsilon: float | None = None


@dataclass(frozen=True)
class SimulationRecord(Record):
    """A finished `splitnn-sim` run of an experiment group: the settings it was run with, how
    long it took and when it finished; a subclass adds its `report`."""

    settings: dict[str, Any]
    wall_seconds: float
    finished_at: str


@dataclass(frozen=True)
class MultiRecord(SimulationRecord):
    """A finished multi-holder simulation: what `splitnn-sim --holders K` reported."""

    KIND: ClassVar[str] = "multi"

    report: MultiSummary


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def now() -> str:
    """A wall-clock timestamp with enough precision to tell two runs apart."""
    return datetime.now().isoformat(timespec="microseconds")


def train_record_path(runs_dir: Path, spec: TrainSpec) -> Path:
    return runs_dir / spec.dataset / f"{spec.name}.json"


def wirelog_path(runs_dir: Path, spec: TrainSpec) -> Path:
    return runs_dir / spec.dataset / f"{spec.name}.wirelog"


def process_log_path(runs_dir: Path, spec: TrainSpec) -> Path:
    return runs_dir / spec.dataset / f"{spec.name}.log"


def fingerprint(splits: DatasetSplits) -> str:
    """A short hash of the images, labels and indices of every subset of a data set.

    Part of every run's settings, so a run trained on another split of the data (a changed
    loader, other files) is never taken for a done run.
    """
    digest = hashlib.sha256(splits.name.encode())
    for role in ("train", "val", "test", "aux", "attack"):
        subset = getattr(splits, role)
        for tensor in (subset.images, subset.labels, subset.indices):
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_settings(spec: TrainSpec, *, lr: float, data: str) -> dict[str, Any]:
    """What makes two training runs the same run (compared for skipping).

    `data` is the `fingerprint` of the data set's splits. A DP-SGD run adds its target epsilon
    and delta (``dp_epsilon``, ``dp_delta``); the others have no such keys, so their records
    from before DP-SGD still count.
    """
    dp = spec.setting.dp
    dp_keys = {} if dp is None else {"dp_epsilon": dp.epsilon, "dp_delta": dp.delta}
    return {
        "dataset": spec.dataset,
        "noise": spec.setting.noise,
        "nopeek": spec.setting.nopeek,
        "batch_size": spec.setting.batch_size,
        "seed": spec.seed,
        "epochs": spec.epochs,
        "max_steps": spec.max_steps,
        "lr": lr,
        "data": data,
        "seeding": SEEDING,
        **dp_keys,
    }


def load_train_record(
    runs_dir: Path, spec: TrainSpec, *, lr: float, data: str
) -> ClassifierRecord | None:
    """The record of `spec` if that run is done (see the module docstring), else None."""
    path = train_record_path(runs_dir, spec)
    record = parse_record(ClassifierRecord, path)
    if record is None:
        return None
    if record.settings != train_settings(spec, lr=lr, data=data):
        logger.debug("%s: recorded with other settings", path)
        return None
    files = [Path(record.report.checkpoint), Path(record.report.head_checkpoint)]
    missing = [f for f in files if not f.is_file() or not manifest_path(f).is_file()]
    if not Path(record.wirelog).is_file():
        missing.append(Path(record.wirelog))
    if missing:
        logger.debug("%s: missing %s", path, ", ".join(map(str, missing)))
        return None
    _, manifest = load_checkpoint(files[0])
    dp = manifest.get("dp")
    dp_epsilon = dp.get("epsilon") if isinstance(dp, dict) else None
    if any(
        manifest.get(key) != record.settings[key] for key in _MANIFEST_KEYS
    ) or dp_epsilon != record.settings.get("dp_epsilon"):
        logger.debug("%s: the checkpoint's manifest disagrees with the record", path)
        return None
    return record


def parse_record(kind: type[R], path: Path) -> R | None:
    """The record in `path`; None if there is none or it is of an older format (logged)."""
    data = read_json(path)
    if data is None:
        return None
    try:
        return kind.from_json(data)
    except ReportError as error:
        logger.info("%s is not a record of this version (%s): it is run again", path, error)
        return None


def classifier_record(cfg: ExperimentConfig, spec: TrainSpec) -> ClassifierRecord | None:
    """`load_train_record` with the settings of `cfg` (the learning rate of `spec`'s setting)."""
    lr = cfg.lr_for(spec.setting)
    return load_train_record(cfg.runs_dir, spec, lr=lr, data=cfg.data_fingerprint)


def attack_record_path(runs_dir: Path, dataset: str, key: str) -> Path:
    return runs_dir / dataset / "attacks" / f"{key}.json"


def load_attack_record(
    runs_dir: Path, dataset: str, key: str, *, settings: Mapping[str, Any]
) -> AttackRecord | None:
    """The record of attack `key` if it was run with exactly `settings` and its files exist."""
    record = parse_record(AttackRecord, attack_record_path(runs_dir, dataset, key))
    if record is None or record.settings != dict(settings):
        return None
    if not Path(record.report.attacker).is_file():
        return None
    return record
