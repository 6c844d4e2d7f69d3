"""A training group's state on disk (`group_saves.py`), no gRPC: a group taken up from its save
after a crash goes on exactly like one never interrupted; a damaged or foreign save is refused;
only the members' own identities resume it; a finished or dropped run leaves no save behind."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from splitnn.common.codec import GroupJoin, StepId
from splitnn.common.topology import TOPOLOGIES
from splitnn.server.changes import Changes
from splitnn.server.errors import Forbidden, NotYet, WrongState
from splitnn.server.group import Group
from splitnn.server.group_member import Key, Member
from splitnn.server.group_saves import GroupStore
from splitnn.server.group_spec import GroupSpec
from splitnn.server.groups import Groups
from tests.unit.test_groups import (
    Outcome,
    _assert_same_run,
    _handed_body,
    assert_equal_states,
    join,
    make_spec,
    train,
)

EPOCHS = 2
SAVE_EVERY = 2


def _group(topology: str, size: int, root: Path | None, *, members: tuple[str, ...] = ()) -> Group:
    spec = GroupSpec(name="g", topology=TOPOLOGIES[topology], size=size, members=members)
    store = None if root is None else GroupStore(root / "g")
    return Group(spec, Changes(), store=store)


class Holders:
    """The holders of a group as their clients behave: each one's calls, its last step
    answered (`position`) and the steps it saved at (after the server's reply)."""

    def __init__(self, group: Group) -> None:
        self.group = group  # the server's group: replaced by a restart
        self.outcome = Outcome()
        self.saved: dict[int, list[Key]] = {}
        self.position: dict[int, Key] = {}
        self.at: dict[int, Key] = {}  # where its calls are: past `position` if a reply was lost
        self.live = {h: self._calls(h, after=None) for h in sorted(group.members)}

    def drive(self, *, seed: int, calls: int = 10_000) -> bool:
        """Interleaves the calls at random for at most `calls` calls; True: all finished."""
        rng = random.Random(seed)
        for _ in range(calls):
            if not self.live:
                return True
            holder = rng.choice(sorted(self.live))
            try:
                next(self.live[holder])
            except StopIteration:
                del self.live[holder]
        return not self.live

    def restart(self, group: Group, *, batches: tuple[int, ...]) -> None:
        """Every holder reopens its run on the restarted server's `group` as the client does:
        offering its last step answered and its last save; from its save, its calls start
        again there (it reloads that save); from its position, they go on."""
        self.group = group
        for holder in range(len(batches)):
            offers = [k for k in (self.position.get(holder), self._last_save(holder)) if k]
            request = GroupJoin(
                name="g", holder=holder, batches_per_epoch=batches[holder], samples=10,
                epochs=EPOCHS,
            )  # fmt: skip
            _, after, _ = group.join(
                make_spec(f"run{holder}"),
                request,
                owner=f"party{holder}",
                resume=True,
                offers=[StepId(f"run{holder}", *k) for k in dict.fromkeys(offers)],
                from_start=len(offers) < 2,
            )
            assert after in (self.position.get(holder), self._last_save(holder)), (holder, after)
            if after != self.at.get(holder):
                self.live[holder] = self._calls(holder, after=after)

    def _last_save(self, holder: int) -> Key | None:
        keys = self.saved.get(holder)
        return keys[-1] if keys else None

    def _calls(self, holder: int, *, after: Key | None) -> Iterator[None]:
        """A holder's calls after its step `after` (None: from the start)."""
        batches = self.group.members[holder].batches
        actions: list[tuple[str, int, int]] = []
        for epoch in range(1, EPOCHS + 1):
            actions += [("step", epoch, batch) for batch in range(batches)]
            if self.group.topology.shares_body:
                actions.append(("hand_in", epoch, 0))
        start = 0 if after is None else actions.index(("step", *after)) + 1
        for kind, epoch, batch in actions[start:]:
            if kind == "hand_in":
                self.group.hand_in(self._me(holder), epoch, _handed_body(holder, epoch))
                yield
                continue
            while True:
                try:
                    self.group.turn(self._me(holder), epoch, batch)
                    break
                except NotYet:
                    yield
            save = batch % SAVE_EVERY == SAVE_EVERY - 1
            result, _ = train(self.group, self._me(holder), epoch, batch, save=save)
            self.outcome.gradients[(holder, epoch, batch)] = result.gradient
            self.position[holder] = self.at[holder] = (epoch, batch)
            if save or batch == batches - 1:
                self.saved.setdefault(holder, []).append((epoch, batch))
            yield
        while True:
            try:
                final = self.group.finish(self._me(holder))
                break
            except NotYet:
                yield
        self.outcome.finals[holder] = None if final is None else final.sha256

    def _me(self, holder: int) -> Member:
        return self.group.members[holder]


def _start(group: Group, batches: tuple[int, ...]) -> None:
    for holder in range(len(batches)):
        join(group, holder, batches=batches[holder], epochs=EPOCHS, samples=10)


@functools.cache
def _uninterrupted(topology: str, batches: tuple[int, ...]) -> tuple[Group, Outcome]:
    """The group run through without a crash, and what its holders got: the same for every
    crash point of a topology, so it is run once (it is only read afterwards)."""
    group = _group(topology, len(batches), None)
    _start(group, batches)
    holders = Holders(group)
    assert holders.drive(seed=1)
    return group, holders.outcome


# Crashes after so many calls: before any save, in either epoch with holders at or past their
# last save, and with holders waiting for the group to finish.
@pytest.mark.parametrize("topology", ["shared-head", "round-robin", "splitfed"])
@pytest.mark.parametrize("crash_after", [2, 9, 17, 24, 26])
@pytest.mark.parametrize("reply_lost", [False, True])
def test_a_group_taken_up_from_its_save_goes_on_bit_for_bit(
    topology: str, crash_after: int, reply_lost: bool, tmp_path: Path
) -> None:
    """`reply_lost`: the server died after writing holder 0's last save point, before its
    reply: that holder saved only the save point before, its last step answered is the one
    before, and (the strictest case) it does not offer the step in flight."""
    batches = (4, 3)
    reference, expected = _uninterrupted(topology, batches)
    crashed = _group(topology, len(batches), tmp_path)
    _start(crashed, batches)
    holders = Holders(crashed)
    assert not holders.drive(seed=2, calls=crash_after)
    lost = holders.saved.get(0, [])[-1:]
    if reply_lost and lost and holders.position[0] == lost[0]:
        holders.saved[0].pop()
        holders.position[0] = (lost[0][0], lost[0][1] - 1) if lost[0][1] else (lost[0][0] - 1, 3)

    # kill -9: the group in memory is gone; a new server reads the saves back.
    holders.restart(_group(topology, len(batches), tmp_path), batches=batches)
    assert holders.drive(seed=3)

    _assert_same_run((reference, expected), (holders.group, holders.outcome))


def test_the_newest_save_holds_every_members_last_save(tmp_path: Path) -> None:
    group = _group("splitfed", 2, tmp_path)
    _start(group, (3, 2))
    holders = Holders(group)
    holders.drive(seed=4, calls=9)

    again = _group("splitfed", 2, tmp_path)

    assert holders.saved
    for holder, keys in holders.saved.items():
        key = keys[-1]
        member = again.members[holder]
        assert member.last is not None and member.last >= key
        assert key == member.last or key in member.replies
    assert_equal_states(again.members[0].head.state_dict(), group.members[0].head.state_dict())


def _saved_group(root: Path, topology: str = "round-robin") -> Group:
    group = _group(topology, 2, root)
    _start(group, (3, 2))
    Holders(group).drive(seed=5, calls=12)
    return group


def test_a_damaged_newest_save_is_refused_and_the_older_one_taken_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _saved_group(tmp_path)
    store = GroupStore(tmp_path / "g")
    newest, older = store.saves()
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    cursor_then = _cursor_of(store, older)

    with caplog.at_level(logging.ERROR):
        group = _group("round-robin", 2, tmp_path)

    assert f"save {newest.name} refused" in caplog.text
    assert group.started and group.cursor == cursor_then


def _cursor_of(store: GroupStore, path: Path) -> int:
    return int(store.read(path)[0]["cursor"])


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "part1"])
def test_a_group_whose_saves_are_all_damaged_starts_over_with_a_clear_error(
    tmp_path: Path, damage: str
) -> None:
    _saved_group(tmp_path, "splitfed")
    store = GroupStore(tmp_path / "g")
    for path in store.saves():
        content = bytearray(path.read_bytes())
        if damage == "flip":
            content[len(content) // 2] ^= 1
        path.write_bytes(
            {"flip": bytes(content), "truncate": bytes(content[:50]), "empty": b""}.get(
                damage, bytes(content) if damage == "part1" else b"\x80\x04garbage"
            )
        )
    if damage == "part1":
        for part in (tmp_path / "g" / "parts").iterdir():
            part.write_bytes(part.read_bytes()[:-1])

    group = _group("splitfed", 2, tmp_path)  # never raises

    assert not group.members
    with pytest.raises(WrongState, match=r"cannot be read; start the group over"):
        join(group, 0, batches=3, epochs=EPOCHS, resume=True, offers=[StepId("run0", 1, 1)])
    join(group, 0, batches=3, epochs=EPOCHS)  # a fresh run drops the damaged saves
    assert store.saves() == []


@pytest.mark.parametrize(
    "declared", ["g=splitfed:2", "g=round-robin:3", "g=round-robin:2@alice,carol"]
)
def test_a_save_of_another_declaration_is_not_taken_up(tmp_path: Path, declared: str) -> None:
    group = _group("round-robin", 2, tmp_path, members=("alice", "bob"))
    for holder, owner in enumerate(("alice", "bob")):
        join(group, holder, batches=2, epochs=EPOCHS, owner=owner)
    train(group, group.members[0], 1, 0, save=True)

    spec = GroupSpec.parse(declared)
    other = Group(spec, Changes(), store=GroupStore(tmp_path / "g"))

    assert not other.members and "cannot be read" in other.lost


def test_only_the_members_own_identities_resume_a_saved_group(tmp_path: Path) -> None:
    group = _group("shared-head", 2, tmp_path)
    _start(group, (2, 2))
    train(group, group.members[0], 1, 0, save=True)

    again = _group("shared-head", 2, tmp_path)

    with pytest.raises(Forbidden):
        join(again, 0, batches=2, epochs=EPOCHS, owner="mallory", resume=True,
             offers=[StepId("run0", 1, 0)])  # fmt: skip
    member = join(again, 0, batches=2, epochs=EPOCHS, resume=True, offers=[StepId("run0", 1, 0)])
    assert member.last == (1, 0)


def test_a_finished_group_leaves_no_save(tmp_path: Path) -> None:
    group = _group("splitfed", 2, tmp_path)
    _start(group, (2, 1))
    assert Holders(group).drive(seed=6)
    group.closed(group.members[0], finished=True)
    assert GroupStore(tmp_path / "g").saves(), "a finished holder's close is saved"
    assert _group("splitfed", 2, tmp_path).members, "the other holder may still resume"

    group.closed(group.members[1], finished=True)

    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").rglob("*.*"))


def test_a_dropped_group_run_leaves_no_save(tmp_path: Path) -> None:
    groups = Groups([GroupSpec.parse("g=shared-head:2")], root=tmp_path)
    group = groups.get("g")
    _start(group, (2, 2))
    train(group, group.members[0], 1, 0, save=True)
    assert GroupStore(tmp_path / "g").saves()

    group.last_active -= 100.0
    assert groups.expire(60.0) == {group}

    assert GroupStore(tmp_path / "g").saves() == []


def test_a_saved_run_keeps_two_saves_and_only_the_parts_1_they_name(tmp_path: Path) -> None:
    group = _group("splitfed", 2, tmp_path)
    _start(group, (3, 2))
    Holders(group).drive(seed=7, calls=20)
    store = GroupStore(tmp_path / "g")

    saves = store.saves()
    named = set().union(*(set(store.read(path)[0]["parts1"]) for path in saves))

    assert len(saves) == 2
    files = {bytes.fromhex(p.name.split(".")[0]) for p in (tmp_path / "g" / "parts").iterdir()}
    assert files == named
    assert {b.sha256 for b in group.parts.blobs()} <= named


def test_the_loaded_optimizer_moments_equal_the_saved_ones(tmp_path: Path) -> None:
    group = _saved_group(tmp_path, "shared-head")
    group.save()

    again = _group("shared-head", 2, tmp_path)

    assert again.optimizer is not None and group.optimizer is not None
    moments, saved = again.optimizer.state_dict()["state"], group.optimizer.state_dict()["state"]
    for index, values in saved.items():
        for name, value in values.items():
            assert torch.equal(moments[index][name], value)
