"""The server's resume store: naming, ordering, pruning, lookup, discarding, state round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.codec import StepId
from splitnn.server.saves import ResumeStore, Save

RUN = "r"


def state_of(seed: int) -> dict[str, Any]:
    """A small state whose tensor values depend on `seed`, so round trips can be checked."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "head": {"w": torch.randn((3, 4), generator=generator), "b": torch.zeros(3)},
        "steps_applied": seed,
        "last_step": [1, seed],
    }


def write(
    store: ResumeStore, epoch: int, batch: int, *, point: bool = True, run: str = RUN
) -> Path:
    return store.write(StepId(run, epoch, batch), state_of(batch), {"part": "test"}, point=point)


def kept(store: ResumeStore, run: str = RUN) -> list[tuple[int, int, bool]]:
    """(epoch, batch, snapshot) of the run's saves, oldest first."""
    return [(s.epoch, s.batch, s.snapshot) for s in store.saves(run)]


def test_write_names_the_file_by_step_and_kind_with_a_manifest(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)

    point = write(store, 2, 7)
    snapshot = write(store, 2, 8, point=False)

    assert point == tmp_path / RUN / "2-7.point.ckpt"
    assert snapshot == tmp_path / RUN / "2-8.snapshot.ckpt"
    _, manifest = load_checkpoint(point)
    assert manifest["step"] == [2, 7]
    assert manifest["kind"] == "point"
    assert manifest["part"] == "test"
    assert load_checkpoint(snapshot)[1]["kind"] == "snapshot"


def test_saves_are_ordered_by_step_numerically_not_by_name(tmp_path: Path) -> None:
    # Prepare: batch 10 sorts before batch 9 as text; epoch 10 before epoch 2.
    store = ResumeStore(tmp_path)
    write(store, 1, 9)
    write(store, 1, 10, point=False)

    assert kept(store) == [(1, 9, False), (1, 10, True)]
    write(store, 10, 1)
    assert kept(store) == [(1, 9, False), (10, 1, False)]


def test_save_orders_a_point_before_a_snapshot_of_the_same_step() -> None:
    point = Save(1, 5, False, Path("z"))
    snapshot = Save(1, 5, True, Path("a"))
    later = Save(1, 6, False, Path("a"))

    assert sorted([later, snapshot, point]) == [point, snapshot, later]
    assert point.step("run") == StepId("run", 1, 5)


