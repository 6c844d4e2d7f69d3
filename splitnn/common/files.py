"""Files replaced atomically and durably: every program's one way to write a result in place.

The new content goes to a fresh temporary file beside the target, which is fsynced and renamed
over the target; then the directory is fsynced, so the rename itself survives a crash. A reader
sees the old file or the new one, never a torn one; a failed write leaves the old file alone and
no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

# Modes for `write_atomic`: results others may read, and what only the owner may.
SHARED = 0o644
PRIVATE = 0o600

# A directory fsync that the file system does not support is skipped, not an error.
_NO_DIRECTORY_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside `path` to write to; on a clean exit it is fsynced and
    renamed over `path` and the directory is fsynced, on an error it is removed.

    For writers that open their own file (e.g. `WireLogWriter`); `write_atomic` for the rest.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_atomic(
    path: Path, content: bytes | Callable[[BinaryIO], object], *, mode: int = PRIVATE
) -> None:
    """Replaces `path` with `content` (bytes, or a function that writes to a binary file).

    The file has exactly `mode` from its first byte, whatever the umask or an older file's mode.
    """
    with replacing(path) as temporary:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(temporary, flags, mode), "wb") as file:
            os.fchmod(file.fileno(), mode)
            if isinstance(content, bytes):
                file.write(content)
            else:
                content(file)


def write_json_atomic(path: Path, data: Mapping[str, Any], *, mode: int = SHARED) -> None:
    """Replaces `path` with `data` as indented JSON with sorted keys and a final newline."""
    text = json.dumps(dict(data), indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode(), mode=mode)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in _NO_DIRECTORY_FSYNC:
            raise
    finally:
        os.close(descriptor)
