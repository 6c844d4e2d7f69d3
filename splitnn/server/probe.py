"""Health probe for containers: ``python -m splitnn.server.probe HOST:PORT`` exits 0 if SERVING."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(address: str, *, timeout: float = 3.0) -> bool:
    """True when the server at `address` reports SERVING for the split-learning service."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service="splitnn.v1.SplitLearning"), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    sys.exit(0 if probe(address) else 1)


if __name__ == "__main__":
    main()
