"""Training groups on Group objects, no gRPC: joining, the order of steps, hand-ins, FedAvg,
replays and resumes, and the same parameters whatever the interleaving of the holders' calls."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from splitnn.common.codec import GroupJoin, StepId, WeightsBlob
from splitnn.common.models import build_body, build_head
from splitnn.common.topology import TOPOLOGIES, Slot
from splitnn.common.weights import average, from_blob, to_blob
from splitnn.server.changes import Changes
from splitnn.server.errors import Forbidden, InvalidRequest, NotYet, WrongState
from splitnn.server.group import Group
from splitnn.server.group_head import GroupMemberHead
from splitnn.server.group_member import Member, batch_digest
from splitnn.server.group_spec import GroupSpec
from splitnn.server.groups import Groups
from splitnn.server.head import HeadSession, SessionSpec, StepResult
from splitnn.server.sessions import SessionRegistry
from tests.unit.test_topology import slots

LR = 1e-2
SEED = 4
ROWS = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The server's heads compute on one thread (`ServerConfig.threads`): tiny steps on several
    threads of a busy machine take 50 times longer. The module's blobs are freed after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    body_blob.cache_clear()  # 18.5 MB each


def make_spec(run: str, *, lr: float = LR, seed: int = SEED, num_classes: int = 10) -> SessionSpec:
    return SessionSpec(
        run=run,
        cut_shape=(500,),
        dtype="float32",
        max_batch_size=16,
        num_classes=num_classes,
        lr=lr,
        seed=seed,
    )


def make_group(topology: str, size: int) -> Group:
    return Group(GroupSpec(name="g", topology=TOPOLOGIES[topology], size=size), Changes())


def join(
    group: Group,
    holder: int,
    *,
    batches: int,
    epochs: int = 1,
    samples: int = 100,
    owner: str | None = None,
    run: str | None = None,
    resume: bool = False,
    offers: Sequence[StepId] = (),
    lr: float = LR,
    seed: int = SEED,
    num_classes: int = 10,
) -> Member:
    spec = make_spec(run or f"run{holder}", lr=lr, seed=seed, num_classes=num_classes)
    request = GroupJoin(
        name="g", holder=holder, batches_per_epoch=batches, samples=samples, epochs=epochs
    )
    member, _, _ = group.join(
        spec, request, owner=owner or f"party{holder}", resume=resume, offers=offers
    )
    return member


def batch_of(holder: int, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations float32 [ROWS, 500] in [-1, 1] and labels int64 [ROWS], from the step."""
    generator = torch.Generator().manual_seed(10_000 * holder + 100 * epoch + batch)
    activations = torch.rand(ROWS, 500, generator=generator) * 2 - 1
    return activations, torch.randint(0, 10, (ROWS,), generator=generator)


def digest_of(activations: torch.Tensor, labels: torch.Tensor) -> bytes:
    return batch_digest(activations, labels)


def train(
    group: Group, member: Member, epoch: int, batch: int, *, save: bool = False, tweak: int = 0
) -> tuple[StepResult, bool]:
    """Member's step (epoch, batch) with its own batch; `tweak` changes the batch's labels."""
    activations, labels = batch_of(member.holder, epoch, batch)
    labels = (labels + tweak) % 10
    step = StepId(member.run, epoch, batch)
    return group.train(member, step, activations, labels, digest_of(activations, labels), save=save)


@cache
def body_blob(seed: int) -> WeightsBlob:
    return to_blob(build_body(seed).state_dict())


def snapshot(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module_state.items()}


def assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# -- GroupSpec --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hospitals=splitfed:4", GroupSpec("hospitals", TOPOLOGIES["splitfed"], 4)),
        ("g=shared-head:1", GroupSpec("g", TOPOLOGIES["shared-head"], 1)),
        ("a_b.c-d=round-robin:64", GroupSpec("a_b.c-d", TOPOLOGIES["round-robin"], 64)),
        ("g=splitfed:02", GroupSpec("g", TOPOLOGIES["splitfed"], 2)),
    ],
)
def test_group_spec_parses(text: str, expected: GroupSpec) -> None:
    assert GroupSpec.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("g", "expected NAME=TOPOLOGY:K"),
        ("g=splitfed", "expected NAME=TOPOLOGY:K"),
        ("=splitfed:2", "expected NAME=TOPOLOGY:K"),
        ("g splitfed:2", "expected NAME=TOPOLOGY:K"),
        ("my group=splitfed:2", "group name 'my group'"),
        ("g/x=splitfed:2", "group name 'g/x'"),
        ("g=fedavg:2", "topology 'fedavg'"),
        ("g=SPLITFED:2", "topology 'SPLITFED'"),
        ("g=splitfed:0", "group size '0'"),
        ("g=splitfed:65", "group size '65'"),
        ("g=splitfed:-1", "group size '-1'"),
        ("g=splitfed:", "group size ''"),
        ("g=splitfed:2:3", "group size '2:3'"),
        ("g=splitfed: 2", "group size ' 2'"),
        ("g=splitfed:two", "group size 'two'"),
    ],
)
def test_group_spec_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as refused:
        GroupSpec.parse(text)

    assert problem in str(refused.value)


