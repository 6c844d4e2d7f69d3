"""The server's sessions: opening, resuming, looking up by token, and checkpointing heads."""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import asdict
from pathlib import Path

from splitnn.common.checkpoints import (
    CheckpointError,
    check_stem,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from splitnn.common.codec import ALLOWED_DTYPES
from splitnn.common.models import CUT_SHAPE
from splitnn.server.errors import InvalidRequest, UnknownSession, WrongState
from splitnn.server.head import HeadSession, SessionSpec

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = tuple(d for d in ALLOWED_DTYPES if d.startswith("float"))


class SessionRegistry:
    """Sessions by token. A run has at most one live session; its resume state lives on disk.

    Args:
        model_dir: heads are written to ``model_dir/classifiers/<name>.head.ckpt`` on request and
            the resume state of each run to ``model_dir/server/<run>.ckpt``.
        max_batch_size: the largest batch any session may announce (sizes the message limit).
    """

    def __init__(self, *, model_dir: Path, max_batch_size: int) -> None:
        self.model_dir = model_dir
        self.max_batch_size = max_batch_size
        self._sessions: dict[str, HeadSession] = {}
        self._by_run: dict[str, str] = {}
        self._saved: dict[str, Path] = {}
        self._lock = threading.Lock()

    def open(self, spec: SessionSpec, *, resume: bool) -> tuple[HeadSession, bool]:
        """Creates (or resumes) the session of `spec.run`; returns it and whether it resumed."""
        self._check_spec(spec)
        with self._lock:
            old_token = self._by_run.get(spec.run)
            old = self._sessions.get(old_token) if old_token else None
            if resume and old is not None:
                if old.spec != spec:
                    raise WrongState(f"run {spec.run!r} is live with different settings")
                return old, True
            session = HeadSession(secrets.token_hex(16), spec)
            resumed = resume and self._restore(session)
            if old_token is not None:
                logger.warning("run %s opened again; its previous session is closed", spec.run)
                self._sessions.pop(old_token, None)
            self._sessions[session.session_id] = session
            self._by_run[spec.run] = session.session_id
        logger.info("session opened: run=%s resumed=%s", spec.run, resumed)
        return session, resumed

    def get(self, session_id: str) -> HeadSession:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession("unknown or closed session")
        return session

    def close(self, session_id: str) -> None:
        """Saves the run's resume state and forgets the session."""
        session = self.get(session_id)
        self.save_resume_state(session)
        with self._lock:
            self._sessions.pop(session_id, None)
            if self._by_run.get(session.spec.run) == session_id:
                del self._by_run[session.spec.run]

    def save_head(self, session: HeadSession, name: str, *, replace_previous: bool) -> Path:
        """Writes the head's weights as ``classifiers/<name>.head.ckpt`` (+ manifest)."""
        try:
            stem = check_stem(name)
        except CheckpointError as error:
            raise InvalidRequest(str(error)) from None
        path = self.model_dir / "classifiers" / f"{stem}.head.ckpt"
        state = session.state()
        manifest = {"part": "head", **asdict(session.spec), "steps_applied": state["steps_applied"]}
        save_checkpoint(path, state["head"], manifest)
        previous = self._saved.get(session.spec.run)
        if replace_previous and previous is not None and previous != path:
            remove_checkpoint(previous)
        self._saved[session.spec.run] = path
        return path

    def load_head(self, session: HeadSession, name: str) -> int:
        """Loads ``classifiers/<name>.head.ckpt`` into the session's head; returns its step count.

        Only the weights are loaded (not the optimizer): this is for evaluating a chosen epoch.
        """
        try:
            path = self.model_dir / "classifiers" / f"{check_stem(name)}.head.ckpt"
        except CheckpointError as error:
            raise InvalidRequest(str(error)) from None
        state, manifest = load_checkpoint(path)
        if manifest.get("num_classes") != session.spec.num_classes:
            raise WrongState(f"{path.name} has {manifest.get('num_classes')} classes")
        with session.lock:
            session.head.load_state_dict(state)
        return int(manifest.get("steps_applied", 0))

    def save_resume_state(self, session: HeadSession) -> Path:
        path = self._resume_path(session.spec.run)
        save_checkpoint(path, session.state(), {"part": "head-resume", **asdict(session.spec)})
        return path

    def save_all(self) -> None:
        """Saves every live session's resume state (on shutdown)."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            path = self.save_resume_state(session)
            logger.info(
                "saved run %s (%d steps) to %s", session.spec.run, session.steps_applied, path
            )

    def _resume_path(self, run: str) -> Path:
        return self.model_dir / "server" / f"{check_stem(run)}.ckpt"

    def _restore(self, session: HeadSession) -> bool:
        path = self._resume_path(session.spec.run)
        if not path.exists():
            return False
        state, manifest = load_checkpoint(path)
        saved = {k: manifest.get(k) for k in ("cut_shape", "dtype", "num_classes", "lr")}
        ours = asdict(session.spec)
        ours["cut_shape"] = list(session.spec.cut_shape)
        if any(saved[k] != ours[k] for k in saved):
            raise WrongState(f"run {session.spec.run!r} was saved with other settings: {saved}")
        session.restore(state)
        return True

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
