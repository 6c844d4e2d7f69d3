"""`splitnn-experiments` as a real process: a smoke run of the plain group and the tables.

Every training run inside it is a real splitnn-server and splitnn-client pair over loopback.
"""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dcor
import pytest
import torch

from splitnn.attacker.intercept import stack_records
from splitnn.attacker.validator import build_validator, validator_path
from splitnn.common.checkpoints import save_checkpoint
from splitnn.common.datasets import load_splits
from splitnn.common.seeds import SEEDING
from splitnn.common.wirelog import read_wirelog
from splitnn.experiments.attack_report import write_attack_tables
from splitnn.experiments.attacks import (
    AttackSpec,
    attack_one,
    deployment_log,
    trained_classifiers,
)
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.measure import DCOR_SAMPLES, load_classifier
from splitnn.experiments.records import fingerprint
from tests.conftest import run_program

pytestmark = pytest.mark.slow  # every test reads what one real splitnn-experiments run wrote

RUN_S = 300.0
SMOKE = ["--dataset", "mnist5k", "--epochs", "1", "--max-steps", "2"]
REDEPLOY_NOISE = 0.5


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
    return run_program("splitnn-experiments", *args, cwd=root, timeout=RUN_S)


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
    assert model["best_epoch"] == "1"
    assert [row["noise_after"] for row in posttrain] == ["0", "0.1", "0.2", "0.5", "1", "1.5", "2"]
    assert posttrain[0]["test_accuracy"] == model["test_accuracy"]  # b = 0 after training: as is
    assert (results / "figures" / "posttrain_noise.png").stat().st_size > 0
    assert "epsilon" in (results / "epsilon.txt").read_text()


def test_the_table_holds_what_the_trained_checkpoints_give(workdir: Workdir) -> None:
    """Noise 0: accuracies and dCor are deterministic functions of the two checkpoints, so the
    table's numbers are recomputed here, dCor by the `dcor` package on the test images."""
    ((_, record),) = trained_classifiers(workdir.config()).items()
    body, head = load_classifier(
        Path(record.report.checkpoint), Path(record.report.head_checkpoint)
    )
    splits = load_splits("mnist5k", root=workdir.root / "data")
    (model,) = _csv(workdir.root / "results" / "model_performances.csv")

    with torch.no_grad():
        for name, subset in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            predicted = head(body(subset.images)).argmax(dim=1)
            accuracy = 100.0 * float((predicted == subset.labels).double().mean())
            # One image's worth (0.2 %) of room: another thread count may round a tie apart.
            assert float(model[f"{name}_accuracy"]) == pytest.approx(accuracy, abs=100 / 500)
        images = splits.test.images.reshape(len(splits.test), -1).double().numpy()
        cut = body(splits.test.images).double().numpy()
    assert len(images) <= DCOR_SAMPLES  # the table's dCor is on the whole test slice
    assert float(model["dcor"]) == pytest.approx(dcor.distance_correlation(images, cut), rel=1e-4)
    assert float(model["dcor_unbiased"]) == pytest.approx(
        dcor.u_distance_correlation_sqr(images, cut), rel=1e-4
    )
    # Nothing was added to the cut: what was sent is the cut.
    assert model["dcor_sent"] == model["dcor"]
    assert model["dcor_sent_unbiased"] == model["dcor_unbiased"]


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


def test_one_attacker_process_and_the_attack_table(workdir: Workdir) -> None:
    cfg = workdir.config()
    # A stand-in validator: this test checks the plumbing, not how well reconstructions classify.
    path = validator_path(cfg.model_dir, "mnist5k", 0)
    stand_in = build_validator(0, 10).state_dict()
    save_checkpoint(path, stand_in, {"part": "validator", "seeding": SEEDING})
    ((spec, record),) = trained_classifiers(cfg).items()

    attacked = attack_one(AttackSpec(spec, "grid"), record, cfg)
    lines = write_attack_tables(cfg)

    (row,) = _csv(cfg.results_dir / "attack_performances.csv")
    assert lines[1].endswith("from 1 attackers written")
    assert row["classifier"] == "mnist5k_00noise_00nopeek_epoch=1"
    assert row["protocol"] == "noisy" and row["set_noise"] == ""
    assert attacked.report.images == 500 and attacked.report.source == record.wirelog
    # The table carries the attacker's own scores.
    for score in ("mse", "psnr", "ssim", "dcor"):
        assert float(row[score]) == pytest.approx(getattr(attacked.report, score), rel=1e-5)
    assert (cfg.figures_dir / "reconstructions_noise.png").is_file()


def test_a_post_training_noise_attacker_gets_a_redeployment_with_that_noise(
    workdir: Workdir,
) -> None:
    """The redeployment of the `attacks` group: a real server and data holder deploy the trained
    checkpoint again with Laplace noise b; the server's wire log holds exactly that."""
    cfg = workdir.config()
    ((spec, record),) = trained_classifiers(cfg).items()
    attacker = AttackSpec(spec, "posttrain", set_noise=REDEPLOY_NOISE)

    log = read_wirelog(deployment_log(attacker, record, cfg))

    assert log.problem is None and {r.split for r in log.records} == {"attack"}
    sent, indices = stack_records(log.records)
    splits = load_splits("mnist5k", root=workdir.root / "data")
    assert sorted(indices.tolist()) == sorted(splits.attack.indices.tolist())
    row_of = {int(index): row for row, index in enumerate(splits.attack.indices)}
    images = splits.attack.images[[row_of[int(i)] for i in indices]]
    body, _ = load_classifier(Path(record.report.checkpoint), Path(record.report.head_checkpoint))
    with torch.no_grad():
        noise = (sent - body(images)).double()
    # Laplace(0, b) has mean 0 and mean absolute value b; on 250,000 draws both estimates are
    # within 0.002 of that (one standard error: b / 500), far inside the bounds below.
    assert abs(float(noise.mean())) < 0.02
    assert float(noise.abs().mean()) == pytest.approx(REDEPLOY_NOISE, abs=0.02)
    # The classifier's own deployment (trained and deployed without noise) is left as it was.
    original = read_wirelog(Path(record.wirelog))
    clean, _ = stack_records(original.records)
    assert float(clean.abs().max()) <= 1.0  # tanh-bounded: no noise on it