@pytest.mark.parametrize("size", ["\u00b2", "\u0661"], ids=["superscript-two", "arabic-one"])
def test_group_spec_takes_only_ascii_digits_as_the_size(size: str) -> None:
    with pytest.raises(ValueError, match="group size"):
        GroupSpec.parse(f"g=splitfed:{size}")


def test_groups_refuse_two_groups_of_one_name_and_name_no_declared_one() -> None:
    specs = [GroupSpec.parse("b=splitfed:2"), GroupSpec.parse("a=shared-head:3")]

    with pytest.raises(ValueError, match="same name"):
        Groups([*specs, GroupSpec.parse("a=round-robin:2")])
    with pytest.raises(Forbidden, match=r"^no group 'c' that this party may join on this server$"):
        Groups(specs).get("c")
    assert Groups(specs).get("a").spec == specs[1]


# -- joining and the schedule -----------------------------------------------------------------


@pytest.mark.parametrize("topology", ["shared-head", "round-robin"])
def test_the_schedule_does_not_depend_on_the_order_of_joining(topology: str) -> None:
    batches = {0: 2, 1: 3, 2: 1}
    schedules = []
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        group = make_group(topology, 3)
        for holder in order:
            join(group, holder, batches=batches[holder], epochs=2)
        assert group.schedule is not None
        schedules.append(slots(group.schedule))

    assert schedules[0] == schedules[1] == schedules[2]
    assert len(schedules[0]) == 2 * (6 + (3 if topology == "round-robin" else 0))


def test_shared_head_order_is_epoch_batch_holder() -> None:
    group = make_group("shared-head", 3)
    for holder, batches in [(1, 3), (0, 2), (2, 1)]:
        join(group, holder, batches=batches, epochs=2)

    expected = [
        Slot("train", e, h, b)
        for e in (1, 2)
        for h, b in [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (1, 2)]
    ]
    assert group.schedule is not None
    assert slots(group.schedule) == expected
    assert [group.schedule.position(slot) for slot in expected] == list(range(12))
    assert group.cursor == 0


def test_round_robin_order_is_epoch_holder_batch_then_a_hand_in() -> None:
    group = make_group("round-robin", 2)
    join(group, 1, batches=1, epochs=2)
    join(group, 0, batches=2, epochs=2)

    assert group.schedule is not None
    assert slots(group.schedule) == [
        slot
        for e in (1, 2)
        for slot in [
            ("train", e, 0, 0),
            ("train", e, 0, 1),
            ("hand_in", e, 0, 0),
            ("train", e, 1, 0),
            ("hand_in", e, 1, 0),
        ]
    ]


def test_turn_waits_for_every_holder_then_for_the_cursor() -> None:
    group = make_group("shared-head", 2)
    first = join(group, 0, batches=2)
    with pytest.raises(NotYet):
        group.turn(first, 1, 0)  # holder 1 has not joined
    with pytest.raises(WrongState, match="waits for its other holders"):
        train(group, first, 1, 0)
    second = join(group, 1, batches=2)

    with pytest.raises(NotYet):
        group.turn(second, 1, 0)  # holder 0's (1, 0) comes first
    with pytest.raises(NotYet):
        group.turn(first, 1, 1)
    assert group.turn(first, 1, 0) is None
    train(group, first, 1, 0)
    assert group.turn(second, 1, 0) is None
    assert group.turn(first, 1, 0) is None  # an applied step: no waiting for a replay
    with pytest.raises(NotYet):
        group.turn(first, 1, 1)


def test_a_step_out_of_turn_is_refused_and_changes_nothing() -> None:
    group = make_group("shared-head", 2)
    first, second = join(group, 0, batches=2), join(group, 1, batches=2)
    train(group, first, 1, 0)
    assert group.head is not None
    head = snapshot(group.head.state_dict())

    for member, epoch, batch in [(first, 1, 1), (second, 1, 1)]:
        with pytest.raises(WrongState, match=r"not holder .*'s turn"):
            train(group, member, epoch, batch)

    assert group.cursor == 1
    assert (first.last, second.last) == ((1, 0), None)
    assert list(first.replies) == [(1, 0)] and second.replies == {}
    assert_equal_states(group.head.state_dict(), head)


