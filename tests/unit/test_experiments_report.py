"""Attack rows, the honest-vs-clean pairing, and the composed reconstruction figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from splitnn.common.reports import AttackReport
from splitnn.experiments.attack_report import (
    ATTACK_COLUMNS,
    attack_row,
    protocol_rows,
    write_figures,
)
from splitnn.experiments.performance import MODEL_COLUMNS, POSTTRAIN_COLUMNS
from splitnn.experiments.records import AttackRecord

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


def _record(
    tmp_path: Path, family: str, *, noise: float, protocol: str = "noisy", ssim: float = 0.5
) -> AttackRecord:
    figure = tmp_path / f"{family}_{noise}_{protocol}.png"
    plt.imsave(figure, np.random.default_rng(0).random((20, 40)))
    stem = f"mnist5k_{noise}noise_00nopeek_epoch=3"
    return AttackRecord(
        family=family,
        model=f"mnist5k_{noise}noise_00nopeek",
        classifier_seed=0,
        noise=noise,
        nopeek=0.0,
        settings={"set_noise": None, "aux_fraction": 1.0, "decoder": "deep", "epochs": 30},
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
            mse=0.05,
            psnr=13.0,
            ssim=ssim,
            dcor=0.9,
            validator_accuracy=90.0,
            validator_accuracy_originals=98.0,
            figure=str(figure),
            source="log",
            log_problem=None,
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
    assert set(row) == set(ATTACK_COLUMNS)


def test_clean_attackers_are_paired_with_the_honest_one(tmp_path: Path) -> None:
    records = [
        _record(tmp_path, "grid", noise=1.0, ssim=0.3),
        _record(tmp_path, "clean", noise=1.0, protocol="clean", ssim=0.4),
        _record(tmp_path, "grid", noise=0.5, ssim=0.35),
        _record(tmp_path, "clean", noise=2.0, protocol="clean"),  # no honest partner
    ]

    rows = protocol_rows(records)

    assert [(r["noise"], r["ssim_noisy"], r["ssim_clean"]) for r in rows] == [(1.0, 0.3, 0.4)]


def test_figures_are_composed_from_the_attackers_pngs(tmp_path: Path) -> None:
    records = [_record(tmp_path, "grid", noise=b) for b in (0.0, 0.5)]
    records.append(_record(tmp_path, "clean", noise=0.5, protocol="clean"))

    written = write_figures(records, tmp_path / "figures")

    names = {p.name for p in written}
    assert {"reconstructions_noise.png", "reconstructions_protocol.png"} <= names
    assert "reconstructions_emnist.png" not in names
    assert all(plt.imread(p).shape[0] > 40 for p in written)
