"""The asyncio gRPC layer: limits, the compute thread, and status codes. Nothing else lives here.

Streams do not pin threads: every RPC is a coroutine on one event loop, which only waits, and the
work of each request (parse, validate, the head's step, encode) runs on the compute executor. An
open stream that sends nothing costs a coroutine, not a worker, so no number of idle or slow
peers can starve the others or the health service.

Limits answer RESOURCE_EXHAUSTED at once, never a queue: `max_streams` open calls, of which one
party (identity) holds `max_streams_per_party` at most, and `max_inflight` requests waiting for
or on the compute thread. Every call is first tied to an identity with the holder role (see
`identity.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import NoReturn

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


class SplitLearningService:
    """Serves `SplitLearning` from raw bytes (each handler parses its own request).

    Args:
        handlers: what each RPC does.
        authenticator: who is calling.
        executor: where the handlers run (the compute thread).
        max_streams: open SplitLearning calls at most (health and tap calls do not count).
        max_streams_per_party: open calls of one party (identity) at most (None: `max_streams`).
        max_inflight: requests waiting for or running on the executor at most.
    """

    def __init__(
        self,
        handlers: SplitLearningHandlers,
        *,
        authenticator: Authenticator,
        executor: Executor,
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
            "Train": stream(self._stream_rpc(h.train)),
            "Evaluate": stream(self._stream_rpc(h.evaluate)),
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

    def _stream_rpc(self, work: Work) -> Callable[[AsyncIterator[bytes], Context], object]:
        async def rpc(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
            async with self._call(context) as caller:
                async for raw in requests:
                    yield await self._run(work, raw, caller, context)

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

    async def _run(self, work: Work, raw: bytes, caller: Identity, context: Context) -> bytes:
        """Runs one request on the executor; a refusal ends the call with its status."""
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        if self.inflight >= self._max_inflight:
            await _abort(context, Busy(f"the server has {self._max_inflight} requests in "
                                       "flight (--max-inflight); try again later"))  # fmt: skip
        self.inflight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, work, raw, caller)
        except NotYet:
            raise  # a Sync waits for its group (see `_sync_rpc`)
        except Exception as error:
            await _abort(context, error)
        finally:
            self.inflight -= 1


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
