"""The topology registry: lookup by name, each topology's rules, and its schedule."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from splitnn.common.topology import (
    DEFAULT,
    HAND_IN,
    NAMES,
    TOPOLOGIES,
    TRAIN,
    Schedule,
    Slot,
    describe,
    topology,
)


def test_every_topology_is_found_by_its_name() -> None:
    assert NAMES == ("shared-head", "round-robin", "splitfed")
    for name in NAMES:
        assert topology(name) is TOPOLOGIES[name]
        assert str(topology(name)) == name
    assert DEFAULT.name == "round-robin"


def test_an_unknown_topology_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'ring': one of shared-head, round-robin, splitfed"):
        topology("ring")


@pytest.mark.parametrize(
    ("name", "shares_body", "one_head", "averages", "sequential"),
    [
        ("shared-head", False, True, False, True),
        ("round-robin", True, True, False, True),
        ("splitfed", True, False, True, False),
    ],
)
def test_each_topologys_rules(
    name: str, shares_body: bool, one_head: bool, averages: bool, sequential: bool
) -> None:
    found = topology(name)

    assert found.shares_body is shares_body
    assert found.one_head is one_head
    assert found.averages_every_epoch is averages
    assert (found.schedule is not None) is sequential


def slots(schedule: Schedule) -> list[Slot]:
    """Every slot of `schedule`, in order (small schedules only)."""
    return [schedule.slot_at(cursor) for cursor in range(len(schedule))]


def _listed_batch_by_batch(epochs: int, batches: list[int]) -> list[Slot]:
    """(epoch, batch, holder), written out: every holder's b-th step before anyone's (b+1)-th."""
    return [
        Slot(TRAIN, e, h, b)
        for e in range(1, epochs + 1)
        for b in range(max(batches))
        for h, count in enumerate(batches)
        if b < count
    ]


def _listed_epoch_turns(epochs: int, batches: list[int]) -> list[Slot]:
    """(epoch, holder, batch) and a hand-in after each holder's turn, written out."""
    return [
        slot
        for e in range(1, epochs + 1)
        for h, count in enumerate(batches)
        for slot in [*(Slot(TRAIN, e, h, b) for b in range(count)), Slot(HAND_IN, e, h, 0)]
    ]


def test_shared_head_schedules_batch_by_batch_and_round_robin_epoch_by_epoch() -> None:
    shared, turns = topology("shared-head").schedule, topology("round-robin").schedule
    assert shared is not None and turns is not None

    assert slots(shared(1, [2, 1])) == [
        Slot("train", 1, 0, 0),
        Slot("train", 1, 1, 0),
        Slot("train", 1, 0, 1),
    ]
    assert slots(turns(1, [2, 1])) == [
        Slot("train", 1, 0, 0),
        Slot("train", 1, 0, 1),
        Slot("hand_in", 1, 0, 0),
        Slot("train", 1, 1, 0),
        Slot("hand_in", 1, 1, 0),
    ]


@pytest.mark.parametrize(
    ("name", "listed"),
    [("shared-head", _listed_batch_by_batch), ("round-robin", _listed_epoch_turns)],
)
@pytest.mark.parametrize("batches", [[1], [3], [2, 1], [1, 4, 2], [3, 3, 1, 5, 3], [2, 2, 2]])
@pytest.mark.parametrize("epochs", [1, 3])
def test_the_computed_schedule_is_the_listed_one(
    name: str, listed: Callable[[int, list[int]], list[Slot]], batches: list[int], epochs: int
) -> None:
    order = topology(name).schedule
    assert order is not None
    expected = listed(epochs, batches)

    schedule = order(epochs, batches)

    assert len(schedule) == len(expected)
    assert slots(schedule) == expected
    assert [schedule.position(slot) for slot in expected] == list(range(len(expected)))


@pytest.mark.parametrize("name", ["shared-head", "round-robin"])
def test_a_slot_outside_the_schedule_has_no_position_and_no_cursor_beyond_it(name: str) -> None:
    order = topology(name).schedule
    assert order is not None
    schedule = order(2, [2, 1])
    outside = [
        Slot(TRAIN, 0, 0, 0),
        Slot(TRAIN, 3, 0, 0),
        Slot(TRAIN, 1, 1, 1),
        Slot(TRAIN, 1, 2, 0),
        Slot(TRAIN, 1, -1, 0),
        Slot(TRAIN, 1, 0, -1),
        Slot(HAND_IN, 1, 0, 1),
        Slot("other", 1, 0, 0),
    ]
    if name == "shared-head":
        outside.append(Slot(HAND_IN, 1, 0, 0))

    for slot in outside:
        with pytest.raises(KeyError):
            schedule.position(slot)
    for cursor in (-1, len(schedule)):
        with pytest.raises(IndexError):
            schedule.slot_at(cursor)


@pytest.mark.parametrize("name", ["shared-head", "round-robin"])
def test_the_largest_schedule_a_group_allows_costs_nothing_to_lay_out(name: str) -> None:
    order = topology(name).schedule
    assert order is not None
    batches = [1_000_000 - h for h in range(64)]  # 64 holders of about a million steps each

    started = time.perf_counter()
    schedule = order(10_000, batches)
    last = schedule.slot_at(len(schedule) - 1)
    middle = schedule.slot_at(len(schedule) // 2)
    positions = schedule.position(last), schedule.position(middle)
    elapsed = time.perf_counter() - started

    assert positions == (len(schedule) - 1, len(schedule) // 2)
    if name == "shared-head":  # holder 0 has the most steps
        assert last == Slot(TRAIN, 10_000, 0, 999_999)
    else:
        assert last == Slot(HAND_IN, 10_000, 63, 0)
    assert len(schedule) >= 10_000 * sum(batches)
    assert elapsed < 0.5


def test_the_help_text_names_every_topology() -> None:
    text = describe()

    assert all(f"{name} (" in text for name in NAMES)
