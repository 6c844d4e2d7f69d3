"""Collusion mode: every accepted batch goes to a wire log and/or to live tap subscribers.

Off by default. A server in this mode is the threat model's honest-but-curious party that shares
what it receives with an attacker; it never alters what it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from splitnn.common.certs import TAP
from splitnn.common.models import CUT_SHAPE
from splitnn.common.wirelog import WireLogWriter
from splitnn.proto import splitnn_pb2 as pb
from splitnn.server.errors import InvalidRequest
from splitnn.server.handlers import parse
from splitnn.server.identity import Authenticator
from splitnn.server.servicer import TAP_SERVICE_NAME, identify

logger = logging.getLogger(__name__)

_CLOSED = None


class TapHub:
    """Fans each received batch out to the wire log and to every live subscriber.

    `publish` is called on the compute thread; subscribers are coroutines on the server's event
    loop. Each subscriber gets a bounded queue; if one falls that far behind, its oldest records
    are dropped (and counted) rather than stalling training.

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
        self._subscribers: list[tuple[str, asyncio.Queue[pb.TapRecord | None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, record: pb.TapRecord) -> None:
        """Logs `record` and hands it to the subscribers (from any thread)."""
        if self._writer is not None:
            self._writer.write(record)
        with self._lock:
            loop, wanted = self._loop, bool(self._subscribers)
        if loop is not None and wanted:
            loop.call_soon_threadsafe(self._deliver, record)

    def _deliver(self, record: pb.TapRecord | None) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for run, inbox in subscribers:
            if record is not _CLOSED and run and run != record.step.run:
                continue
            while True:
                try:
                    inbox.put_nowait(record)
                    break
                except asyncio.QueueFull:
                    with contextlib.suppress(asyncio.QueueEmpty):
                        inbox.get_nowait()
                        self.dropped += 1

    async def subscribe(self, run: str) -> AsyncIterator[pb.TapRecord]:
        """Yields records of `run` (all runs if empty) from now on, until the hub closes."""
        inbox: asyncio.Queue[pb.TapRecord | None] = asyncio.Queue(self._queue_size)
        entry = (run, inbox)
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._subscribers.append(entry)
        try:
            while (record := await inbox.get()) is not _CLOSED:
                yield record
        finally:
            with self._lock:
                self._subscribers.remove(entry)

    def close(self) -> None:
        """Ends every subscription and closes the log."""
        with self._lock:
            loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, _CLOSED)
        if self._writer is not None:
            self._writer.close()
        if self.dropped:
            logger.warning("tap: %d records dropped for slow subscribers", self.dropped)


def tap_handler(hub: TapHub, authenticator: Authenticator) -> grpc.GenericRpcHandler[bytes, bytes]:
    """The Tap service on raw bytes, for the tap role only; registered only with --tap."""

    async def subscribe(
        raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        caller = await identify(authenticator, context, role=TAP)
        try:
            request = parse(pb.TapRequest, raw)
        except InvalidRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise AssertionError("unreachable") from None  # context.abort raises
        logger.warning("tap subscriber %r attached (run=%s)", caller.name, request.run or "*")
        async for record in hub.subscribe(request.run):
            yield record.SerializeToString()

    methods = {"Subscribe": grpc.unary_stream_rpc_method_handler(subscribe)}
    return grpc.method_handlers_generic_handler(TAP_SERVICE_NAME, methods)
