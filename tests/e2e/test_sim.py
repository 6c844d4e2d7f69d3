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


@pytest.mark.slow
def test_holders_colluder_attacks_every_other_holder(tmp_path: Path) -> None:
    # Prepare: 3 holders in a shared-head group; holder 2 colludes, the victims use b = 0.5.
    figure = tmp_path / "figure.png"
    args = [str(SIM), "--holders", "3", "--topology", "shared-head", "--colluder", "2",
            "--noise", "0.5", "--epochs", "1", "--max-steps", "2", "--attack-epochs", "1",
            "--validator-epochs", "1", "--workdir", str(tmp_path / "run"),
            "--model-dir", str(tmp_path / "models"), "--figure", str(figure),
            "--json", "-q"]  # fmt: skip
    # Execute
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    # Assert
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["topology"], summary["holders"], summary["colluder"]) == ("shared-head", 3, 2)
    assert [m["holder"] for m in summary["members"]] == [0, 1, 2]
    assert [m["noise"] for m in summary["members"]] == [0.5, 0.5, 0.0]
    assert sum(m["samples"] for m in summary["members"]) == 3000
    victims = summary["victims"]
    assert [v["holder"] for v in victims] == [0, 1]
    accuracy = {m["holder"]: m["test_accuracy"] for m in summary["members"]}
    for victim in victims:
        assert victim["test_accuracy"] == accuracy[victim["holder"]]
        assert 0.0 <= victim["attack_ssim"] <= 1.0 and victim["attack_mse"] > 0.0
        assert 0.0 <= victim["attack_validator_accuracy"] <= 100.0
        assert Path(victim["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each victim has its own part 1 and noise: their tensors, so their scores, differ.
    assert victims[0]["attack_mse"] != victims[1]["attack_mse"]
    # One decoder, trained on the colluder's part 1, serves every victim.
    assert len(list((tmp_path / "models" / "attackers").glob("*.ckpt"))) == 1
