"""The colluding server's wire log: framed, checksummed, append-only records of what it received.

Layout: the file magic ``SPLITNNLOG1\\n``, then frames of
``[4-byte sync marker][u32 LE payload length][u32 LE CRC-32 of the payload][payload]``. The first
frame's payload is a UTF-8 JSON object describing the run; every later payload is one serialized
``TapRecord``. The server appends; the attacker reads the whole file (`read_wirelog`).

A crash can leave a torn last frame, and a disk can flip bits. Reading never gives up on damaged
content: a bad frame is skipped and the reader resynchronises at the next sync marker whose frame
checks out, so every intact record is kept and the damage is described in words.
"""

from __future__ import annotations

import enum
import json
import logging
import mmap
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from splitnn.common import exits
from splitnn.proto import splitnn_pb2 as pb

logger = logging.getLogger(__name__)

MAGIC = b"SPLITNNLOG1\n"
# Arbitrary non-ASCII bytes: they only find frame starts again; the CRC decides what is intact.
SYNC = b"\xf5\x9e\xa7\x1c"
_FRAME = struct.Struct("<4sII")  # sync marker, payload length, CRC-32 of the payload
# A record of 128 x 500 float32 is 256 KiB; the cap stops a corrupt length from allocating GiBs.
MAX_PAYLOAD_BYTES = 64 << 20
_MAX_LISTED = 5  # damaged regions named one by one in a problem sentence
_PRIVATE = 0o600  # the holders' cut tensors and labels: readable by the server's user only

_Buffer = bytes | bytearray | mmap.mmap


class WireLogError(exits.Failed):
    """The file is missing, is not a wire log, or cannot be written."""


@dataclass(frozen=True)
class WireLog:
    """What `read_wirelog` recovered from a file.

    Attributes:
        header: the JSON header of the first frame; empty if it was lost.
        records: every intact record, in file order.
        problem: a sentence describing damage that was skipped or ignored; None when clean.
    """

    header: dict[str, Any]
    records: list[pb.TapRecord]
    problem: str | None


class _Check(enum.Enum):
    OK = "ok"
    INCOMPLETE = "incomplete"  # plausible so far, but runs past the end of the data
    BAD = "bad"


@dataclass(frozen=True)
class _Damage:
    start: int
    end: int
    reason: str


@dataclass(frozen=True)
class _Scan:
    frames: list[tuple[int, int]]  # (payload start, payload end) of each intact frame
    damage: list[_Damage]
    tail: _Damage | None  # a torn last frame


def _check_frame(buf: _Buffer, pos: int) -> tuple[_Check, str]:
    """Whether an intact frame starts at `pos`; the reason in words when not."""
    available = len(buf) - pos
    if available < _FRAME.size:
        prefix = min(available, len(SYNC))
        if buf[pos : pos + prefix] == SYNC[:prefix]:
            return _Check.INCOMPLETE, "incomplete frame header"
        return _Check.BAD, "no sync marker"
    sync, length, crc = _FRAME.unpack_from(buf, pos)
    if sync != SYNC:
        return _Check.BAD, "no sync marker"
    if length > MAX_PAYLOAD_BYTES:
        return _Check.BAD, f"length {length} over the {MAX_PAYLOAD_BYTES}-byte limit"
    start = pos + _FRAME.size
    if start + length > len(buf):
        return _Check.INCOMPLETE, "frame length runs past the end of the data"
    if zlib.crc32(buf[start : start + length]) != crc:
        return _Check.BAD, "checksum mismatch"
    return _Check.OK, ""


def _resync(buf: _Buffer, start: int) -> int | None:
    """The offset of the next intact frame at or after `start`, if any."""
    candidate = buf.find(SYNC, start)
    while candidate != -1:
        if _check_frame(buf, candidate)[0] is _Check.OK:
            return candidate
        candidate = buf.find(SYNC, candidate + 1)
    return None


