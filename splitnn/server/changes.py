"""Wakes coroutines on the event loop when a group changes on the compute thread."""

from __future__ import annotations

import asyncio
import threading


class Changes:
    """Lets coroutines on the event loop wait for a change a group makes on the compute thread.

    Take a future with `future()` before checking the group, then await it: a change in
    between has already resolved it, so no change is missed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def future(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiting.append((loop, future))
        return future

    def notify(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for loop, future in waiting:
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