@pytest.mark.parametrize(("epoch", "batch"), [(0, 0), (2, 0), (1, 2)])
def test_a_step_outside_the_members_epochs_and_batches_is_invalid(epoch: int, batch: int) -> None:
    group = make_group("shared-head", 1)
    member = join(group, 0, batches=2)

    with pytest.raises(InvalidRequest, match=r"epochs 1\.\.1 of 2 steps"):
        group.turn(member, epoch, batch)
    with pytest.raises(InvalidRequest):
        train(group, member, epoch, batch)


def test_a_replay_is_answered_from_the_cache_only_with_the_same_tensors() -> None:
    group = make_group("shared-head", 1)
    member = join(group, 0, batches=3)
    result, applied = train(group, member, 1, 0)
    train(group, member, 1, 1)
    head = snapshot(member.head.state_dict())

    again, applied_again = train(group, member, 1, 0)

    assert applied and not applied_again
    assert again is result
    assert_equal_states(member.head.state_dict(), head)
    assert group.cursor == 2
    with pytest.raises(WrongState, match="applied with other tensors"):
        train(group, member, 1, 0, tweak=1)
    assert_equal_states(member.head.state_dict(), head)


def test_a_replayed_gradient_is_the_one_first_sent() -> None:
    first_run, second_run = make_group("shared-head", 1), make_group("shared-head", 1)
    a, b = join(first_run, 0, batches=2), join(second_run, 0, batches=2)
    original, _ = train(first_run, a, 1, 0)
    train(first_run, a, 1, 1)
    reference, _ = train(second_run, b, 1, 0)

    replayed, applied = train(first_run, a, 1, 0)

    assert not applied and replayed is original
    assert torch.equal(replayed.gradient, reference.gradient)
    assert (replayed.loss, replayed.correct) == (reference.loss, reference.correct)


# -- who may join -----------------------------------------------------------------------------


def test_an_index_is_bound_to_the_identity_that_took_it() -> None:
    group = make_group("shared-head", 2)
    join(group, 0, batches=2, owner="alice", run="alices-run")

    with pytest.raises(Forbidden, match="holder 0 of group 'g' is another party's"):
        join(group, 0, batches=2, owner="bob", run="alices-run")  # her exact settings
    with pytest.raises(Forbidden):
        join(group, 0, batches=2, owner="bob", run="bobs-run")
    bob = join(group, 1, batches=2, owner="bob", run="bobs-run")

    assert group.members[0].owner == "alice" and bob.owner == "bob"


@pytest.mark.parametrize(
    "changes",
    [{"lr": LR * 2}, {"seed": SEED + 1}, {"num_classes": 11}, {"epochs": 2}],
    ids=["lr", "seed", "num_classes", "epochs"],
)
def test_a_member_with_other_settings_is_refused(changes: dict[str, Any]) -> None:
    group = make_group("splitfed", 2)
    join(group, 0, batches=2)

    with pytest.raises(WrongState, match="group 'g'"):
        join(group, 1, batches=2, **changes)

    assert list(group.members) == [0]
    assert group.settings == make_spec("run0") and group.epochs == 1


def test_one_run_cannot_be_two_holders() -> None:
    group = make_group("shared-head", 3)
    join(group, 0, batches=2, owner="alice", run="r")

    with pytest.raises(WrongState, match="already holder 0's"):
        join(group, 1, batches=2, owner="alice", run="r")
    join(group, 1, batches=2, owner="alice", run="r2")  # another run of hers may
    join(group, 2, batches=2, owner="bob", run="r")  # and another party's run of that name

    assert [group.members[h].run for h in range(3)] == ["r", "r2", "r"]


@pytest.mark.parametrize(
    ("holder", "batches", "epochs"), [(2, 1, 1), (5, 1, 1), (0, 0, 1), (0, 1, 0)]
)
def test_a_bad_index_step_count_or_epoch_count_is_invalid(
    holder: int, batches: int, epochs: int
) -> None:
    group = make_group("shared-head", 2)

    with pytest.raises(InvalidRequest):
        join(group, holder, batches=batches, epochs=epochs)

    assert group.members == {} and group.settings is None


# -- round-robin ------------------------------------------------------------------------------


