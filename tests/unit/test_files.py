"""Atomic, durable file replacement: content, modes, fsyncs, and what a failure leaves."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from splitnn.common.files import PRIVATE, SHARED, replacing, write_atomic, write_json_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_replaces_the_file_with_exactly_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "result.bin"
    write_atomic(path, b"old", mode=SHARED)
    old_umask = os.umask(0o077)
    try:
        write_atomic(path, lambda handle: handle.write(b"new"), mode=SHARED)
    finally:
        os.umask(old_umask)

    assert path.read_bytes() == b"new"
    assert _mode(path) == SHARED  # not narrowed by the umask
    write_atomic(path, b"secret", mode=PRIVATE)
    assert _mode(path) == PRIVATE  # not widened by the older file
    assert [p.name for p in path.parent.iterdir()] == ["result.bin"]


def test_json_is_indented_sorted_and_ends_with_a_newline(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})

    text = path.read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    assert _mode(path) == SHARED


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "r.bin"
    write_atomic(path, b"old")

    def fail(handle: BinaryIO) -> None:
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomic(path, fail)
    with pytest.raises(KeyError), replacing(path) as temporary:
        temporary.write_bytes(b"half")
        raise KeyError("stop")

    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.bin"]


def test_the_file_and_then_its_directory_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file"
        synced.append(kind)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(tmp_path / "r.bin", b"data")

    assert synced == ["file", "dir"]
