"""The topologies of a training group: what its holders share and in which order its steps run.

The one place that names them. The server's group state machine, the data holder, the
simulation and the experiment grid read a `Topology` from `TOPOLOGIES`; none compares names.

* shared-head: every holder keeps its own part 1; one head is trained by all holders' steps,
  interleaved batch by batch: (epoch, batch, holder).
* round-robin (the original SplitNN): holders take turns, a whole epoch each: (epoch, holder,
  batch). At the end of its turn a holder hands in part 1; the next holder continues from it.
* splitfed: holders train in parallel, each with its own copy of the head. After every epoch (a
  round) each hands in part 1; the server averages the parts 1 and the heads, weighted by the
  samples the server saw each holder train on in that round (FedAvg), and every holder continues
  from the averages.

A sequential topology's order is a `Schedule`: the slot at a cursor and the position of a slot,
computed from the epochs and each holder's batches per epoch. It is never laid out as a list,
since the holders that join choose its size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from splitnn.common.registry import lookup

TRAIN = "train"
HAND_IN = "hand_in"


class Slot(NamedTuple):
    """A place in a group's sequence: a training step, or a hand-in of part 1 (batch 0)."""

    kind: str  # TRAIN or HAND_IN
    epoch: int
    holder: int
    batch: int


class Schedule(Protocol):
    """A sequential group's slots, in order, computed on demand: O(K) time and memory per
    lookup (K holders), whatever the number of epochs and batches.

    A schedule is never laid out as a list: its size is chosen by the holders that join.
    """

    def __len__(self) -> int:
        """Every slot of every epoch."""
        ...

    def slot_at(self, cursor: int) -> Slot:
        """The slot at `cursor` in 0..len-1.

        Raises:
            IndexError: `cursor` is outside the schedule.
        """
        ...

    def position(self, slot: Slot) -> int:
        """Where `slot` comes in the schedule.

        Raises:
            KeyError: `slot` is not in the schedule.
        """
        ...


# (epochs, each holder's batches per epoch in holder order) -> the schedule.
Order = Callable[[int, Sequence[int]], Schedule]


@dataclass(frozen=True)
class Topology:
    """One topology's rules.

    Attributes:
        name: as written on command lines and in records.
        summary: one line for help texts.
        shares_body: holders hand in part 1 after every epoch and continue from what the group
            hands back (the previous holder's, or the round's average); else each keeps its own.
        one_head: all holders train one head; otherwise each has its own copy.
        averages_every_epoch: parts 1 and heads are averaged (FedAvg) after every epoch.
        schedule: lays out the fixed order of every step and hand-in (a `Schedule`, computed
            slot by slot, never listed); None: holders step in parallel, each in its own order,
            and wait only for the averages.
    """

    name: str
    summary: str
    shares_body: bool
    one_head: bool
    averages_every_epoch: bool
    schedule: Order | None

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class _BatchByBatch:
    """(epoch, batch, holder): every holder's b-th step before anyone's (b+1)-th.

    An epoch holds sum(batches) slots; within it, batch b starts after sum(min(c, b)) slots and
    holds one slot for each holder with more than b batches, in holder order.
    """

    epochs: int
    batches: tuple[int, ...]

    def __len__(self) -> int:
        return self.epochs * sum(self.batches)

    def position(self, slot: Slot) -> int:
        kind, epoch, holder, batch = slot
        if kind != TRAIN or not _inside(self.epochs, self.batches, epoch, holder, batch):
            raise KeyError(slot)
        before = sum(min(count, batch) for count in self.batches)
        ahead = sum(1 for count in self.batches[:holder] if count > batch)
        return (epoch - 1) * sum(self.batches) + before + ahead

    def slot_at(self, cursor: int) -> Slot:
        if not 0 <= cursor < len(self):
            raise IndexError(cursor)
        epoch, rest = divmod(cursor, sum(self.batches))
        start, done = 0, 0  # batches below `start` hold `done` slots of the epoch
        for level in sorted(set(self.batches)):
            active = [h for h, count in enumerate(self.batches) if count > start]
            span = (level - start) * len(active)
            if rest < done + span:
                batch, index = divmod(rest - done, len(active))
                return Slot(TRAIN, epoch + 1, active[index], start + batch)
            start, done = level, done + span
        raise AssertionError("unreachable: the cursor is inside the epoch")


@dataclass(frozen=True)
class _EpochTurns:
    """(epoch, holder, batch): a holder's whole epoch, then its hand-in, then the next holder.

    An epoch holds sum(batches + 1) slots; holder h's turn starts after sum(batches[:h] + 1).
    """

    epochs: int
    batches: tuple[int, ...]

    def __len__(self) -> int:
        return self.epochs * (sum(self.batches) + len(self.batches))

    def position(self, slot: Slot) -> int:
        kind, epoch, holder, batch = slot
        inside = _inside(self.epochs, self.batches, epoch, holder, batch)
        if kind not in (TRAIN, HAND_IN) or not inside or (kind == HAND_IN and batch != 0):
            raise KeyError(slot)
        offset = self.batches[holder] if kind == HAND_IN else batch  # hand-in: after the last
        turn = sum(self.batches[:holder]) + holder
        return (epoch - 1) * (sum(self.batches) + len(self.batches)) + turn + offset

    def slot_at(self, cursor: int) -> Slot:
        if not 0 <= cursor < len(self):
            raise IndexError(cursor)
        epoch, rest = divmod(cursor, sum(self.batches) + len(self.batches))
        for holder, count in enumerate(self.batches):
            if rest < count:
                return Slot(TRAIN, epoch + 1, holder, rest)
            if rest == count:
                return Slot(HAND_IN, epoch + 1, holder, 0)
            rest -= count + 1
        raise AssertionError("unreachable: the cursor is inside the epoch")


def _inside(epochs: int, batches: Sequence[int], epoch: int, holder: int, batch: int) -> bool:
    """Step (epoch, holder, batch) is one of the group's steps."""
    return 1 <= epoch <= epochs and 0 <= holder < len(batches) and 0 <= batch < batches[holder]


def _batch_by_batch(epochs: int, batches: Sequence[int]) -> Schedule:
    return _BatchByBatch(epochs, tuple(batches))


def _epoch_turns(epochs: int, batches: Sequence[int]) -> Schedule:
    return _EpochTurns(epochs, tuple(batches))


TOPOLOGIES: dict[str, Topology] = {
    t.name: t
    for t in (
        Topology(
            name="shared-head",
            summary="one head, each holder its own part 1",
            shares_body=False,
            one_head=True,
            averages_every_epoch=False,
            schedule=_batch_by_batch,
        ),
        Topology(
            name="round-robin",
            summary="holders take turns and pass part 1 on",
            shares_body=True,
            one_head=True,
            averages_every_epoch=False,
            schedule=_epoch_turns,
        ),
        Topology(
            name="splitfed",
            summary="parallel, part 1 and heads averaged every epoch",
            shares_body=True,
            one_head=False,
            averages_every_epoch=True,
            schedule=None,
        ),
    )
}
NAMES: tuple[str, ...] = tuple(TOPOLOGIES)
# What a multi-holder run uses unless told otherwise: the original SplitNN.
DEFAULT = TOPOLOGIES["round-robin"]


def topology(name: str) -> Topology:
    """The topology called `name`.

    Raises:
        ValueError: no such topology, naming the known ones.
    """
    return lookup(TOPOLOGIES, name, kind="topology")


def describe() -> str:
    """Every topology with its summary, for help texts: ``a (one head, ...), b (...)``."""
    return ", ".join(f"{t.name} ({t.summary})" for t in TOPOLOGIES.values())
