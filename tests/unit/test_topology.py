"""The topology registry: lookup by name, each topology's rules, and its schedule."""

from __future__ import annotations

import pytest

from splitnn.common.topology import DEFAULT, NAMES, TOPOLOGIES, Slot, describe, topology


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


def test_shared_head_schedules_batch_by_batch_and_round_robin_epoch_by_epoch() -> None:
    shared, turns = topology("shared-head").schedule, topology("round-robin").schedule
    assert shared is not None and turns is not None

    assert shared(1, [2, 1]) == [
        Slot("train", 1, 0, 0),
        Slot("train", 1, 1, 0),
        Slot("train", 1, 0, 1),
    ]
    assert turns(1, [2, 1]) == [
        Slot("train", 1, 0, 0),
        Slot("train", 1, 0, 1),
        Slot("hand_in", 1, 0, 0),
        Slot("train", 1, 1, 0),
        Slot("hand_in", 1, 1, 0),
    ]


def test_the_help_text_names_every_topology() -> None:
    text = describe()

    assert all(f"{name} (" in text for name in NAMES)
