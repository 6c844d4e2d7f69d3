"""Builds and runs the gRPC server: the event loop, health, expiry, signals and the final save.

The server is a `grpc.aio` server on an event loop of its own thread, with one compute thread
for the head (see `servicer.py` for why streams then pin nothing). `build_server` returns once it
is bound and SERVING; `serve` is the CLI's blocking form with signal handling.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitnn.common import exits
from splitnn.common.models import CUT_SHAPE
from splitnn.common.rpc_options import grpc_options, message_limit
from splitnn.server import security
from splitnn.server.config import ServerConfig
from splitnn.server.groups import Groups
from splitnn.server.handlers import SplitLearningHandlers, TapSink
from splitnn.server.head import HeadFactory
from splitnn.server.servicer import (
    SERVICE_NAME,
    TAP_SERVICE_NAME,
    ComputeExecutor,
    SplitLearningService,
)
from splitnn.server.sessions import SessionRegistry

if TYPE_CHECKING:
    from splitnn.server.tap import TapHub

logger = logging.getLogger(__name__)

# health.py re-exports the asyncio servicer without declaring it.
AsyncHealthServicer = health.aio.HealthServicer  # type: ignore[attr-defined]
# SIGTERM ends the process within --grace plus this, whatever is in flight.
SHUTDOWN_MARGIN_S = 5.0


class RunningServer:
    """A started server on its own event-loop thread. `port` is the bound port (port 0 works).

    Use `shutdown(grace)` (blocking) or `begin_shutdown(grace)` then `wait()`.
    """

    def __init__(self, cfg: ServerConfig, *, tap: TapSink | None) -> None:
        security.check(cfg)
        self.cfg = cfg
        self.port = 0
        self._credentials = security.credentials(cfg)
        self.authenticator = security.authenticator(cfg)
        limit = message_limit(
            max_batch_size=cfg.max_batch_size, cut_shape=CUT_SHAPE, weights=bool(cfg.groups)
        )
        self._options = [*grpc_options(max_message_bytes=limit), ("grpc.so_reuseport", 0)]
        authenticated = not self.authenticator.anonymous
        head_policy = _head_policy(cfg)
        self.sessions = SessionRegistry(
            model_dir=cfg.model_dir,
            max_batch_size=cfg.max_batch_size,
            max_sessions=cfg.max_sessions,
            max_sessions_per_owner=cfg.sessions_per_party(authenticated=authenticated),
            keep_checkpoints=cfg.keep_checkpoints,
            head_policy=head_policy,
        )
        self.hub: TapHub | None = None
        if cfg.tap_log is not None or cfg.tap:
            from splitnn.server.tap import TapHub  # collusion mode only

            logger.warning(
                "COLLUSION MODE: every received batch is shared (log: %s, live tap: %s)",
                cfg.tap_log or "none",
                "on" if cfg.tap else "off",
            )
            self.hub = TapHub(log_path=cfg.tap_log)
            tap = self.hub.publish if tap is None else tap
        self.executor = ComputeExecutor()
        handlers = SplitLearningHandlers(
            self.sessions,
            default_seed=cfg.seed,
            max_message_bytes=limit,
            tap=tap,
            groups=Groups(cfg.groups, root=cfg.model_dir / "groups"),
        )
        _announce_groups(cfg, authenticated=authenticated)
        self.service = SplitLearningService(
            handlers,
            authenticator=self.authenticator,
            executor=self.executor,
            max_streams=cfg.max_streams,
            max_streams_per_party=cfg.streams_per_party(authenticated=authenticated),
            max_inflight=cfg.max_inflight,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace = cfg.grace
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="splitnn-server", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def begin_shutdown(self, grace: float) -> None:
        """Asks the server to stop (see `_shut_down`); returns at once. Idempotent."""
        self._grace = grace
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the server has stopped; False if `timeout` passed first."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def shutdown(self, grace: float) -> None:
        """Stops accepting calls, lets in-flight ones finish for `grace` s, saves every session."""
        self.begin_shutdown(grace)
        self.wait()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to the starting thread
            self._error = error
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = grpc.aio.server(options=self._options)
        server.add_generic_rpc_handlers((self.service.generic_handler(),))
        health_servicer = AsyncHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        # Operators list and call the services with the usual gRPC tools (grpcurl, grpc_cli).
        reflection.enable_server_reflection(reflected_services(tap=self.cfg.tap), server)
        if self.hub is not None and self.cfg.tap:
            from splitnn.server.tap import tap_handler  # collusion mode only

            server.add_generic_rpc_handlers((tap_handler(self.hub, self.authenticator),))
        address = f"{self.cfg.host}:{self.cfg.port}"
        try:
            if self._credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, self._credentials)
        except RuntimeError:  # grpcio raises where older releases returned 0
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        watchers = [asyncio.create_task(self._expire_idle_sessions())]
        if self.cfg.stop_after_runs is not None:
            watchers.append(asyncio.create_task(self._stop_after_runs(self.cfg.stop_after_runs)))
        self._started.set()
        await self._stop.wait()
        for watcher in watchers:
            watcher.cancel()
        await self._shut_down(server, health_servicer)

    async def _shut_down(self, server: grpc.aio.Server, health_servicer: Any) -> None:
        """NOT_SERVING, finish in-flight requests (up to grace), stop, save every session.

        The saves run on the compute thread after every step already queued there, so each
        session is saved with all the steps it has answered.
        """
        await health_servicer.enter_graceful_shutdown()
        if self.hub is not None:
            self.hub.close()  # ends live tap streams, which would otherwise outlive the grace
        await self.service.drain(self._grace)
        await server.stop(0)  # what is left is idle streams: nothing to wait for
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.sessions.save_all)
        await loop.run_in_executor(self.executor, self.service.handlers.groups.save_all)
        self.executor.shutdown(wait=False)
        # Let the cancelled calls unwind before the loop closes.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def _stop_after_runs(self, runs: int) -> None:
        sessions = self.sessions
        while sessions.finished_runs < runs or len(sessions) > 0:
            await asyncio.sleep(0.2)
        logger.info(
            "%d runs trained and finished and no session is live: stopping", sessions.finished_runs
        )
        assert self._stop is not None
        self._stop.set()

    async def _expire_idle_sessions(self) -> None:
        ttl = self.cfg.session_ttl
        interval = min(max(ttl / 4, 0.25), 30.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            await loop.run_in_executor(self.executor, self.service.handlers.expire, ttl)


def _head_policy(cfg: ServerConfig) -> str | HeadFactory:
    """The honest head, or (announced loudly) a hijacking one, pre-trained before serving."""
    if cfg.hijack is None:
        return "honest"
    if cfg.groups:
        raise ValueError("--hijack serves lone runs only: it cannot be combined with --group")
    from splitnn.server import hijack  # malicious mode only

    if cfg.hijack != "fsha":
        raise ValueError(f"--hijack {cfg.hijack!r}: one of fsha")
    settings = hijack.HijackSettings(
        model_dir=cfg.model_dir,
        dataset=cfg.hijack_data or "mnist5k",
        data_dir=cfg.data_dir,
        pretrain_steps=cfg.hijack_pretrain_steps,
        snapshot_every=cfg.hijack_snapshot_every,
        seed=cfg.seed,
    )
    logger.warning(
        "MALICIOUS SERVER (FSHA): every holder's part 1 is steered into a feature space this "
        "server inverts; the gradients returned are not the task's (public data: %s, decoder "
        "snapshots under %s)",
        settings.dataset,
        cfg.model_dir / "hijack",
    )
    hijack.prepare(settings)  # pilot and decoder are ready before the first holder step
    return functools.partial(hijack.HijackHead, settings=settings)


def _announce_groups(cfg: ServerConfig, *, authenticated: bool) -> None:
    """Logs each declared group; warns of one that names no members on a server with parties."""
    for group in cfg.groups:
        members = ", ".join(group.members) or "first come, first bound"
        logger.info(
            "training group %s: %s, %d holders (%s)",
            group.name,
            group.topology,
            group.size,
            members,
        )
        if authenticated and not group.members:
            logger.warning(
                "group %s names no members: any party with a valid certificate or token can "
                "take its free indices; name them: --group %s=%s:%d@ID0,ID1,...",
                group.name,
                group.name,
                group.topology.name,
                group.size,
            )


def reflected_services(*, tap: bool) -> tuple[str, ...]:
    """The full names of the services a server offers, as server reflection lists them."""
    names = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if tap:
        names.append(TAP_SERVICE_NAME)
    return tuple(names)


def build_server(cfg: ServerConfig, *, tap: TapSink | None = None) -> RunningServer:
    """Creates, binds and starts the server; returns once it reports SERVING.

    Raises:
        OSError: the address cannot be bound.
        SecurityError: TLS settings that do not fit together or cannot be read, a tokens file
            that cannot be used, or plaintext beyond loopback without `insecure`.
    """
    torch.set_num_threads(cfg.threads)
    return RunningServer(cfg, tap=tap)


def serve(
    cfg: ServerConfig,
    *,
    tap: TapSink | None = None,
    on_bound: Callable[[str, int], None] | None = None,
) -> None:
    """Runs until SIGTERM/SIGINT, then shuts down gracefully (see `RunningServer.shutdown`).

    Whatever is in flight, the process ends within `cfg.grace` + 5 s of the signal.
    """
    running = build_server(cfg, tap=tap)
    if on_bound is not None:
        on_bound(cfg.host, running.port)

    watchdogs: list[threading.Timer] = []

    def handle(signum: int, _frame: FrameType | None) -> None:
        if watchdogs:
            return
        logger.info("%s received: finishing in-flight steps", signal.Signals(signum).name)
        running.begin_shutdown(cfg.grace)
        watchdog = threading.Timer(cfg.grace + SHUTDOWN_MARGIN_S - 0.5, _give_up, (cfg.grace,))
        watchdog.daemon = True
        watchdog.start()
        watchdogs.append(watchdog)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    running.wait()
    logger.info("server stopped")


def _give_up(grace: float) -> None:
    logger.error("shutdown did not finish within %.1f s: exiting now", grace + SHUTDOWN_MARGIN_S)
    logging.shutdown()
    os._exit(exits.FAILED)
