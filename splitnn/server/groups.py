"""Training groups: several data holders train one model through this server, in a fixed order.

The server declares each group (``--group NAME=TOPOLOGY:K``); holders join it with their own
identity and an index 0..K-1, which is bound to the first identity that uses it. The topology
decides what is shared and in which order the group's steps are applied:

* ``shared-head``: every holder keeps its own part 1; one head is trained by all holders' steps,
  interleaved batch by batch: (epoch, batch, holder).
* ``round-robin`` (the original SplitNN): holders take turns, a whole epoch each: (epoch, holder,
  batch). At the end of its turn a holder hands in part 1; the next holder continues from it.
  Part 1 passes through the server as an opaque blob with its SHA-256.
* ``splitfed``: holders train in parallel, each with its own copy of the head. After every epoch
  (a round) each hands in part 1; the server averages the parts 1 and the heads, weighted by the
  holders' training samples (FedAvg), and every holder continues from the averages.

Why this order makes a group reproducible: every step is applied at one fixed place in the
group's sequence (shared-head, round-robin) or touches only its holder's own head (splitfed),
and every average is taken in holder order. A step that arrives early waits for its turn in
`Sync` (which waits without a step timeout); a `Train` request out of turn is refused. So a
group's run gives the same parameters whatever the processes' timing.

A holder that drops out and comes back resumes: the group keeps each member's replies since the
save point before its last one, so a holder restarted from its own last save replays its steps
and is answered exactly as before (the replayed tensors must match: a SHA-256 of each step's
bytes is kept). The others wait for it meanwhile. Groups live in the server's memory: a server
restart loses them, and their holders stop with an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from splitnn.common.codec import CodecError, StepId
from splitnn.common.models import Head, build_head, make_optimizer
from splitnn.common.weights import average, from_blob, to_blob
from splitnn.proto import splitnn_pb2 as pb
from splitnn.server.errors import Forbidden, InvalidRequest, WrongState
from splitnn.server.head import HeadSession, SessionSpec, StepResult, apply_step

logger = logging.getLogger(__name__)

Topology = Literal["shared-head", "round-robin", "splitfed"]
TOPOLOGIES: tuple[Topology, ...] = ("shared-head", "round-robin", "splitfed")
MAX_GROUP_SIZE = 64
Key = tuple[int, int]  # (epoch, batch)
# A place in the group's sequence: ("train", epoch, holder, batch) or ("hand_in", epoch, holder, 0)
Slot = tuple[str, int, int, int]


class NotYet(Exception):
    """The group must move on before this request can be answered: ask again after a change."""


@dataclass(frozen=True)
class GroupSpec:
    """A group the server declares: its name, topology and number of holders K."""

    name: str
    topology: Topology
    size: int

    @classmethod
    def parse(cls, text: str) -> GroupSpec:
        """Parses ``NAME=TOPOLOGY:K``, e.g. ``hospitals=splitfed:4``.

        Raises:
            ValueError: with what is wrong.
        """
        name, sep, rest = text.partition("=")
        topology, sep2, size = rest.partition(":")
        if not sep or not sep2 or not name:
            raise ValueError(f"{text!r}: expected NAME=TOPOLOGY:K, e.g. hospitals=splitfed:4")
        if not all(c.isalnum() or c in "_.-" for c in name):
            raise ValueError(f"group name {name!r}: use letters, digits, _ . -")
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology {topology!r}: one of {', '.join(TOPOLOGIES)}")
        if not (size.isascii() and size.isdigit()) or not 1 <= int(size) <= MAX_GROUP_SIZE:
            raise ValueError(f"group size {size!r}: an integer in 1..{MAX_GROUP_SIZE}")
        return cls(name=name, topology=topology, size=int(size))


class Changes:
    """Lets coroutines on the event loop wait for a change a group makes on the compute thread.

    Take a future with `future()` before checking the group, then await it: a change in
    between has already resolved it, so no change is missed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def future(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiting.append((loop, future))
        return future

    def notify(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for loop, future in waiting:
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class Member:
    """One holder's place in a group and what the group keeps for it."""

    holder: int
    owner: str
    run: str
    batches: int  # steps per epoch
    samples: int
    head: Head
    optimizer: torch.optim.Adam
    last: Key | None = None  # the last step applied
    replies: dict[Key, tuple[bytes, StepResult]] = field(default_factory=dict)
    saves: list[Key] = field(default_factory=list)  # the last two save points
    finished: bool = False
    closed: bool = False


@dataclass(frozen=True)
class GroupMembership:
    """A session's link to its group (`HeadSession.member`)."""

    group: Group
    member: Member


class Group:
    """The state of one declared group: members, the head(s), the sequence of steps, the blobs.

    Every method runs on the compute thread under the group's lock and calls `changes.notify`
    when it moved the group on.
    """

    def __init__(self, spec: GroupSpec, changes: Changes) -> None:
        self.spec = spec
        self.changes = changes
        self.lock = threading.Lock()  # also the lock of the heads
        self._reset()

    def _reset(self) -> None:
        self.last_active = time.monotonic()  # a waiting Sync counts: it asks every few seconds
        self.members: dict[int, Member] = {}
        self.settings: SessionSpec | None = None  # the head settings every member must share
        self.epochs = 0
        self.head: Head | None = None  # shared-head and round-robin: the one head
        self.optimizer: torch.optim.Adam | None = None
        self.schedule: list[Slot] = []  # shared-head, round-robin: every step in order
        self.position: dict[Slot, int] = {}
        self.cursor = 0  # the next slot to apply
        self.handed: dict[tuple[int, int], pb.WeightsBlob] = {}  # (epoch, holder) -> part 1
        self.averages: dict[int, pb.WeightsBlob] = {}  # splitfed: epoch -> averaged part 1

    @property
    def started(self) -> bool:
        return len(self.members) == self.spec.size

    # -- joining ---------------------------------------------------------------------------

    def join(
        self,
        spec: SessionSpec,
        request: pb.GroupMember,
        *,
        owner: str,
        resume: bool,
        offers: Sequence[StepId],
    ) -> tuple[Member, Key | None, bool]:
        """Adds (or takes back) holder `request.holder`; returns the member, the step it
        continues after, and whether it resumed.

        Raises:
            InvalidRequest: a bad index, step count or epoch count.
            Forbidden: the index is bound to another identity.
            WrongState: settings that differ from the group's, or a resume the group cannot
                serve (it keeps a holder's replies since its save point before last).
        """
        holder = request.holder
        with self.lock:
            self.last_active = time.monotonic()
            if self.members and all(m.closed for m in self.members.values()):
                self._reset()  # the previous run of this group is over
            if holder >= self.spec.size:
                raise InvalidRequest(
                    f"group {self.spec.name!r} has holders 0..{self.spec.size - 1}, not {holder}"
                )
            if request.batches_per_epoch < 1 or request.epochs < 1:
                raise InvalidRequest("a group member needs at least one epoch and one batch")
            self._check_settings(spec, request)
            for other in self.members.values():
                if (other.owner, other.run) == (owner, spec.run) and other.holder != holder:
                    raise WrongState(f"run {spec.run!r} is already holder {other.holder}'s")
            member = self.members.get(holder)
            if member is not None:
                return member, *self._rejoin(member, spec, request, owner, resume, offers)
            if resume and offers:
                raise WrongState(
                    f"holder {holder} of group {self.spec.name!r} has nothing to resume: the "
                    "group lost its state (did the server restart?); start the group over"
                )
            member = self._add(spec, request, owner)
            return member, None, False

    def _check_settings(self, spec: SessionSpec, request: pb.GroupMember) -> None:
        mine = (spec.cut_shape, spec.dtype, spec.num_classes, spec.lr, spec.seed)
        if self.settings is not None:
            s = self.settings
            if mine != (s.cut_shape, s.dtype, s.num_classes, s.lr, s.seed):
                raise WrongState(
                    f"group {self.spec.name!r} trains a head of {s.num_classes} classes, lr "
                    f"{s.lr:g}, seed {s.seed}, cut {list(s.cut_shape)} {s.dtype}: join with "
                    "the same settings"
                )
        if self.epochs and request.epochs != self.epochs:
            raise WrongState(f"group {self.spec.name!r} trains for {self.epochs} epochs")

    def _add(self, spec: SessionSpec, request: pb.GroupMember, owner: str) -> Member:
        if self.settings is None:
            self.settings, self.epochs = spec, request.epochs
            if self.spec.topology != "splitfed":
                self.head = build_head(spec.seed, spec.num_classes)
                self.optimizer = make_optimizer(self.head, spec.lr)
        if self.spec.topology == "splitfed":
            # Every member's head starts from the same weights (the group's seed).
            head = build_head(spec.seed, spec.num_classes)
            optimizer = make_optimizer(head, spec.lr)
        else:
            assert self.head is not None and self.optimizer is not None
            head, optimizer = self.head, self.optimizer
        member = Member(
            holder=request.holder,
            owner=owner,
            run=spec.run,
            batches=request.batches_per_epoch,
            samples=max(int(request.samples), 1),
            head=head,
            optimizer=optimizer,
        )
        self.members[request.holder] = member
        logger.info(
            "group %s: holder %d joined (%s's run %s, %d steps an epoch; %d of %d)",
            self.spec.name,
            request.holder,
            owner,
            spec.run,
            member.batches,
            len(self.members),
            self.spec.size,
        )
        if self.started:
            self._start()
        return member

    def _rejoin(
        self,
        member: Member,
        spec: SessionSpec,
        request: pb.GroupMember,
        owner: str,
        resume: bool,
        offers: Sequence[StepId],
    ) -> tuple[Key | None, bool]:
        if member.owner != owner:
            raise Forbidden(
                f"holder {member.holder} of group {self.spec.name!r} is another party's"
            )
        if (member.run, member.batches) != (spec.run, request.batches_per_epoch):
            raise WrongState(
                f"holder {member.holder} of group {self.spec.name!r} is run {member.run!r} with "
                f"{member.batches} steps an epoch"
            )
        if member.closed:
            raise WrongState(
                f"holder {member.holder} finished group {self.spec.name!r}'s run, which the "
                "others are still finishing: join again once every holder has finished"
            )
        if member.last is None:
            member.finished = False
            return None, False  # nothing applied yet: a fresh start is the same as a resume
        if not resume:
            if (1, 0) not in member.replies:
                raise WrongState(
                    f"holder {member.holder} of group {self.spec.name!r} has trained up to epoch "
                    f"{member.last[0]} batch {member.last[1]}: resume it (--resume)"
                )
            # It died before its first save: it starts over and replays every step.
            member.finished = False
            logger.info("group %s: holder %d starts over", self.spec.name, member.holder)
            return None, True
        for offer in offers:
            key = offer.key()
            if offer.run == member.run and (key == member.last or key in member.replies):
                member.finished = False
                logger.info(
                    "group %s: holder %d resumes after epoch %d batch %d",
                    self.spec.name,
                    member.holder,
                    *key,
                )
                return key, True
        held = sorted(member.replies)
        raise WrongState(
            f"group {self.spec.name!r} cannot resume holder {member.holder} at "
            f"{', '.join(str(o) for o in offers) or 'the start'}: it holds its steps "
            f"{held[0] if held else member.last} to {member.last}"
        )

    def _start(self) -> None:
        """All holders have joined: lays out the sequence of steps."""
        members = [self.members[h] for h in range(self.spec.size)]
        if self.spec.topology == "shared-head":
            widest = max(m.batches for m in members)
            self.schedule = [
                ("train", e, m.holder, b)
                for e in range(1, self.epochs + 1)
                for b in range(widest)
                for m in members
                if b < m.batches
            ]
        elif self.spec.topology == "round-robin":
            self.schedule = [
                slot
                for e in range(1, self.epochs + 1)
                for m in members
                for slot in [
                    *(("train", e, m.holder, b) for b in range(m.batches)),
                    ("hand_in", e, m.holder, 0),
                ]
            ]
        self.position = {slot: i for i, slot in enumerate(self.schedule)}
        logger.info(
            "group %s (%s): all %d holders joined; %d epochs",
            self.spec.name,
            self.spec.topology,
            self.spec.size,
            self.epochs,
        )
        self.changes.notify()

    # -- training --------------------------------------------------------------------------

    def turn(self, member: Member, epoch: int, batch: int) -> pb.WeightsBlob | None:
        """Returns when `member` may take step (epoch, batch), with the part 1 to take it with
        (None: its own). Raises `NotYet` while it must wait."""
        with self.lock:
            self.last_active = time.monotonic()
            self._check_step(member, epoch, batch)
            key = (epoch, batch)
            applied = member.last is not None and key <= member.last
            if not applied:
                if not self.started:
                    raise NotYet
                if self.spec.topology == "splitfed":
                    if epoch > 1 and epoch - 1 not in self.averages:
                        raise NotYet
                elif self.position[("train", epoch, member.holder, batch)] > self.cursor:
                    raise NotYet
            if batch != 0:
                return None
            if self.spec.topology == "splitfed":
                return self.averages.get(epoch - 1)
            if self.spec.topology == "round-robin":
                return self.handed.get(self._previous_turn(epoch, member.holder))
            return None

    def _previous_turn(self, epoch: int, holder: int) -> tuple[int, int]:
        return (epoch, holder - 1) if holder > 0 else (epoch - 1, self.spec.size - 1)

    def train(
        self,
        member: Member,
        step: StepId,
        activations: torch.Tensor,
        labels: torch.Tensor,
        digest: bytes,
        *,
        save: bool,
    ) -> tuple[StepResult, bool]:
        """Applies `member`'s step in its turn, or answers a replayed one from the cache.

        `digest`: SHA-256 of the step's bytes; a replay must match it. `save`: the holder saves
        after this step (its replies since the save point before are kept).
        Returns the result and whether this call applied it.
        """
        key = step.key()
        with self.lock:
            self.last_active = time.monotonic()
            self._check_step(member, *key)
            cached = member.replies.get(key)
            if cached is not None:
                if cached[0] != digest:
                    raise WrongState(
                        f"step {step} was applied with other tensors: a resumed holder must "
                        "replay exactly what it sent"
                    )
                return cached[1], False
            if member.last is not None and key <= member.last:
                raise WrongState(f"step {step} was applied before and is no longer held")
            self._check_turn(member, key)
            result = apply_step(member.head, member.optimizer, step, activations, labels)
            member.last = key
            member.replies[key] = (digest, result)
            if save:
                # The holder has saved the previous save point once it sends this one: a restart
                # replays from there at the earliest.
                member.saves = [*member.saves[-1:], key]
                if len(member.saves) == 2:
                    for old in [k for k in member.replies if k < member.saves[0]]:
                        del member.replies[old]
            if self.spec.topology != "splitfed":
                self.cursor += 1
            self.changes.notify()
            return result, True

    def _check_step(self, member: Member, epoch: int, batch: int) -> None:
        if not 1 <= epoch <= self.epochs or batch >= member.batches:
            raise InvalidRequest(
                f"holder {member.holder} has epochs 1..{self.epochs} of {member.batches} steps; "
                f"no epoch {epoch} batch {batch}"
            )

    def _check_turn(self, member: Member, key: Key) -> None:
        epoch, batch = key
        if not self.started:
            raise WrongState(f"group {self.spec.name!r} waits for its other holders (Sync)")
        if self.spec.topology == "splitfed":
            expected = (1, 0) if member.last is None else _after(member.last, member.batches)
            if key != expected or (epoch > 1 and epoch - 1 not in self.averages):
                raise WrongState(
                    f"holder {member.holder}'s next step is epoch {expected[0]} batch "
                    f"{expected[1]}, after round {expected[0] - 1} is averaged"
                )
            return
        if self.schedule[self.cursor] != ("train", epoch, member.holder, batch):
            kind, e, h, b = self.schedule[self.cursor]
            raise WrongState(
                f"not holder {member.holder}'s turn: group {self.spec.name!r} waits for holder "
                f"{h}'s {'epoch ' + str(e) + ' batch ' + str(b) if kind == 'train' else 'part 1'}"
            )

    def hand_in(self, member: Member, epoch: int, blob: pb.WeightsBlob) -> None:
        """Takes `member`'s part 1 after its last step of `epoch` (round-robin, splitfed)."""
        with self.lock:
            self.last_active = time.monotonic()
            if self.spec.topology == "shared-head":
                raise InvalidRequest("a shared-head group keeps every holder's part 1 its own")
            if not 1 <= epoch <= self.epochs:
                raise InvalidRequest(f"no epoch {epoch} in 1..{self.epochs}")
            done = (epoch, member.batches - 1)
            if member.last is None or member.last < done:
                raise WrongState(f"holder {member.holder} hands in part 1 before its last step")
            previous = self.handed.get((epoch, member.holder))
            if previous is not None:
                if previous.sha256 != blob.sha256:
                    raise WrongState(f"holder {member.holder} handed in other weights before")
                return  # a resumed holder hands in again: the same weights
            try:
                from_blob(blob)
            except CodecError as error:
                raise InvalidRequest(f"part 1's weights: {error}") from None
            if self.spec.topology == "round-robin":
                if self.schedule[self.cursor] != ("hand_in", epoch, member.holder, 0):
                    raise WrongState(f"not holder {member.holder}'s hand-in")
                self.cursor += 1
            self.handed[(epoch, member.holder)] = pb.WeightsBlob(data=blob.data, sha256=blob.sha256)
            if self.spec.topology == "splitfed":
                self._maybe_average(epoch)
            self.changes.notify()

    def _maybe_average(self, epoch: int) -> None:
        """FedAvg of round `epoch` once every holder handed in: parts 1 and heads."""
        members = [self.members[h] for h in range(self.spec.size)]
        if any((epoch, m.holder) not in self.handed for m in members):
            return
        counts = [m.samples for m in members]
        bodies = [from_blob(self.handed[(epoch, m.holder)]) for m in members]
        self.averages[epoch] = to_blob(average(bodies, counts))
        heads = average([m.head.state_dict() for m in members], counts)
        for m in members:
            m.head.load_state_dict(heads)
        logger.info(
            "group %s: round %d averaged over %d holders", self.spec.name, epoch, len(counts)
        )

    def finish(self, member: Member) -> pb.WeightsBlob | None:
        """Returns when the whole group has trained, with the final part 1 (None: keep yours)."""
        with self.lock:
            self.last_active = time.monotonic()
            if not self.started:
                raise NotYet
            last = self.spec.size - 1
            if self.spec.topology == "splitfed":
                final = self.averages.get(self.epochs)
                if final is None:
                    raise NotYet
            elif self.cursor < len(self.schedule):
                raise NotYet
            else:
                final = self.handed.get((self.epochs, last))
            member.finished = True
            return final

    def expire(self, ttl: float) -> bool:
        """Drops the group's run if no holder has called (or waited) for `ttl` seconds: its
        holders are gone for good, and the group is free for a run started over."""
        with self.lock:
            idle = time.monotonic() - self.last_active
            if not self.members or all(m.closed for m in self.members.values()) or idle <= ttl:
                return False
            logger.warning(
                "group %s: no holder called for %.0f s; its run is dropped (start it over)",
                self.spec.name,
                idle,
            )
            self._reset()
            return True

    def closed(self, member: Member, *, finished: bool) -> None:
        with self.lock:
            member.closed = finished
            if self.members and all(m.closed for m in self.members.values()):
                logger.info("group %s: every holder finished; the group is free", self.spec.name)


def _after(key: Key, batches: int) -> Key:
    epoch, batch = key
    return (epoch, batch + 1) if batch + 1 < batches else (epoch + 1, 0)


def step_digest(request: pb.TrainRequest) -> bytes:
    """SHA-256 of what a training step sent: the activations' and labels' dtype, shape, bytes."""
    digest = hashlib.sha256()
    for tensor in (request.activations, request.labels):
        digest.update(tensor.dtype.encode())
        digest.update(repr(list(tensor.shape)).encode())
        digest.update(tensor.data)
    return digest.digest()


class Groups:
    """The groups this server declares, by name."""

    def __init__(self, specs: Sequence[GroupSpec]) -> None:
        self.changes = Changes()
        self._groups = {spec.name: Group(spec, self.changes) for spec in specs}
        if len(self._groups) != len(specs):
            raise ValueError("two groups of the same name")

    def __bool__(self) -> bool:
        return bool(self._groups)

    def get(self, name: str) -> Group:
        group = self._groups.get(name)
        if group is None:
            declared = ", ".join(sorted(self._groups)) or "none"
            raise InvalidRequest(f"no group {name!r} on this server (declared: {declared})")
        return group

    def expire(self, ttl: float) -> set[Group]:
        """The groups whose run was dropped for being idle `ttl` seconds (see `Group.expire`)."""
        return {group for group in self._groups.values() if group.expire(ttl)}

    def attach(self, session: HeadSession, group: Group, member: Member) -> None:
        """Makes `session` train and evaluate through the member's head."""
        session.head, session.optimizer = member.head, member.optimizer
        session.lock = group.lock
        session.member = GroupMembership(group, member)
