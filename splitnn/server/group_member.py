"""One holder's place in a training group: the replies kept for its replays, and its rejoining.

A member keeps its replies since the save point before its last one, so a holder restarted
from its own last save replays its steps and is answered exactly as before. A replay must send
the very tensors of the first time: each reply is kept with the SHA-256 of the step's tensors.
The last step of every epoch is a save point whether or not the holder marked it: a holder
that never marks one cannot make the group keep all its replies.

A member also counts the samples of the steps applied for it, by epoch: FedAvg weighs each
holder by these, never by what it claims.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from splitnn.common.codec import StepId
from splitnn.common.models import Head
from splitnn.server.errors import Forbidden, WrongState
from splitnn.server.head import StepResult

logger = logging.getLogger(__name__)

Key = tuple[int, int]  # (epoch, batch)


@dataclass
class Member:
    """One holder's place in a group and what the group keeps for it."""

    holder: int
    owner: str
    run: str
    batches: int  # steps per epoch
    head: Head
    optimizer: torch.optim.Adam
    last: Key | None = None  # the last step applied
    replies: dict[Key, tuple[bytes, StepResult]] = field(default_factory=dict)
    saves: list[Key] = field(default_factory=list)  # the last two save points
    trained: dict[int, int] = field(default_factory=dict)  # epoch -> samples of applied steps
    finished: bool = False
    closed: bool = False

    def after(self, key: Key) -> Key:
        """The step after `key` in this member's own order."""
        epoch, batch = key
        return (epoch, batch + 1) if batch + 1 < self.batches else (epoch + 1, 0)

    def replay(self, step: StepId, digest: bytes) -> StepResult | None:
        """The kept reply to `step` (None: not applied yet).

        Raises:
            WrongState: it was applied with other tensors, or long enough ago to be dropped.
        """
        key = step.key()
        cached = self.replies.get(key)
        if cached is not None:
            if cached[0] != digest:
                raise WrongState(
                    f"step {step} was applied with other tensors: a resumed holder must "
                    "replay exactly what it sent"
                )
            return cached[1]
        if self.last is not None and key <= self.last:
            raise WrongState(f"step {step} was applied before and is no longer held")
        return None

    def record(
        self, key: Key, digest: bytes, result: StepResult, *, samples: int, save: bool
    ) -> None:
        """Keeps the reply to step `key`, just applied on `samples` samples; `save`: the holder
        saves after it (always at the last step of an epoch)."""
        self.last = key
        self.replies[key] = (digest, result)
        self.trained[key[0]] = self.trained.get(key[0], 0) + samples
        if save or key[1] == self.batches - 1:
            # The holder has saved the previous save point once it sends this one: a restart
            # replays from there at the earliest.
            self.saves = [*self.saves[-1:], key]
            if len(self.saves) == 2:
                for old in [k for k in self.replies if k < self.saves[0]]:
                    del self.replies[old]

    def floor(self) -> Key:
        """The earliest step a restart of this holder may replay after; (1, -1): the start."""
        return self.saves[0] if len(self.saves) == 2 else (1, -1)

    def to_state(self, *, with_head: bool) -> dict[str, Any]:
        """What a group's save keeps of this member (`with_head`: its own head and optimizer;
        a one-head group saves its head once). Tensors, numbers, strings and bytes only."""
        state: dict[str, Any] = {
            "holder": self.holder,
            "owner": self.owner,
            "run": self.run,
            "batches": self.batches,
            "last": None if self.last is None else list(self.last),
            "replies": [
                [list(key), digest, r.gradient, r.loss, r.correct]
                for key, (digest, r) in sorted(self.replies.items())
            ],
            "saves": [list(key) for key in self.saves],
            "trained": sorted(self.trained.items()),
            "closed": self.closed,
        }
        if with_head:
            state["head"] = self.head.state_dict()
            state["optimizer"] = self.optimizer.state_dict()
        return state

    @classmethod
    def from_state(
        cls, state: dict[str, Any], *, head: Head, optimizer: torch.optim.Adam
    ) -> Member:
        """The member `to_state` saved, training `head` with `optimizer` (loaded from the
        state when it has its own).

        Raises:
            KeyError, TypeError, ValueError, RuntimeError: the state is not a member's.
        """
        if "head" in state:
            head.load_state_dict(state["head"])
            optimizer.load_state_dict(state["optimizer"])
        run = str(state["run"])
        replies: dict[Key, tuple[bytes, StepResult]] = {}
        for key, digest, gradient, loss, correct in state["replies"]:
            if not isinstance(digest, bytes) or not isinstance(gradient, torch.Tensor):
                raise TypeError("a kept reply is not a digest and a gradient")
            step = StepId(run, int(key[0]), int(key[1]))
            replies[step.key()] = (digest, StepResult(step, gradient, float(loss), int(correct)))
        last = state["last"]
        return cls(
            holder=int(state["holder"]),
            owner=str(state["owner"]),
            run=run,
            batches=int(state["batches"]),
            head=head,
            optimizer=optimizer,
            last=None if last is None else (int(last[0]), int(last[1])),
            replies=replies,
            saves=[(int(e), int(b)) for e, b in state["saves"]],
            trained={int(e): int(n) for e, n in state["trained"]},
            closed=bool(state["closed"]),
        )

    def forget_counts(self, *, before: int) -> None:
        """Drops the sample counts of epochs before `before` (their rounds are averaged)."""
        for epoch in [e for e in self.trained if e < before]:
            del self.trained[epoch]

    def rejoin(
        self,
        *,
        group: str,
        run: str,
        batches: int,
        owner: str,
        resume: bool,
        offers: Sequence[StepId],
        from_start: bool = False,
    ) -> tuple[Key | None, bool]:
        """The holder joins group `group` again; returns the step it continues after and
        whether it resumed.

        `from_start`: the holder may go back to its start when no offer is held (it has no
        save of its own yet).

        Raises:
            Forbidden: the place is another identity's.
            WrongState: another run or step count, a finished member, or a resume this member
                cannot serve.
        """
        self._check_rejoin(group=group, run=run, batches=batches, owner=owner)
        if self.last is None:
            self.finished = False
            return None, False  # nothing applied yet: a fresh start is the same as a resume
        if resume:
            for offer in offers:
                key = offer.key()
                if offer.run == self.run and (key == self.last or key in self.replies):
                    self.finished = False
                    logger.info(
                        "group %s: holder %d resumes after epoch %d batch %d",
                        group,
                        self.holder,
                        *key,
                    )
                    return key, True
        if not resume or from_start:
            return self._start_over(group)
        held = sorted(self.replies)
        raise WrongState(
            f"group {group!r} cannot resume holder {self.holder} at "
            f"{', '.join(str(o) for o in offers) or 'the start'}: it holds its steps "
            f"{held[0] if held else self.last} to {self.last}"
        )

    def _start_over(self, group: str) -> tuple[Key | None, bool]:
        """The holder died before its first save: it starts over and replays every step."""
        if (1, 0) not in self.replies:
            assert self.last is not None
            raise WrongState(
                f"holder {self.holder} of group {group!r} has trained up to epoch "
                f"{self.last[0]} batch {self.last[1]}: resume it (--resume)"
            )
        self.finished = False
        logger.info("group %s: holder %d starts over", group, self.holder)
        return None, True

    def _check_rejoin(self, *, group: str, run: str, batches: int, owner: str) -> None:
        if self.owner != owner:
            raise Forbidden(f"holder {self.holder} of group {group!r} is another party's")
        if (self.run, self.batches) != (run, batches):
            raise WrongState(
                f"holder {self.holder} of group {group!r} is run {self.run!r} with "
                f"{self.batches} steps an epoch"
            )
        if self.closed:
            raise WrongState(
                f"holder {self.holder} finished group {group!r}'s run, which the "
                "others are still finishing: join again once every holder has finished"
            )


def batch_digest(activations: torch.Tensor, labels: torch.Tensor) -> bytes:
    """SHA-256 of a training step's tensors: each one's dtype, shape and bytes, in order.

    A replayed step must match the digest of the step first applied (see the module).
    """
    digest = hashlib.sha256()
    for tensor in (activations, labels):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(str(array.dtype.str).encode())
        digest.update(repr(list(array.shape)).encode())
        digest.update(array.tobytes())
    return digest.digest()
