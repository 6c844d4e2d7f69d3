"""The asyncio gRPC layer: limits, the compute thread, and status codes. Nothing else lives here.

Streams do not pin threads: every RPC is a coroutine on one event loop, and the work of each
request (parse, validate, the head's step, encode) runs on the compute executor, one request at a
time. An open stream that sends nothing costs a coroutine, not a worker, so no number of idle or
slow peers can starve the others or the health service.

Training and evaluation steps run on the event loop's own thread instead, once the executor is
idle: handing each step to the executor thread and its answer back cost more server CPU than the
head's own step (two thread wake-ups and the interpreter lock passed to and fro; measured by
`bench/capacity.py`). It is still one request at a time: only the event loop submits work to the
executor, so while the loop computes, the executor stays idle; a step that arrives while the
executor has work (a save, an expiry, a session being opened) waits behind it, in order, and
counts as in flight meanwhile.

Limits answer RESOURCE_EXHAUSTED at once, never a queue: `max_streams` open calls, of which one
party (identity) holds `max_streams_per_party` at most, and `max_inflight` requests waiting for
or on the compute thread. Every call is first tied to an identity with the holder role (see
`identity.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NoReturn, ParamSpec, TypeVar

import grpc

from splitnn.common.certs import HOLDER
from splitnn.server.errors import Busy, NotYet, ServerError, status_of
from splitnn.server.handlers import SplitLearningHandlers
from splitnn.server.identity import Authenticator, Identity

logger = logging.getLogger(__name__)

SERVICE_NAME = "splitnn.v1.SplitLearning"
TAP_SERVICE_NAME = "splitnn.v1.Tap"
Work = Callable[[bytes, Identity], bytes]
Context = grpc.aio.ServicerContext[bytes, bytes]
# A waiting Sync looks at its group again at least this often (changes wake it sooner).
_SYNC_RECHECK_S = 5.0

P = ParamSpec("P")
R = TypeVar("R")


class ComputeExecutor(ThreadPoolExecutor):
    """The compute thread: a one-worker pool that knows whether it has work (`idle`)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="splitnn-compute")
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished

    @property
    def idle(self) -> bool:
        """No work queued or running."""
        with self._lock:
            return self._pending == 0

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        with self._lock:
            self._pending += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done()
            raise
        # Also when it is cancelled before it ran (a call cancelled while its work was queued).
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1


