"""--device: names, machines that lack a device, and every program taking it (by flag and by the
environment an orchestrator sets). No process starts and nothing trains."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner

from splitnn.attacker.cli import main as attack_main
from splitnn.client.cli import main as client_main
from splitnn.common import devices, exits
from splitnn.common.devices import DeviceError, resolve_device
from splitnn.common.models import build_body
from splitnn.experiments.cli import main as experiments_main
from splitnn.server.cli import main as server_main
from splitnn.sim.cli import main as sim_main

# A device no machine has: each program must refuse it in one line with exit 2.
MISSING = "cuda:99"


@pytest.fixture(autouse=True)
def _cpu_after() -> object:
    yield
    devices.use_device("cpu")


def test_names_resolve_to_devices_this_machine_has() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected_auto = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected_auto


@pytest.mark.parametrize("name", ["gpu", "cuda0", "cuda:", "cuda:-1", "tpu", ""])
def test_a_name_that_is_no_device_is_refused(name: str) -> None:
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device(name)


def test_a_device_this_machine_lacks_is_a_usage_error_naming_it() -> None:
    with pytest.raises(DeviceError, match=r"device 'cuda:99' is not available") as caught:
        resolve_device(MISSING)
    assert exits.exit_code(caught.value) == exits.USAGE


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_so() -> None:
    with pytest.raises(DeviceError, match=r"'cuda' is not available on this machine \(no CUDA"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3), (" 1 ", 1), ("0", None), ("-2", None), ("two", None), (None, None)],
)
def test_cpu_threads_take_the_share_the_environment_sets(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: int | None
) -> None:
    # A scheduler's or the grid's OMP_NUM_THREADS is the process's share; otherwise every core.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert devices.cpu_threads() == (16 if expected is None else expected)


def test_models_are_built_on_the_compute_device_with_the_same_weights() -> None:
    on_cpu = build_body(3).state_dict()
    chosen = devices.use_device("auto")
    there = build_body(3).state_dict()
    assert all(t.device == chosen for t in there.values())
    for name, tensor in there.items():
        assert torch.equal(tensor.cpu(), on_cpu[name]), name


def test_to_cpu_keeps_the_structure_and_leaves_no_tensor_elsewhere() -> None:
    nested = [torch.zeros(1), (torch.ones(1), 3)]
    state: dict[str, Any] = {"a": torch.ones(2), "b": nested, "c": "t"}
    moved = devices.to_cpu(state)
    assert moved["c"] == "t" and moved["b"][1][1] == 3
    assert isinstance(moved["b"], list) and isinstance(moved["b"][1], tuple)
    assert torch.equal(moved["a"], state["a"]) and moved["a"].device.type == "cpu"


def test_an_orchestrator_exports_its_resolved_device_to_every_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in devices.CHILD_VARIABLES:  # recorded, so that the test leaves them as found
        monkeypatch.setenv(variable, "unset")
    chosen = devices.export_device("auto")
    assert {os.environ[v] for v in devices.CHILD_VARIABLES} == {chosen}
    assert chosen == devices.device_name(devices.resolve_device("auto"))
    # For jobs on other machines the name is passed on as written, checked only for spelling.
    assert devices.export_device(" CUDA:3", here=False) == "cuda:3"
    assert {os.environ[v] for v in devices.CHILD_VARIABLES} == {"cuda:3"}
    with pytest.raises(DeviceError, match="unknown device"):
        devices.export_device("gpu", here=False)


def _files(tmp_path: Path) -> dict[str, Path]:
    log, part1, snapshots = tmp_path / "wire.log", tmp_path / "part1.ckpt", tmp_path / "hijack"
    log.write_bytes(b"")
    part1.write_bytes(b"")
    snapshots.mkdir(exist_ok=True)
    return {"log": log, "part1": part1, "snapshots": snapshots}


def _commands(tmp_path: Path) -> list[tuple[click.Command, list[str], str]]:
    """Each program (or splitnn-attack command) that computes, arguments that reach its work,
    and the environment variable its --device is read from."""
    f = _files(tmp_path)
    server = ["--port", "0", "--model-dir", str(tmp_path / "m")]
    attack_run = ["run", "--from-log", str(f["log"]), "--classifier", str(f["part1"])]
    hijacked = ["hijacked", "--from-log", str(f["log"]), "--decoders", str(f["snapshots"])]
    folders = [f"--{name}-dir={tmp_path / name}" for name in ("model", "runs", "results", "data")]
    return [
        (server_main, server, "SPLITNN_SERVER_DEVICE"),
        (client_main, ["--server", "127.0.0.1:1"], "SPLITNN_CLIENT_DEVICE"),
        (attack_main, attack_run, "SPLITNN_ATTACK_RUN_DEVICE"),
        (attack_main, ["validator"], "SPLITNN_ATTACK_VALIDATOR_DEVICE"),
        (attack_main, hijacked, "SPLITNN_ATTACK_HIJACKED_DEVICE"),
        (sim_main, [], "SPLITNN_SIM_DEVICE"),
        (experiments_main, ["plain", *folders], "SPLITNN_EXPERIMENTS_DEVICE"),
    ]


def test_every_program_lists_device_in_its_help(tmp_path: Path) -> None:
    for command, args, _ in _commands(tmp_path):
        words = [a for a in args[:1] if not a.startswith("-")]
        if command is experiments_main:
            words = []
        result = CliRunner().invoke(command, [*words, "--help"])
        assert result.exit_code == 0, result.output
        assert "--device DEVICE" in result.output and "cuda:N" in result.output, args


def test_every_program_refuses_a_missing_device_in_one_line(tmp_path: Path) -> None:
    for command, args, _ in _commands(tmp_path):
        result = CliRunner().invoke(command, [*args, "--device", MISSING])
        assert result.exit_code == exits.USAGE, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"device '{MISSING}' is not available" in lines[0], lines


def test_the_variable_an_orchestrator_sets_reaches_each_program(tmp_path: Path) -> None:
    assert {v for _, _, v in _commands(tmp_path)} >= set(devices.CHILD_VARIABLES)
    for command, args, variable in _commands(tmp_path):
        result = CliRunner().invoke(command, args, env={variable: MISSING})
        assert result.exit_code == exits.USAGE, (variable, result.output)
        assert f"device '{MISSING}'" in result.stderr, variable
