"""Collusion mode: every accepted batch goes to a wire log and/or to live tap subscribers.

Off by default. A server in this mode is the threat model's honest-but-curious party that shares
what it receives with an attacker; it never alters what it serves.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from splitnn.common.models import CUT_SHAPE
from splitnn.common.wirelog import WireLogWriter
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_CLOSED = None


class TapHub:
    """Fans each received batch out to the wire log and to every live subscriber.

    Subscribers get a bounded queue; if one falls that far behind, its oldest records are dropped
    (and counted) rather than stalling training.

    Args:
        log_path: append records to this wire log (None: no log).
        queue_size: records buffered per live subscriber.
    """

    def __init__(self, *, log_path: Path | None, queue_size: int = 4096) -> None:
        self._writer = None
        if log_path is not None:
            header = {
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "writer": "splitnn-server (collusion mode)",
                "cut_shape": list(CUT_SHAPE),
            }
            self._writer = WireLogWriter(log_path, header=header)
        self._queue_size = queue_size
        self._subscribers: list[tuple[str, queue.Queue[pb.TapRecord | None]]] = []
        self._lock = threading.Lock()
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, record: pb.TapRecord) -> None:
        if self._writer is not None:
            self._writer.write(record)
        with self._lock:
            subscribers = list(self._subscribers)
        for run, inbox in subscribers:
            if run and run != record.step.run:
                continue
            while True:
                try:
                    inbox.put_nowait(record)
                    break
                except queue.Full:
                    try:
                        inbox.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def subscribe(self, run: str, *, active: Callable[[], bool]) -> Iterator[pb.TapRecord]:
        """Yields records of `run` (all runs if empty) from now on, while `active()` is true."""
        inbox: queue.Queue[pb.TapRecord | None] = queue.Queue(self._queue_size)
        entry = (run, inbox)
        with self._lock:
            self._subscribers.append(entry)
        logger.warning("tap subscriber attached (run=%s)", run or "*")
        try:
            while active():
                try:
                    record = inbox.get(timeout=0.5)
                except queue.Empty:
                    continue
                if record is _CLOSED:
                    return
                yield record
        finally:
            with self._lock:
                self._subscribers.remove(entry)

    def close(self) -> None:
        """Ends every subscription and closes the log."""
        with self._lock:
            subscribers = list(self._subscribers)
        for _, inbox in subscribers:
            with contextlib.suppress(queue.Full):
                inbox.put_nowait(_CLOSED)
        if self._writer is not None:
            self._writer.close()
        if self.dropped:
            logger.warning("tap: %d records dropped for slow subscribers", self.dropped)


class TapServicer(pb_grpc.TapServicer):
    """Serves the hub's records live; registered only in collusion mode with --tap."""

    def __init__(self, hub: TapHub) -> None:
        self._hub = hub

    def Subscribe(
        self, request: pb.TapRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TapRecord]:
        yield from self._hub.subscribe(request.run, active=context.is_active)
