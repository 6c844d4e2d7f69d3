"""An interrupted orchestrator stops the programs it started and starts no more."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from splitnn.common import exits, processes
from splitnn.common.processes import CHILDREN, Children, Terminated, run_checked, worker_pool


def _script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "child"
    path.write_text(f"#!/bin/sh\n{text}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _wait_for_lines(path: Path, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {count} lines after {timeout} s")


def test_an_interrupted_pool_stops_its_childrens_programs_and_starts_none_of_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: every run writes a line and then waits a minute; three runs, two at a time.
    started = tmp_path / "started"
    script = _script(tmp_path, f"echo run >> {started}\nexec sleep 60")
    monkeypatch.setattr(processes, "program", lambda name: str(script))
    t0 = time.monotonic()
    # Execute
    with (
        (tmp_path / "log").open("w") as log,
        pytest.raises(KeyboardInterrupt),
        worker_pool(2) as pool,
    ):
        futures = [pool.submit(run_checked, "splitnn-client", [], log=log) for _ in range(3)]
        _wait_for_lines(started, 2)
        raise KeyboardInterrupt
    # Assert: both running programs ended long before their minute, the third never started.
    assert time.monotonic() - t0 < 30
    assert started.read_text().splitlines() == ["run", "run"]
    assert futures[2].cancelled()
    assert CHILDREN.live() == []
    assert not CHILDREN.stopping  # the pool's threads have ended: programs may start again


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    # Prepare
    script = _script(tmp_path, "trap '' TERM\nexec sleep 60")
    children = Children()
    process = children.start([str(script)])
    time.sleep(0.3)  # the trap is set
    t0 = time.monotonic()
    # Execute
    children.stop_all(timeout=1.0)
    # Assert
    assert process.poll() is not None
    assert 0.9 < time.monotonic() - t0 < 15
    assert children.live() == []


def test_while_stopping_no_program_starts_until_accepted_again(tmp_path: Path) -> None:
    # Prepare
    script = _script(tmp_path, "exit 0")
    children = Children()
    # Execute
    children.stop_all()
    # Assert
    with pytest.raises(Terminated):
        children.start([str(script)])
    children.accept_new()
    process = children.start([str(script)])
    assert children.wait(process) == (0, None)


def test_a_stop_that_only_stops_keeps_starting(tmp_path: Path) -> None:
    children = Children()
    children.stop_all(refuse_new=False)
    process = children.start([str(_script(tmp_path, "exit 3"))])
    assert children.wait(process)[0] == 3


def test_sigterm_ends_an_orchestrator_as_interrupted_and_says_so() -> None:
    error = Terminated("terminated (SIGTERM)")
    assert exits.exit_code(error) == exits.INTERRUPTED
    assert exits.describe(error) == "terminated (SIGTERM)"
    assert exits.describe(KeyboardInterrupt()) == "interrupted"
