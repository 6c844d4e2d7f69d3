"""Attack rows (per seed and averaged over seeds, with the baselines of the same run), the
honest-vs-clean pairing, the attacker's seed, and the composed reconstruction figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from splitnn.common.reports import AttackReport, RunReport
from splitnn.experiments.attack_report import (
    ATTACK_COLUMNS,
    ATTACK_RUN_COLUMNS,
    attack_row,
    attack_rows,
    protocol_rows,
    write_figures,
)
from splitnn.experiments.attacks import AttackSpec, attack_command, attack_settings
from splitnn.experiments.config import ExperimentConfig
from splitnn.experiments.grid import train_specs
from splitnn.experiments.performance import MODEL_COLUMNS, POSTTRAIN_COLUMNS
from splitnn.experiments.records import AttackRecord, ClassifierRecord

REQUIRED_ATTACK = [
    "classifier",
    "attacker",
    "set_noise",
    "aux",
    "aux_fraction",
    "decoder",
    "protocol",
    "mse",
    "psnr",
    "ssim",
    "dcor",
    "validator_accuracy",
]
REQUIRED_MODEL = [
    "model",
    "dataset",
    "noise",
    "nopeek",
    "seeds",
    "best_epoch",
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "dcor",
    "dcor_sent",
    "epsilon",
]


BASELINES = {
    "mean_image": {"mse": 0.07, "ssim": 0.1, "validator_accuracy": 10.0},
    "class_mean_image": {"mse": 0.055, "ssim": 0.3, "validator_accuracy": 93.0},
}


def _record(
    tmp_path: Path,
    family: str,
    *,
    noise: float,
    protocol: str = "noisy",
    ssim: float = 0.5,
    mse: float = 0.05,
    seed: int = 0,
    baselines: dict[str, dict[str, float]] | None = None,
) -> AttackRecord:
    figure = tmp_path / f"{family}_{noise}_{protocol}_{seed}.png"
    plt.imsave(figure, np.random.default_rng(0).random((20, 40)))
    tail = f"_seed{seed}" if seed else ""
    stem = f"mnist5k_{noise}noise_00nopeek{tail}_epoch=3"
    return AttackRecord(
        family=family,
        model=f"mnist5k_{noise}noise_00nopeek",
        classifier_seed=seed,
        noise=noise,
        nopeek=0.0,
        settings={
            "set_noise": None,
            "aux_fraction": 1.0,
            "decoder": "deep",
            "epochs": 30,
            "seed": seed,
        },
        report=AttackReport(
            classifier=f"models/classifiers/{stem}.ckpt",
            attacker=f"models/attackers/mnist_attacker_model{stem}_{protocol}.ckpt",
            dataset="mnist5k",
            deployed_noise=noise,
            set_noise=noise,
            aux="mnist5k",
            aux_fraction=1.0,
            aux_images=500,
            decoder="deep",
            protocol=protocol,
            images=500,
            mse=mse,
            psnr=13.0,
            ssim=ssim,
            dcor=0.9,
            validator_accuracy=90.0,
            validator_accuracy_originals=98.0,
            figure=str(figure),
            source="log",
            log_problem=None,
            baselines=BASELINES if baselines is None else baselines,
            baseline_classes="head",
        ),
        wall_seconds=1.0,
        finished_at="then",
    )


def test_tables_have_the_columns_the_issue_asks_for() -> None:
    assert list(ATTACK_COLUMNS[: len(REQUIRED_ATTACK)]) == REQUIRED_ATTACK
    assert list(MODEL_COLUMNS[: len(REQUIRED_MODEL)]) == REQUIRED_MODEL
    assert POSTTRAIN_COLUMNS[:3] == ("model", "noise_after", "test_accuracy")


def test_an_attack_row_names_classifier_and_attacker_by_stem(tmp_path: Path) -> None:
    row = attack_row(_record(tmp_path, "grid", noise=0.5))

    assert row["classifier"] == "mnist5k_0.5noise_00nopeek_epoch=3"
    assert row["attacker"].startswith("mnist_attacker_model")
    assert row["set_noise"] is None and row["protocol"] == "noisy"
    assert set(row) == set(ATTACK_RUN_COLUMNS)
    assert set(row) - {"seed"} <= set(ATTACK_COLUMNS)


def test_an_attack_row_carries_its_runs_baselines_and_margins(tmp_path: Path) -> None:
    row = attack_row(_record(tmp_path, "grid", noise=0.5, mse=0.05, ssim=0.5))

    assert row["baseline_mean_mse"] == 0.07 and row["baseline_class_mse"] == 0.055
    assert row["mse_margin_mean"] == pytest.approx(0.02)
    assert row["mse_margin_class"] == pytest.approx(0.005)  # positive: better than the baseline
    assert row["ssim_margin_class"] == pytest.approx(0.2)
    assert row["baseline_classes"] == "head"


def test_a_run_without_the_class_baseline_has_no_class_margin(tmp_path: Path) -> None:
    only_mean = {"mean_image": BASELINES["mean_image"]}
    row = attack_row(_record(tmp_path, "grid", noise=0.5, baselines=only_mean))

    assert row["mse_margin_mean"] == pytest.approx(0.02)
    assert row["baseline_class_mse"] is None and row["mse_margin_class"] is None


def test_seeds_of_one_attack_are_one_row_with_mean_and_standard_error(tmp_path: Path) -> None:
    records = [
        _record(tmp_path, "grid", noise=0.5, mse=m, seed=k)
        for k, m in ((1, 0.04), (0, 0.06), (2, 0.05))
    ]
    records.append(_record(tmp_path, "grid", noise=1.0, mse=0.08))

    rows = attack_rows(records)

    assert [(r["model"], r["seeds"]) for r in rows] == [
        ("mnist5k_0.5noise_00nopeek", 3),
        ("mnist5k_1.0noise_00nopeek", 1),
    ]
    three, one = rows
    assert three["mse"] == pytest.approx(0.05)
    assert three["mse_se"] == pytest.approx(0.01 / 3**0.5)
    assert three["mse_margin_class"] == pytest.approx(0.005)
    assert three["mse_margin_class_se"] == pytest.approx(0.01 / 3**0.5)
    assert three["attacker"].endswith("_epoch=3_noisy")  # the lowest seed's names
    assert three["attack"] == "mnist_attacker_modelmnist5k_0.5noise_00nopeek_deep"
    assert one["mse_se"] is None
    assert set(three) <= set(ATTACK_COLUMNS)


def _classifier_record(spec_name: str) -> ClassifierRecord:
    report = RunReport(
        run="r", dataset="mnist5k", dataset_description="d", noise=0.0, nopeek=0.0,
        eval_noise=0.0, epochs=2, batch_size=128, seed=1, best_epoch=2, train_accuracy=90.0,
        val_accuracy=90.0, test_accuracy=90.0, samples_per_second=1.0, train_seconds=1.0,
        checkpoint=f"models/classifiers/{spec_name}_epoch=2.ckpt",
        head_checkpoint=f"models/classifiers/{spec_name}_epoch=2.head.ckpt",
    )  # fmt: skip
    return ClassifierRecord(
        settings={}, report=report, wirelog="w.wirelog", wall_seconds=1.0, finished_at="then"
    )


def test_the_attacker_of_seed_k_has_seed_k(tmp_path: Path) -> None:
    cfg = ExperimentConfig(groups=("attacks",), data_dir=tmp_path)
    for classifier in train_specs("plain", dataset="mnist5k", seeds=3, epochs=2):
        spec = AttackSpec(classifier, "grid")
        record = _classifier_record(classifier.name)

        command = attack_command(spec, record, cfg, log=Path("w.wirelog"))

        assert command.seed == classifier.seed
        assert attack_settings(spec, record, cfg)["seed"] == classifier.seed


def test_clean_attackers_are_paired_with_the_honest_one(tmp_path: Path) -> None:
    records = [
        _record(tmp_path, "grid", noise=1.0, ssim=0.3),
        _record(tmp_path, "clean", noise=1.0, protocol="clean", ssim=0.4),
        _record(tmp_path, "grid", noise=0.5, ssim=0.35),
        _record(tmp_path, "clean", noise=2.0, protocol="clean"),  # no honest partner
    ]

    rows = protocol_rows(records)

    assert [(r["noise"], r["ssim_noisy"], r["ssim_clean"]) for r in rows] == [(1.0, 0.3, 0.4)]
    assert rows[0]["seeds"] == 1


def test_the_protocols_are_paired_seed_by_seed_and_averaged(tmp_path: Path) -> None:
    records = [
        _record(tmp_path, "grid", noise=1.0, ssim=0.3, seed=0),
        _record(tmp_path, "grid", noise=1.0, ssim=0.5, seed=1),
        _record(tmp_path, "clean", noise=1.0, protocol="clean", ssim=0.4, seed=0),
        _record(tmp_path, "clean", noise=1.0, protocol="clean", ssim=0.6, seed=1),
        _record(tmp_path, "grid", noise=1.0, ssim=0.9, seed=2),  # no clean partner of seed 2
    ]

    (row,) = protocol_rows(records)

    assert row["seeds"] == 2
    assert row["ssim_noisy"] == pytest.approx(0.4) and row["ssim_clean"] == pytest.approx(0.5)
    assert row["ssim_noisy_se"] == pytest.approx(0.1)


def test_figures_are_composed_from_the_attackers_pngs(tmp_path: Path) -> None:
    records = [_record(tmp_path, "grid", noise=b) for b in (0.0, 0.5)]
    records.append(_record(tmp_path, "clean", noise=0.5, protocol="clean"))

    written = write_figures(records, tmp_path / "figures")

    names = {p.name for p in written}
    assert {"reconstructions_noise.png", "reconstructions_protocol.png"} <= names
    assert "reconstructions_emnist.png" not in names
    assert all(plt.imread(p).shape[0] > 40 for p in written)