def test_round_robin_hands_part_1_from_holder_to_holder() -> None:
    group = make_group("round-robin", 2)
    first, second = join(group, 0, batches=2, epochs=2), join(group, 1, batches=1, epochs=2)
    assert group.turn(first, 1, 0) is None  # the very first turn: its own part 1
    train(group, first, 1, 0)
    with pytest.raises(WrongState, match="before its last step"):
        group.hand_in(first, 1, body_blob(1))
    train(group, first, 1, 1)
    with pytest.raises(NotYet):
        group.turn(second, 1, 0)  # holder 0 has not handed in
    with pytest.raises(WrongState, match="waits for holder 0's part 1"):
        train(group, second, 1, 0)
    assert group.cursor == 2 and group.parts.handed == {}

    group.hand_in(first, 1, body_blob(1))
    handed = group.turn(second, 1, 0)

    assert handed is not None and group.cursor == 3
    assert (handed.data, handed.sha256) == (body_blob(1).data, body_blob(1).sha256)
    assert group.turn(second, 1, 0) == handed  # asked again: the same
    group.hand_in(first, 1, body_blob(1))  # a resumed holder hands in the same weights again
    with pytest.raises(WrongState, match="handed in other weights"):
        group.hand_in(first, 1, body_blob(2))
    assert group.cursor == 3 and group.parts.handed[(1, 0)].sha256 == body_blob(1).sha256
    train(group, second, 1, 0)
    group.hand_in(second, 1, body_blob(2))
    back = group.turn(first, 2, 0)  # the next epoch begins from the last holder's
    assert back is not None and back.sha256 == body_blob(2).sha256
    train(group, first, 2, 0)
    assert group.turn(first, 2, 1) is None  # only a turn's first step takes part 1


def test_round_robin_refuses_a_damaged_hand_in_and_keeps_waiting_for_it() -> None:
    group = make_group("round-robin", 2)
    first, second = join(group, 0, batches=1), join(group, 1, batches=1)
    train(group, first, 1, 0)
    good = body_blob(1)
    damaged = WeightsBlob(data=good.data[:-1] + bytes([good.data[-1] ^ 1]), sha256=good.sha256)

    with pytest.raises(InvalidRequest, match=r"part 1's weights: .*SHA-256"):
        group.hand_in(first, 1, damaged)
    with pytest.raises(InvalidRequest, match="part 1's weights"):
        group.hand_in(first, 1, WeightsBlob(data=b"", sha256=b""))

    assert group.parts.handed == {} and group.cursor == 1
    with pytest.raises(NotYet):
        group.turn(second, 1, 0)
    group.hand_in(first, 1, good)  # the intact blob is still taken
    assert group.cursor == 2


def test_a_shared_head_group_takes_no_hand_in() -> None:
    group = make_group("shared-head", 1)
    member = join(group, 0, batches=1)
    train(group, member, 1, 0)

    with pytest.raises(InvalidRequest, match="shared-head"):
        group.hand_in(member, 1, body_blob(1))


# -- splitfed ---------------------------------------------------------------------------------


def _weighted(states: list[dict[str, torch.Tensor]], counts: list[int]) -> dict[str, torch.Tensor]:
    """An independent weighted mean in float32, to compare with tolerance."""
    total = sum(counts)
    return {
        name: sum(
            (state[name] * (count / total) for state, count in zip(states, counts, strict=True)),
            torch.zeros_like(states[0][name]),
        )
        for name in states[0]
    }


def test_splitfed_averages_bodies_and_heads_by_the_samples_the_server_applied() -> None:
    group = make_group("splitfed", 2)
    first = join(group, 0, batches=2, epochs=2, samples=100)  # claims: not the weights
    second = join(group, 1, batches=1, epochs=2, samples=300)
    counted = [2 * ROWS, ROWS]
    assert first.head is not second.head
    # Parallel: each trains its own head, in any order.
    train(group, second, 1, 0)
    train(group, first, 1, 0)
    train(group, first, 1, 1)
    heads = [snapshot(first.head.state_dict()), snapshot(second.head.state_dict())]
    assert not torch.equal(heads[0]["layers.0.weight"], heads[1]["layers.0.weight"])
    group.hand_in(second, 1, body_blob(2))
    assert 1 not in group.parts.averages
    with pytest.raises(NotYet):
        group.turn(second, 2, 0)
    with pytest.raises(WrongState, match="after round 1 is averaged"):
        train(group, second, 2, 0)

    group.hand_in(first, 1, body_blob(1))

    bodies = [from_blob(body_blob(1)), from_blob(body_blob(2))]
    averaged = from_blob(group.parts.averages[1])
    assert_equal_states(averaged, average(bodies, counted))
    expected_heads = _weighted(heads, counted)
    for member in (first, second):
        state = member.head.state_dict()
        for name, value in expected_heads.items():
            torch.testing.assert_close(state[name], value, atol=1e-6, rtol=0)
    for name, value in _weighted(bodies, counted).items():
        torch.testing.assert_close(averaged[name], value, atol=1e-6, rtol=0)
    for member in (first, second):
        turn = group.turn(member, 2, 0)
        assert turn is not None and turn.data == group.parts.averages[1].data
    assert group.turn(first, 2, 1) is None


