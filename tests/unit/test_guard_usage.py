"""The guard's flags of splitnn-client and splitnn-sim: what reaches the settings, what is refused
(exit 2, one line, before anything starts), what the help and the reports say, and exit code 4."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from splitnn import programs
from splitnn.client import cli as client_cli
from splitnn.client.config import ClientConfig
from splitnn.client.guard import GuardSettings
from splitnn.common import exits
from splitnn.common.credentials import Credentials
from splitnn.common.reports import AttackReport, GuardScore, RunReport
from splitnn.sim import cli as sim_cli
from splitnn.sim.app import SimConfig, SimSummary, holder_command

SERVER = ["--server", "127.0.0.1:1"]


def report(**changes: Any) -> RunReport:
    fields: dict[str, Any] = {
        "run": "r",
        "dataset": "mnist5k",
        "dataset_description": "mnist5k",
        "noise": 0.0,
        "nopeek": 0.0,
        "eval_noise": 0.0,
        "epochs": 1,
        "batch_size": 128,
        "seed": 0,
        "best_epoch": 1,
        "train_accuracy": 50.0,
        "val_accuracy": 50.0,
        "test_accuracy": 50.0,
        "samples_per_second": 1.0,
        "train_seconds": 1.0,
        "checkpoint": "c.ckpt",
        "head_checkpoint": "c.head.ckpt",
    }
    return RunReport(**{**fields, **changes})


@pytest.fixture
def client_settings(monkeypatch: pytest.MonkeyPatch) -> list[ClientConfig]:
    """The settings each client run would have been started with (nothing starts)."""
    seen: list[ClientConfig] = []

    def run(cfg: ClientConfig) -> RunReport:
        seen.append(cfg)
        return report(guard=cfg.guard)

    monkeypatch.setattr(client_cli, "run", run)
    return seen


def test_the_client_has_no_guard_by_default(client_settings: list[ClientConfig]) -> None:
    result = CliRunner().invoke(client_cli.main, SERVER)

    assert result.exit_code == 0, result.output
    (cfg,) = client_settings
    assert cfg.guard is None
    assert cfg.guard_settings == GuardSettings()


def test_the_guards_flags_reach_the_clients_settings(client_settings: list[ClientConfig]) -> None:
    flags = ["--guard", "splitguard", "--guard-start-after", "7", "--guard-action", "stop"]
    flags += ["--guard-fake-probability", "0.2", "--guard-multiplier", "3"]
    flags += ["--guard-exponent", "1.5", "--guard-threshold", "0.75"]

    result = CliRunner().invoke(client_cli.main, [*SERVER, *flags])

    assert result.exit_code == 0, result.output
    (cfg,) = client_settings
    assert cfg.guard == "splitguard"
    assert cfg.guard_settings == GuardSettings(
        start_after=7,
        fake_probability=0.2,
        multiplier=3.0,
        exponent=1.5,
        threshold=0.75,
        action="stop",
    )


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--guard", "splitguard", "--group", "g"], "--guard watches a lone holder"),
        (["--guard-threshold", "0.3"], "--guard-threshold needs --guard splitguard"),
        (["--guard", "none", "--guard-action", "stop"], "--guard-action needs --guard"),
        (["--guard", "other"], "'other' is not one of"),
        (["--guard", "splitguard", "--guard-start-after", "-1"], "--guard-start-after"),
        (["--guard", "splitguard", "--guard-fake-probability", "0"], "0<x<=0.5"),
        (["--guard", "splitguard", "--guard-fake-probability", "0.6"], "0<x<=0.5"),
        (["--guard", "splitguard", "--guard-multiplier", "0"], "--guard-multiplier"),
        (["--guard", "splitguard", "--guard-exponent", "-2"], "--guard-exponent"),
        (["--guard", "splitguard", "--guard-threshold", "1"], "0<x<1"),
        (["--guard", "splitguard", "--guard-threshold", "0"], "0<x<1"),
        (["--guard", "splitguard", "--guard-action", "panic"], "'panic' is not one of"),
    ],
)
def test_the_client_refuses_bad_guard_flags(
    args: list[str], problem: str, client_settings: list[ClientConfig]
) -> None:
    result = CliRunner().invoke(client_cli.main, [*SERVER, *args])

    assert result.exit_code == exits.USAGE
    assert problem in result.output
    assert "Traceback" not in result.output
    assert not client_settings


def test_the_client_refuses_the_guard_on_a_trained_model(
    tmp_path: Path, client_settings: list[ClientConfig]
) -> None:
    trained = tmp_path / "trained.ckpt"
    trained.write_bytes(b"x")

    args = [*SERVER, "--guard", "splitguard", "--from-checkpoint", str(trained)]
    result = CliRunner().invoke(client_cli.main, args)

    assert result.exit_code == exits.USAGE
    assert "not with --from-checkpoint" in result.output
    assert not client_settings


def test_the_clients_help_shows_the_guard_an_example_and_exit_code_4() -> None:
    result = CliRunner().invoke(client_cli.main, ["--help"])

    assert result.exit_code == 0
    for flag in ("--guard [none|splitguard]", "--guard-start-after", "--guard-threshold"):
        assert flag in result.output
    assert "--guard splitguard --guard-action stop" in result.output
    assert "\n    4 " in result.output
    assert exits.ALARM in programs.EXIT_CODES["splitnn-client"]


def test_the_alarm_is_exit_code_4() -> None:
    assert exits.ALARM == 4
    assert exits.exit_code(exits.Alarm("flagged")) == 4
    assert 4 in exits.MEANINGS


def test_the_clients_summary_names_the_alarm(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = [GuardScore(25, 0.97), GuardScore(31, 0.2)]
    flagged = report(guard="splitguard", guard_scores=scores, guard_detected_at_step=31)
    monkeypatch.setattr(client_cli, "run", lambda cfg: flagged)

    result = CliRunner().invoke(client_cli.main, SERVER)

    assert "guard splitguard: 2 scores, lowest score 0.200; ALARM at step 31" in result.output


def test_the_report_round_trips_the_guard() -> None:
    flagged = report(
        guard="splitguard", guard_scores=[GuardScore(25, 0.2)], guard_detected_at_step=25
    )

    assert RunReport.from_json(flagged.to_json()) == flagged
    assert RunReport.from_json(report().to_json()).guard is None


def test_the_sims_guard_flags_reach_its_victims_command(sim_settings: list[SimConfig]) -> None:
    args = ["--guard", "splitguard", "--guard-threshold", "0.6", "--guard-action", "stop"]

    CliRunner().invoke(sim_cli.main, args)

    (cfg,) = sim_settings
    command = holder_command(
        cfg, server="127.0.0.1:1", credentials=Credentials(), noise=0.0, nopeek=0.0
    )
    assert command.guard == "splitguard"
    assert (command.guard_threshold, command.guard_action) == (0.6, "stop")
    assert command.guard_start_after == GuardSettings.start_after
    assert "--guard" in command.args() and "--guard-threshold" in command.args()


def test_the_sims_victim_has_no_guard_by_default(sim_settings: list[SimConfig]) -> None:
    CliRunner().invoke(sim_cli.main, [])

    (cfg,) = sim_settings
    command = holder_command(
        cfg, server="127.0.0.1:1", credentials=Credentials(), noise=0.0, nopeek=0.0
    )
    assert command.guard is None
    assert not [arg for arg in command.args() if arg.startswith("--guard")]


def test_the_sims_summary_carries_the_victims_guard() -> None:
    texts = ("classifier", "attacker", "dataset", "aux", "decoder", "protocol", "figure", "source")
    attack_fields: dict[str, Any] = {f.name: 0.0 for f in fields(AttackReport)}
    attack_fields |= dict.fromkeys(texts, "x") | {"aux_images": 1, "images": 1, "log_problem": None}
    attack_fields |= {"oracle": "lent", "baselines": {}, "baseline_classes": None}
    attack = AttackReport(**attack_fields)
    scores = [GuardScore(25, 0.97), GuardScore(31, 0.2), GuardScore(40, 0.6)]
    victim = report(guard="splitguard", guard_scores=scores, guard_detected_at_step=31)

    summary = SimSummary.of(victim, attack, wire_log=Path("w.log"), seconds=1.0).to_json()
    plain = SimSummary.of(report(), attack, wire_log=Path("w.log"), seconds=1.0).to_json()

    assert summary["guard"] == "splitguard"
    assert summary["guard_detected_at_step"] == 31
    assert summary["guard_lowest_score"] == 0.2
    assert (plain["guard"], plain["guard_detected_at_step"], plain["guard_lowest_score"]) == (
        None,
        None,
        None,
    )
