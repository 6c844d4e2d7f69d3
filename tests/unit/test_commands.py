"""The orchestrators' command lines are what the programs' own parsers accept, field by field."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click
import pytest

from splitnn.attacker.cli import main as attack_main
from splitnn.client.cli import main as client_main
from splitnn.common.commands import AttackCommand, ClientCommand, HijackedCommand
from splitnn.common.credentials import Credentials

CLIENT = ClientCommand(
    server="127.0.0.1:5",
    dataset="mnist5k",
    noise=0.5,
    nopeek=0.25,
    epochs=3,
    batch_size=32,
    lr=0.0001,
    seed=7,
    max_steps=4,
    threads=2,
    from_checkpoint=Path("models/classifiers/a.ckpt"),
    eval_noise=1.5,
    model_dir=Path("m"),
    data_dir=Path("d"),
    deploy=True,
    restart=True,
    send_indices=True,
    quiet=True,
    credentials=Credentials(ca=Path("ca.pem"), cert=Path("v.pem"), key=Path("v.key")),
    group="clinics",
    holder=2,
    holders=3,
    partition="dirichlet",
    alpha=0.3,
    run="r1",
    guard="splitguard",
    guard_start_after=5,
    guard_fake_probability=0.25,
    guard_multiplier=4.0,
    guard_exponent=3.0,
    dp_epsilon=3.0,
    dp_delta=1e-6,
    dp_max_grad_norm=0.5,
    guard_threshold=0.75,
    guard_action="stop",
)
ATTACK = AttackCommand(
    classifier=Path("models/classifiers/a.ckpt"),
    from_log=Path("runs/wire.log"),
    oracle="lent",
    head=Path("models/heads/h.head.ckpt"),
    dataset="mnist5k",
    aux="fashion-mnist",
    aux_fraction=0.25,
    set_noise=0.1,
    decoder="study",
    protocol="clean",
    epochs=3,
    seed=2,
    model_dir=Path("m"),
    data_dir=Path("d"),
    figure=Path("f.png"),
    validator_epochs=1,
    run="victim_run",
    substitute_epochs=7,
)
HIJACKED = HijackedCommand(
    from_log=Path("runs/wire.log"),
    decoders=Path("m"),
    run="victim_run",
    dataset="mnist5k",
    data_dir=Path("d"),
    model_dir=Path("m"),
    seed=3,
    validator_epochs=2,
    curve=Path("c.csv"),
    figure=Path("f.png"),
    quiet=True,
)


@pytest.fixture(autouse=True)
def _files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files and folders the commands name, which the parsers check exist."""
    monkeypatch.chdir(tmp_path)
    for folder in ("m", "d", "models/classifiers", "runs"):
        Path(folder).mkdir(parents=True)
    for name in ("models/classifiers/a.ckpt", "runs/wire.log", "ca.pem", "v.pem", "v.key"):
        Path(name).write_text("x")


def _parse(command: click.Command, args: list[str]) -> dict[str, object]:
    with command.make_context(command.name or "prog", args) as ctx:
        return dict(ctx.params)


def test_every_client_field_reaches_the_client_parser() -> None:
    params = _parse(client_main, CLIENT.args())

    for f in fields(ClientCommand):
        if f.name == "credentials":  # five options, gathered into one argument when run
            files = [params[n] for n in ("tls_ca", "tls_cert", "tls_key")]
            assert files == [CLIENT.credentials.ca, CLIENT.credentials.cert, CLIENT.credentials.key]
            continue
        assert params[f.name] == getattr(CLIENT, f.name), f.name
    assert params["as_json"] is True


def test_every_attack_field_reaches_the_attack_parser() -> None:
    args = ATTACK.args()
    assert args[0] == "run"
    run = attack_main.commands["run"]

    params = _parse(run, args[1:])

    for f in fields(AttackCommand):
        if f.name == "quiet":
            continue  # a flag of the group, before "run"
        assert params[f.name] == getattr(ATTACK, f.name), f.name
    assert params["as_json"] is True


def test_every_hijacked_field_reaches_the_hijacked_parser() -> None:
    args = HIJACKED.args()
    assert args[:2] == ["-q", "hijacked"]

    params = _parse(attack_main.commands["hijacked"], args[2:])

    for f in fields(HijackedCommand):
        if f.name == "quiet":
            continue  # a flag of the group, before "hijacked"
        assert params[f.name] == getattr(HIJACKED, f.name), f.name
    assert params["as_json"] is True


@pytest.mark.parametrize("value", [0.1, 1e-05, 2.0])
def test_floats_pass_exactly(value: float) -> None:
    params = _parse(client_main, ClientCommand(server="s", noise=value).args())

    assert params["noise"] == value


def test_fields_left_out_keep_the_programs_defaults() -> None:
    assert ClientCommand(server="s").args() == ["--server", "s", "--json"]
    assert AttackCommand(classifier=Path("c"), from_log=Path("l")).args() == [
        "run", "--classifier", "c", "--from-log", "l", "--json",
    ]  # fmt: skip
