"""`splitnn-experiments performance` asked to measure nothing: it fails, and says what to ask.

The classifier is trained for real (a splitnn-server and splitnn-client pair, two batches).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_program

pytestmark = pytest.mark.slow  # starts splitnn-experiments as a process

RUN_S = 300.0


def _experiments(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    dirs = [f"--{name}-dir={root / name}" for name in ("model", "runs", "results", "data")]
    args = (*args, "--dataset", "mnist5k", "-q", *dirs)
    return run_program("splitnn-experiments", *args, cwd=root, timeout=RUN_S)


def test_performance_of_untrained_settings_fails_and_names_the_trained_ones(
    tmp_path: Path,
) -> None:
    empty = _experiments(tmp_path, "performance", "--epochs", "3")

    assert empty.returncode == 1, empty.stderr
    assert "no classifier of the grid is trained" in empty.stderr
    assert "run a training group first" in empty.stderr

    trained = _experiments(tmp_path, "plain", "--epochs", "1", "--max-steps", "2")
    assert trained.returncode == 0, trained.stderr

    other = _experiments(tmp_path, "performance", "--epochs", "3", "--seeds", "2")

    assert other.returncode == 1, other.stderr
    message = other.stderr
    asked = "--dataset mnist5k --epochs 3 --lr 0.0001 --seeds 2"
    assert f"no classifier of the grid is trained with these settings ({asked})" in message
    found = "--dataset mnist5k --epochs 1 --max-steps 2 --lr 0.0001: 1 run, seed 0"
    assert f"trained there (select them with these flags):\n  {found}" in message
    assert "model_performances.csv" not in other.stdout
    assert not (tmp_path / "results" / "model_performances.csv").exists()