def _scan(buf: _Buffer, pos: int) -> _Scan:
    """Finds the intact frames of buf[pos:]; what cannot be resynchronised after is damage, or a
    torn tail when it is an incomplete frame."""
    frames: list[tuple[int, int]] = []
    damage: list[_Damage] = []
    tail: _Damage | None = None
    while pos < len(buf):
        check, reason = _check_frame(buf, pos)
        if check is _Check.OK:
            length = _FRAME.unpack_from(buf, pos)[1]
            frames.append((pos + _FRAME.size, pos + _FRAME.size + length))
            pos += _FRAME.size + length
            continue
        after = _resync(buf, pos + 1)
        if after is not None:
            damage.append(_Damage(pos, after, reason))
            pos = after
            continue
        if check is _Check.INCOMPLETE:
            tail = _Damage(pos, len(buf), reason)
        else:
            damage.append(_Damage(pos, len(buf), reason))
        pos = len(buf)
    return _Scan(frames=frames, damage=damage, tail=tail)


def _frame_bytes(payload: bytes) -> bytes:
    return _FRAME.pack(SYNC, len(payload), zlib.crc32(payload)) + payload


def _parse_header(payload: bytes) -> dict[str, Any] | None:
    """The header dict if `payload` is one (a record never starts with ``{``), else None."""
    if not payload.startswith(b"{"):
        return None
    try:
        header = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        # json recurses once per nesting level: a damaged or hostile header nested deeper than
        # the interpreter's stack limit is damage like any other, not a crash of the reader.
        return None
    return header if isinstance(header, dict) else None


def _describe(damage: list[_Damage], tail: _Damage | None) -> str | None:
    """The problem sentence."""
    parts: list[str] = []
    if damage:
        listed = ", ".join(
            f"{d.reason} at byte {d.start} ({d.end - d.start} bytes)" for d in damage[:_MAX_LISTED]
        )
        more = f", and {len(damage) - _MAX_LISTED} more" if len(damage) > _MAX_LISTED else ""
        noun = "region" if len(damage) == 1 else "regions"
        parts.append(f"{len(damage)} damaged {noun} skipped: {listed}{more}")
    if tail is not None:
        parts.append(
            f"truncated tail at byte {tail.start}: "
            f"{tail.end - tail.start} bytes of an incomplete frame ignored"
        )
    return "; ".join(parts) or None


def _check_magic(prefix: bytes, path: Path) -> bool:
    """True for the full magic, False for a torn one (a prefix of it); raises otherwise."""
    if prefix == MAGIC:
        return True
    if MAGIC.startswith(prefix):
        return False
    raise WireLogError(f"{path} is not a splitnn wire log (wrong file magic)")


