"""The programs' reports round-trip through JSON, and a report of another shape fails by name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from splitnn.common.reports import REPORT_VERSION, AttackReport, EpochRecord, ReportError, RunReport

RUN = RunReport(
    run="mnist5k_05noise_00nopeek_seed0",
    dataset="mnist5k",
    dataset_description="5,000 MNIST images",
    noise=0.5,
    nopeek=0.0,
    eval_noise=0.5,
    epochs=2,
    batch_size=128,
    seed=0,
    best_epoch=2,
    train_accuracy=None,
    val_accuracy=91.5,
    test_accuracy=90.25,
    samples_per_second=812.5,
    train_seconds=7.5,
    checkpoint="models/classifiers/a.ckpt",
    head_checkpoint="models/heads/_anonymous/r/a.head.ckpt",
    deploy_accuracy=89.0,
    history=[EpochRecord(1, 1.5, 60.0, 70.0, 3.5, 3000), EpochRecord(2, 0.5, 85.0, 91.5, 4, 3000)],
)
ATTACK = AttackReport(
    classifier="models/classifiers/a.ckpt",
    attacker="models/attackers/mnist_attacker_modela_deep.ckpt",
    dataset="mnist5k",
    deployed_noise=0.5,
    set_noise=0.5,
    aux="mnist5k",
    aux_fraction=1.0,
    aux_images=500,
    decoder="deep",
    protocol="noisy",
    images=500,
    mse=0.04,
    psnr=15.8,
    ssim=0.59,
    dcor=0.9,
    validator_accuracy=92.2,
    validator_accuracy_originals=98.4,
    figure="results/figures/sim.png",
    source="log",
    log_problem=None,
)


@pytest.mark.parametrize("report", [RUN, ATTACK], ids=["run", "attack"])
def test_a_report_round_trips_through_json(report: RunReport | AttackReport) -> None:
    text = json.dumps(report.to_json())

    back = type(report).from_json(json.loads(text))

    assert back == report
    assert json.loads(text)["version"] == REPORT_VERSION


def _run_json(**changes: Any) -> dict[str, Any]:
    data = RUN.to_json()
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_run_json(test_accuracy=...), "missing fields test_accuracy"),
        (_run_json(test_acc=90.0), "unknown fields test_acc"),
        (_run_json(test_accuracy="90%"), "run.test_accuracy: expected float"),
        (_run_json(epochs=2.5), "run.epochs: expected int"),
        (_run_json(epochs=True), "run.epochs: expected int"),
        (_run_json(history=[{"epoch": 1}]), r"run.history\[0\] report: missing fields"),
        (_run_json(version=REPORT_VERSION + 1), "version"),
        (_run_json(kind="attack"), "expected a run report"),
        ([1, 2], "a run report is a JSON object"),
    ],
)
def test_a_report_of_another_shape_names_what_is_wrong(data: object, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        RunReport.from_json(data)


def test_optional_fields_may_be_absent_and_ints_are_floats() -> None:
    data = _run_json(deploy_accuracy=..., history=..., step_ms_p50=..., test_accuracy=90)

    report = RunReport.from_json(data)

    assert report.deploy_accuracy is None and report.history == []
    assert isinstance(report.test_accuracy, float)


def test_an_attack_report_is_not_a_run_report() -> None:
    with pytest.raises(ReportError, match="expected a run report"):
        RunReport.from_json(ATTACK.to_json())
