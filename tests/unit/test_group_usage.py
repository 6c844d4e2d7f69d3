"""The group flags of splitnn-client, splitnn-sim and splitnn-server: bad combinations are usage
errors (exit 2, one line, no traceback) before anything starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from splitnn.client.cli import main as client_main
from splitnn.server.cli import main as server_main
from splitnn.sim.cli import main as sim_main


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--holders", "3"], "--holder and --holders need --group"),
        (["--holder", "1"], "--holder and --holders need --group"),
        (["--group", "g", "--holder", "3", "--holders", "3"], "holder 3 of 3"),
        (["--group", "g", "--holders", "2", "--alpha", "0.5"], "--alpha needs --partition"),
        (["--group", "g", "--holders", "2", "--partition", "mixed"], "'mixed' is not one of"),
        (["--group", "g", "--holders", "0"], "0 is not in the range"),
    ],
)
def test_client_refuses_bad_group_flags(args: list[str], problem: str) -> None:
    result = CliRunner().invoke(client_main, ["--server", "127.0.0.1:1", *args])

    assert result.exit_code == 2
    assert problem in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--holders", "3", "--colluder", "3"], "holder 3 of 3"),
        (["--partition", "dirichlet", "--alpha", "0.5"], "--alpha and --colluder need --holders"),
        (["--holders", "2", "--alpha", "0.5"], "--alpha needs --partition dirichlet"),
        (["--holders", "2", "--set-noise", "0.5"], "--set-noise is for a single holder"),
        (["--holders", "2", "--topology", "ring"], "'ring' is not one of"),
    ],
)
def test_sim_refuses_bad_group_flags(args: list[str], problem: str) -> None:
    result = CliRunner().invoke(sim_main, args)

    assert result.exit_code == 2
    assert problem in result.output


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("g", "expected NAME=TOPOLOGY:K"),
        ("g=ring:3", "topology 'ring'"),
        ("g=splitfed:0", "group size '0'"),
        ("g=splitfed:65", "group size '65'"),
        ("a/b=splitfed:2", "group name 'a/b'"),
    ],
)
def test_server_refuses_bad_groups(value: str, problem: str) -> None:
    result = CliRunner().invoke(server_main, ["--port", "0", "--group", value])

    assert result.exit_code == 2
    assert problem in result.output


def test_server_refuses_two_groups_of_one_name() -> None:
    result = CliRunner().invoke(
        server_main, ["--port", "0", "--group", "g=splitfed:2", "--group", "g=shared-head:3"]
    )

    assert result.exit_code == 2
    assert "two groups of the same name" in result.output
