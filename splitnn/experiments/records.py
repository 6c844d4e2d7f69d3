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
from typing import Any, ClassVar, TypeVar

from splitnn.common.checkpoints import load_checkpoint, manifest_path
from splitnn.common.datasets import DatasetSplits
from splitnn.common.reports import AttackReport, MultiSummary, ReportError, RunReport, checked
from splitnn.common.seeds import SEEDING
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import MultiSpec, TrainSpec

logger = logging.getLogger(__name__)

_Record = TypeVar("_Record", "ClassifierRecord", "AttackRecord", "MultiRecord")

# Manifest keys of the part-1 checkpoint that must agree with the run's settings.
_MANIFEST_KEYS = ("dataset", "noise", "nopeek", "seed", "batch_size")


@dataclass(frozen=True)
class ClassifierRecord:
    """A finished training run: its settings, the data holder's report, its wire log."""

    KIND: ClassVar[str] = "classifier"

    settings: dict[str, Any]
    report: RunReport
    wirelog: str
    wall_seconds: float
    finished_at: str

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClassifierRecord:
        """Raises ReportError: see `_from_json`."""
        return _from_json(cls, data)


@dataclass(frozen=True)
class AttackRecord:
    """A finished attack: which classifier family and setting it attacked, its settings, the
    attacker's report."""

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

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttackRecord:
        """Raises ReportError: see `_from_json`."""
        return _from_json(cls, data)


@dataclass(frozen=True)
class MultiRecord:
    """A finished multi-holder simulation: its settings and what `splitnn-sim` reported."""

    KIND: ClassVar[str] = "multi"

    settings: dict[str, Any]
    report: MultiSummary
    wall_seconds: float
    finished_at: str

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MultiRecord:
        """Raises ReportError: see `_from_json`."""
        return _from_json(cls, data)


def _to_json(record: ClassifierRecord | AttackRecord | MultiRecord) -> dict[str, Any]:
    return {"kind": record.KIND, **asdict(record), "report": record.report.to_json()}


def _from_json(cls: type[_Record], data: Mapping[str, Any]) -> _Record:
    """`data` as a record of `cls`: its kind, then every field checked by `reports.checked`
    (the report by its own `from_json`).

    Raises:
        ReportError: another kind of record, or a missing, unknown or mistyped field.
    """
    if data.get("kind") != cls.KIND:
        raise ReportError(f"expected a {cls.KIND} record, got kind {data.get('kind')!r}")
    fields = {k: v for k, v in data.items() if k != "kind"}
    return checked(cls, fields, what=f"{cls.KIND} record")


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

    `data` is the `fingerprint` of the data set's splits.
    """
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
    }


def load_train_record(
    runs_dir: Path, spec: TrainSpec, *, lr: float, data: str
) -> ClassifierRecord | None:
    """The record of `spec` if that run is done (see the module docstring), else None."""
    path = train_record_path(runs_dir, spec)
    record = _parse(ClassifierRecord, path)
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
    if any(manifest.get(key) != record.settings[key] for key in _MANIFEST_KEYS):
        logger.debug("%s: the checkpoint's manifest disagrees with the record", path)
        return None
    return record


def _parse(kind: type[_Record], path: Path) -> _Record | None:
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
    """`load_train_record` with the settings of `cfg`."""
    return load_train_record(cfg.runs_dir, spec, lr=cfg.lr, data=cfg.data_fingerprint)


def attack_record_path(runs_dir: Path, dataset: str, key: str) -> Path:
    return runs_dir / dataset / "attacks" / f"{key}.json"


def load_attack_record(
    runs_dir: Path, dataset: str, key: str, *, settings: Mapping[str, Any]
) -> AttackRecord | None:
    """The record of attack `key` if it was run with exactly `settings` and its files exist."""
    record = _parse(AttackRecord, attack_record_path(runs_dir, dataset, key))
    if record is None or record.settings != dict(settings):
        return None
    if not Path(record.report.attacker).is_file():
        return None
    return record


def multi_record_path(runs_dir: Path, spec: MultiSpec) -> Path:
    return runs_dir / spec.dataset / "multi" / f"{spec.name}.json"


def multi_run_settings(
    spec: MultiSpec, *, attack_epochs: int, decoder: str, data: str
) -> dict[str, Any]:
    """What makes two simulations the same (compared for skipping); `data` as in
    `train_settings`. Holder 0 colludes, noise-free."""
    setting = spec.setting
    return {
        "dataset": spec.dataset,
        "holders": setting.holders,
        "topology": setting.topology,
        "partition": setting.partition,
        "alpha": setting.alpha,
        "noise": setting.noise,
        "nopeek": setting.nopeek,
        "colluder": 0,
        "colluder_noise": 0.0,
        "seed": spec.seed,
        "epochs": spec.epochs,
        "max_steps": spec.max_steps,
        "attack_epochs": attack_epochs,
        "decoder": decoder,
        "data": data,
        "seeding": SEEDING,
    }


def load_multi_record(
    runs_dir: Path, spec: MultiSpec, *, settings: Mapping[str, Any]
) -> MultiRecord | None:
    """The record of simulation `spec` if it ran with exactly `settings` and the attack figures
    it names still exist, else None."""
    path = multi_record_path(runs_dir, spec)
    record = _parse(MultiRecord, path)
    if record is None:
        return None
    if record.settings != dict(settings):
        logger.debug("%s: recorded with other settings", path)
        return None
    missing = [v.figure for v in record.report.victims if v.figure and not Path(v.figure).is_file()]
    if missing:
        logger.debug("%s: missing %s", path, ", ".join(missing))
        return None
    return record


def multi_record(cfg: ExperimentConfig, spec: MultiSpec) -> MultiRecord | None:
    """`load_multi_record` with the settings of `cfg`."""
    settings = multi_run_settings(
        spec, attack_epochs=cfg.attack_epochs, decoder=cfg.decoder, data=cfg.data_fingerprint
    )
    return load_multi_record(cfg.runs_dir, spec, settings=settings)
