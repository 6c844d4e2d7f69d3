"""Runs on disk (`splitnn.server.runs`): listed and removed inside the model folder only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splitnn.server.runs import RunNotFound, older_heads, remove_run, stored_runs


def _run(models: Path, owner: str, run: str, *, heads: int = 1, saves: int = 1) -> None:
    for number in range(saves):
        path = models / "server" / owner / run / f"1-{number}.point.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"s" * 10)
    for number in range(heads):
        path = models / "heads" / owner / run / f"epoch={number}.head.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"h" * 100)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    _run(models, "alice", "a1", heads=2, saves=2)
    _run(models, "alice", "a2", heads=0)
    _run(models, "_anonymous", "dev", saves=0)
    outside = tmp_path / "outside"
    _run(outside, "victim", "precious")
    (models / "server" / "linked").symlink_to(outside / "server" / "victim")
    (models / "heads" / "alice" / "elsewhere").symlink_to(outside / "heads" / "victim" / "precious")
    return models


def test_runs_are_listed_by_owner_and_name_without_following_links(models: Path) -> None:
    runs = {run.name: run for run in stored_runs(models)}

    assert sorted(runs) == ["_anonymous/dev", "alice/a1", "alice/a2"]
    a1 = runs["alice/a1"]
    assert (a1.resume_states, a1.head_checkpoints, a1.size) == (2, 2, 220)


def test_a_run_is_removed_with_its_saves_and_heads_and_nothing_else(
    models: Path, tmp_path: Path
) -> None:
    removed = remove_run(models, "alice/a1")

    assert removed.name == "alice/a1" and removed.head_checkpoints == 2
    assert [run.name for run in stored_runs(models)] == ["_anonymous/dev", "alice/a2"]
    assert (tmp_path / "outside" / "heads" / "victim" / "precious" / "epoch=0.head.ckpt").exists()


def test_an_owners_last_run_takes_its_folder_with_it(models: Path) -> None:
    remove_run(models, "_anonymous/dev")

    assert not (models / "heads" / "_anonymous").exists()


@pytest.mark.parametrize(
    "name",
    [
        "alice/nope",
        "alice",
        "alice/a1/extra",
        "../outside",
        "alice/..",
        "alice/../../outside/server/victim",
        "/tmp/x",
        "linked/precious",  # the owner folder is a link out of the model folder
        "alice/elsewhere",  # the run folder is a link
        ".hidden/a1",
        "",
    ],
)
def test_a_name_that_is_not_a_run_inside_the_model_folder_is_refused(
    models: Path, tmp_path: Path, name: str
) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))

    with pytest.raises(RunNotFound):
        remove_run(models, name)

    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_older_heads_are_those_beyond_the_newest_k(tmp_path: Path) -> None:
    for number in range(5):
        path = tmp_path / f"epoch={number}.head.ckpt"
        path.write_bytes(b"")
        # Written in this order: epoch=4 is the newest, whatever the names sort as.
        stamp = 1_000_000_000 + number
        os.utime(path, (stamp, stamp))

    older = older_heads(tmp_path / "epoch=4.head.ckpt", keep=3)

    assert sorted(p.name for p in older) == ["epoch=0.head.ckpt", "epoch=1.head.ckpt"]
