"""splitnn-sim: server, victim and attacker as three real processes, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SIM = Path(sys.executable).parent / "splitnn-sim"


@pytest.mark.slow
def test_three_processes_train_intercept_and_attack(tmp_path: Path) -> None:
    # Prepare
    figure = tmp_path / "figure.png"
    args = [
        str(SIM),
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--attack-epochs",
        "1",
        "--validator-epochs",
        "1",
        "--noise",
        "0.5",
        "--workdir",
        str(tmp_path / "run"),
        "--model-dir",
        str(tmp_path / "models"),
        "--figure",
        str(figure),
        "--json",
        "-q",
    ]
    # Execute
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    # Assert
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in (
        "test_accuracy",
        "attack_mse",
        "attack_psnr",
        "attack_ssim",
        "attack_validator_accuracy",
        "figure",
    ):
        assert key in summary, key
    assert summary["noise"] == 0.5
    assert summary["attack_images"] == 500  # the whole attack-evaluation slice was intercepted
    assert 0.0 <= summary["attack_ssim"] <= 1.0 and summary["attack_mse"] > 0.0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = tmp_path / "run" / "wire.log"
    assert log.stat().st_size > 500 * 500 * 4  # every deployment tensor crossed the wire
    assert list((tmp_path / "models" / "attackers").glob("mnist_attacker_model*_05noise_*.ckpt"))
