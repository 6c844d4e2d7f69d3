"""Shared fixtures: a real gRPC server on port 0, and a session settings factory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from splitnn.client.transport import SessionSettings
from splitnn.proto import splitnn_pb2 as pb
from splitnn.server.app import RunningServer, build_server
from splitnn.server.config import ServerConfig


@pytest.fixture
def tap_records() -> list[pb.TapRecord]:
    """Collects what a collusion-mode server publishes."""
    return []


@pytest.fixture
def running_server(tmp_path: Path, tap_records: list[pb.TapRecord]) -> Iterator[RunningServer]:
    """A real server bound to a free port on loopback, its models under tmp_path."""
    cfg = ServerConfig(host="127.0.0.1", port=0, model_dir=tmp_path / "server-models", grace=1.0)
    running = build_server(cfg, tap=tap_records.append)
    yield running
    running.shutdown(grace=0.0)


@pytest.fixture
def address(running_server: RunningServer) -> str:
    return f"127.0.0.1:{running_server.port}"


def settings(run: str = "test-run", *, seed: int = 1, max_batch_size: int = 64) -> SessionSettings:
    return SessionSettings(
        run=run, num_classes=10, lr=1e-3, seed=seed, max_batch_size=max_batch_size
    )
