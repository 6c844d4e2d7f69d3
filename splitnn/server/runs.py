"""The runs a server keeps on disk, listed and removed by the operator without serving.

A run ``OWNER/RUN`` is whatever the server wrote for it: its resume states under
``<model_dir>/server/OWNER/RUN/`` and its head checkpoints under ``<model_dir>/heads/OWNER/RUN/``.
Nothing here follows a symbolic link or leaves the model folder: a name is checked before any
path is built from it, and every folder on the way must be a real folder, not a link.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from splitnn.common import exits
from splitnn.common.checkpoints import CheckpointError, check_stem

KINDS = ("server", "heads")  # resume states, head checkpoints
# An owner's folder (see `Identity.folder`): a party's safe name, "_anonymous" or "_id-<hash>".
_OWNER = re.compile(r"_?[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class RunNotFound(exits.BadUsage, LookupError):
    """No such run on disk, or a name that cannot be one (exit 2)."""


@dataclass(frozen=True)
class StoredRun:
    """One run on disk: what it holds and when it last changed.

    Attributes:
        name: ``OWNER/RUN``.
        resume_states: resume files (``*.ckpt`` under ``server/``).
        head_checkpoints: head files (``*.head.ckpt`` under ``heads/``).
        size: bytes of every file of the run, manifests included.
        modified: the newest file's modification time (seconds since the epoch).
    """

    name: str
    resume_states: int
    head_checkpoints: int
    size: int
    modified: float


def stored_runs(model_dir: Path) -> list[StoredRun]:
    """Every run under `model_dir`, by name; links and stray files are skipped."""
    names: set[tuple[str, str]] = set()
    for kind in KINDS:
        for owner in _folders(model_dir / kind):
            if _OWNER.fullmatch(owner.name):
                names.update((owner.name, run.name) for run in _folders(owner) if _is_run(run))
    return [_describe(model_dir, owner, run) for owner, run in sorted(names)]


def remove_run(model_dir: Path, name: str) -> StoredRun:
    """Removes run `name` (``OWNER/RUN``) from `model_dir`; returns what it held.

    Only folders reached without a link are removed; a link inside is removed, never followed.

    Raises:
        RunNotFound: not an ``OWNER/RUN`` name, or no such run.
    """
    owner, run = _parse(name)
    found = _describe(model_dir, owner, run)
    folders = [f for kind in KINDS if (f := _real_folder(model_dir, kind, owner, run))]
    if not folders:
        raise RunNotFound(f"no run {name} under {model_dir}")
    for folder in folders:
        shutil.rmtree(folder)
        parent = folder.parent
        if not any(parent.iterdir()):
            parent.rmdir()  # the owner's last run
    return found


def _parse(name: str) -> tuple[str, str]:
    owner, sep, run = name.partition("/")
    try:
        if not sep or not _OWNER.fullmatch(owner) or ".." in owner:
            raise CheckpointError(name)
        check_stem(run)
    except CheckpointError:
        raise RunNotFound(
            f"{name!r} is not a run: expected OWNER/RUN as --list-runs shows it"
        ) from None
    return owner, run


def _real_folder(model_dir: Path, kind: str, owner: str, run: str) -> Path | None:
    """``model_dir/kind/owner/run`` if each step from `model_dir` is a folder and not a link."""
    path = model_dir
    for part in (kind, owner, run):
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path


def _folders(path: Path) -> list[Path]:
    if path.is_symlink() or not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())


def _is_run(path: Path) -> bool:
    try:
        check_stem(path.name)
    except CheckpointError:
        return False
    return True


def _describe(model_dir: Path, owner: str, run: str) -> StoredRun:
    resume = heads = size = 0
    modified = 0.0
    for kind in KINDS:
        folder = _real_folder(model_dir, kind, owner, run)
        files = (
            [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()] if folder else []
        )
        for path in files:
            stat = path.stat()
            size += stat.st_size
            modified = max(modified, stat.st_mtime)
            if kind == "server" and path.name.endswith(".ckpt"):
                resume += 1
            elif kind == "heads" and path.name.endswith(".head.ckpt"):
                heads += 1
    return StoredRun(f"{owner}/{run}", resume, heads, size, modified)


def older_heads(newest: Path, *, keep: int) -> list[Path]:
    """The head checkpoints beside `newest` beyond the `keep` most recently written ones
    (`newest` is always kept)."""
    heads = [p for p in newest.parent.glob("*.head.ckpt") if p != newest and not p.is_symlink()]
    heads.sort(key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    return heads[max(keep, 1) - 1 :]
