"""What a group keeps of part 1 over many rounds, and resumes from its save point before last
after the older rounds are dropped: Group objects, no gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pytest
import torch

from splitnn.common.codec import GroupJoin, StepId, WeightsBlob
from splitnn.common.models import build_body
from splitnn.common.topology import TOPOLOGIES
from splitnn.common.weights import to_blob
from splitnn.server.changes import Changes
from splitnn.server.errors import WrongState
from splitnn.server.group import Group
from splitnn.server.group_member import Member, batch_digest
from splitnn.server.group_spec import GroupSpec
from splitnn.server.head import SessionSpec

EPOCHS = 5
BATCHES = 2
ROWS = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _body.cache_clear()  # 18.5 MB each


@cache
def _body(seed: int) -> WeightsBlob:
    return to_blob(build_body(seed).state_dict())


def _handed(epoch: int, holder: int) -> WeightsBlob:
    return _body((epoch + holder) % 3)


def _spec(holder: int) -> SessionSpec:
    return SessionSpec(
        run=f"run{holder}",
        cut_shape=(500,),
        dtype="float32",
        max_batch_size=16,
        num_classes=10,
        lr=1e-2,
        seed=4,
    )


def _join(group: Group, holder: int, *, resume: bool = False, offers: list[StepId]) -> Member:
    request = GroupJoin(
        name="g", holder=holder, batches_per_epoch=BATCHES, samples=1, epochs=EPOCHS
    )
    member, _, _ = group.join(
        _spec(holder), request, owner=f"party{holder}", resume=resume, offers=offers
    )
    return member


def _train(group: Group, member: Member, epoch: int, batch: int) -> bool:
    generator = torch.Generator().manual_seed(1000 * member.holder + 10 * epoch + batch)
    activations = torch.rand(ROWS, 500, generator=generator)
    labels = torch.randint(0, 10, (ROWS,), generator=generator)
    step = StepId(member.run, epoch, batch)
    digest = batch_digest(activations, labels)
    return group.train(member, step, activations, labels, digest, save=False)[1]


def _epoch(group: Group, member: Member, epoch: int) -> tuple[bytes | None, list[bool]]:
    """The member's turn, steps and hand-in of `epoch`: the SHA-256 of the part 1 it starts
    from, and which steps were applied (not answered from the cache)."""
    start = group.turn(member, epoch, 0)
    applied = []
    for batch in range(BATCHES):
        group.turn(member, epoch, batch)
        applied.append(_train(group, member, epoch, batch))
    group.hand_in(member, epoch, _handed(epoch, member.holder))
    return (None if start is None else start.sha256), applied


def _group(topology: str) -> tuple[Group, list[Member]]:
    group = Group(GroupSpec(name="g", topology=TOPOLOGIES[topology], size=2), Changes())
    return group, [_join(group, h, offers=[]) for h in range(2)]


@pytest.mark.parametrize("topology", ["round-robin", "splitfed"])
def test_a_group_holds_parts_1_from_its_members_save_points_before_last(topology: str) -> None:
    group, members = _group(topology)
    held = []

    for epoch in range(1, EPOCHS + 1):
        for member in members:
            _epoch(group, member, epoch)
        parts = group.parts
        held.append((sorted(parts.handed), sorted(parts.averages), sorted(parts.digests)))

    # After epoch e every member's save points are the ends of e - 1 and e: epoch e - 1 on.
    handed, averages, digests = held[-1]
    assert digests == [(e, h) for e in (EPOCHS - 1, EPOCHS) for h in (0, 1)]
    if topology == "splitfed":
        assert handed == [] and averages == [EPOCHS - 1, EPOCHS]
    else:
        assert handed == digests and averages == []
    assert all(len(h) + len(a) <= 4 for h, a, _ in held)
    assert all(set(m.trained) <= {EPOCHS - 1, EPOCHS} for m in members)


@pytest.mark.parametrize("topology", ["round-robin", "splitfed"])
def test_a_holder_resumes_from_its_save_point_before_last_after_older_rounds_are_dropped(
    topology: str,
) -> None:
    plain, plain_members = _group(topology)
    starts = {}
    for epoch in range(1, EPOCHS + 1):
        for member in plain_members:
            starts[(epoch, member.holder)] = _epoch(plain, member, epoch)[0]
    group, members = _group(topology)
    for epoch in range(1, 5):
        for member in members:
            _epoch(group, member, epoch)
    assert members[1].saves == [(3, 1), (4, 1)]

    again = _join(group, 1, resume=True, offers=[StepId("run1", 3, 1)])
    group.hand_in(again, 3, _handed(3, 1))  # its own hand-in again: answered, not applied
    replayed = _epoch(group, again, 4)
    for member in members:
        _epoch(group, member, 5)

    assert again is members[1]
    assert replayed == (starts[(4, 1)], [False, False])
    finals = [group.finish(m) for m in members]
    expected = [plain.finish(m) for m in plain_members]
    assert [f and f.sha256 for f in finals] == [e and e.sha256 for e in expected]
    for mine, theirs in zip(members, plain_members, strict=True):
        state, reference = mine.head.state_dict(), theirs.head.state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in state)


@pytest.mark.parametrize("topology", ["round-robin", "splitfed"])
def test_a_hand_in_of_a_dropped_round_is_refused(topology: str) -> None:
    group, members = _group(topology)
    for epoch in range(1, 4):
        for member in members:
            _epoch(group, member, epoch)

    with pytest.raises(WrongState, match=r"no longer held|not holder 0's hand-in"):
        group.hand_in(members[0], 1, _handed(1, 0))
    with pytest.raises(WrongState, match="other weights"):
        group.hand_in(members[0], 3, _handed(1, 0))  # not what it handed in for epoch 3
