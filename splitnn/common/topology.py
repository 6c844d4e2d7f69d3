"""The topologies of a training group: what its holders share and in which order its steps run.

The one place that names them. The server's group state machine, the data holder, the
simulation and the experiment grid read a `Topology` from `TOPOLOGIES`; none compares names.

* shared-head: every holder keeps its own part 1; one head is trained by all holders' steps,
  interleaved batch by batch: (epoch, batch, holder).
* round-robin (the original SplitNN): holders take turns, a whole epoch each: (epoch, holder,
  batch). At the end of its turn a holder hands in part 1; the next holder continues from it.
* splitfed: holders train in parallel, each with its own copy of the head. After every epoch (a
  round) each hands in part 1; the server averages the parts 1 and the heads, weighted by the
  holders' training samples (FedAvg), and every holder continues from the averages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from splitnn.common.registry import lookup

TRAIN = "train"
HAND_IN = "hand_in"


class Slot(NamedTuple):
    """A place in a group's sequence: a training step, or a hand-in of part 1 (batch 0)."""

    kind: str  # TRAIN or HAND_IN
    epoch: int
    holder: int
    batch: int


# (epochs, each holder's batches per epoch in holder order) -> every slot, in order.
Schedule = Callable[[int, Sequence[int]], list[Slot]]


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
        schedule: the fixed order of every step and hand-in; None: holders step in parallel,
            each in its own order, and wait only for the averages.
    """

    name: str
    summary: str
    shares_body: bool
    one_head: bool
    averages_every_epoch: bool
    schedule: Schedule | None

    def __str__(self) -> str:
        return self.name


def _batch_by_batch(epochs: int, batches: Sequence[int]) -> list[Slot]:
    """(epoch, batch, holder): every holder's b-th step before anyone's (b+1)-th."""
    widest = max(batches)
    return [
        Slot(TRAIN, e, h, b)
        for e in range(1, epochs + 1)
        for b in range(widest)
        for h, count in enumerate(batches)
        if b < count
    ]


def _epoch_turns(epochs: int, batches: Sequence[int]) -> list[Slot]:
    """(epoch, holder, batch): a holder's whole epoch, then its hand-in, then the next holder."""
    return [
        slot
        for e in range(1, epochs + 1)
        for h, count in enumerate(batches)
        for slot in [*(Slot(TRAIN, e, h, b) for b in range(count)), Slot(HAND_IN, e, h, 0)]
    ]


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
