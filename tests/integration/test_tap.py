"""Collusion mode: the live tap and the wire log carry exactly what the server received."""

from __future__ import annotations

import dataclasses
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from click.testing import CliRunner

from splitnn.client.transport import ServerLink
from splitnn.common import exits
from splitnn.common.certs import HOLDER, TAP
from splitnn.common.codec import StepId, tensor_from_proto
from splitnn.common.wirelog import WireLogError, read_wirelog
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc
from splitnn.server.app import RunningServer, build_server
from splitnn.server.cli import main as server_main
from splitnn.server.config import ServerConfig
from splitnn.server.errors import Forbidden
from splitnn.server.security import SecurityError
from tests.conftest import settings

SUBSCRIBER_DEADLINE_S = 60.0


@pytest.fixture
def colluding(tmp_path: Path) -> Iterator[RunningServer]:
    cfg = ServerConfig(
        port=0,
        model_dir=tmp_path / "models",
        tap=True,
        anonymous_tap=True,
        tap_log=tmp_path / "wire.log",
    )
    running = build_server(cfg)
    yield running
    running.shutdown(grace=1.0)


def _subscribe(address: str, into: list[pb.TapRecord], count: int) -> threading.Thread:
    def collect() -> None:
        with grpc.insecure_channel(address) as channel:
            stream = pb_grpc.TapStub(channel).Subscribe(pb.TapRequest(), timeout=60)
            for record in stream:
                into.append(record)
                if len(into) == count:
                    stream.cancel()
                    return

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    return thread


def _wait_for_a_subscriber(server: RunningServer) -> None:
    """Returns once the server counts a live tap subscriber; fails the test if none ever does.

    The deadline only bounds a broken run: a working one gets its subscriber in milliseconds.
    """
    assert server.hub is not None
    deadline = time.monotonic() + SUBSCRIBER_DEADLINE_S
    while server.hub.subscribers == 0:
        if time.monotonic() > deadline:
            pytest.fail(f"no tap subscriber registered within {SUBSCRIBER_DEADLINE_S:g} s")
        time.sleep(0.01)


def test_tap_and_log_deliver_exactly_the_received_tensors(
    colluding: RunningServer, tmp_path: Path
) -> None:
    # Prepare
    address = f"127.0.0.1:{colluding.port}"
    received: list[pb.TapRecord] = []
    subscriber = _subscribe(address, received, count=4)
    _wait_for_a_subscriber(colluding)
    generator = torch.Generator().manual_seed(3)
    sent = [torch.randn(8, 500, generator=generator).tanh() for _ in range(4)]
    labels = torch.arange(8) % 10
    # Execute
    with ServerLink(address, settings("tapped", max_batch_size=8)) as link:
        for batch in range(3):
            link.train_step(
                StepId("tapped", 1, batch), sent[batch], labels, torch.arange(8) + 8 * batch
            )
        link.evaluate(
            StepId("tapped", 0, 0), sent[3], split="attack", indices=torch.arange(8) + 100
        )
        # A retried step is answered from the cache and must not be logged twice.
        link.train_step(StepId("tapped", 1, 2), sent[2], labels, torch.arange(8) + 16)
    subscriber.join(timeout=30)
    assert not subscriber.is_alive(), f"the subscriber got {len(received)} of 4 records"
    colluding.shutdown(grace=1.0)
    log = read_wirelog(tmp_path / "wire.log")
    # Assert
    for records in (received, log.records):
        assert [(r.phase, r.split, r.step.batch) for r in records] == [
            ("train", "train", 0),
            ("train", "train", 1),
            ("train", "train", 2),
            ("eval", "attack", 0),
        ]
        for record, tensor in zip(records, sent, strict=True):
            assert torch.equal(tensor_from_proto(record.activations), tensor)
        assert torch.equal(tensor_from_proto(records[3].indices), torch.arange(8) + 100)
    assert log.problem is None