def test_splitfed_members_start_from_the_groups_head() -> None:
    group = make_group("splitfed", 2)
    first, second = join(group, 0, batches=1), join(group, 1, batches=1)

    reference = build_head(SEED, 10).state_dict()
    assert_equal_states(first.head.state_dict(), reference)
    assert_equal_states(second.head.state_dict(), reference)


def test_splitfed_steps_of_a_member_come_in_its_own_order() -> None:
    group = make_group("splitfed", 2)
    first, _ = join(group, 0, batches=2), join(group, 1, batches=2)

    with pytest.raises(WrongState, match="next step is epoch 1 batch 0"):
        train(group, first, 1, 1)
    train(group, first, 1, 0)
    train(group, first, 1, 1)  # no need to wait for holder 1
    assert first.last == (1, 1) and group.cursor == 0


# -- finishing --------------------------------------------------------------------------------


def test_finish_waits_for_the_whole_round_robin_then_gives_the_last_holders_part_1() -> None:
    group = make_group("round-robin", 2)
    first = join(group, 0, batches=1, epochs=2)
    with pytest.raises(NotYet):
        group.finish(first)
    second = join(group, 1, batches=1, epochs=2)
    blobs = {(1, 0): body_blob(10), (1, 1): body_blob(11), (2, 0): body_blob(12)}
    for epoch in (1, 2):
        for member in (first, second):
            with pytest.raises(NotYet):
                group.finish(first)
            train(group, member, epoch, 0)
            if (epoch, member.holder) in blobs:
                group.hand_in(member, epoch, blobs[(epoch, member.holder)])
    with pytest.raises(NotYet):
        group.finish(second)  # the last hand-in is missing

    group.hand_in(second, 2, body_blob(13))

    for member in (first, second):
        final = group.finish(member)
        assert final is not None and final.sha256 == body_blob(13).sha256
        assert member.finished


def test_finish_waits_for_the_last_splitfed_round_then_gives_its_average() -> None:
    group = make_group("splitfed", 2)
    first, second = join(group, 0, batches=1), join(group, 1, batches=1)
    train(group, first, 1, 0)
    train(group, second, 1, 0)
    group.hand_in(first, 1, body_blob(1))
    with pytest.raises(NotYet):
        group.finish(first)

    group.hand_in(second, 1, body_blob(2))

    final = group.finish(first)
    assert final is not None and final.data == group.parts.averages[1].data
    assert_equal_states(
        from_blob(final), average([from_blob(body_blob(n)) for n in (1, 2)], [1, 1])
    )


def test_finish_of_a_shared_head_group_keeps_every_part_1() -> None:
    group = make_group("shared-head", 2)
    first, second = join(group, 0, batches=1), join(group, 1, batches=2)
    train(group, first, 1, 0)
    train(group, second, 1, 0)
    with pytest.raises(NotYet):
        group.finish(first)

    train(group, second, 1, 1)

    assert group.finish(first) is None and group.finish(second) is None


# -- resuming ---------------------------------------------------------------------------------


def test_replies_are_kept_from_the_save_point_before_last() -> None:
    group = make_group("shared-head", 1)
    member = join(group, 0, batches=7)  # (1, 6), the epoch's last step, would be a save point
    saves = {1, 3}
    for batch in range(6):
        train(group, member, 1, batch, save=batch in saves)

    assert member.saves == [(1, 1), (1, 3)]
    assert sorted(member.replies) == [(1, b) for b in range(1, 6)]
    with pytest.raises(WrongState, match="no longer held"):
        train(group, member, 1, 0)
    train(group, member, 1, 5, save=True)  # a replayed save does not move the window
    assert member.saves == [(1, 1), (1, 3)]


