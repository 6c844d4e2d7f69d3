"""A child program's end reaches the program that ran it: an alarm (exit 4) stays an alarm."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from splitnn.common import exits, processes
from splitnn.common.processes import ChildAlarm, ProcessError, run_json


def _program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    path = tmp_path / "child"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(processes, "program", lambda name: str(path))


@pytest.mark.parametrize(
    ("script", "kind", "code"),
    [("exit 4", ChildAlarm, exits.ALARM), ("exit 1", ProcessError, exits.FAILED)],
)
def test_a_childs_exit_code_decides_the_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, kind: type, code: int
) -> None:
    _program(tmp_path, monkeypatch, script)

    with pytest.raises(ProcessError) as raised:
        run_json("splitnn-client", [])

    assert type(raised.value) is kind
    assert exits.exit_code(raised.value) == code


def test_a_child_that_ends_well_gives_its_last_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _program(tmp_path, monkeypatch, "echo '{\"a\": 1}'; echo progress; echo '{\"b\": 2}'")

    assert run_json("splitnn-client", []) == {"b": 2}
