"""splitnn-sim: server, victim and attacker as three real processes, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from splitnn.attacker.validator import validator_path

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
            "--validator-dir", str(tmp_path / "shared"), "--json", "-q"]  # fmt: skip
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
        # The trivial baselines, measured by the same attack on the same tensors.
        assert 0.0 < victim["attack_baseline_class_mse"] < 1.0
        assert 0.0 < victim["attack_baseline_mean_mse"] < 1.0
    # Each victim has its own part 1 and noise: their tensors, so their scores, differ.
    assert victims[0]["attack_mse"] != victims[1]["attack_mse"]
    # One decoder, trained on the colluder's part 1, serves every victim.
    assert len(list((tmp_path / "models" / "attackers").glob("*.ckpt"))) == 1
    # The validator is kept where --validator-dir says, not with the run's models.
    assert validator_path(tmp_path / "shared", "mnist5k", 0, 1).is_file()
    assert not list((tmp_path / "models").rglob("*validator*"))


def _sim(tmp_path: Path, *extra: str) -> dict[str, object]:
    """A few steps of `splitnn-sim` under `tmp_path`; its JSON summary."""
    args = [str(SIM), "--epochs", "1", "--attack-epochs", "1", "--validator-epochs", "1",
            "--workdir", str(tmp_path / "run"), "--model-dir", str(tmp_path / "models"),
            "--figure", str(tmp_path / "figure.png"), "--json", "-q", *extra]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


@pytest.mark.slow
def test_a_hijacking_server_against_a_guarded_victim(tmp_path: Path) -> None:
    # Execute: 12 steps; a fake batch is likely from step 2 on, and every one is scored.
    summary = _sim(
        tmp_path, "--threat", "fsha", "--max-steps", "12", "--hijack-pretrain-steps", "5",
        "--hijack-snapshot-every", "4", "--guard", "splitguard", "--guard-start-after", "2",
        "--guard-fake-probability", "0.5", "--validator-dir", str(tmp_path / "shared"),
    )  # fmt: skip
    # Assert
    assert summary["threat"] == "fsha"
    curve = summary["attack_curve"]
    assert isinstance(curve, list) and [row["step"] for row in curve] == [4, 8, 12]
    assert summary["attack_mse"] == curve[-1]["mse"]  # the final snapshot is the attack
    assert str(summary["attacker"]).endswith("decoder_step=12.ckpt")
    # `splitnn-attack hijacked` keeps its validator where --validator-dir says, of the epochs asked.
    assert validator_path(tmp_path / "shared", "mnist5k", 0, 1).is_file()
    scores = summary["guard_scores"]
    assert isinstance(scores, list) and scores  # 10 steps at P_f = 0.5: a fake batch, surely
    alarm = summary["guard_detected_at_step"]
    if isinstance(alarm, int):
        at = summary["attack_at_alarm"]
        assert at is None or (isinstance(at, dict) and at["step"] <= alarm + 1)
    assert isinstance(summary["attack_baseline_mean_mse"], float)
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_passive_server_attacks_from_its_wire_log_and_head(tmp_path: Path) -> None:
    summary = _sim(tmp_path, "--threat", "passive", "--max-steps", "4", "--substitute-epochs", "1")

    assert summary["threat"] == "passive"
    assert summary["attack_images"] == 500
    assert 0.0 <= float(summary["attack_ssim"]) <= 1.0  # type: ignore[arg-type]
    assert isinstance(summary["attack_baseline_class_mse"], float)
    assert "_substitute_" in Path(str(summary["attacker"])).name  # the decoder of no lent part 1
