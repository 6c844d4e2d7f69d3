"""Server reflection: operators list and describe the services with standard gRPC tools."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.conftest import start_server


def test_reflection_lists_and_describes_the_services(tmp_path: Path) -> None:
    running = start_server(tmp_path / "models")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            described = database.FindFileContainingSymbol("splitnn.v1.SplitLearning")
    finally:
        running.shutdown(grace=0.0)
    assert {
        "splitnn.v1.SplitLearning",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert "splitnn.v1.Tap" not in services  # offered only in collusion mode with the live tap
    assert described.package == "splitnn.v1"
    methods = {m.name for s in described.service if s.name == "SplitLearning" for m in s.method}
    assert {"OpenSession", "Train", "Evaluate", "Sync"} <= methods


def test_reflection_lists_the_tap_in_collusion_mode(tmp_path: Path) -> None:
    running = start_server(tmp_path / "models", tap=True, anonymous_tap=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    finally:
        running.shutdown(grace=0.0)
    assert "splitnn.v1.Tap" in services