def test_a_save_drops_the_replies_before_the_previous_save() -> None:
    group = make_group("shared-head", 1)
    member = join(group, 0, batches=9)
    for batch in range(8):
        train(group, member, 1, batch, save=batch in (1, 3, 6))

    assert member.saves == [(1, 3), (1, 6)]
    assert sorted(member.replies) == [(1, b) for b in range(3, 8)]


def test_the_last_step_of_an_epoch_is_a_save_point_whatever_the_holder_says() -> None:
    group = make_group("shared-head", 1)
    member = join(group, 0, batches=3, epochs=3)
    for epoch in (1, 2, 3):
        for batch in range(3):
            train(group, member, epoch, batch)  # a holder that never marks a save point

    assert member.saves == [(2, 2), (3, 2)]
    assert sorted(member.replies) == [(2, 2), (3, 0), (3, 1), (3, 2)]


def _resumable(owner: str = "party0") -> tuple[Group, Member]:
    """A one-holder group with steps (1, 0)..(1, 4) applied, saves at (1, 1) and (1, 3)."""
    group = make_group("shared-head", 1)
    member = join(group, 0, batches=6, owner=owner)
    for batch in range(5):
        train(group, member, 1, batch, save=batch in (1, 3))
    return group, member


@pytest.mark.parametrize("at", [1, 2, 3, 4])
def test_a_resume_inside_the_kept_replies_succeeds(at: int) -> None:
    group, member = _resumable()
    request = GroupJoin(name="g", holder=0, batches_per_epoch=6, samples=0, epochs=1)
    offers = [StepId("run0", 1, at), StepId("run0", 1, 0)]

    again, after, resumed = group.join(
        make_spec("run0"), request, owner="party0", resume=True, offers=offers
    )

    assert again is member and resumed and after == (1, at)
    for batch in range(at + 1, 5):  # the restarted holder replays and is answered as before
        result, applied = train(group, member, 1, batch)
        assert not applied and result is member.replies[(1, batch)][1]
    _, applied = train(group, member, 1, 5)
    assert applied


@pytest.mark.parametrize(
    "offers",
    [[StepId("run0", 1, 0)], [], [StepId("other", 1, 3)], [StepId("run0", 1, 5)]],
    ids=["older-than-kept", "nothing", "other-run", "never-applied"],
)
def test_a_resume_the_group_cannot_serve_is_refused(offers: list[StepId]) -> None:
    group, member = _resumable()
    request = GroupJoin(name="g", holder=0, batches_per_epoch=6, samples=0, epochs=1)

    with pytest.raises(WrongState, match=r"cannot resume holder 0 .*\(1, 1\) to \(1, 4\)"):
        group.join(make_spec("run0"), request, owner="party0", resume=True, offers=offers)

    assert member.last == (1, 4) and group.cursor == 5


def test_a_rejoin_without_resume_after_steps_is_refused() -> None:
    group, _ = _resumable()

    with pytest.raises(WrongState, match="resume it"):
        join(group, 0, batches=6)
    with pytest.raises(WrongState, match="run 'run0' with 6 steps"):
        join(group, 0, batches=5, resume=True, offers=[StepId("run0", 1, 3)])


def test_a_rejoin_before_any_step_is_a_fresh_start() -> None:
    group = make_group("shared-head", 2)
    member = join(group, 0, batches=2)

    again, after, resumed = group.join(
        make_spec("run0"),
        GroupJoin(name="g", holder=0, batches_per_epoch=2, samples=0, epochs=1),
        owner="party0",
        resume=False,
        offers=[],
    )

    assert again is member and after is None and not resumed
    assert list(group.members) == [0]


def test_a_resume_of_a_holder_the_group_never_saw_is_refused() -> None:
    group = make_group("shared-head", 2)

    with pytest.raises(WrongState, match="nothing to resume"):
        join(group, 0, batches=2, resume=True, offers=[StepId("run0", 1, 0)])
    assert group.members == {}


def _finished(group: Group, *, finished_flags: Sequence[bool]) -> None:
    """Runs a one-step shared-head group to its end and closes its members."""
    members = [join(group, h, batches=1) for h in range(group.spec.size)]
    for member in members:
        train(group, member, 1, 0)
    for member, finished in zip(members, finished_flags, strict=True):
        group.finish(member)
        group.closed(member, finished=finished)


def test_a_group_whose_members_all_finished_starts_over_on_the_next_join() -> None:
    group = make_group("shared-head", 2)
    _finished(group, finished_flags=[True, True])
    old_head = group.head

    member = join(group, 0, batches=3, epochs=2, lr=LR * 2, owner="carol", run="new")

    assert list(group.members) == [0] and member.last is None
    assert group.cursor == 0 and group.schedule is None and group.parts.handed == {}
    assert group.epochs == 2 and group.settings is not None and group.settings.lr == LR * 2
    assert group.head is not old_head and not group.started
    assert_equal_states(member.head.state_dict(), build_head(SEED, 10).state_dict())


