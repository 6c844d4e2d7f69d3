"""Each party's own share of the server's sessions and calls, on a real server with mutual TLS.

Mallory holds a valid certificate and tries to take the whole server; Alice must still train.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from splitnn.client.transport import ServerLink, ServerRefused
from splitnn.common.codec import StepId
from splitnn.common.credentials import Credentials, open_channel
from splitnn.server.app import RunningServer
from splitnn.server.config import ServerConfig
from tests.conftest import address_of, idle_train_streams, refusal, seeded_batch, settings
from tests.parties import Pki

Code = grpc.StatusCode
B = 8


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("certs"), ["alice", "mallory"])


def _link(server: RunningServer, credentials: Credentials, run: str) -> ServerLink:
    return ServerLink(
        address_of(server),
        settings(run, max_batch_size=B),
        connect_timeout=5.0,
        reconnect_timeout=1.0,  # RESOURCE_EXHAUSTED is retried: not for long here
        credentials=credentials,
    )


def _alice_trains(server: RunningServer, pki: Pki) -> float:
    with _link(server, pki.party("alice"), "alices-run") as link:
        return link.train_step(StepId("alices-run", 1, 0), *seeded_batch(0, B)).loss


def test_one_party_cannot_take_every_session(tmp_path: Path, pki: Pki) -> None:
    server = pki.serve(tmp_path / "models", max_sessions=8)  # a quarter each by default
    links: list[ServerLink] = []
    try:
        refused = None
        for number in range(8):
            try:
                links.append(_link(server, pki.party("mallory"), f"squat{number}"))
            except ServerRefused:
                refused = refusal(lambda: _link(server, pki.party("mallory"), "one-more"))
                break
        loss = _alice_trains(server, pki)
    finally:
        for link in links:
            link.close(finished=False)
        server.shutdown(grace=0.0)

    assert len(links) == 2
    assert refused is not None and refused[0] == Code.RESOURCE_EXHAUSTED
    assert "--max-sessions-per-party" in refused[1]
    assert loss > 0


def test_one_party_cannot_take_every_call(tmp_path: Path, pki: Pki) -> None:
    server = pki.serve(tmp_path / "models", max_streams=16)  # 4 calls each by default
    with open_channel(address_of(server), pki.party("mallory")) as channel:
        calls, release = idle_train_streams(channel, 16)
        try:
            # Generous: a loaded machine is slow to refuse the extra calls, never wrong about them.
            deadline = time.monotonic() + 60.0
            while sum(call.done() for call in calls) < 12 and time.monotonic() < deadline:
                time.sleep(0.05)
            refused = [call.code() for call in calls if call.done()]
            # A refused call's status reaches us a moment before the server's event loop gives
            # back the call it counted while refusing it: wait for that, not for more.
            while server.service.open_calls > 4 and time.monotonic() < deadline + 10.0:
                time.sleep(0.05)
            held = server.service.open_calls
            loss = _alice_trains(server, pki)
        finally:
            release.set()
            for call in calls:
                call.cancel()
            server.shutdown(grace=0.0)

    assert refused == [Code.RESOURCE_EXHAUSTED] * 12
    assert held == 4
    assert loss > 0


@pytest.mark.parametrize(
    ("changes", "authenticated", "expected"),
    [
        ({}, True, (16, 64)),
        ({}, False, (64, 256)),
        ({"max_sessions": 2, "max_streams": 4}, True, (1, 3)),
        ({"max_sessions_per_party": 5, "max_streams_per_party": 7}, False, (5, 7)),
        ({"max_sessions_per_party": 500, "max_streams_per_party": 700}, True, (64, 256)),
    ],
)
def test_a_partys_share_defaults_to_a_quarter_with_parties_and_never_exceeds_the_whole(
    changes: dict[str, int], authenticated: bool, expected: tuple[int, int]
) -> None:
    cfg = ServerConfig(**changes)  # type: ignore[arg-type]

    shares = (
        cfg.sessions_per_party(authenticated=authenticated),
        cfg.streams_per_party(authenticated=authenticated),
    )

    assert shares == expected
