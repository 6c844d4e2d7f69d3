"""Shared fixtures and helpers: a real gRPC server on port 0, session settings, raw calls."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from splitnn.client.transport import GroupSettings, ServerLink, ServerRefused, SessionSettings
from splitnn.common import exits
from splitnn.common.credentials import Credentials
from splitnn.common.devices import cpu_threads
from splitnn.common.models import CUT_SHAPE
from splitnn.proto import splitnn_pb2 as pb
from splitnn.server.app import RunningServer, build_server
from splitnn.server.config import ServerConfig
from splitnn.sim import cli as sim_cli
from splitnn.sim.app import SimConfig

# The test workers share the machine's cores: each worker, and every program a test starts
# (whose default is every core: `splitnn.common.devices.cpu_threads`), computes on its share.
# Two workers that each spin every core's thread on a 2-core machine run the suite a fifth slower.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    torch.set_num_threads(cpu_threads())


@pytest.fixture
def fake_validators(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Stands in for the `splitnn-attack validator` processes that an experiment group starts
    before its runs (`runner.prepare_validators`): records their arguments, trains nothing."""
    from splitnn.experiments import runner

    calls: list[list[str]] = []

    def fake(name: str, args: list[str], **_: Any) -> None:
        assert name == "splitnn-attack"
        calls.append(args)

    monkeypatch.setattr(runner, "run_checked", fake)
    return calls


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


SERVICE = "/splitnn.v1.SplitLearning/"
STREAMED = ("Train", "Evaluate")


def send_raw(channel: grpc.Channel, method: str, payload: bytes, *, timeout: float = 30) -> None:
    """Sends `payload` as the request bytes of SplitLearning `method`, unchecked by any stub."""
    path = SERVICE + method
    if method in STREAMED:
        call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
        list(call(iter([payload]), timeout=timeout))
    else:
        unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        unary(payload, timeout=timeout)


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and detail with which the server refused `call` (a raw gRPC call or a
    `ServerLink` method); fails the test if the call was accepted."""
    try:
        call()
    except ServerRefused as error:
        return error.code, str(error)
    except grpc.RpcError as error:
        return error.code(), str(error.details())
    pytest.fail("the server accepted the call")


def idle_train_streams(channel: grpc.Channel, count: int) -> tuple[list[Any], threading.Event]:
    """Opens `count` Train streams that send nothing until the returned event is set."""
    release = threading.Event()

    def nothing() -> Iterator[bytes]:
        release.wait()
        yield from ()

    train = channel.stream_stream(
        SERVICE + "Train", request_serializer=None, response_deserializer=None
    )
    return [train(nothing(), timeout=300) for _ in range(count)], release


def start_server(model_dir: Path, **changes: Any) -> RunningServer:
    """A real server on a free loopback port, the CLI's defaults but for `changes`."""
    settings = {"port": 0, "model_dir": model_dir, "grace": 0.5, **changes}
    return build_server(ServerConfig(**settings))


def address_of(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


def seeded_batch(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A cut tensor float32 [size, 500] in [-1, 1] and its labels int64 [size], from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    activations = torch.rand(size, *CUT_SHAPE, generator=generator) * 2 - 1
    return activations, torch.randint(0, 10, (size,), generator=generator)


# The installed programs, and an environment without the caller's SPLITNN_* settings.
BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SPLITNN")}


def run_program(
    name: str, *args: str, cwd: Path, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Runs the installed program `name` to completion in `cwd`; its output captured as text."""
    return subprocess.run(
        [str(BIN / name), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


GROUP_WAIT_S = 10.0  # bounds every wait of a group member: a broken server fails, never hangs


def group_link(
    server: RunningServer,
    holder: int,
    *,
    run: str,
    group: str,
    credentials: Credentials | None = None,
    max_batch_size: int = 8,
) -> ServerLink:
    """A link that joins `group` as index `holder` for one epoch of 2 batches of 8 samples."""
    spec = dataclasses.replace(
        settings(run, max_batch_size=max_batch_size),
        group=GroupSettings(name=group, holder=holder, batches_per_epoch=2, samples=16, epochs=1),
    )
    return ServerLink(
        address_of(server),
        spec,
        connect_timeout=GROUP_WAIT_S,
        step_timeout=GROUP_WAIT_S,
        reconnect_timeout=1.0,
        credentials=credentials,
        group_timeout=GROUP_WAIT_S,
    )


@pytest.fixture
def sim_settings(monkeypatch: pytest.MonkeyPatch) -> list[SimConfig]:
    """The settings each `splitnn-sim` run would have been started with (nothing starts)."""
    seen: list[SimConfig] = []

    def run(cfg: SimConfig) -> None:
        seen.append(cfg)
        raise exits.Failed("stopped before starting anything")

    monkeypatch.setattr(sim_cli, "run", run)
    return seen
