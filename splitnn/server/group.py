"""The state machine of one training group: joining, the order of steps, hand-ins, resumes.

The server declares each group (``--group NAME=TOPOLOGY:K``, see `group_spec.py`); holders join
it with their own identity and an index 0..K-1, which is bound to the first identity that uses
it. The group's `Topology` (`splitnn/common/topology.py`) decides what is shared and in which
order its steps are applied; this module reads its rules and never its name.

Why a group is reproducible: every step is applied at one fixed place in the topology's
schedule, or (a parallel topology) touches only its holder's own head, and every average is
taken in holder order. A step that arrives early waits for its turn in `Sync` (which waits
without a step timeout); a `Train` request out of turn is refused. So a group's run gives the
same parameters whatever the processes' timing.

What a joiner may ask for is bounded (`MAX_EPOCHS`, `MAX_BATCHES_PER_EPOCH`), and the
schedule is computed slot by slot, never laid out: its size costs neither time nor memory.

A holder that drops out and comes back resumes: the group keeps each member's replies since the
save point before its last one, so a holder restarted from its own last save replays its steps
and is answered exactly as before (the replayed tensors must match: a SHA-256 of each step's
tensors is kept). The last step of every epoch is a save point whatever the holder says, so
no member makes the group keep more than about two epochs of its replies. The others wait for
it meanwhile. A restart of the server is one more such resume, of every member at once: the
group writes its state to disk at every save point of any member, before replying, and a server
started again with the same ``--group`` reads it back (`group_saves.py` says why every member
can resume from it).

What the group keeps of part 1 is bounded the same way (`group_parts.py`): the hand-ins and
averages of its members' save points before last on. FedAvg weighs each holder by what the
server counted, the samples of the steps it applied for that holder in that round; the samples
a holder claims when it joins are logged, never used.

The group's shared head is trained by its schedule only: `Restore` is refused in a group
session (a member would overwrite the others' model), and `Checkpoint` of a member's head
is served once the group has trained to its end (see `over`), refused before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import torch

from splitnn.common.codec import CodecError, GroupJoin, StepId, WeightsBlob
from splitnn.common.models import Head, build_head, make_optimizer
from splitnn.common.topology import HAND_IN, TRAIN, Schedule, Slot
from splitnn.common.weights import from_blob
from splitnn.server.changes import Changes
from splitnn.server.errors import InvalidRequest, NotYet, WrongState
from splitnn.server.group_member import Key, Member
from splitnn.server.group_parts import Parts, held
from splitnn.server.group_saves import GroupStore, group_state, take_up
from splitnn.server.group_spec import GroupSpec
from splitnn.server.head import SessionSpec, StepResult, apply_step

logger = logging.getLogger(__name__)

# What a joiner may ask for. Ten thousand epochs is a hundred times the longest SplitNN runs
# published; a million batches an epoch covers ImageNet's 1.28 M images at 2 per batch. The
# schedule is arithmetic, so these bounds keep a run finite, not the server's memory small.
MAX_EPOCHS = 10_000
MAX_BATCHES_PER_EPOCH = 1_000_000


class Group:
    """The state of one declared group: members, the head(s), the sequence of steps, the blobs.

    Every method runs on the compute thread under the group's lock and calls `changes.notify`
    when it moved the group on.
    """

    def __init__(
        self, spec: GroupSpec, changes: Changes, *, store: GroupStore | None = None
    ) -> None:
        self.spec = spec
        self.topology = spec.topology
        self.sequential = spec.topology.schedule is not None  # else: parallel, by rounds
        self.changes = changes
        self.lock = threading.Lock()  # also the lock of the heads
        self.store = store  # None: the group lives in memory only
        self.lost = ""  # why a saved state was refused, for the holders that resume
        self.reset()
        if store is not None:
            self.lost = take_up(self, store)

    def reset(self) -> None:
        """Forgets the run: no members, no head, nothing held."""
        self.last_active = time.monotonic()  # a waiting Sync counts: it asks every few seconds
        self.members: dict[int, Member] = {}
        self.settings: SessionSpec | None = None  # the head settings every member must share
        self.epochs = 0
        self.head: Head | None = None  # a one-head topology's head
        self.optimizer: torch.optim.Adam | None = None
        self.schedule: Schedule | None = None  # a sequential topology's order, once started
        self.cursor = 0  # the next slot to apply
        self.parts = Parts()  # the hand-ins and averages a resume may still ask for

    @property
    def started(self) -> bool:
        return len(self.members) == self.spec.size

    @property
    def over(self) -> bool:
        """Every step and hand-in is applied (and, in splitfed, the last round averaged)."""
        if not self.started:
            return False
        if self.schedule is None:
            return self.parts.averaged == self.epochs
        return self.cursor == len(self.schedule)

    # -- joining ---------------------------------------------------------------------------

    def join(
        self,
        spec: SessionSpec,
        request: GroupJoin,
        *,
        owner: str,
        resume: bool,
        offers: Sequence[StepId],
        from_start: bool = False,
    ) -> tuple[Member, Key | None, bool]:
        """Adds (or takes back) holder `request.holder`; returns the member, the step it
        continues after, and whether it resumed. `from_start`: the holder has no save and may
        start over when nothing it offers is held.

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
                self.reset()  # the previous run of this group is over
            if holder >= self.spec.size:
                raise InvalidRequest(
                    f"group {self.spec.name!r} has holders 0..{self.spec.size - 1}, not {holder}"
                )
            if not 1 <= request.epochs <= MAX_EPOCHS:
                raise InvalidRequest(f"a group trains for 1..{MAX_EPOCHS} epochs")
            if not 1 <= request.batches_per_epoch <= MAX_BATCHES_PER_EPOCH:
                raise InvalidRequest(
                    f"a group member takes 1..{MAX_BATCHES_PER_EPOCH} batches an epoch"
                )
            self._check_settings(spec, request)
            for other in self.members.values():
                if (other.owner, other.run) == (owner, spec.run) and other.holder != holder:
                    raise WrongState(f"run {spec.run!r} is already holder {other.holder}'s")
            member = self.members.get(holder)
            if member is not None:
                after, resumed = member.rejoin(
                    group=self.spec.name,
                    run=spec.run,
                    batches=request.batches_per_epoch,
                    owner=owner,
                    resume=resume,
                    offers=offers,
                    from_start=from_start,
                )
                return member, after, resumed
            if resume and offers and not from_start:
                why = self.lost or "the server holds no state of it"
                raise WrongState(
                    f"holder {holder} of group {self.spec.name!r} has nothing to resume: "
                    f"{why}; start the group over"
                )
            member = self._add(spec, request, owner)
            return member, None, False

    def _check_settings(self, spec: SessionSpec, request: GroupJoin) -> None:
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

    def _add(self, spec: SessionSpec, request: GroupJoin, owner: str) -> Member:
        if self.settings is None:
            self.settings, self.epochs = spec, request.epochs
            self.lost = ""
            if self.store is not None:
                self.store.clear()  # a new run: an earlier one's saves are no use
            if self.topology.one_head:
                self.head = build_head(spec.seed, spec.num_classes)
                self.optimizer = make_optimizer(self.head, spec.lr)
        if not self.topology.one_head:
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
            head=head,
            optimizer=optimizer,
        )
        self.members[request.holder] = member
        logger.info(
            "group %s: holder %d joined (%s's run %s, %d steps an epoch, %d samples claimed; "
            "%d of %d)",
            self.spec.name,
            request.holder,
            owner,
            spec.run,
            member.batches,
            request.samples,
            len(self.members),
            self.spec.size,
        )
        if self.started:
            self._start()
        return member

    def _start(self) -> None:
        """All holders have joined: fixes the order of steps (computed, never listed)."""
        members = [self.members[h] for h in range(self.spec.size)]
        if self.topology.schedule is not None:
            self.schedule = self.topology.schedule(self.epochs, [m.batches for m in members])
        logger.info(
            "group %s (%s): all %d holders joined; %d epochs",
            self.spec.name,
            self.spec.topology,
            self.spec.size,
            self.epochs,
        )
        self.changes.notify()

    # -- training --------------------------------------------------------------------------

    def turn(self, member: Member, epoch: int, batch: int) -> WeightsBlob | None:
        """Returns when `member` may take step (epoch, batch), with the part 1 to take it with
        (None: its own). Raises `NotYet` while it must wait."""
        with self.lock:
            self.last_active = time.monotonic()
            self._check_step(member, epoch, batch)
            applied = member.last is not None and (epoch, batch) <= member.last
            if not applied and self._waits(member, epoch, batch):
                raise NotYet
            return self._start_of(member, epoch, batch)

    def _waits(self, member: Member, epoch: int, batch: int) -> bool:
        """`member`'s step (epoch, batch), not applied yet, must wait for its turn."""
        if not self.started:
            return True
        if self.schedule is None:
            return self._awaits_average(epoch)
        return self.schedule.position(Slot(TRAIN, epoch, member.holder, batch)) > self.cursor

    def _start_of(self, member: Member, epoch: int, batch: int) -> WeightsBlob | None:
        """The part 1 that `member` takes step (epoch, batch) with (None: its own)."""
        if batch != 0 or not self.topology.shares_body:
            return None
        if self.topology.averages_every_epoch:
            return None if epoch == 1 else held(self.parts.averages.get(epoch - 1), epoch)
        previous = self._previous_turn(epoch, member.holder)
        return None if previous[0] == 0 else held(self.parts.handed.get(previous), epoch)

    def _awaits_average(self, epoch: int) -> bool:
        """Epoch `epoch` starts from the previous round's average, not taken yet."""
        return self.topology.averages_every_epoch and epoch - 1 > self.parts.averaged

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
            cached = member.replay(step, digest)
            if cached is not None:
                return cached, False
            self._check_turn(member, key)
            result = apply_step(member.head, member.optimizer, step, activations, labels)
            member.record(key, digest, result, samples=int(labels.shape[0]), save=save)
            if self.sequential:
                self.cursor += 1
            self.parts.prune(list(self.members.values()))
            if save or key[1] == member.batches - 1:  # a save point (see `Member.record`)
                self._save()
            self.changes.notify()
            return result, True

    def _check_step(self, member: Member, epoch: int, batch: int) -> None:
        if not 1 <= epoch <= self.epochs or not 0 <= batch < member.batches:
            raise InvalidRequest(
                f"holder {member.holder} has epochs 1..{self.epochs} of {member.batches} steps; "
                f"no epoch {epoch} batch {batch}"
            )

    def _check_turn(self, member: Member, key: Key) -> None:
        epoch, batch = key
        if not self.started:
            raise WrongState(f"group {self.spec.name!r} waits for its other holders (Sync)")
        if self.schedule is None:
            expected = (1, 0) if member.last is None else member.after(member.last)
            if key != expected or self._awaits_average(epoch):
                raise WrongState(
                    f"holder {member.holder}'s next step is epoch {expected[0]} batch "
                    f"{expected[1]}, after round {expected[0] - 1} is averaged"
                )
            return
        if self.over:
            raise WrongState(f"group {self.spec.name!r} has trained to its end")
        kind, e, h, b = self.schedule.slot_at(self.cursor)
        if (kind, e, h, b) != Slot(TRAIN, epoch, member.holder, batch):
            raise WrongState(
                f"not holder {member.holder}'s turn: group {self.spec.name!r} waits for holder "
                f"{h}'s {'epoch ' + str(e) + ' batch ' + str(b) if kind == TRAIN else 'part 1'}"
            )

    def hand_in(self, member: Member, epoch: int, blob: WeightsBlob) -> None:
        """Takes `member`'s part 1 after its last step of `epoch` (topologies that share it)."""
        with self.lock:
            self.last_active = time.monotonic()
            if not self.topology.shares_body:
                raise InvalidRequest(f"a {self.topology} group keeps every holder's part 1 its own")
            if not 1 <= epoch <= self.epochs:
                raise InvalidRequest(f"no epoch {epoch} in 1..{self.epochs}")
            done = (epoch, member.batches - 1)
            if member.last is None or member.last < done:
                raise WrongState(f"holder {member.holder} hands in part 1 before its last step")
            if self.parts.again(epoch, member.holder, blob):
                return  # a resumed holder hands in again: the same weights
            try:
                from_blob(blob)
            except CodecError as error:
                raise InvalidRequest(f"part 1's weights: {error}") from None
            if self.schedule is not None:
                if self.over or self.schedule.slot_at(self.cursor) != Slot(
                    HAND_IN, epoch, member.holder, 0
                ):
                    raise WrongState(f"not holder {member.holder}'s hand-in")
                self.cursor += 1
            self.parts.take(epoch, member.holder, blob)
            members = [self.members[h] for h in range(self.spec.size)]
            if self.topology.averages_every_epoch:
                self.parts.average(epoch, members, group=self.spec.name)
            self.parts.prune(members)
            self._save()  # the holder goes on without saving: its hand-in must not be lost
            self.changes.notify()

    def finish(self, member: Member) -> WeightsBlob | None:
        """Returns when the whole group has trained, with the final part 1 (None: keep yours)."""
        with self.lock:
            self.last_active = time.monotonic()
            if not self.over:
                raise NotYet
            final = None
            if self.topology.averages_every_epoch:
                final = self.parts.averages[self.epochs]
            elif self.topology.shares_body:
                final = self.parts.handed[(self.epochs, self.spec.size - 1)]
            member.finished = True
            return final

    def check_checkpoint(self) -> None:
        """A member's head may be written once the group has trained to its end.

        Raises:
            WrongState: the group is still training: its head is not any member's to save.
        """
        with self.lock:
            if not self.over:
                raise WrongState(
                    f"group {self.spec.name!r} is still training: a member's head is written "
                    "once the whole group has finished (Sync FINISHED)"
                )

    def expire(self, ttl: float) -> bool:
        """Drops the group's run if no holder has called (or waited) for `ttl` seconds: its
        holders are gone for good, and the group is free for a run started over."""
        with self.lock:
            idle = time.monotonic() - self.last_active
            if not self.members or all(m.closed for m in self.members.values()) or idle <= ttl:
                return False
            logger.warning(
                "group %s: no holder called for %.0f s; its run is dropped and its saved state "
                "removed (start it over)",
                self.spec.name,
                idle,
            )
            self.reset()
            if self.store is not None:
                self.store.clear()
            return True

    def closed(self, member: Member, *, finished: bool) -> None:
        with self.lock:
            member.closed = finished
            if self.members and all(m.closed for m in self.members.values()):
                logger.info("group %s: every holder finished; the group is free", self.spec.name)
                if self.store is not None:
                    self.store.clear()
            elif finished:
                self._save()  # a finished holder does not come back to close again

    def save(self) -> None:
        """Writes the group's state now (on shutdown); nothing if it has no run going."""
        with self.lock:
            if not all(m.closed for m in self.members.values()):
                self._save()

    def _save(self) -> None:
        """Writes the whole state (lock held) before the caller is answered; see the module."""
        if self.store is not None and self.started:
            path = self.store.write(*group_state(self))
            logger.debug("group %s: saved to %s", self.spec.name, path)