@pytest.mark.parametrize(
    "refused_rejoin",
    [False, True],
    ids=["alone", "after-a-refused-rejoin"],
)
def test_a_finished_group_starts_over_for_its_next_run(refused_rejoin: bool) -> None:
    group = make_group("shared-head", 2)
    members = [join(group, h, batches=1) for h in range(2)]
    for member in members:
        train(group, member, 1, 0)
    for member in members:
        group.finish(member)
    group.closed(members[0], finished=True)
    if refused_rejoin:
        with pytest.raises(WrongState, match="still finishing"):
            join(group, 0, batches=1)  # holder 0's command run again before holder 1 finished
    group.closed(members[1], finished=True)

    member = join(group, 0, batches=2, run="next")  # the group's next run

    assert member.run == "next" and list(group.members) == [0]


@pytest.mark.parametrize("flags", [[True, False], [False, False]], ids=["one", "none"])
def test_a_group_is_not_reset_while_a_member_has_not_finished(flags: list[bool]) -> None:
    group = make_group("shared-head", 2)
    _finished(group, finished_flags=flags)

    with pytest.raises(WrongState):
        join(group, 0, batches=3, epochs=2, lr=LR * 2, owner="carol", run="new")

    assert group.cursor == 2 and group.members[0].owner == "party0"


# -- the same parameters whatever the timing --------------------------------------------------


@dataclass
class Outcome:
    gradients: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)
    finals: dict[int, bytes | None] = field(default_factory=dict)


def _handed_body(holder: int, epoch: int) -> WeightsBlob:
    return body_blob(100 + 10 * epoch + holder)


def _holder_calls(group: Group, member: Member, outcome: Outcome) -> Iterator[None]:
    """A holder's calls as a client makes them; yields whenever it must wait or gave way."""
    for epoch in range(1, group.epochs + 1):
        for batch in range(member.batches):
            while True:
                try:
                    group.turn(member, epoch, batch)
                    break
                except NotYet:
                    yield
            result, applied = train(group, member, epoch, batch)
            assert applied
            outcome.gradients[(member.holder, epoch, batch)] = result.gradient
            yield
        if group.topology.name != "shared-head":
            group.hand_in(member, epoch, _handed_body(member.holder, epoch))
            yield
    while True:
        try:
            final = group.finish(member)
            break
        except NotYet:
            yield
    outcome.finals[member.holder] = None if final is None else final.sha256


def _run_group(
    topology: str, batches: Sequence[int], *, join_order: Sequence[int], seed: int
) -> tuple[Group, Outcome]:
    """Runs a whole group of 2 epochs, the holders' calls interleaved at random by `seed`."""
    group = make_group(topology, len(batches))
    for holder in join_order:
        join(group, holder, batches=batches[holder], epochs=2, samples=50 * (holder + 1))
    members = [group.members[h] for h in range(len(batches))]
    outcome = Outcome()
    live = {m.holder: _holder_calls(group, m, outcome) for m in members}
    rng = random.Random(seed)
    for _ in range(10_000):
        if not live:
            break
        holder = rng.choice(sorted(live))
        try:
            next(live[holder])
        except StopIteration:
            del live[holder]
    assert not live, "the group never finished"
    return group, outcome


def _assert_same_run(a: tuple[Group, Outcome], b: tuple[Group, Outcome]) -> None:
    (group_a, outcome_a), (group_b, outcome_b) = a, b
    assert outcome_a.gradients.keys() == outcome_b.gradients.keys()
    for key, gradient in outcome_a.gradients.items():
        assert torch.equal(gradient, outcome_b.gradients[key]), key
    assert outcome_a.finals == outcome_b.finals
    for holder, member in group_a.members.items():
        other = group_b.members[holder]
        assert_equal_states(member.head.state_dict(), other.head.state_dict())
        moments = member.optimizer.state_dict()["state"]
        for index, values in moments.items():
            for name, value in values.items():
                assert torch.equal(value, other.optimizer.state_dict()["state"][index][name])
    assert group_a.parts.averages.keys() == group_b.parts.averages.keys()
    for epoch, blob in group_a.parts.averages.items():
        assert blob.sha256 == group_b.parts.averages[epoch].sha256, epoch


