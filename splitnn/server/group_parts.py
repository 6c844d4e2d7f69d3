"""What a training group keeps of part 1: the hand-ins, their SHA-256s and the round averages.

A restart replays from a member's save point before last at the earliest (see
`group_member.py`), and then asks for its own hand-in again (answered by the SHA-256 kept for
it), the part 1 each of its epochs starts from (the previous holder's hand-in, or the previous
round's average) and the final part 1: all of that save point's epoch or later. So a group
keeps them from the earliest such epoch over its members on (`prune`): the current round and
one or two before it. A splitfed hand-in is dropped as soon as its round is averaged; its
SHA-256 stays. FedAvg weighs each holder by the samples the server applied for it in the round.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from splitnn.common.codec import WeightsBlob
from splitnn.server.errors import WrongState
from splitnn.server.fedavg import average_round
from splitnn.server.group_member import Member

logger = logging.getLogger(__name__)


class Parts:
    """The parts 1 a group holds, by (epoch, holder) and by round (see the module)."""

    def __init__(self) -> None:
        self.handed: dict[tuple[int, int], WeightsBlob] = {}  # still to hand on or average
        self.digests: dict[tuple[int, int], bytes] = {}  # every kept hand-in's SHA-256
        self.averages: dict[int, WeightsBlob] = {}  # round -> averaged part 1 (FedAvg)
        self.averaged = 0  # the last round averaged

    def blobs(self) -> list[WeightsBlob]:
        """Every part 1 held (a group's save writes each once, named by its SHA-256)."""
        return [*self.handed.values(), *self.averages.values()]

    def to_state(self) -> dict[str, Any]:
        """What a group's save keeps: the parts 1 by their SHA-256 (see `blobs`)."""
        return {
            "handed": [[e, h, blob.sha256] for (e, h), blob in sorted(self.handed.items())],
            "digests": [[e, h, sha] for (e, h), sha in sorted(self.digests.items())],
            "averages": [[e, blob.sha256] for e, blob in sorted(self.averages.items())],
            "averaged": self.averaged,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], blobs: Mapping[bytes, WeightsBlob]) -> Parts:
        """The parts `to_state` saved; `blobs`: the parts 1 read back, by SHA-256.

        Raises:
            KeyError, TypeError, ValueError: the state is not a group's parts, or names a
                part 1 not in `blobs`.
        """
        parts = cls()
        for epoch, holder, sha in state["handed"]:
            parts.handed[(int(epoch), int(holder))] = blobs[sha]
        for epoch, holder, sha in state["digests"]:
            if not isinstance(sha, bytes):
                raise TypeError("a hand-in's SHA-256 is not bytes")
            parts.digests[(int(epoch), int(holder))] = sha
        for epoch, sha in state["averages"]:
            parts.averages[int(epoch)] = blobs[sha]
        parts.averaged = int(state["averaged"])
        return parts

    def again(self, epoch: int, holder: int, blob: WeightsBlob) -> bool:
        """Whether holder `holder` handed in this very part 1 for `epoch` before (a resumed
        holder hands in again).

        Raises:
            WrongState: it handed in other weights, or the round is averaged and dropped.
        """
        previous = self.digests.get((epoch, holder))
        if previous is not None:
            if previous != blob.sha256:
                raise WrongState(f"holder {holder} handed in other weights before")
            return True
        if epoch <= self.averaged:
            raise WrongState(f"round {epoch} was averaged and is no longer held")
        return False

    def take(self, epoch: int, holder: int, blob: WeightsBlob) -> None:
        """Keeps holder `holder`'s part 1 of `epoch`, checked by the caller."""
        self.handed[(epoch, holder)] = blob
        self.digests[(epoch, holder)] = blob.sha256

    def average(self, epoch: int, members: Sequence[Member], *, group: str) -> None:
        """FedAvg of round `epoch` once every member (in holder order) handed in: parts 1 and
        heads, weighted by the samples the server applied for each in that round."""
        if any((epoch, m.holder) not in self.handed for m in members):
            return
        counts = [m.trained[epoch] for m in members]
        bodies = [self.handed.pop((epoch, m.holder)) for m in members]
        self.averages[epoch] = average_round(bodies, [m.head for m in members], counts)
        self.averaged = epoch
        logger.info("group %s: round %d averaged, samples %s", group, epoch, counts)

    def prune(self, members: Sequence[Member]) -> None:
        """Drops what no member's resume or retried call can ask for any more: everything of
        the epochs before the earliest of the members' save points before last."""
        keep_from = min(m.floor()[0] for m in members)
        for kept in (self.handed, self.digests):
            for key in [k for k in kept if k[0] < keep_from]:
                del kept[key]
        for epoch in [e for e in self.averages if e < keep_from]:
            del self.averages[epoch]
        for member in members:
            member.forget_counts(before=keep_from)


def held(blob: WeightsBlob | None, epoch: int) -> WeightsBlob:
    """The part 1 that epoch `epoch` starts from; refused if it is no longer held."""
    if blob is None:
        raise WrongState(f"the part 1 that epoch {epoch} starts from is no longer held")
    return blob