def test_attacker_live_interception_collects_the_deployment_split(colluding: RunningServer) -> None:
    # Prepare
    from splitnn.attacker.intercept import Intercepted, from_live

    address = f"127.0.0.1:{colluding.port}"
    result: list[Intercepted] = []
    thread = threading.Thread(
        target=lambda: result.append(from_live(address, split="attack", expected=16, timeout=60)),
        daemon=True,
    )
    thread.start()
    _wait_for_a_subscriber(colluding)
    deployed = torch.rand(16, 500) * 2 - 1
    # Execute
    with ServerLink(address, settings("victim", max_batch_size=8)) as link:
        link.train_step(StepId("victim", 1, 0), deployed[:8], torch.zeros(8, dtype=torch.long))
        for batch in range(2):
            rows = slice(8 * batch, 8 * batch + 8)
            link.evaluate(
                StepId("victim", 0, batch),
                deployed[rows],
                split="attack",
                indices=torch.arange(16)[rows] + 40,
            )
    thread.join(timeout=30)
    assert not thread.is_alive(), "the live interception never ended"
    # Assert: only the deployment split, all of it, in order, bit for bit
    assert len(result) == 1
    assert torch.equal(result[0].indices, torch.arange(16) + 40)
    assert torch.equal(result[0].activations, deployed)
    assert result[0].run == "victim"


def test_attacker_live_interception_gives_up_on_an_absent_server() -> None:
    from splitnn.attacker.intercept import TapUnreachable, from_live
    from splitnn.common import exits

    started = time.monotonic()
    with pytest.raises(TapUnreachable, match=r"no server answered at 127\.0\.0\.1:1") as raised:
        from_live("127.0.0.1:1", expected=1, connect_timeout=0.5)

    assert time.monotonic() - started < 10
    assert exits.exit_code(raised.value) == exits.UNREACHABLE


def test_anonymous_callers_tap_only_where_the_operator_grants_it(tmp_path: Path) -> None:
    plain = ServerConfig(port=0, model_dir=tmp_path / "models", tap=True)

    with pytest.raises(SecurityError, match="--anonymous-tap"):
        build_server(plain)
    for insecure in (False, True):
        granted = build_server(dataclasses.replace(plain, anonymous_tap=True, insecure=insecure))
        try:
            caller = granted.authenticator.identify({}, None)
        finally:
            granted.shutdown(grace=0.0)
        assert caller.anonymous and caller.roles == {HOLDER, TAP}


def test_anonymous_callers_of_a_log_only_server_train_but_do_not_tap(tmp_path: Path) -> None:
    running = build_server(
        ServerConfig(port=0, model_dir=tmp_path / "models", tap_log=tmp_path / "wire.log")
    )
    try:
        caller = running.authenticator.identify({}, None)
    finally:
        running.shutdown(grace=0.0)

    assert caller.roles == {HOLDER}
    with pytest.raises(Forbidden):
        caller.require(TAP)


def test_tap_log_through_a_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"someone else's file")
    target.chmod(0o644)
    link = tmp_path / "wire.log"
    link.symlink_to(target)

    with pytest.raises(WireLogError, match="symbolic link"):
        build_server(ServerConfig(port=0, model_dir=tmp_path / "models", tap_log=link))

    assert target.read_bytes() == b"someone else's file"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_tap_log_is_private_whether_new_or_already_there(tmp_path: Path) -> None:
    fresh, existing = tmp_path / "fresh.log", tmp_path / "existing.log"
    existing.touch(mode=0o644)
    existing.chmod(0o644)

    for log in (fresh, existing):
        build_server(ServerConfig(port=0, model_dir=tmp_path / "m", tap_log=log)).shutdown(0.0)

        assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_the_server_program_refuses_a_tap_nobody_may_use_and_a_linked_tap_log(
    tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"someone else's file")
    link = tmp_path / "wire.log"
    link.symlink_to(target)
    common = ["--port", "0", "--model-dir", str(tmp_path / "models")]

    no_tapper = CliRunner().invoke(server_main, [*common, "--tap"])
    linked = CliRunner().invoke(server_main, [*common, "--tap-log", str(link)])

    assert no_tapper.exit_code == exits.USAGE and "--anonymous-tap" in no_tapper.output
    assert linked.exit_code == exits.FAILED and "symbolic link" in linked.output
    assert "Traceback" not in linked.output and target.read_bytes() == b"someone else's file"
