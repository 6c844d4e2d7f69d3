"""Who may hold which index of a training group, on a real server with mutual TLS.

The server declares ``clinics=splitfed:3@alice,bob,carol``: index i is the i-th identity's. Mallory
holds a valid certificate of the same CA but is named nowhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from splitnn.server.app import RunningServer
from splitnn.server.group_spec import GroupSpec
from splitnn.server.security import SecurityError
from tests.conftest import group_link, refusal, start_server
from tests.parties import Pki

Code = grpc.StatusCode
NAMED = "clinics=splitfed:3@alice,bob,carol"
WAIT_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("certs"), ["alice", "bob", "carol", "mallory"])


@pytest.fixture
def named(tmp_path: Path, pki: Pki) -> Iterator[RunningServer]:
    running = pki.serve(tmp_path / "models", groups=(GroupSpec.parse(NAMED),))
    yield running
    running.shutdown(grace=0.0)


def test_a_party_not_named_can_take_no_index_and_learns_nothing(
    named: RunningServer, pki: Pki
) -> None:
    mallory = pki.party("mallory")

    def squat(holder: int) -> tuple[grpc.StatusCode, str]:
        return refusal(
            lambda: group_link(
                named, holder, credentials=mallory, run=f"squat{holder}", group="clinics"
            )
        )

    squats = [squat(holder) for holder in range(3)]
    nowhere = refusal(lambda: group_link(named, 0, credentials=mallory, run="squat9", group="nope"))
    members_after_squats = dict(named.service.handlers.groups.get("clinics").members)

    with (
        group_link(
            named, 0, credentials=pki.party("alice"), run="alices-run", group="clinics"
        ) as alice,
        group_link(named, 1, credentials=pki.party("bob"), run="bobs-run", group="clinics") as bob,
    ):
        joined = (alice.group_size, bob.group_size)
        bob_takes_carols = refusal(
            lambda: group_link(
                named, 2, credentials=pki.party("bob"), run="bobs-other-run", group="clinics"
            )
        )

    assert members_after_squats == {}
    assert joined == (3, 3)
    assert nowhere[0] == Code.PERMISSION_DENIED
    for code, detail in [*squats, bob_takes_carols]:
        # The very answer a group that does not exist gets: the same status, the same text.
        assert (code, detail) == (nowhere[0], nowhere[1].replace("'nope'", "'clinics'"))


def test_a_refusal_lists_no_declared_group(tmp_path: Path, pki: Pki) -> None:
    # A group that names no members: first come, first bound, as on a developer's loopback.
    running = pki.serve(tmp_path / "models", groups=(GroupSpec.parse("clinics=splitfed:3"),))
    try:
        code, detail = refusal(
            lambda: group_link(
                running, 0, credentials=pki.party("mallory"), run="probe", group="nope"
            )
        )
    finally:
        running.shutdown(grace=0.0)

    assert code == Code.PERMISSION_DENIED
    assert "clinics" not in detail


def test_a_group_that_names_no_members_on_a_server_with_parties_is_warned_of(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="splitnn.server.app"):
        running = pki.serve(
            tmp_path / "models",
            groups=(GroupSpec.parse("open=shared-head:2"), GroupSpec.parse(NAMED)),
        )
        running.shutdown(grace=0.0)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "group open names no members" in warnings[0] and "@ID0,ID1" in warnings[0]


def test_naming_members_on_a_server_without_parties_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="names its members"):
        start_server(tmp_path / "models", groups=(GroupSpec.parse(NAMED),))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("g=splitfed:3@alice,bob", "2 identities for 3 holders"),
        ("g=splitfed:2@alice,", "identity ''"),
        ("g=splitfed:2@alice,b/ob", "identity 'b/ob'"),
    ],
)
def test_a_group_naming_the_wrong_members_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GroupSpec.parse(text)


def test_a_named_group_keeps_its_members_in_order() -> None:
    spec = GroupSpec.parse(NAMED)

    assert spec.members == ("alice", "bob", "carol")
    assert spec.admits(1, "bob") and not spec.admits(1, "alice") and not spec.admits(3, "bob")
    assert GroupSpec.parse("g=splitfed:2").admits(1, "anyone")