class WireLogWriter:
    """Appends records to a wire log; safe to call from the server's RPC threads.

    A new or empty file gets the magic and the header frame. An existing log is appended to
    without rewriting its header (the `header` argument is then unused); a torn tail left by a
    crash is cut off first, with a warning, so new frames follow the last intact one. One writer
    per file: two processes appending to one log could interleave a torn frame with a new one.

    The log holds the holders' cut tensors and labels: it is created readable by its owner only,
    an existing one is narrowed to that, and a symbolic link or anything but a regular file at
    `path` is refused (the records would go wherever the link points, with that file's mode).
    """

    def __init__(self, path: str | os.PathLike[str], *, header: Mapping[str, Any]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        try:
            header_frame = _frame_bytes(
                json.dumps({"created_at": time.time(), **header}, sort_keys=True).encode()
            )
        except (TypeError, ValueError) as error:
            raise WireLogError(f"wire log header is not JSON-serialisable: {error}") from error
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
            self._fd: int | None = os.open(self._path, flags, _PRIVATE)
        except OSError as error:
            reason = "it is a symbolic link" if self._path.is_symlink() else error.strerror
            raise WireLogError(f"cannot open wire log {self._path}: {reason}") from error
        try:
            self._make_private()
            self._prepare(header_frame)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def _make_private(self) -> None:
        """Refuses anything but a regular file; narrows a log others may read to its owner."""
        assert self._fd is not None
        found = os.fstat(self._fd)
        if not stat.S_ISREG(found.st_mode):
            raise WireLogError(f"wire log {self._path} is not a regular file")
        if stat.S_IMODE(found.st_mode) & ~_PRIVATE:
            logger.warning("wire log %s was readable by others; now by its owner only", self._path)
            try:
                os.fchmod(self._fd, _PRIVATE)
            except OSError as error:
                raise WireLogError(f"cannot restrict wire log {self._path}: {error}") from error
        os.set_blocking(self._fd, True)

    def _prepare(self, header_frame: bytes) -> None:
        """Writes magic + header to an empty log, or finds where an existing one ends."""
        assert self._fd is not None
        with open(self._fd, "rb", closefd=False) as handle:
            prefix = handle.read(len(MAGIC))
            if not _check_magic(prefix, self._path):
                if prefix:
                    logger.warning("wire log %s has a torn file magic; starting afresh", self._path)
                os.ftruncate(self._fd, 0)
                self._write_all(MAGIC + header_frame)
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                scan = _scan(buf, len(MAGIC))
                size = len(buf)
        valid_end = scan.frames[-1][1] if scan.frames else len(MAGIC)
        if valid_end < size:
            logger.warning(
                "wire log %s: cutting a torn tail of %d bytes at byte %d before appending",
                *(self._path, size - valid_end, valid_end),
            )
            os.ftruncate(self._fd, valid_end)
        if not scan.frames:
            self._write_all(header_frame)
        else:
            logger.info("appending to wire log %s (%d frames)", self._path, len(scan.frames))

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:  # one os.write for any frame under the cap; the loop covers short writes
            written = os.write(self._fd, view)
            view = view[written:]

    def write(self, record: pb.TapRecord) -> None:
        """Appends one record as a whole frame: one unbuffered write, so followers see whole
        frames at once; not fsynced (`close` does that).

        Raises:
            WireLogError: if the writer is closed, the record is over `MAX_PAYLOAD_BYTES`, or the
                write fails (a partly written frame is then skipped by readers).
        """
        payload = record.SerializeToString()
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise WireLogError(f"record of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
        frame = _frame_bytes(payload)
        with self._lock:
            if self._fd is None:
                raise WireLogError(f"wire log {self._path} is closed")
            try:
                self._write_all(frame)
            except OSError as error:
                raise WireLogError(f"cannot write wire log {self._path}: {error}") from error

    def close(self) -> None:
        """Fsyncs and closes the file; closing twice is harmless."""
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> WireLogWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_wirelog(path: str | os.PathLike[str]) -> WireLog:
    """Reads a whole wire log, keeping every intact record.

    Reading a log that is still being written may report the frame in flight as a torn tail.

    Raises:
        WireLogError: if the file is missing or unreadable, or is not a wire log (wrong magic).
            Damaged content never raises: it is skipped and described in `WireLog.problem`.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            prefix = handle.read(len(MAGIC))
            if not _check_magic(prefix, path):
                torn = f"file of {len(prefix)} bytes holds no complete file magic"
                return WireLog(header={}, records=[], problem=torn)
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                scan = _scan(buf, len(MAGIC))
                payloads = [buf[start:end] for start, end in scan.frames]
    except FileNotFoundError:
        raise WireLogError(f"no wire log at {path}") from None
    except OSError as error:
        raise WireLogError(f"cannot read wire log {path}: {error.strerror}") from error
    header = _parse_header(payloads[0]) if payloads else None
    first = 0 if header is None else 1
    records, bad = _decode_records(payloads[first:])
    undecodable = [
        _Damage(
            scan.frames[first + i][0] - _FRAME.size, scan.frames[first + i][1], "undecodable record"
        )
        for i in bad
    ]
    problem = _describe(sorted(scan.damage + undecodable, key=lambda d: d.start), scan.tail)
    if header is None:
        problem = "no intact header frame" + (f"; {problem}" if problem else "")
    return WireLog(header=header or {}, records=records, problem=problem)


def _decode_records(payloads: Iterable[bytes]) -> tuple[list[pb.TapRecord], list[int]]:
    """The parsed records, and the positions of the payloads that are not records."""
    records: list[pb.TapRecord] = []
    bad: list[int] = []
    for i, payload in enumerate(payloads):
        try:
            records.append(pb.TapRecord.FromString(payload))
        except DecodeError:
            bad.append(i)
    return records, bad
