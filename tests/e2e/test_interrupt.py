"""SIGTERM to an orchestrator alone (what a supervisor or a job's time limit sends) ends it as
interrupted (exit 130) and leaves none of the programs it started running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _children_of(pid: int) -> dict[int, str]:
    """The direct children of `pid` and their command lines (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_children(pid: int, names: list[str], timeout: float = 120.0) -> dict[int, str]:
    """Polls until `pid` has a child running each of `names` (a name as often as listed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = _children_of(pid)
        if all(
            sum(name in line for line in children.values()) >= names.count(name)
            for name in set(names)
        ):
            return children
        time.sleep(0.2)
    raise AssertionError(f"{names} not started by {pid} in {timeout} s: {_children_of(pid)}")


def _terminate(process: subprocess.Popen[str], children: dict[int, str]) -> tuple[int, str]:
    t0 = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        for pid in children:  # whatever the outcome, nothing of the test outlives it
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 60
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: line for pid, line in children.items() if _alive(pid)}
    assert left == {}, f"left running: {left}"
    return process.returncode, err


@pytest.mark.slow
def test_sigterm_to_the_simulation_stops_its_hijacking_server_while_it_pretrains(
    tmp_path: Path,
) -> None:
    # Prepare: a malicious server that pre-trains far longer than the test waits.
    args = [str(BIN / "splitnn-sim"), "--threat", "fsha", "--hijack-pretrain-steps", "100000"]
    args += ["--epochs", "1", "--max-steps", "2", "--workdir", str(tmp_path / "run")]
    args += ["--model-dir", str(tmp_path / "models"), "--figure", str(tmp_path / "f.png")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = _wait_for_children(process.pid, ["splitnn-server"])
    # Execute
    code, err = _terminate(process, children)
    # Assert
    assert code == 130, err[-2000:]
    assert "splitnn-sim: terminated (SIGTERM)" in err


@pytest.mark.slow
def test_sigterm_to_the_grid_stops_every_run_under_way(tmp_path: Path) -> None:
    # Prepare: two trainings at once, each long enough to be under way when the signal comes.
    args = [str(BIN / "splitnn-experiments"), "noise", "--dataset", "mnist5k", "--epochs", "5"]
    args += ["--jobs", "2", "--no-attacks"]
    for name in ("runs", "model", "results"):
        args += [f"--{name}-dir", str(tmp_path / name)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = _wait_for_children(process.pid, ["splitnn-client", "splitnn-client"])
    # Execute
    code, err = _terminate(process, children)
    # Assert: exit 130, and both runs' server and holder gone (`_terminate`).
    assert code == 130, err[-2000:]
    assert "splitnn-experiments: terminated (SIGTERM)" in err
    assert sum("splitnn-server" in line for line in children.values()) == 2


def _last_save(folder: Path) -> int:
    """The number of the group's newest save (``<n>.group.ckpt``); -1 without one."""
    return max((int(p.name.split(".")[0]) for p in folder.glob("*.group.ckpt")), default=-1)


@pytest.mark.slow
def test_a_group_simulation_interrupted_after_a_save_runs_again_from_the_start(
    tmp_path: Path,
) -> None:
    # Prepare: two holders in a round-robin group, stopped once the group has saved past both
    # holders' second epoch (from then on its server keeps no replies from a holder's start).
    args = [str(BIN / "splitnn-sim"), "--holders", "2", "--topology", "round-robin"]
    args += ["--epochs", "5", "--max-steps", "3", "--attack-epochs", "1"]
    args += ["--validator-epochs", "1", "--workdir", str(tmp_path / "run"), "--json", "-q"]
    args += ["--model-dir", str(tmp_path / "models"), "--figure", str(tmp_path / "f.png")]
    saves = tmp_path / "models" / "groups" / "sim"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _last_save(saves) < 7 and time.monotonic() < deadline:
        assert process.poll() is None, "the simulation ended before its group saved"
        time.sleep(0.2)
    code, err = _terminate(process, _children_of(process.pid))
    assert code == 130, err[-2000:]
    assert _last_save(saves) >= 7  # what the interrupted run left
    # Execute: the same simulation again, same folders.
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    # Assert: it starts over instead of the server refusing the fresh holders.
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resume it (--resume)" not in done.stderr
