"""A TCP proxy on loopback that cuts every connection at random moments and/or records bytes."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from types import TracebackType


class CuttingProxy:
    """Forwards 127.0.0.1:`port` to `upstream`; every 0.3-1.2 s (seeded) it cuts all connections.

    Args:
        upstream: "host:port" of the real server.
        seed: seeds the moments of the cuts.
        every: (shortest, longest) seconds between cuts; None never cuts.

    `recorded` holds every byte that went through, both ways (a passive observer's view).
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        every: tuple[float, float] | None = (0.3, 1.2),
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._random = random.Random(seed)
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.cuts = 0
        self.recorded = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()
        if every is not None:
            threading.Thread(target=self._cut, args=(every,), daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                downstream, _ = self._listener.accept()
                upstream = socket.create_connection(self._upstream)
            except OSError:
                continue
            with self._lock:
                self._open += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                with self._lock:
                    self.recorded += data
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            end.close()

    def _cut(self, every: tuple[float, float]) -> None:
        while not self._stop.wait(self._random.uniform(*every)):
            with self._lock:
                ends, self._open = self._open, []
            for end in ends:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            if ends:
                self.cuts += 1

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