class SplitLearningService:
    """Serves `SplitLearning` from raw bytes (each handler parses its own request).

    Args:
        handlers: what each RPC does.
        authenticator: who is calling.
        executor: where the handlers run (the compute thread); a Train or Evaluate request that
            finds it idle runs on the event loop's thread instead (see the module docstring).
        max_streams: open SplitLearning calls at most (health and tap calls do not count).
        max_streams_per_party: open calls of one party (identity) at most (None: `max_streams`).
        max_inflight: requests waiting for or running on the executor at most.
    """

    def __init__(
        self,
        handlers: SplitLearningHandlers,
        *,
        authenticator: Authenticator,
        executor: ComputeExecutor,
        max_streams: int,
        max_inflight: int,
        max_streams_per_party: int | None = None,
    ) -> None:
        self.handlers = handlers
        self._authenticator = authenticator
        self._executor = executor
        self._max_streams = max_streams
        self._max_party_streams = max_streams_per_party or max_streams
        self._party_calls: dict[str, int] = {}  # an identity's folder -> its open calls
        self._max_inflight = max_inflight
        self.open_calls = 0
        self.inflight = 0
        self._draining = False

    async def drain(self, grace: float) -> None:
        """Refuses new requests (UNAVAILABLE: the data holder retries elsewhere or later) and
        waits up to `grace` seconds for the ones in flight. Open but idle streams do not wait."""
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.inflight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def generic_handler(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        """The method handlers, with no (de)serialisers: requests arrive as bytes."""
        h = self.handlers
        unary = grpc.unary_unary_rpc_method_handler
        stream = grpc.stream_stream_rpc_method_handler
        methods = {
            "OpenSession": unary(self._unary_rpc(h.open_session)),
            "Train": stream(self._stream_rpc(h.train, inline=True)),
            "Evaluate": stream(self._stream_rpc(h.evaluate, inline=True)),
            "Checkpoint": unary(self._unary_rpc(h.checkpoint)),
            "Restore": unary(self._unary_rpc(h.restore)),
            "CloseSession": unary(self._unary_rpc(h.close_session)),
            "Sync": unary(self._sync_rpc),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)

    def _unary_rpc(self, work: Work) -> Callable[[bytes, Context], object]:
        async def rpc(raw: bytes, context: Context) -> bytes:
            async with self._call(context) as caller:
                return await self._run(work, raw, caller, context)

        return rpc

    async def _sync_rpc(self, raw: bytes, context: Context) -> bytes:
        """A group member's Sync: asked again after every change of the groups until the group
        lets it through. Waiting holds no thread and no in-flight slot."""
        async with self._call(context) as caller:
            changes = self.handlers.groups.changes
            while True:
                changed = changes.future()
                try:
                    return await self._run(self.handlers.sync, raw, caller, context)
                except NotYet:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(changed, timeout=_SYNC_RECHECK_S)

    def _stream_rpc(
        self, work: Work, *, inline: bool = False
    ) -> Callable[[AsyncIterator[bytes], Context], object]:
        async def rpc(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
            async with self._call(context) as caller:
                async for raw in requests:
                    yield await self._run(work, raw, caller, context, inline=inline)

        return rpc

    @contextlib.asynccontextmanager
    async def _call(self, context: Context) -> AsyncIterator[Identity]:
        """Holds one of the server's open calls and one of its caller's while the call runs;
        yields the caller, a party with the holder role."""
        if self.open_calls >= self._max_streams:
            await _abort(context, Busy(f"the server has {self._max_streams} open calls "
                                       "(--max-streams); try again later"))  # fmt: skip
        self.open_calls += 1
        try:
            caller = await identify(self._authenticator, context, role=HOLDER)
            party = caller.folder
            held = self._party_calls.get(party, 0)
            if held >= self._max_party_streams:
                await _abort(context, Busy(f"this party has {held} open calls "
                                           "(--max-streams-per-party); close one"))  # fmt: skip
            self._party_calls[party] = held + 1
            try:
                yield caller
            finally:
                left = self._party_calls.pop(party) - 1
                if left:
                    self._party_calls[party] = left
        finally:
            self.open_calls -= 1

    async def _run(
        self, work: Work, raw: bytes, caller: Identity, context: Context, *, inline: bool = False
    ) -> bytes:
        """Runs one request on the executor (`inline`: on this thread if the executor is idle);
        a refusal ends the call with its status."""
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        if self.inflight >= self._max_inflight:
            await _abort(context, Busy(f"the server has {self._max_inflight} requests in "
                                       "flight (--max-inflight); try again later"))  # fmt: skip
        self.inflight += 1
        try:
            loop = asyncio.get_running_loop()
            if inline:
                # After what the executor holds, in order; then here, while it stays idle.
                while not self._executor.idle:
                    await loop.run_in_executor(self._executor, _nothing)
                return work(raw, caller)
            return await loop.run_in_executor(self._executor, work, raw, caller)
        except NotYet:
            raise  # a Sync waits for its group (see `_sync_rpc`)
        except Exception as error:
            await _abort(context, error)
        finally:
            self.inflight -= 1


def _nothing() -> None:
    """A place in the executor's queue: done once everything before it is."""


async def identify(authenticator: Authenticator, context: Context, *, role: str) -> Identity:
    """The caller's identity, which must hold `role`; otherwise the call ends with its status."""
    try:
        caller = authenticator.identify(context.auth_context(), context.invocation_metadata())
        caller.require(role)
    except ServerError as error:
        await _abort(context, error)
    return caller


async def _abort(context: Context, error: Exception) -> NoReturn:
    code, detail = status_of(error)
    if code == grpc.StatusCode.INTERNAL:
        logger.error("internal error while serving a request", exc_info=error)
    else:
        logger.info("refused a request: %s: %s", code.name, error)
    await context.abort(code, detail)
    raise AssertionError("unreachable")  # context.abort raises
