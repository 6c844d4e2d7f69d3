"""`splitnn-experiments` as a real process: a smoke run of the plain group and the tables.

Every training run inside it is a real splitnn-server and splitnn-client pair over loopback.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from splitnn.common.checkpoints import save_checkpoint
from splitnn.common.datasets import load_splits
from splitnn.common.seeds import SEEDING
from splitnn.common.wirelog import read_wirelog
from splitnn.experiments.attack_report import write_attack_tables
from splitnn.experiments.attacks import AttackSpec, attack_one, trained_classifiers
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.records import fingerprint

BIN = Path(sys.executable).parent
RUN_S = 300.0
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SPLITNN")}
SMOKE = ["--dataset", "mnist5k", "--epochs", "1", "--max-steps", "2"]


@dataclass(frozen=True)
class Workdir:
    root: Path
    first: subprocess.CompletedProcess[str]

    def flags(self) -> list[str]:
        return _flags(self.root)

    def config(self) -> ExperimentConfig:
        return ExperimentConfig(
            groups=("attacks",),
            epochs=1,
            max_steps=2,
            attack_epochs=1,
            model_dir=self.root / "models",
            runs_dir=self.root / "runs",
            results_dir=self.root / "results",
            data_dir=self.root / "data",
            progress=False,
            data_fingerprint=fingerprint(load_splits("mnist5k", root=self.root / "data")),
        )


def _flags(root: Path) -> list[str]:
    return [
        *SMOKE,
        *("--model-dir", str(root / "models"), "--runs-dir", str(root / "runs")),
        *("--results-dir", str(root / "results"), "--data-dir", str(root / "data")),
    ]


def _experiments(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "splitnn-experiments"), *args],
        cwd=root,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=RUN_S,
        check=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workdir]:
    root = tmp_path_factory.mktemp("experiments")
    first = _experiments(root, "plain", "performance", *_flags(root))
    yield Workdir(root, first)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_plain_group_trains_through_real_processes_and_writes_tables(workdir: Workdir) -> None:
    assert workdir.first.returncode == 0, workdir.first.stderr[-3000:]
    assert "1 ran, 0 skipped" in workdir.first.stdout
    results = workdir.root / "results"

    (model,) = _csv(results / "model_performances.csv")
    posttrain = _csv(results / "posttrain_noise.csv")

    assert model["model"] == "mnist5k_00noise_00nopeek"
    assert model["epsilon"] == "inf" and model["seeds"] == "1" and model["test_accuracy_se"] == ""
    for column in ("train_accuracy", "val_accuracy", "test_accuracy", "dcor", "dcor_sent"):
        assert 0.0 <= float(model[column]) <= 100.0
    assert [row["noise_after"] for row in posttrain] == ["0", "0.1", "0.2", "0.5", "1", "1.5", "2"]
    assert (results / "figures" / "posttrain_noise.png").stat().st_size > 0
    assert "epsilon" in (results / "epsilon.txt").read_text()


def test_the_wire_log_keeps_the_deployment_only(workdir: Workdir) -> None:
    log = read_wirelog(workdir.root / "runs" / "mnist5k" / "mnist5k_00noise_00nopeek.wirelog")

    assert {record.split for record in log.records} == {"attack"}
    assert sum(record.activations.shape[0] for record in log.records) == 500


def test_a_done_run_is_skipped_and_other_rows_survive(workdir: Workdir) -> None:
    csv_path = workdir.root / "results" / "model_performances.csv"
    with csv_path.open("a") as handle:
        handle.write("someone_elses_model,mnist,0.3\n")

    again = _experiments(workdir.root, "plain", "performance", "-q", *workdir.flags())

    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 ran, 1 skipped" in again.stdout
    assert [row["model"] for row in _csv(csv_path)] == [
        "mnist5k_00noise_00nopeek",
        "someone_elses_model",
    ]


@pytest.mark.slow
def test_one_attacker_process_and_the_attack_table(workdir: Workdir) -> None:
    validator = pytest.importorskip("splitnn.attacker.validator")
    cfg = workdir.config()
    # A stand-in validator: this test checks the plumbing, not how well reconstructions classify.
    path = validator.validator_path(cfg.model_dir, "mnist5k", 0)
    stand_in = validator.build_validator(0, 10).state_dict()
    save_checkpoint(path, stand_in, {"part": "validator", "seeding": SEEDING})
    ((spec, record),) = trained_classifiers(cfg).items()

    attack_one(AttackSpec(spec, "grid"), record, cfg)
    lines = write_attack_tables(cfg)

    (row,) = _csv(cfg.results_dir / "attack_performances.csv")
    assert lines[0].endswith("1 attackers written")
    assert row["classifier"] == "mnist5k_00noise_00nopeek_epoch=1"
    assert row["protocol"] == "noisy" and row["set_noise"] == ""
    assert 0.0 <= float(row["ssim"]) <= 1.0 and float(row["mse"]) >= 0.0
    assert (cfg.figures_dir / "reconstructions_noise.png").is_file()
