"""CSV rows are added or replaced by key and never dropped; means and standard errors; epsilon."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from splitnn.experiments.measure import epsilon
from splitnn.experiments.tables import aggregate, format_value, mean_se, read_rows, upsert_rows

COLUMNS = ("model", "test_accuracy")


def test_rerun_replaces_its_rows_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    upsert_rows(
        path,
        [{"model": "a", "test_accuracy": 90.0}, {"model": "b", "test_accuracy": 80.0}],
        key=("model",),
        columns=COLUMNS,
    )

    upsert_rows(
        path,
        [{"model": "b", "test_accuracy": 85.5}, {"model": "c", "test_accuracy": 70.0}],
        key=("model",),
        columns=COLUMNS,
    )

    header, rows = read_rows(path)
    assert header == ["model", "test_accuracy"]
    assert rows == [
        {"model": "a", "test_accuracy": "90"},
        {"model": "b", "test_accuracy": "85.5"},
        {"model": "c", "test_accuracy": "70"},
    ]


def test_columns_a_reader_added_survive(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("model,test_accuracy,note\na,90,keep me\nb,80,me too\n")

    upsert_rows(path, [{"model": "a", "test_accuracy": 91.0}], key=("model",), columns=COLUMNS)

    header, rows = read_rows(path)
    assert header == ["model", "test_accuracy", "note"]
    assert rows[0] == {"model": "a", "test_accuracy": "91", "note": ""}
    assert rows[1] == {"model": "b", "test_accuracy": "80", "note": "me too"}


def test_composite_keys(tmp_path: Path) -> None:
    path = tmp_path / "posttrain.csv"
    key = ("model", "noise_after")
    first = [{"model": "a", "noise_after": b, "test_accuracy": 1.0} for b in (0.0, 0.5)]
    upsert_rows(path, first, key=key, columns=COLUMNS)

    upsert_rows(path, [{"model": "a", "noise_after": 0.5, "test_accuracy": 2.0}], key=key,
                columns=COLUMNS)  # fmt: skip

    _, rows = read_rows(path)
    assert [(r["noise_after"], r["test_accuracy"]) for r in rows] == [("0", "1"), ("0.5", "2")]


def test_mean_and_standard_error_over_seeds() -> None:
    runs = [{"acc": 90.0}, {"acc": 92.0}, {"acc": 97.0}]

    out = aggregate(runs, ["acc"])

    assert out["acc"] == pytest.approx(93.0)
    # sample sd = sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13); SE = sqrt(13) / sqrt(3)
    assert out["acc_se"] == pytest.approx(math.sqrt(13) / math.sqrt(3))


def test_one_seed_has_no_standard_error() -> None:
    assert mean_se([95.5]) == (95.5, None)
    assert format_value(None) == ""
    with pytest.raises(ValueError):
        mean_se([])


def test_cells_are_written_plainly() -> None:
    assert format_value(math.inf) == "inf"
    assert format_value(0.1 + 0.2) == "0.3"
    assert format_value(97.84) == "97.84"
    assert format_value(3) == "3"
    assert format_value(True) == "true"


def test_epsilon_of_the_laplace_mechanism_on_the_tanh_cut() -> None:
    # L1 sensitivity 2 x 500 = 1000 per sample, epsilon = 1000 / b per release.
    assert epsilon(0.0) == math.inf
    assert epsilon(0.5) == pytest.approx(2000.0)
    assert epsilon(1.0) == pytest.approx(1000.0)
    assert epsilon(5.0) == pytest.approx(200.0)
