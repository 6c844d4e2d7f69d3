"""The server's sessions: opening and resuming runs, lookup by token, expiry, and saves."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from splitnn.common.checkpoints import (
    CheckpointError,
    check_stem,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from splitnn.common.codec import ALLOWED_DTYPES, StepId
from splitnn.common.models import CUT_SHAPE
from splitnn.server.errors import Busy, InvalidRequest, UnknownSession, WrongState
from splitnn.server.head import (
    ANONYMOUS_OWNER,
    HeadFactory,
    HeadSession,
    SessionSpec,
    lookup_head_policy,
)
from splitnn.server.runs import older_heads
from splitnn.server.saves import ResumeStore, Save

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = tuple(d for d in ALLOWED_DTYPES if d.startswith("float"))
# A resumed run must have been saved with the same head settings (the batch bound may differ).
_RESUME_FIELDS = ("cut_shape", "dtype", "num_classes", "lr", "seed")


class SessionRegistry:
    """Sessions by token. A run has at most one live session; its resume states live on disk.

    Runs belong to an owner (an identity's folder, see `identity.py`): a run name always means
    one of the caller's own runs, so no party can open, resume, read or overwrite another's, nor
    learn whether it exists. A session token is honoured for its owner only.

    Args:
        model_dir: each owner's heads are written to ``model_dir/heads/<owner>/<run>/`` on request
            and its resume states under ``model_dir/server/<owner>/<run>/`` (see `ResumeStore`).
        max_batch_size: the largest batch any session may announce (sizes the message limit).
        max_sessions: live sessions at most; one more is refused with RESOURCE_EXHAUSTED.
        max_sessions_per_owner: live sessions of one owner at most (None: `max_sessions`), so
            that no party can take every session of the server.
        keep_checkpoints: head checkpoints kept per run, the newest (see `save_head`).
        head_policy: how a session's own head answers steps: a name in `HEAD_POLICIES`, or a
            factory (e.g. a hijacking head with the server's settings).
    """

    def __init__(
        self,
        *,
        model_dir: Path,
        max_batch_size: int,
        max_sessions: int = 64,
        max_sessions_per_owner: int | None = None,
        keep_checkpoints: int = 3,
        head_policy: str | HeadFactory = "honest",
    ) -> None:
        self.model_dir = model_dir
        self._make_head = (
            lookup_head_policy(head_policy) if isinstance(head_policy, str) else head_policy
        )
        self.max_batch_size = max_batch_size
        self.max_sessions = max_sessions
        self.max_sessions_per_owner = max_sessions_per_owner or max_sessions
        self.keep_checkpoints = max(keep_checkpoints, 1)
        self._sessions: dict[str, HeadSession] = {}
        self._by_run: dict[tuple[str, str], str] = {}  # (owner, run) -> token
        self._lock = threading.Lock()
        self.finished_runs = 0  # closed as finished by their data holders, having trained
        self._trained: set[str] = set()  # tokens of the sessions that applied a step

    def store_of(self, owner: str = ANONYMOUS_OWNER) -> ResumeStore:
        """The resume states of `owner`'s runs."""
        return ResumeStore(self.model_dir / "server" / owner)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(
        self,
        spec: SessionSpec,
        *,
        resume: bool,
        resume_from: Sequence[StepId] = (),
        from_start: bool = False,
        owner: str = ANONYMOUS_OWNER,
    ) -> tuple[HeadSession, bool]:
        """Opens `owner`'s run `spec.run`, fresh or resumed; returns it and whether it resumed.

        With `resume`, the run continues from the first of `resume_from` the server holds (the
        live session, or a save at that step); none held: a fresh head if `from_start`, else
        FAILED_PRECONDITION. Empty `resume_from` without `from_start`: the newest state held.
        Without `resume`, the run starts over and its saves are dropped. A live session of the
        run that is not continued is replaced (saved first when resuming); `session.replaced`
        says so.
        """
        self._check_spec(spec)
        store = self.store_of(owner)
        with self._lock:
            live = self._live(owner, spec.run)
            if resume and live is not None and _differs(live.spec, spec):
                raise WrongState(f"run {spec.run!r} is live with different settings")
            session = None
            if resume:
                session = self._resumable(spec, live, resume_from, store, from_start=from_start)
            resumed = session is not None
            if session is None:
                session = self._new_session(spec, owner)
            if session is not live:
                if resume and live is not None:
                    self.snapshot(live)  # its steps stay resumable
                self._register(session, replacing=live)
            session.spec = spec  # the same head settings; the batch bound is the newest
            if not resumed:
                store.clear(spec.run)  # a run that starts over has no future to resume
            elif session.head.last_step is not None:
                store.discard_after(session.head.last_step)
        where = session.head.last_step if resumed else "the start"
        logger.info(
            "session %s: %s's run %s %s at %s (%d live)",
            session.session_id[:8],
            owner,
            spec.run,
            "resumed" if resumed else "opened",
            where,
            len(self),
        )
        return session, resumed

    def adopt(self, session: HeadSession) -> None:
        """Makes `session` (a group member's, see `group_head.py`) the live one of its run."""
        with self._lock:
            self._register(session, replacing=self._live(session.owner, session.spec.run))

    def check_spec(self, spec: SessionSpec) -> None:
        """Refuses settings this server does not serve (see `open`)."""
        self._check_spec(spec)

    def get(self, session_id: str, *, owner: str | None = None) -> HeadSession:
        """The live session with this token (and records activity on it).

        `owner`: the caller's; a token of someone else's session is refused exactly like an
        unknown one. None skips the check (in-process callers only, never a peer's request).
        """
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or (owner is not None and session.owner != owner):
            raise UnknownSession("unknown or closed session")
        session.touch()
        return session

    def close(self, session_id: str, *, finished: bool, owner: str | None = None) -> None:
        """Forgets the session. A finished run's saves are dropped; otherwise it is saved."""
        session = self.get(session_id, owner=owner)
        session.head.close(finished=finished)
        if finished:
            self.store_of(session.owner).clear(session.spec.run)
            # A run that never trained does not count: closing empty runs as finished must
            # not stop a server started with --stop-after-runs.
            if session.head.steps_applied > 0 or session.session_id in self._trained:
                self.finished_runs += 1
        else:
            self.snapshot(session)
        self._drop(session)
        logger.info(
            "session %s: %s's run %s closed%s",
            session_id[:8],
            session.owner,
            session.spec.run,
            " (finished)" if finished else "",
        )

    def expire(self, ttl: float) -> int:
        """Saves and forgets the sessions idle for more than `ttl` seconds; returns how many."""
        now = time.monotonic()
        with self._lock:
            # A group's members wait for each other as long as it takes: they never expire.
            idle = [
                s
                for s in self._sessions.values()
                if now - s.last_used > ttl and s.head.group_name is None
            ]
        dropped = 0
        for session in idle:
            self.snapshot(session)
            with self._lock:
                if time.monotonic() - session.last_used <= ttl:
                    continue  # used while it was being saved
            self._drop(session)
            dropped += 1
            logger.info(
                "session %s: %s's run %s expired after %.0f s idle (saved at %s)",
                session.session_id[:8],
                session.owner,
                session.spec.run,
                ttl,
                session.head.last_step,
            )
        return dropped

    def drop_members(self, groups: set[str]) -> int:
        """Forgets the sessions of the members of these groups, by name (their runs were
        dropped)."""
        with self._lock:
            members = [
                s
                for s in self._sessions.values()
                if s.head.group_name is not None and s.head.group_name in groups
            ]
        for session in members:
            self._drop(session)
        return len(members)

    def after_step(self, session: HeadSession, step: StepId, *, applied: bool, save: bool) -> None:
        """Writes the save point the holder marked at `step` (`save`), unless the head's resume
        states are kept elsewhere (a group's) or a retried step's point is written already."""
        if applied:
            with self._lock:
                self._trained.add(session.session_id)
        if not save or not session.head.resumable:
            return
        if applied or self.store_of(session.owner).find(step) is None:
            self.save_point(session)

    def save_point(self, session: HeadSession) -> Path:
        """Saves the run's state after the step just applied, a save point the holder marked."""
        return self._write(session, point=True)

    def snapshot(self, session: HeadSession) -> Path | None:
        """Saves the run's state unless there is nothing to save or the head is not resumable."""
        if session.head.last_step is None or session.head.restored:
            return None
        found = self.store_of(session.owner).find(session.head.last_step)
        if found is not None:
            return found.path  # this very step is saved already
        return self._write(session, point=False)

    def save_all(self) -> None:
        """Saves every live session's resume state (on shutdown)."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            path = self.snapshot(session)
            if path is not None:
                logger.info(
                    "saved run %s (%d steps) to %s",
                    session.spec.run,
                    session.head.steps_applied,
                    path,
                )

    def save_head(self, session: HeadSession, label: str, *, replace_previous: bool) -> Path:
        """Writes the head's weights as ``heads/<owner>/<run>/<label>.head.ckpt`` (+ manifest).

        The server names the file: two parties, or two runs, never write the same one. With
        `replace_previous`, the run's other head checkpoints are removed; otherwise the newest
        `keep_checkpoints` are kept (this one among them), so a run's heads never pile up.
        """
        path = self._head_path(session.owner, session.spec.run, label)
        state = session.head.state()
        manifest = {
            "part": "head",
            "owner": session.owner,
            "label": label,
            **asdict(session.spec),
            "steps_applied": state["steps_applied"],
        }
        save_checkpoint(path, state["head"], manifest)
        keep = 1 if replace_previous else self.keep_checkpoints
        for previous in older_heads(path, keep=keep):
            remove_checkpoint(previous)
        return path

    def load_head(self, session: HeadSession, label: str, *, run: str = "") -> int:
        """Loads head `label` of one of the owner's runs (default: the session's) into the
        session's head; returns its step count.

        Only the weights are loaded (not the optimizer): this is for evaluating a chosen epoch.
        A head the owner never wrote reads as missing, whoever else may have one of that name.
        """
        path = self._head_path(session.owner, run or session.spec.run, label)
        try:
            state, manifest = load_checkpoint(path)
        except CheckpointError:
            raise WrongState(
                f"no head checkpoint {label!r} of run {run or session.spec.run!r}"
            ) from None
        if manifest.get("num_classes") != session.spec.num_classes:
            raise WrongState(f"head {label!r} has {manifest.get('num_classes')} classes")
        session.head.load_weights(state)
        return int(manifest.get("steps_applied", 0))

    def _head_path(self, owner: str, run: str, label: str) -> Path:
        try:
            check_stem(run)
            return self.model_dir / "heads" / owner / run / f"{check_stem(label)}.head.ckpt"
        except CheckpointError as error:
            raise InvalidRequest(str(error)) from None

    def _write(self, session: HeadSession, *, point: bool) -> Path:
        state = session.head.state()
        assert session.head.last_step is not None, "a resume state is saved after a step"
        spec = asdict(session.spec)
        state["spec"] = {**spec, "cut_shape": list(session.spec.cut_shape)}
        manifest = {"part": "head-resume", "owner": session.owner, **spec}
        return self.store_of(session.owner).write(
            session.head.last_step, state, manifest, point=point
        )

    def _live(self, owner: str, run: str) -> HeadSession | None:
        token = self._by_run.get((owner, run))
        return self._sessions.get(token) if token else None

    def _resumable(
        self,
        spec: SessionSpec,
        live: HeadSession | None,
        resume_from: Sequence[StepId],
        store: ResumeStore,
        *,
        from_start: bool,
    ) -> HeadSession | None:
        """The session to continue from (None: start over); see `open`."""
        owner = store.root.name
        usable = live if live is not None and not live.head.restored else None
        if not resume_from and not from_start:
            if usable is not None:
                return usable
            newest = store.newest(spec.run)
            return self._load(spec, newest, store, owner) if newest is not None else None
        for step in resume_from:
            if step.run != spec.run:
                raise InvalidRequest(f"resume step of run {step.run!r} for run {spec.run!r}")
            if usable is not None and usable.head.last_step == step:
                return usable
            save = store.find(step)
            if save is not None:
                return self._load(spec, save, store, owner)
        if from_start:
            return None
        held = [str(s.step(spec.run)) for s in store.saves(spec.run)] or ["nothing"]
        wanted = ", ".join(str(s) for s in resume_from)
        raise WrongState(f"cannot resume at {wanted}: the server holds {', '.join(held)}")

    def _new_session(self, spec: SessionSpec, owner: str) -> HeadSession:
        head = self._make_head(spec, owner=owner)
        return HeadSession(secrets.token_hex(16), spec, head=head, owner=owner)

    def _load(self, spec: SessionSpec, save: Save, store: ResumeStore, owner: str) -> HeadSession:
        state = store.load(save)
        saved: dict[str, Any] = state.get("spec", {})
        ours = {**asdict(spec), "cut_shape": list(spec.cut_shape)}
        if any(saved.get(k) != ours[k] for k in _RESUME_FIELDS):
            kept = {k: saved.get(k) for k in _RESUME_FIELDS}
            raise WrongState(f"run {spec.run!r} was saved with other settings: {kept}")
        session = self._new_session(spec, owner)
        session.head.restore(state)
        return session

    def _register(self, session: HeadSession, *, replacing: HeadSession | None) -> None:
        """Makes `session` the live one of its run (call with the lock held)."""
        if replacing is not None:
            logger.warning(
                "%s's run %s opened again: its previous session %s is replaced",
                session.owner,
                session.spec.run,
                replacing.session_id[:8],
            )
            self._sessions.pop(replacing.session_id, None)
            self._trained.discard(replacing.session_id)
            session.replaced = True
        elif self._count(session.owner) >= self.max_sessions_per_owner:
            raise Busy(
                f"this party holds its limit of {self.max_sessions_per_owner} live sessions "
                "(--max-sessions-per-party); close one or let it expire"
            )
        elif len(self._sessions) >= self.max_sessions:
            raise Busy(
                f"the server holds its limit of {self.max_sessions} live sessions "
                "(--max-sessions); try again when one closes or expires"
            )
        self._sessions[session.session_id] = session
        self._by_run[(session.owner, session.spec.run)] = session.session_id

    def _drop(self, session: HeadSession) -> None:
        with self._lock:
            self._sessions.pop(session.session_id, None)
            self._trained.discard(session.session_id)
            key = (session.owner, session.spec.run)
            if self._by_run.get(key) == session.session_id:
                del self._by_run[key]

    def _count(self, owner: str) -> int:
        """`owner`'s live sessions (call with the lock held)."""
        return sum(1 for s in self._sessions.values() if s.owner == owner)

    def _check_spec(self, spec: SessionSpec) -> None:
        try:
            check_stem(spec.run)
        except CheckpointError:
            raise InvalidRequest(f"run name {spec.run!r}: use letters, digits, _ . = + -") from None
        if spec.cut_shape != CUT_SHAPE:
            raise WrongState(f"this server's head takes cut shape {list(CUT_SHAPE)}")
        if spec.dtype not in _FLOAT_DTYPES:
            raise InvalidRequest(f"cut dtype must be one of {_FLOAT_DTYPES}")
        if not 1 <= spec.max_batch_size <= self.max_batch_size:
            raise InvalidRequest(f"max batch size must be in 1..{self.max_batch_size}")
        if not 2 <= spec.num_classes <= 1000:
            raise InvalidRequest("num_classes must be in 2..1000")
        if not 0.0 < spec.lr <= 1.0:
            raise InvalidRequest("lr must be in (0, 1]")


def _differs(a: SessionSpec, b: SessionSpec) -> bool:
    return any(getattr(a, k) != getattr(b, k) for k in _RESUME_FIELDS)
