"""A real server with a declared training group: Sync's refusals and waits, joining, identities.

Every test runs a server on port 0 that declares ``g=shared-head:2``; holders join it through
`ServerLink` (or raw bytes) as the client does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId, WeightsBlob
from splitnn.common.credentials import Credentials, open_channel
from splitnn.server.app import RunningServer
from splitnn.server.group import Group
from splitnn.server.group_spec import GroupSpec
from tests.conftest import (
    address_of,
    group_link,
    refusal,
    seeded_batch,
    send_raw,
    settings,
    start_server,
)

Code = grpc.StatusCode
GROUP = "g"
B = 8
WAIT_S = 10.0  # bounds every wait: a broken server fails the test instead of hanging it
TOKENS = {"alice": "alices-token-0123456789", "bob": "bobs-token-0123456789ab"}


def _server(tmp_path: Path, **changes: Any) -> RunningServer:
    return start_server(
        tmp_path / "models", groups=(GroupSpec.parse(f"{GROUP}=shared-head:2"),), **changes
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = _server(tmp_path)
    yield running
    running.shutdown(grace=0.0)


def _group_of(server: RunningServer) -> Group:
    return server.service.handlers.groups.get(GROUP)


def _member(
    server: RunningServer,
    holder: int,
    *,
    run: str | None = None,
    name: str = GROUP,
    credentials: Credentials | None = None,
) -> ServerLink:
    return group_link(
        server,
        holder,
        run=run or f"run{holder}",
        group=name,
        credentials=credentials,
        max_batch_size=B,
    )


def _sending(channel: grpc.Channel, method: str, payload: bytes) -> Callable[[], None]:
    return lambda: send_raw(channel, method, payload, timeout=WAIT_S)


def test_garbage_sync_bytes_are_invalid_and_the_server_goes_on(server: RunningServer) -> None:
    garbage = [b"\xff" * 32, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc"]  # bad tag, length
    with open_channel(address_of(server), Credentials()) as channel:
        refusals = [refusal(_sending(channel, "Sync", payload)) for payload in garbage]

    with _member(server, 0) as first, _member(server, 1) as second:
        assert first.turn(1, 0) is None
        first.train_step(StepId("run0", 1, 0), *seeded_batch(0, B))
        assert second.turn(1, 0) is None

    assert [code for code, _ in refusals] == [Code.INVALID_ARGUMENT] * len(garbage)
    assert all("not a valid SyncRequest" in detail for _, detail in refusals)


def test_sync_from_a_session_outside_any_group_is_refused(server: RunningServer) -> None:
    with ServerLink(address_of(server), settings("alone", max_batch_size=B)) as link:
        code, detail = refusal(lambda: link.turn(1, 0))
        link.train_step(StepId("alone", 1, 0), *seeded_batch(0, B))  # still served alone

    assert code == Code.FAILED_PRECONDITION
    assert "members of a training group" in detail


def test_joining_an_undeclared_group_names_no_declared_one(server: RunningServer) -> None:
    code, detail = refusal(lambda: _member(server, 0, name="nope"))

    assert code == Code.PERMISSION_DENIED
    assert detail.endswith(": no group 'nope' that this party may join on this server")
    assert _group_of(server).members == {}


def test_an_index_taken_by_alice_is_denied_to_bob(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{name} holder {token}\n" for name, token in TOKENS.items()))
    for name, token in TOKENS.items():
        (tmp_path / name).write_text(token + "\n")
    running = _server(tmp_path, tokens=tokens)
    alice, bob = (Credentials(token_file=tmp_path / name) for name in TOKENS)
    try:
        with _member(running, 0, run="alices-run", credentials=alice):
            as_alice = refusal(lambda: _member(running, 0, run="alices-run", credentials=bob))
            own_run = refusal(lambda: _member(running, 0, run="bobs-run", credentials=bob))
            with _member(running, 1, run="bobs-run", credentials=bob) as bobs:
                bobs_index = bobs.group_size, bobs.topology
        members = {h: m.owner for h, m in _group_of(running).members.items()}
    finally:
        running.shutdown(grace=0.0)

    assert as_alice[0] == own_run[0] == Code.PERMISSION_DENIED
    assert "holder 0 of group 'g' is another party's" in as_alice[1]
    assert bobs_index == (2, "shared-head")
    assert members == {0: "alice", 1: "bob"}


def test_a_turn_waits_until_the_other_holder_joins(server: RunningServer) -> None:
    replies: list[WeightsBlob | None] = []
    errors: list[BaseException] = []
    with _member(server, 0) as first:

        def wait_for_turn() -> None:
            try:
                replies.append(first.turn(1, 0))
            except BaseException as error:  # reported to the test's thread
                errors.append(error)

        waiter = threading.Thread(target=wait_for_turn, daemon=True)
        started = time.monotonic()
        waiter.start()
        waiter.join(timeout=0.5)
        still_waiting = waiter.is_alive()
        with _member(server, 1) as second:
            waiter.join(timeout=WAIT_S)
            waited = time.monotonic() - started
            finished = not waiter.is_alive()
            assert second.topology == "shared-head"

    assert still_waiting, "the turn was given before the group was complete"
    assert finished and not errors, errors
    assert replies == [None]
    assert 0.5 <= waited < WAIT_S


def test_a_step_out_of_turn_is_refused_and_nothing_is_applied(server: RunningServer) -> None:
    group = _group_of(server)
    with _member(server, 0) as first, _member(server, 1) as second:
        assert group.head is not None
        head = {name: value.clone() for name, value in group.head.state_dict().items()}

        code, detail = refusal(lambda: second.train_step(StepId("run1", 1, 0), *seeded_batch(1, B)))
        early = refusal(lambda: first.train_step(StepId("run0", 1, 1), *seeded_batch(2, B)))
        state = group.cursor, group.members[0].last, group.members[1].last
        weights = {name: value.clone() for name, value in group.head.state_dict().items()}
        first.train_step(StepId("run0", 1, 0), *seeded_batch(0, B))  # the turn's owner may
        second.train_step(StepId("run1", 1, 0), *seeded_batch(1, B))

    assert code == early[0] == Code.FAILED_PRECONDITION
    assert "not holder 1's turn" in detail and "holder 0's epoch 1 batch 0" in detail
    assert state == (0, None, None)
    for name, value in head.items():
        assert torch.equal(weights[name], value), name
    assert group.cursor == 2