# Splitfed averages part 1 (18.5 MB) every round: two holders keep the test fast.
@pytest.mark.parametrize(
    ("topology", "batches"),
    [("shared-head", (2, 3, 1)), ("round-robin", (2, 3, 1)), ("splitfed", (3, 1))],
)
def test_a_group_gives_the_same_parameters_whatever_the_interleaving(
    topology: str, batches: tuple[int, ...]
) -> None:
    holders = list(range(len(batches)))

    first = _run_group(topology, batches, join_order=holders, seed=1)
    second = _run_group(topology, batches, join_order=holders[::-1], seed=2)

    _assert_same_run(first, second)
    group, outcome = first
    assert len(outcome.gradients) == 2 * sum(batches)
    if topology == "shared-head":
        assert outcome.finals == dict.fromkeys(holders, None)
    elif topology == "round-robin":
        assert outcome.finals == dict.fromkeys(holders, _handed_body(holders[-1], 2).sha256)
    else:
        assert sorted(group.parts.averages) == [1, 2]
        assert outcome.finals == dict.fromkeys(holders, group.parts.averages[2].sha256)
        bodies = [from_blob(_handed_body(h, 2)) for h in holders]
        counted = [ROWS * b for b in batches]  # what the server applied, not what was claimed
        assert_equal_states(from_blob(group.parts.averages[2]), average(bodies, counted))
    if group.schedule is not None:
        assert group.cursor == len(group.schedule)


def test_the_interleaving_test_can_tell_runs_apart() -> None:
    group_a, outcome_a = _run_group("shared-head", (2, 3, 1), join_order=[0, 1, 2], seed=1)
    group_b, outcome_b = _run_group("shared-head", (2, 3, 1), join_order=[0, 1, 2], seed=1)
    train_b = next(iter(group_b.members.values()))
    with torch.no_grad():
        next(train_b.head.parameters()).add_(1e-6)  # the smallest of differences

    with pytest.raises(AssertionError):
        _assert_same_run((group_a, outcome_a), (group_b, outcome_b))


def test_a_holder_that_died_before_its_first_save_starts_over_and_replays() -> None:
    group = make_group("splitfed", 2)
    members = [join(group, h, batches=3) for h in range(2)]
    first, _ = train(group, members[0], 1, 0)
    train(group, members[0], 1, 1, save=True)  # the holder may die before it saved this step

    again = join(group, 0, batches=3)  # no state to resume: the same command, from the start

    assert again is members[0]
    replayed, applied = train(group, again, 1, 0)
    assert not applied and replayed is first
    train(group, again, 1, 1, save=True)
    train(group, again, 1, 2, save=True)  # a second save: the first one is now the oldest kept
    with pytest.raises(WrongState, match="resume it"):
        join(group, 0, batches=3)


def _idle(group: Group, seconds: float) -> None:
    group.last_active -= seconds


def test_a_group_whose_holders_are_all_gone_drops_its_run_after_the_ttl(tmp_path: Path) -> None:
    groups = Groups([GroupSpec.parse("g=shared-head:2")])
    group = groups.get("g")
    members = [join(group, h, batches=2) for h in range(2)]
    train(group, members[0], 1, 0)
    registry = SessionRegistry(model_dir=tmp_path, max_batch_size=64)
    sessions = []
    for member in members:
        assert group.settings is not None
        head = GroupMemberHead(group, member)
        session = HeadSession(
            f"token{member.holder}", group.settings, head=head, owner=member.owner
        )
        registry.adopt(session)
        sessions.append(session)

    _idle(group, 50.0)
    assert groups.expire(60.0) == set()  # not idle long enough
    _idle(group, 20.0)
    assert groups.expire(60.0) == {group}
    assert registry.drop_members({"g"}) == 2

    assert group.members == {} and group.cursor == 0 and not group.started
    assert len(registry) == 0
    fresh = join(group, 0, batches=2)  # the group's run can start over
    assert fresh.last is None


def test_a_waiting_holder_keeps_its_group_alive() -> None:
    group = make_group("shared-head", 2)
    member = join(group, 0, batches=2)
    _idle(group, 100.0)

    with pytest.raises(NotYet):
        group.turn(member, 1, 0)  # the servicer asks again every few seconds while it waits

    assert not group.expire(60.0)
    assert list(group.members) == [0]


def test_a_finished_group_is_not_expired_but_free() -> None:
    group = make_group("shared-head", 1)
    member = join(group, 0, batches=1)
    train(group, member, 1, 0)
    group.finish(member)
    group.closed(member, finished=True)
    _idle(group, 1000.0)

    assert not group.expire(60.0)
