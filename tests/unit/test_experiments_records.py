"""Skip/force: a run is done only when its record, settings and files all agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from splitnn.common.checkpoints import save_checkpoint
from splitnn.common.datasets import DatasetSplits, Subset
from splitnn.common.files import write_json_atomic
from splitnn.common.processes import ProcessError
from splitnn.common.reports import ReportError, RunReport
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import TrainSpec, train_specs
from splitnn.experiments.records import (
    ClassifierRecord,
    fingerprint,
    load_train_record,
    train_record_path,
    train_settings,
    wirelog_path,
)
from splitnn.experiments.runner import run_jobs

LR = 1e-4
DATA = "0123456789abcdef"


def _spec(**changes: Any) -> TrainSpec:
    (spec,) = train_specs("plain", dataset="mnist5k", seeds=1, epochs=2)
    return TrainSpec(**{**spec.__dict__, **changes})


def _report(body: Path, head: Path) -> RunReport:
    return RunReport(
        run="r",
        dataset="mnist5k",
        dataset_description="d",
        noise=0.0,
        nopeek=0.0,
        eval_noise=0.0,
        epochs=2,
        batch_size=128,
        seed=0,
        best_epoch=2,
        train_accuracy=90.0,
        val_accuracy=90.0,
        test_accuracy=90.0,
        samples_per_second=1.0,
        train_seconds=1.0,
        checkpoint=str(body),
        head_checkpoint=str(head),
    )


def _finished_run(tmp_path: Path, spec: TrainSpec) -> ClassifierRecord:
    """Writes what a finished run leaves behind: checkpoints, wire log, record."""
    classifiers = tmp_path / "models" / "classifiers"
    body = classifiers / f"{spec.name}_epoch=2.ckpt"
    head = classifiers / f"{spec.name}_epoch=2.head.ckpt"
    manifest = {
        "part": "body",
        "dataset": spec.dataset,
        "noise": spec.setting.noise,
        "nopeek": spec.setting.nopeek,
        "seed": spec.seed,
        "batch_size": spec.setting.batch_size,
    }
    save_checkpoint(body, {"w": torch.zeros(1)}, manifest)
    save_checkpoint(head, {"w": torch.zeros(1)}, {"part": "head"})
    runs = tmp_path / "runs"
    wirelog_path(runs, spec).parent.mkdir(parents=True, exist_ok=True)
    wirelog_path(runs, spec).write_bytes(b"log")
    record = ClassifierRecord(
        settings=train_settings(spec, lr=LR, data=DATA),
        report=_report(body, head),
        wirelog=str(wirelog_path(runs, spec)),
        wall_seconds=1.0,
        finished_at="then",
    )
    write_json_atomic(train_record_path(runs, spec), record.to_json())
    return record


def test_a_finished_run_is_done(tmp_path: Path) -> None:
    spec = _spec()
    record = _finished_run(tmp_path, spec)

    assert load_train_record(tmp_path / "runs", spec, lr=LR, data=DATA) == record


@pytest.mark.parametrize(
    "changes", [{"epochs": 10}, {"max_steps": 2}, {"seed": 1}], ids=["epochs", "steps", "seed"]
)
def test_other_settings_are_not_done(tmp_path: Path, changes: dict[str, Any]) -> None:
    spec = _spec()
    _finished_run(tmp_path, spec)
    other = _spec(**changes)
    # Same record file, other settings: the seed changes the file name too.
    record_path = train_record_path(tmp_path / "runs", other)
    if not record_path.exists():
        record_path.write_text(train_record_path(tmp_path / "runs", spec).read_text())

    assert load_train_record(tmp_path / "runs", other, lr=LR, data=DATA) is None
    assert load_train_record(tmp_path / "runs", spec, lr=2 * LR, data=DATA) is None


@pytest.mark.parametrize("lost", ["checkpoint", "head_checkpoint", "wirelog"])
def test_a_run_whose_files_are_gone_is_not_done(tmp_path: Path, lost: str) -> None:
    spec = _spec()
    record = _finished_run(tmp_path, spec)
    path = Path(record.wirelog if lost == "wirelog" else getattr(record.report, lost))

    path.unlink()

    assert load_train_record(tmp_path / "runs", spec, lr=LR, data=DATA) is None


def test_a_checkpoint_from_other_settings_is_not_done(tmp_path: Path) -> None:
    spec = _spec()
    record = _finished_run(tmp_path, spec)
    manifest = Path(record.report.checkpoint + ".json")
    manifest.write_text(manifest.read_text().replace('"noise": 0.0', '"noise": 0.5'))

    assert load_train_record(tmp_path / "runs", spec, lr=LR, data=DATA) is None


def _cfg(force: bool) -> ExperimentConfig:
    return ExperimentConfig(groups=("plain",), force=force, progress=False)


@pytest.mark.parametrize("force", [False, True])
def test_done_runs_are_skipped_unless_forced(force: bool) -> None:
    ran: list[str] = []

    def work(item: str) -> dict[str, Any]:
        ran.append(item)
        if item == "broken":
            raise ProcessError("splitnn-client exited with status 1")
        return {"item": item}

    outcomes = run_jobs(
        ["done", "todo", "broken"],
        work=work,
        done=lambda item: {"old": True} if item == "done" else None,
        label=str,
        cfg=_cfg(force),
        desc="test",
    )

    assert sorted(ran) == (["broken", "done", "todo"] if force else ["broken", "todo"])
    assert [o.status for o in outcomes] == [
        "ran" if force else "skipped",
        "ran",
        "failed",
    ]
    assert outcomes[1].record == {"item": "todo"}
    assert outcomes[2].error == "splitnn-client exited with status 1"


def test_a_record_of_an_older_report_version_is_not_done(tmp_path: Path) -> None:
    spec = _spec()
    _finished_run(tmp_path, spec)
    path = train_record_path(tmp_path / "runs", spec)
    path.write_text(path.read_text().replace('"version": 1', '"version": 0'))

    assert load_train_record(tmp_path / "runs", spec, lr=LR, data=DATA) is None


def test_a_record_reads_back_as_it_was_written() -> None:
    record = ClassifierRecord(
        settings={"dataset": "mnist5k", "max_steps": None},
        report=_report(Path("b.ckpt"), Path("h.ckpt")),
        wirelog="w.wirelog",
        wall_seconds=3,
        finished_at="then",
    )

    back = ClassifierRecord.from_json(json.loads(json.dumps(record.to_json())))

    assert back == record and isinstance(back.wall_seconds, float)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "attack"}, "expected a classifier record"),
        ({"wall_seconds": "1 s"}, r"classifier record\.wall_seconds: expected float"),
        ({"settings": [1]}, r"classifier record\.settings: expected an object"),
        ({"finished_at": ...}, "missing fields finished_at"),
        ({"host": "x"}, "unknown fields host"),
        ({"report": {"kind": "run"}}, "expected a run report"),
    ],
)
def test_a_record_of_another_shape_names_what_is_wrong(
    changes: dict[str, Any], message: str
) -> None:
    data = ClassifierRecord(
        settings={}, report=_report(Path("b"), Path("h")), wirelog="w", wall_seconds=1.0,
        finished_at="then",
    ).to_json()  # fmt: skip
    data.update(changes)

    with pytest.raises(ReportError, match=message):
        ClassifierRecord.from_json({k: v for k, v in data.items() if v is not ...})


def test_a_run_on_other_data_is_not_done(tmp_path: Path) -> None:
    spec = _spec()
    _finished_run(tmp_path, spec)

    assert load_train_record(tmp_path / "runs", spec, lr=LR, data="fedcba9876543210") is None


def _splits(order: torch.Tensor) -> DatasetSplits:
    images = torch.arange(10 * 784, dtype=torch.float32).reshape(10, 1, 28, 28) / 7840
    labels = torch.arange(10) % 3
    parts = {
        role: Subset(images[order[2 * i : 2 * i + 2]], labels[order[2 * i : 2 * i + 2]],
                     order[2 * i : 2 * i + 2])
        for i, role in enumerate(("train", "val", "test", "aux", "attack"))
    }  # fmt: skip
    return DatasetSplits(name="toy", num_classes=3, description="toy", **parts)


def test_the_fingerprint_follows_the_split() -> None:
    identity = torch.arange(10)
    shuffled = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8, 9])

    assert fingerprint(_splits(identity)) == fingerprint(_splits(identity.clone()))
    assert fingerprint(_splits(identity)) != fingerprint(_splits(shuffled))
