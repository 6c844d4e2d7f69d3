"""`splitnn-sim --threat`: which parties each threat model starts with which flags (no process
starts: the parties are replaced by fakes that record what they were given), what is refused, and
what the summary carries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from splitnn.common import exits
from splitnn.common.commands import AttackCommand, ClientCommand, HijackedCommand
from splitnn.common.credentials import Credentials
from splitnn.common.reports import AttackReport, GuardScore
from splitnn.sim import app
from splitnn.sim import cli as sim_cli
from splitnn.sim.app import SimConfig, SimSummary, at_step
from tests.unit.test_guard_usage import report

CURVE = [
    {"step": 10.0, "mse": 0.09, "psnr": 10.0, "ssim": 0.1, "validator_accuracy": 20.0,
     "train_mse": 0.08, "train_ssim": 0.2},
    {"step": 20.0, "mse": 0.05, "psnr": 13.0, "ssim": 0.4, "validator_accuracy": 60.0,
     "train_mse": 0.04, "train_ssim": 0.5},
]  # fmt: skip


def attack_report(**changes: Any) -> AttackReport:
    texts = ("classifier", "attacker", "dataset", "aux", "decoder", "protocol", "figure", "source")
    values: dict[str, Any] = {f.name: 0.0 for f in fields(AttackReport)}
    values |= dict.fromkeys(texts, "x") | {"aux_images": 1, "images": 1, "log_problem": None}
    values |= {"oracle": "lent", "baselines": {}, "baseline_classes": None}
    return AttackReport(**{**values, **changes})


class Parties:
    """What each party of one simulation was started with."""

    def __init__(self) -> None:
        self.server: list[str] = []
        self.start_timeout = 0.0
        self.client: list[ClientCommand] = []
        self.attacks: list[AttackCommand] = []
        self.hijacked: list[HijackedCommand] = []


@pytest.fixture
def parties(monkeypatch: pytest.MonkeyPatch) -> Parties:
    seen = Parties()

    @contextmanager
    def server(args: list[str], *, start_timeout: float) -> Iterator[Any]:
        seen.server = args
        seen.start_timeout = start_timeout
        yield type("Server", (), {"address": "127.0.0.1:1"})()

    def client(command: ClientCommand) -> Any:
        seen.client.append(command)
        return report(run="victim_run", head_checkpoint="heads/victim/r/h.head.ckpt")

    def attacker(command: AttackCommand) -> AttackReport:
        seen.attacks.append(command)
        baselines = {"mean_image": {"mse": 0.068}, "class_mean_image": {"mse": 0.053}}
        return attack_report(baselines=baselines)

    def hijacked(command: HijackedCommand) -> tuple[AttackReport, list[dict[str, float]]]:
        seen.hijacked.append(command)
        return attack_report(oracle="hijacked"), CURVE

    monkeypatch.setattr(app, "ServerProcess", server)
    monkeypatch.setattr(app, "certificates", lambda *_: (["--tls"], [Credentials()]))
    monkeypatch.setattr(app, "run_client", client)
    monkeypatch.setattr(app, "run_attacker", attacker)
    monkeypatch.setattr(app, "run_hijacked", hijacked)
    return seen


def test_the_default_threat_is_the_colluding_holders(parties: Parties, tmp_path: Path) -> None:
    summary = app.run(SimConfig(workdir=tmp_path, model_dir=tmp_path / "m"))

    (attack,) = parties.attacks
    assert attack.classifier == Path("c.ckpt") and attack.oracle is None
    assert "--hijack" not in parties.server and "--tap-log" in parties.server
    assert not parties.hijacked
    assert summary.threat == "colluding"
    assert (summary.attack_baseline_mean_mse, summary.attack_baseline_class_mse) == (0.068, 0.053)


def test_the_passive_server_never_gets_the_victims_part_1(parties: Parties, tmp_path: Path) -> None:
    cfg = SimConfig(threat="passive", workdir=tmp_path, model_dir=tmp_path / "m")

    summary = app.run(cfg)

    (attack,) = parties.attacks
    assert attack.classifier is None
    assert "--classifier" not in attack.args()
    assert (attack.oracle, attack.head) == (
        "substitute",
        cfg.model_dir / "heads/victim/r/h.head.ckpt",
    )
    assert "--hijack" not in parties.server and "--tap-log" in parties.server
    (victim,) = parties.client
    assert victim.send_indices and victim.deploy  # the harness's run, same as under collusion
    assert summary.threat == "passive"


def test_the_hijacking_server_is_started_and_its_snapshots_scored(
    parties: Parties, tmp_path: Path
) -> None:
    cfg = SimConfig(
        threat="fsha",
        aux="fashion-mnist",
        hijack_pretrain_steps=7,
        hijack_snapshot_every=3,
        workdir=tmp_path,
        model_dir=tmp_path / "m",
    )

    summary = app.run(cfg)

    server = parties.server
    assert server[server.index("--hijack") + 1] == "fsha"
    assert server[server.index("--hijack-data") + 1] == "fashion-mnist"
    assert server[server.index("--hijack-pretrain-steps") + 1] == "7"
    assert server[server.index("--hijack-snapshot-every") + 1] == "3"
    assert parties.start_timeout > 120.0  # it pre-trains before it listens
    assert not parties.attacks
    (scoring,) = parties.hijacked
    assert scoring.decoders == cfg.model_dir / "hijack" / app.VICTIM
    assert scoring.run == "victim_run"
    assert summary.threat == "fsha" and summary.attack_curve == CURVE
    assert summary.attack_at_alarm is None  # no guard, no alarm


@pytest.mark.parametrize(
    ("alarm", "step"), [(9, 10.0), (18, 10.0), (19, 20.0), (400, 20.0), (3, None)]
)
def test_the_row_at_the_alarm_is_the_last_snapshot_the_server_had(
    alarm: int, step: float | None
) -> None:
    row = at_step(CURVE, alarm)

    assert (row["step"] if row else None) == step


def test_the_summary_carries_the_score_curve_and_the_attack_at_the_alarm() -> None:
    scores = [GuardScore(25, 0.97), GuardScore(31, 0.2)]
    victim = report(guard="splitguard", guard_scores=scores, guard_detected_at_step=31)

    summary = SimSummary.of(
        victim, attack_report(), wire_log=Path("w"), seconds=1.0, threat="fsha", curve=CURVE
    )

    assert summary.guard_scores == [{"step": 25, "score": 0.97}, {"step": 31, "score": 0.2}]
    assert summary.attack_at_alarm == CURVE[1]
    assert (
        SimSummary.of(report(), attack_report(), wire_log=Path("w"), seconds=1.0).guard_scores
        is None
    )


def test_the_threats_flags_reach_the_settings(sim_settings: list[SimConfig]) -> None:
    CliRunner().invoke(sim_cli.main, ["--threat", "fsha", "--hijack-snapshot-every", "4"])
    CliRunner().invoke(sim_cli.main, ["--threat", "passive", "--substitute-epochs", "3"])
    CliRunner().invoke(sim_cli.main, [])

    fsha, passive, default = sim_settings
    assert (fsha.threat, fsha.hijack_snapshot_every) == ("fsha", 4)
    assert (passive.threat, passive.substitute_epochs) == ("passive", 3)
    assert default.threat == "colluding"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--threat", "fsha", "--holders", "2"], "--threat fsha attacks a lone victim"),
        (["--threat", "passive", "--holders", "3"], "--threat passive attacks a lone victim"),
        (["--hijack-snapshot-every", "5"], "--hijack-snapshot-every needs --threat fsha"),
        (["--threat", "fsha", "--substitute-epochs", "5"], "--substitute-epochs needs --threat"),
        (["--threat", "fsha", "--set-noise", "1"], "--set-noise queries a part 1"),
        (["--threat", "tiger"], "Invalid value for '--threat'"),
        (["--guard", "splitguard", "--holders", "2"], "--guard watches a lone victim"),
        (["--guard-multiplier", "2"], "--guard-multiplier needs --guard splitguard"),
    ],
)
def test_the_sim_refuses_flags_its_threat_or_guard_does_not_use(
    args: list[str], problem: str, sim_settings: list[SimConfig]
) -> None:
    result = CliRunner().invoke(sim_cli.main, args)

    assert result.exit_code == exits.USAGE
    assert problem in result.output
    assert not sim_settings
