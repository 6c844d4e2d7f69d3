"""The health probe (`python -m splitnn.server.probe`): SERVING from a real server is success;
a stopped server, nothing listening, or the split-learning service not SERVING is failure."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from splitnn.common.credentials import Credentials
from splitnn.server.app import RunningServer
from splitnn.server.probe import probe
from tests.conftest import address_of, start_server

SERVICE = "splitnn.v1.SplitLearning"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN
RUN_S = 120.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "models")
    yield running
    running.shutdown(grace=0.0)


@pytest.fixture
def stopped_address(tmp_path: Path) -> str:
    """The address of a server that has shut down: nothing answers there any more."""
    running = start_server(tmp_path / "gone")
    address = address_of(running)
    running.shutdown(grace=0.0)
    return address


def _health_server(statuses: dict[str, int]) -> tuple[grpc.Server, str]:
    """A bare gRPC server whose health service reports `statuses` (service name -> status)."""
    servicer = health.HealthServicer()
    for name, status in statuses.items():
        servicer.set(name, status)
    bare = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, bare)
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    return bare, f"127.0.0.1:{port}"


def _probe_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Runs the probe as its own process (as a container's health check does) in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "splitnn.server.probe", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_S,
        check=False,
    )


def test_a_running_server_is_serving(server: RunningServer) -> None:
    assert probe(address_of(server)) is True


def test_a_stopped_server_is_not(stopped_address: str) -> None:
    assert probe(stopped_address, timeout=1.0) is False


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({"": NOT_SERVING, SERVICE: SERVING}, True),
        ({"": SERVING}, False),  # the server as a whole, not the split-learning service
        ({"": SERVING, SERVICE: NOT_SERVING}, False),
        ({SERVICE: UNKNOWN}, False),
    ],
    ids=["serving", "other-service-only", "not-serving", "unknown"],
)
def test_only_the_split_learning_service_serving_counts(
    statuses: dict[str, int], expected: bool
) -> None:
    bare, address = _health_server(statuses)
    try:
        assert probe(address, timeout=5.0) is expected
    finally:
        bare.stop(grace=None)


@pytest.mark.slow  # starts the probe as its own process
def test_the_command_exits_0_for_a_serving_server_and_1_otherwise(
    server: RunningServer, stopped_address: str, tmp_path: Path
) -> None:
    serving = _probe_process(address_of(server), cwd=tmp_path)
    gone = _probe_process(stopped_address, "--timeout", "1", cwd=tmp_path)

    assert (serving.returncode, serving.stdout, serving.stderr) == (0, "", "")
    assert gone.returncode == 1


@pytest.mark.slow  # starts the probe as its own process
def test_an_unusable_token_file_is_a_one_line_failure(
    server: RunningServer, tmp_path: Path
) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")

    result = _probe_process(address_of(server), "--token-file", str(empty), cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip() == f"probe: {empty} holds no token"


@pytest.mark.slow  # starts the probe as its own process
def test_tls_options_that_do_not_fit_are_a_usage_error(
    server: RunningServer, tmp_path: Path
) -> None:
    result = _probe_process(
        address_of(server), "--tls-cert", __file__, "--tls-key", __file__, cwd=tmp_path
    )

    assert result.returncode == 2
    assert "--tls-ca" in result.stderr and "Traceback" not in result.stderr


def test_the_credentials_reach_the_channel(server: RunningServer, tmp_path: Path) -> None:
    # A plaintext server cannot complete a TLS handshake: probing it with TLS must fail.
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")

    assert probe(address_of(server), timeout=2.0, credentials=Credentials(ca=ca)) is False
    assert probe(address_of(server), timeout=2.0, credentials=Credentials()) is True
