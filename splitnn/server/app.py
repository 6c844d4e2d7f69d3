"""Builds and runs the gRPC server: servicer, health service, signals, final checkpoint."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from splitnn.common.models import CUT_SHAPE
from splitnn.common.rpc_options import grpc_options, message_limit
from splitnn.proto import splitnn_pb2_grpc as pb_grpc
from splitnn.server.config import ServerConfig
from splitnn.server.servicer import SplitLearningServicer, TapSink
from splitnn.server.sessions import SessionRegistry

if TYPE_CHECKING:
    from splitnn.server.tap import TapHub

logger = logging.getLogger(__name__)

SERVICE_NAME = "splitnn.v1.SplitLearning"


@dataclass
class RunningServer:
    """A started server and what it serves. `port` is the bound port (useful with port 0)."""

    server: grpc.Server
    port: int
    sessions: SessionRegistry
    health: health.HealthServicer
    hub: TapHub | None = None

    def shutdown(self, grace: float) -> None:
        """Stops accepting calls, lets in-flight steps finish, then saves every session."""
        self.health.enter_graceful_shutdown()
        if self.hub is not None:
            self.hub.close()  # ends live tap streams, which would otherwise outlive the grace
        self.server.stop(grace).wait()
        self.sessions.save_all()


def build_server(cfg: ServerConfig, *, tap: TapSink | None = None) -> RunningServer:
    """Creates, binds and starts the server; it reports SERVING once the head can be built."""
    torch.set_num_threads(cfg.threads)
    limit = message_limit(max_batch_size=cfg.max_batch_size, cut_shape=CUT_SHAPE)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="splitnn-rpc"),
        # No SO_REUSEPORT: a second server on a busy port must fail, not share its connections.
        options=[*grpc_options(max_message_bytes=limit), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=cfg.workers * 4,
    )
    sessions = SessionRegistry(model_dir=cfg.model_dir, max_batch_size=cfg.max_batch_size)
    hub = None
    if cfg.tap_log is not None or cfg.tap:
        logger.warning(
            "COLLUSION MODE: every received batch is shared (log: %s, live tap: %s)",
            cfg.tap_log or "none",
            "on" if cfg.tap else "off",
        )
        from splitnn.server.tap import TapHub, TapServicer  # collusion mode only

        hub = TapHub(log_path=cfg.tap_log)
        tap = hub.publish if tap is None else tap
        if cfg.tap:
            pb_grpc.add_TapServicer_to_server(TapServicer(hub), server)
    pb_grpc.add_SplitLearningServicer_to_server(
        SplitLearningServicer(sessions, default_seed=cfg.seed, max_message_bytes=limit, tap=tap),
        server,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    except RuntimeError:  # grpcio raises where older releases returned 0
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {cfg.host}:{cfg.port}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server=server, port=port, sessions=sessions, health=health_servicer, hub=hub
    )


def serve(
    cfg: ServerConfig,
    *,
    tap: TapSink | None = None,
    on_bound: Callable[[str, int], None] | None = None,
) -> None:
    """Runs until SIGTERM/SIGINT, then shuts down gracefully (see `RunningServer.shutdown`)."""
    running = build_server(cfg, tap=tap)
    if on_bound is not None:
        on_bound(cfg.host, running.port)
    stopper: list[threading.Thread] = []

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stopper:
            return
        logger.info("%s received: finishing in-flight steps", signal.Signals(signum).name)
        # Shut down from a thread: the handler interrupts the main thread, which is blocked in
        # wait_for_termination and must stay there until the server has stopped.
        stopper.append(threading.Thread(target=running.shutdown, args=(cfg.grace,)))
        stopper[0].start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    running.server.wait_for_termination()
    for thread in stopper:
        thread.join()
    logger.info("server stopped")
