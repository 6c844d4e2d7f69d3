"""The attacker picks the colluding holder's part 1 by its manifest, never by its file name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splitnn.attacker.oracle import resolve_checkpoint
from splitnn.common.checkpoints import CheckpointError, save_checkpoint


def _write(path: Path, part: str | None, mtime: int) -> None:
    save_checkpoint(path, {}, {"part": part} if part else {})
    if part is None:
        path.with_name(path.name + ".json").unlink()
    os.utime(path, (mtime, mtime))


def test_a_pattern_takes_the_newest_part_1_whatever_else_it_matches(tmp_path: Path) -> None:
    _write(tmp_path / "run_epoch=3.ckpt", "body", 100)
    _write(tmp_path / "run_epoch=7.ckpt", "body", 200)
    _write(tmp_path / "run_epoch=9.head.ckpt", "head", 300)  # newer, and not a part 1
    _write(tmp_path / "run_epoch=9.ckpt", None, 400)  # no manifest

    chosen = resolve_checkpoint(tmp_path / "run_epoch=*.ckpt")

    assert chosen == tmp_path / "run_epoch=7.ckpt"


def test_a_pattern_with_nothing_usable_says_what_it_found(tmp_path: Path) -> None:
    _write(tmp_path / "run_epoch=9.head.ckpt", "head", 300)

    with pytest.raises(CheckpointError) as refused:
        resolve_checkpoint(tmp_path / "run_epoch=*.ckpt")

    assert "run_epoch=9.head.ckpt (part head)" in str(refused.value)


def test_a_plain_path_is_taken_as_given(tmp_path: Path) -> None:
    assert resolve_checkpoint(tmp_path / "exact.ckpt") == tmp_path / "exact.ckpt"
