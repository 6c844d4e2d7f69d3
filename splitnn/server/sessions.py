"""The server's sessions: opening and resuming runs, lookup by token, expiry, and saves."""

from __future__ import annotations

import json
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
from splitnn.server.head import HeadSession, SessionSpec
from splitnn.server.saves import ResumeStore, Save

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = tuple(d for d in ALLOWED_DTYPES if d.startswith("float"))
# A resumed run must have been saved with the same head settings (the batch bound may differ).
_RESUME_FIELDS = ("cut_shape", "dtype", "num_classes", "lr", "seed")


class SessionRegistry:
    """Sessions by token. A run has at most one live session; its resume states live on disk.

    Args:
        model_dir: heads are written to ``model_dir/classifiers/<name>.head.ckpt`` on request and
            the resume states of each run under ``model_dir/server/<run>/`` (see `ResumeStore`).
        max_batch_size: the largest batch any session may announce (sizes the message limit).
        max_sessions: live sessions at most; one more is refused with RESOURCE_EXHAUSTED.
    """

    def __init__(self, *, model_dir: Path, max_batch_size: int, max_sessions: int = 64) -> None:
        self.model_dir = model_dir
        self.max_batch_size = max_batch_size
        self.max_sessions = max_sessions
        self.store = ResumeStore(model_dir / "server")
        self._sessions: dict[str, HeadSession] = {}
        self._by_run: dict[str, str] = {}
        self._saved: dict[str, Path] = {}
        self._lock = threading.Lock()

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
    ) -> tuple[HeadSession, bool]:
        """Opens `spec.run`, fresh or resumed; returns the session and whether it resumed.

        With `resume`, the run continues from the first of `resume_from` the server holds (the
        live session, or a save at that step); none held: a fresh head if `from_start`, else
        FAILED_PRECONDITION. Empty `resume_from` without `from_start`: the newest state held.
        Without `resume`, the run starts over and its saves are dropped.
        """
        self._check_spec(spec)
        with self._lock:
            live = self._live(spec.run)
            if resume and live is not None and _differs(live.spec, spec):
                raise WrongState(f"run {spec.run!r} is live with different settings")
            session = None
            if resume:
                session = self._resumable(spec, live, resume_from, from_start=from_start)
            resumed = session is not None
            if session is None:
                session = HeadSession(secrets.token_hex(16), spec)
            if session is not live:
                self._register(session, replacing=live)
            session.spec = spec  # the same head settings; the batch bound is the newest
            if not resumed:
                self.store.clear(spec.run)  # a run that starts over has no future to resume
            elif session.last_step is not None:
                self.store.discard_after(session.last_step)
        where = session.last_step if resumed else "the start"
        logger.info(
            "session %s: run %s %s at %s (%d live)",
            session.session_id[:8],
            spec.run,
            "resumed" if resumed else "opened",
            where,
            len(self),
        )
        return session, resumed

    def get(self, session_id: str) -> HeadSession:
        """The live session with this token (and records activity on it)."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession("unknown or closed session")
        session.touch()
        return session

    def close(self, session_id: str, *, finished: bool) -> None:
        """Forgets the session. A finished run's saves are dropped; otherwise it is saved."""
        session = self.get(session_id)
        if finished:
            self.store.clear(session.spec.run)
        else:
            self.snapshot(session)
        self._drop(session)
        logger.info(
            "session %s: run %s closed%s",
            session_id[:8],
            session.spec.run,
            " (finished)" if finished else "",
        )

    def expire(self, ttl: float) -> int:
        """Saves and forgets the sessions idle for more than `ttl` seconds; returns how many."""
        now = time.monotonic()
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.last_used > ttl]
        dropped = 0
        for session in idle:
            self.snapshot(session)
            with self._lock:
                if time.monotonic() - session.last_used <= ttl:
                    continue  # used while it was being saved
            self._drop(session)
            dropped += 1
            logger.info(
                "session %s: run %s expired after %.0f s idle (saved at %s)",
                session.session_id[:8],
                session.spec.run,
                ttl,
                session.last_step,
            )
        return dropped

    def save_point(self, session: HeadSession) -> Path:
        """Saves the run's state after the step just applied, a save point the holder marked."""
        return self._write(session, point=True)

    def snapshot(self, session: HeadSession) -> Path | None:
        """Saves the run's state unless there is nothing to save or the head is not resumable."""
        if session.last_step is None or session.restored:
            return None
        found = self.store.find(session.last_step)
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
                    "saved run %s (%d steps) to %s", session.spec.run, session.steps_applied, path
                )

    def save_head(self, session: HeadSession, name: str, *, replace_previous: bool) -> Path:
        """Writes the head's weights as ``classifiers/<name>.head.ckpt`` (+ manifest)."""
        path = self._head_path(name)
        state = session.state()
        manifest = {"part": "head", **asdict(session.spec), "steps_applied": state["steps_applied"]}
        save_checkpoint(path, state["head"], manifest)
        if replace_previous:
            for previous in self._heads_of(session.spec.run):
                if previous != path:
                    remove_checkpoint(previous)
        self._saved[session.spec.run] = path
        return path

    def _heads_of(self, run: str) -> list[Path]:
        """The head checkpoints written for `run`: remembered, or (after a restart) found by
        their manifests."""
        if run in self._saved:
            return [self._saved[run]]
        found = []
        for manifest in (self.model_dir / "classifiers").glob("*.head.ckpt.json"):
            try:
                written_for = json.loads(manifest.read_text()).get("run")
            except (OSError, ValueError):
                continue
            if written_for == run:
                found.append(manifest.with_name(manifest.name.removesuffix(".json")))
        return found

    def load_head(self, session: HeadSession, name: str) -> int:
        """Loads ``classifiers/<name>.head.ckpt`` into the session's head; returns its step count.

        Only the weights are loaded (not the optimizer): this is for evaluating a chosen epoch.
        """
        path = self._head_path(name)
        state, manifest = load_checkpoint(path)
        if manifest.get("num_classes") != session.spec.num_classes:
            raise WrongState(f"{path.name} has {manifest.get('num_classes')} classes")
        session.load_weights(state)
        return int(manifest.get("steps_applied", 0))

    def _head_path(self, name: str) -> Path:
        try:
            return self.model_dir / "classifiers" / f"{check_stem(name)}.head.ckpt"
        except CheckpointError as error:
            raise InvalidRequest(str(error)) from None

    def _write(self, session: HeadSession, *, point: bool) -> Path:
        state = session.state()
        assert session.last_step is not None, "a resume state is saved after a step"
        spec = asdict(session.spec)
        state["spec"] = {**spec, "cut_shape": list(session.spec.cut_shape)}
        return self.store.write(
            session.last_step, state, {"part": "head-resume", **spec}, point=point
        )

    def _live(self, run: str) -> HeadSession | None:
        token = self._by_run.get(run)
        return self._sessions.get(token) if token else None

    def _resumable(
        self,
        spec: SessionSpec,
        live: HeadSession | None,
        resume_from: Sequence[StepId],
        *,
        from_start: bool,
    ) -> HeadSession | None:
        """The session to continue from (None: start over); see `open`."""
        usable = live if live is not None and not live.restored else None
        if not resume_from and not from_start:
            if usable is not None:
                return usable
            newest = self.store.newest(spec.run)
            return self._load(spec, newest) if newest is not None else None
        for step in resume_from:
            if step.run != spec.run:
                raise InvalidRequest(f"resume step of run {step.run!r} for run {spec.run!r}")
            if usable is not None and usable.last_step == step:
                return usable
            save = self.store.find(step)
            if save is not None:
                return self._load(spec, save)
        if from_start:
            return None
        held = [str(s.step(spec.run)) for s in self.store.saves(spec.run)] or ["nothing"]
        wanted = ", ".join(str(s) for s in resume_from)
        raise WrongState(f"cannot resume at {wanted}: the server holds {', '.join(held)}")

    def _load(self, spec: SessionSpec, save: Save) -> HeadSession:
        state = self.store.load(save)
        saved: dict[str, Any] = state.get("spec", {})
        ours = {**asdict(spec), "cut_shape": list(spec.cut_shape)}
        if any(saved.get(k) != ours[k] for k in _RESUME_FIELDS):
            kept = {k: saved.get(k) for k in _RESUME_FIELDS}
            raise WrongState(f"run {spec.run!r} was saved with other settings: {kept}")
        session = HeadSession(secrets.token_hex(16), spec)
        session.restore(state)
        return session

    def _register(self, session: HeadSession, *, replacing: HeadSession | None) -> None:
        """Makes `session` the live one of its run (call with the lock held)."""
        if replacing is not None:
            logger.warning(
                "run %s opened again: its previous session %s is replaced",
                session.spec.run,
                replacing.session_id[:8],
            )
            self._sessions.pop(replacing.session_id, None)
        elif len(self._sessions) >= self.max_sessions:
            raise Busy(
                f"the server holds its limit of {self.max_sessions} live sessions "
                "(--max-sessions); try again when one closes or expires"
            )
        self._sessions[session.session_id] = session
        self._by_run[session.spec.run] = session.session_id

    def _drop(self, session: HeadSession) -> None:
        with self._lock:
            self._sessions.pop(session.session_id, None)
            if self._by_run.get(session.spec.run) == session.session_id:
                del self._by_run[session.spec.run]

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
