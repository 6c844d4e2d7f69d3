"""What every splitnn program shares: --version, its help's environment prefix, exit codes and
example, the options' common ranges, and the one exception -> exit-code map. No process starts."""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import splitnn
from splitnn import programs
from splitnn.attacker.cli import main as attack_main
from splitnn.certs.cli import main as certs_main
from splitnn.client.cli import main as client_main
from splitnn.client.resume import ResumeError
from splitnn.client.transport import ServerUnreachable
from splitnn.common import exits
from splitnn.common.datasets import DatasetError
from splitnn.experiments.cli import main as experiments_main
from splitnn.server.cli import main as server_main
from splitnn.server.security import SecurityError
from splitnn.sim.cli import main as sim_main

PROGRAMS: dict[str, click.Command] = {
    "splitnn-server": server_main,
    "splitnn-client": client_main,
    "splitnn-attack": attack_main,
    "splitnn-sim": sim_main,
    "splitnn-experiments": experiments_main,
    "splitnn-certs": certs_main,
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_program_answers_version(name: str) -> None:
    result = CliRunner().invoke(PROGRAMS[name], ["--version"])

    assert result.exit_code == 0
    assert result.output.strip() == f"{name}, version {version('splitnn')}"


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_help_names_its_environment_prefix_exit_codes_and_an_example(name: str) -> None:
    result = CliRunner().invoke(PROGRAMS[name], ["--help"])

    assert result.exit_code == 0
    prefix = name.upper().replace("-", "_") + "_"
    assert f"Environment: {prefix}" in result.output
    assert "Exit codes:" in result.output
    for code in programs.EXIT_CODES[name]:
        assert f"\n    {code} " in result.output
    example = _example(result.output, name)
    # The example's flags exist (their values are checked by the range tests below).
    assert CliRunner().invoke(PROGRAMS[name], [*example, "--help"]).exit_code == 0


def _example(help_text: str, name: str) -> list[str]:
    """The arguments of the one example in `help_text` (after ``Example``)."""
    after = help_text[help_text.index("Example") :].replace("\\\n", " ")
    line = next(line for line in after.splitlines() if f"{name} " in line)
    return shlex.split(line[line.index(f"{name} ") + len(name) :])


@pytest.mark.parametrize(
    ("option", "value"),
    [("NOISE", "0.5"), ("BATCH_SIZE", "64"), ("HOLDERS", "3")],
)
def test_the_environment_prefix_is_honoured(
    option: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def record(cfg: object) -> None:
        seen.update(vars(cfg))
        raise KeyboardInterrupt

    monkeypatch.setattr("splitnn.sim.cli.run", record)
    monkeypatch.setattr("splitnn.sim.cli.run_multi", record)

    result = CliRunner().invoke(sim_main, [], env={f"SPLITNN_SIM_{option}": value})

    assert result.exit_code == exits.INTERRUPTED

    assert str(seen[option.lower()]) == value


@pytest.mark.parametrize(
    ("main", "args", "problem"),
    [
        (sim_main, ["--batch-size", "2048"], "2048 is not in the range 2<=x<=1024"),
        (client_main, ["--batch-size", "2048"], "2048 is not in the range 2<=x<=1024"),
        (sim_main, ["--epochs", "10001"], "10001 is not in the range 1<=x<=10000"),
        (experiments_main, ["all", "--epochs", "10001"], "10001 is not in the range"),
        (client_main, ["--epochs", "0"], "0 is not in the range 1<=x<=10000"),
        (sim_main, ["--noise", "-1"], "-1.0 is not in the range 0.0<=x<=1000000.0"),
        (sim_main, ["--noise", "2e6"], "not in the range 0.0<=x<=1000000.0"),
        (client_main, ["--noise", "2e6"], "not in the range 0.0<=x<=1000000.0"),
        (sim_main, ["--colluder-noise", "2e6"], "not in the range 0.0<=x<=1000000.0"),
        (experiments_main, ["all", "--lr", "2"], "2.0 is not in the range 0.0<x<=1.0"),
        (client_main, ["--lr", "0"], "0.0 is not in the range 0.0<x<=1.0"),
        (sim_main, ["--seed", "-1"], "-1 is not in the range x>=0"),
        (server_main, ["--seed", "-1"], "-1 is not in the range x>=0"),
        (sim_main, ["--holders", "65"], "65 is not in the range 1<=x<=64"),
        (sim_main, ["--holders", "2", "--alpha", "1"], "--alpha needs --partition dirichlet"),
        (client_main, ["--group", "g", "--alpha", "1"], "--alpha needs --partition dirichlet"),
    ],
)
def test_shared_options_have_one_range_everywhere(
    main: click.Command, args: list[str], problem: str
) -> None:
    result = CliRunner().invoke(main, args)

    assert result.exit_code == exits.USAGE
    assert problem in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ServerUnreachable("no answer"), exits.UNREACHABLE),
        (ResumeError("a state to resume"), exits.USAGE),
        (SecurityError("plaintext off loopback"), exits.USAGE),
        (DatasetError("corrupt"), exits.FAILED),
        (FileNotFoundError(2, "No such file or directory", "x.pem"), exits.FAILED),
        (KeyboardInterrupt(), exits.INTERRUPTED),
        (ZeroDivisionError("a bug"), None),
    ],
)
def test_the_exit_code_map(error: BaseException, code: int | None) -> None:
    assert exits.exit_code(error) == code


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (ServerUnreachable("no server at h:1"), 3, "splitnn-client: no server at h:1\n"),
        (KeyboardInterrupt(), 130, "splitnn-client: interrupted\n"),
        (PermissionError(13, "Permission denied", "models"), 1, "models: Permission denied"),
    ],
)
def test_a_program_ends_with_the_code_of_its_error(
    error: BaseException, code: int, line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(cfg: object) -> None:
        raise error

    monkeypatch.setattr("splitnn.client.cli.run", fail)

    result = CliRunner().invoke(client_main, ["--server", "127.0.0.1:1"])

    assert result.exit_code == code
    assert line in result.output
    assert "Traceback" not in result.output


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("splitnn.client.cli.run", lambda cfg: 1 / 0)

    result = CliRunner().invoke(client_main, ["--server", "127.0.0.1:1"])

    assert isinstance(result.exception, ZeroDivisionError)


def test_importing_splitnn_leaves_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    before = dict(os.environ)

    importlib.reload(splitnn)

    assert dict(os.environ) == before


@pytest.mark.parametrize(("given", "expected"), [(None, "ERROR"), ("DEBUG", "DEBUG")])
def test_the_launcher_quiets_grpc_unless_told_otherwise(
    given: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRPC_VERBOSITY", given or "")  # restored, or removed, afterwards
    if given is None:
        monkeypatch.delenv("GRPC_VERBOSITY")
    monkeypatch.setattr(sys, "argv", ["splitnn-certs", "--version"])

    with pytest.raises(SystemExit) as ended:
        programs.certs()

    assert ended.value.code == 0
    assert os.environ["GRPC_VERBOSITY"] == expected


@pytest.mark.parametrize(
    ("main", "target", "args", "settings"),
    [
        (server_main, "splitnn.server.cli.serve", ["--port", "0"], "ServerConfig"),
        (client_main, "splitnn.client.cli.run", [], "ClientConfig"),
        (
            attack_main,
            "splitnn.attacker.cli.run_attack",
            ["run", "--live", "h:1", "--classifier", "c.ckpt"],
            "AttackConfig",
        ),
        (sim_main, "splitnn.sim.cli.run", [], "SimConfig"),
        (sim_main, "splitnn.sim.cli.run_multi", ["--holders", "2"], "MultiConfig"),
        (experiments_main, "splitnn.experiments.cli.run", ["all"], "ExperimentConfig"),
    ],
)
def test_every_option_reaches_the_settings(
    main: click.Command,
    target: str,
    args: list[str],
    settings: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[object] = []

    def record(cfg: object, **_: object) -> None:
        built.append(cfg)
        raise KeyboardInterrupt

    monkeypatch.setattr(target, record)

    result = CliRunner().invoke(main, args)

    assert result.exit_code == exits.INTERRUPTED, result.output
    assert [type(cfg).__name__ for cfg in built] == [settings]


def test_settings_refuse_an_option_they_have_no_field_for() -> None:
    from splitnn.client.config import ClientConfig
    from splitnn.options import config_from

    with pytest.raises(TypeError, match="ClientConfig has no field for the options colour"):
        config_from(ClientConfig, {"noise": 0.5, "colour": "red"})
    assert config_from(ClientConfig, {"noise": 0.5}, seed=3).seed == 3


ATTACK_FLAGS = {"-v", "--verbose", "-q", "--quiet", "--version"}
IMPLIED = {"--from-log": "run", "--live": "run"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--from-log", "w.log", "--json"], ["run", "--from-log", "w.log", "--json"]),
        (["--from-log=w.log"], ["run", "--from-log=w.log"]),
        (["-q", "-vv", "--live", "h:1"], ["-q", "-vv", "run", "--live", "h:1"]),
        (["run", "--from-log", "w.log"], ["run", "--from-log", "w.log"]),
        (["inspect", "--from-log"], ["inspect", "--from-log"]),
        (["--help", "--from-log", "w.log"], ["--help", "--from-log", "w.log"]),
        (["-x", "--from-log", "w.log"], ["-x", "--from-log", "w.log"]),
        ([], []),
    ],
)
def test_an_option_implies_its_subcommand_only_before_any_other_word(
    args: list[str], expected: list[str]
) -> None:
    assert programs.with_implied_subcommand(args, ATTACK_FLAGS, IMPLIED) == expected


def test_the_attackers_short_form_is_run_and_its_help_shows_both_forms(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_bytes(b"")
    runner = CliRunner()

    short = runner.invoke(attack_main, ["--from-log", str(log)])
    long = runner.invoke(attack_main, ["run", "--from-log", str(log)])
    helped = runner.invoke(attack_main, ["--help"])

    assert short.exit_code == long.exit_code == exits.USAGE
    assert "Usage: splitnn-attack run" in short.output and "'--classifier'" in short.output
    assert short.output == long.output
    usage = helped.output.splitlines()[:2]
    assert usage[0].startswith("Usage: splitnn-attack [OPTIONS] COMMAND")
    assert "{--from-log|--live}" in usage[1] and "run" in usage[1]