def test_an_unknown_run_has_no_saves(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    write(store, 1, 1, run="other")

    assert store.saves(RUN) == []
    assert store.newest(RUN) is None
    assert store.find(StepId(RUN, 1, 1)) is None


def test_files_that_are_not_saves_are_ignored(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    write(store, 1, 2)
    folder = tmp_path / RUN
    (folder / ".1-3.point.ckpt.abc.tmp").write_bytes(b"torn")
    (folder / "notes.txt").write_text("x")
    (folder / "1-x.point.ckpt").write_bytes(b"")

    assert kept(store) == [(1, 2, False)]


def test_only_the_two_newest_points_are_kept(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)

    for batch in (4, 9):
        write(store, 1, batch)
    write(store, 2, 3)

    assert kept(store) == [(1, 9, False), (2, 3, False)]
    # The pruned save's manifest goes with it.
    assert sorted(p.name for p in (tmp_path / RUN).iterdir()) == [
        "1-9.point.ckpt",
        "1-9.point.ckpt.json",
        "2-3.point.ckpt",
        "2-3.point.ckpt.json",
    ]


def test_a_snapshot_is_kept_only_while_it_is_the_newest_save(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    for epoch, batch in ((1, 4), (1, 9), (2, 3)):
        write(store, epoch, batch)

    write(store, 2, 5, point=False)
    after_snapshot = kept(store)
    write(store, 2, 8)

    assert after_snapshot == [(1, 9, False), (2, 3, False), (2, 5, True)]
    assert kept(store) == [(2, 3, False), (2, 8, False)]
    assert not (tmp_path / RUN / "2-5.snapshot.ckpt.json").exists()


def test_a_newer_snapshot_replaces_an_older_one(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    write(store, 1, 1)

    write(store, 1, 2, point=False)
    write(store, 1, 3, point=False)

    assert kept(store) == [(1, 1, False), (1, 3, True)]


def test_newest_is_the_latest_step(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    write(store, 1, 4)
    write(store, 1, 6, point=False)

    newest = store.newest(RUN)

    assert newest is not None
    assert (newest.epoch, newest.batch, newest.snapshot) == (1, 6, True)


def test_find_returns_the_save_of_exactly_that_step(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    write(store, 1, 4)
    write(store, 2, 4)

    found = store.find(StepId(RUN, 2, 4))

    assert found is not None
    assert (found.epoch, found.batch) == (2, 4)
    assert store.find(StepId(RUN, 1, 5)) is None
    assert store.find(StepId("other", 2, 4)) is None


def test_find_prefers_a_point_to_a_snapshot_of_the_same_step(tmp_path: Path) -> None:
    # Prepare: the snapshot is written first, then the point; both remain (the snapshot is
    # the newest save in sort order).
    store = ResumeStore(tmp_path)
    write(store, 1, 5, point=False)
    write(store, 1, 5)
    assert kept(store) == [(1, 5, False), (1, 5, True)]

    found = store.find(StepId(RUN, 1, 5))

    assert found is not None
    assert not found.snapshot
    assert found.path.name == "1-5.point.ckpt"


def test_discard_after_removes_only_newer_saves(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    write(store, 1, 4)
    write(store, 1, 9)
    write(store, 2, 1, point=False)

    store.discard_after(StepId(RUN, 1, 4))

    assert kept(store) == [(1, 4, False)]
    assert sorted(p.name for p in (tmp_path / RUN).iterdir()) == [
        "1-4.point.ckpt",
        "1-4.point.ckpt.json",
    ]


def test_discard_after_the_newest_step_removes_nothing(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    write(store, 1, 4)
    write(store, 1, 9, point=False)

    store.discard_after(StepId(RUN, 1, 9))
    store.discard_after(StepId(RUN, 3, 0))

    assert kept(store) == [(1, 4, False), (1, 9, True)]


def test_clear_removes_the_runs_folder(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    write(store, 1, 4)
    write(store, 1, 5, point=False)

    store.clear(RUN)
    store.clear("never-saved")

    assert store.saves(RUN) == []
    assert not (tmp_path / RUN).exists()


def test_runs_do_not_touch_each_others_saves(tmp_path: Path) -> None:
    # Prepare: run b's saves are older than run a's and would be pruned if runs were mixed.
    store = ResumeStore(tmp_path)
    write(store, 1, 1, run="b")
    write(store, 1, 2, run="b", point=False)
    for batch in (3, 4, 5):
        write(store, 1, batch, run="a")

    store.discard_after(StepId("a", 1, 0))
    b_after_discard = kept(store, "b")
    write(store, 1, 6, run="a")
    store.clear("a")

    assert b_after_discard == [(1, 1, False), (1, 2, True)]
    assert kept(store, "b") == [(1, 1, False), (1, 2, True)]
    assert store.saves("a") == []
    assert (tmp_path / "b").is_dir()


def test_state_round_trips_through_load(tmp_path: Path) -> None:
    store = ResumeStore(tmp_path)
    original = state_of(7)
    store.write(StepId(RUN, 3, 7), original, {}, point=True)
    save = store.find(StepId(RUN, 3, 7))
    assert save is not None

    loaded = ResumeStore.load(save)

    assert loaded.keys() == original.keys()
    assert torch.equal(loaded["head"]["w"], original["head"]["w"])
    assert torch.equal(loaded["head"]["b"], original["head"]["b"])
    assert loaded["steps_applied"] == 7
    assert loaded["last_step"] == [1, 7]
    # A different seed gives different values: the comparison above can fail.
    assert not torch.equal(loaded["head"]["w"], state_of(8)["head"]["w"])
