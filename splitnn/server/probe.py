"""Health probe for containers: ``python -m splitnn.server.probe HOST:PORT`` exits 0 if SERVING.

With TLS, give the CA (``--tls-ca``); a server that requires client certificates also needs one
(the server's own certificate serves: its role may call health and nothing else).
"""

from __future__ import annotations

import sys

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitnn.common.credentials import CredentialError, Credentials, open_channel
from splitnn.options import credential_options


def probe(address: str, *, timeout: float = 3.0, credentials: Credentials | None = None) -> bool:
    """True when the server at `address` reports SERVING for the split-learning service."""
    with open_channel(address, credentials or Credentials()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service="splitnn.v1.SplitLearning"), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@click.command()
@click.argument("address", default="127.0.0.1:50051")
@click.option("--timeout", type=click.FloatRange(0.1), default=3.0, show_default=True)
@credential_options
def main(
    address: str,
    timeout: float,
    credentials: Credentials,
) -> None:
    """Exit 0 if the splitnn-server at ADDRESS reports SERVING, else 1."""
    try:
        serving = probe(address, timeout=timeout, credentials=credentials)
    except CredentialError as error:
        click.echo(f"probe: {error}", err=True)
        sys.exit(1)
    sys.exit(0 if serving else 1)


if __name__ == "__main__":
    main()
