"""Training groups against a hostile member, on a real server with mutual TLS.

Holders alice and bob hold certificates of one development CA; each test declares one group and
lets one of them break its protocol: ask for a schedule of any size, load or write the group's
head out of turn, claim any number of samples for FedAvg, or let the server keep every part 1.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from splitnn.client.transport import GroupSettings, ServerLink
from splitnn.common.certs import make_certificates
from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.codec import StepId, WeightsBlob
from splitnn.common.credentials import Credentials
from splitnn.common.models import build_body
from splitnn.common.processes import ServerProcess
from splitnn.common.weights import average, from_blob, to_blob
from splitnn.server.app import RunningServer
from splitnn.server.group import MAX_BATCHES_PER_EPOCH, MAX_EPOCHS, Group
from splitnn.server.group_spec import GroupSpec
from tests.conftest import address_of, refusal, seeded_batch, settings, start_server

Code = grpc.StatusCode
GROUP = "g"
B = 8
WAIT_S = 10.0  # bounds every wait: a broken server fails the test instead of hanging it
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    names = ["localhost", "127.0.0.1"]
    make_certificates(folder, server_names=names, holders=["alice", "bob"], taps=[])
    return folder


def _party(certs: Path, name: str) -> Credentials:
    return Credentials(ca=certs / "ca.pem", cert=certs / f"{name}.pem", key=certs / f"{name}.key")


def _serve(tmp_path: Path, certs: Path, topology: str) -> RunningServer:
    """An in-process server with mutual TLS that declares ``g=<topology>:2``."""
    return start_server(
        tmp_path / "models",
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        client_ca=certs / "ca.pem",
        groups=(GroupSpec.parse(f"{GROUP}={topology}:2"),),
    )


@pytest.fixture
def shared_head(tmp_path: Path, certs: Path) -> Iterator[RunningServer]:
    running = _serve(tmp_path, certs, "shared-head")
    yield running
    running.shutdown(grace=0.0)


@pytest.fixture
def splitfed(tmp_path: Path, certs: Path) -> Iterator[RunningServer]:
    running = _serve(tmp_path, certs, "splitfed")
    yield running
    running.shutdown(grace=0.0)


def _group_of(server: RunningServer) -> Group:
    return server.service.handlers.groups.get(GROUP)


def _member(address: str, certs: Path, name: str, holder: int, **group: Any) -> ServerLink:
    """`name`'s link as holder `holder` of the group; `group` overrides its GroupSettings."""
    joined = {"batches_per_epoch": 1, "samples": B, "epochs": 1, **group}
    spec = dataclasses.replace(
        settings(f"{name}-run", max_batch_size=B),
        group=GroupSettings(name=GROUP, holder=holder, **joined),
    )
    return ServerLink(
        address,
        spec,
        connect_timeout=WAIT_S,
        step_timeout=WAIT_S,
        reconnect_timeout=1.0,
        credentials=_party(certs, name),
        group_timeout=WAIT_S,
    )


def _step(link: ServerLink, epoch: int, batch: int, seed: int) -> None:
    """Waits for the member's turn at (epoch, batch), then trains on a seeded batch [B, 500]."""
    link.turn(epoch, batch)
    run = link.settings.run
    link.train_step(StepId(run, epoch, batch), *seeded_batch(seed, B), save=True)


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in state.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _body(seed: int) -> WeightsBlob:
    """Part 1 of seed `seed` as a blob (float32, 18.5 MB)."""
    return to_blob(build_body(seed).state_dict())


# -- the size of the schedule -----------------------------------------------------------------


@pytest.mark.parametrize(
    "asked",
    [
        {"epochs": MAX_EPOCHS + 1},
        {"batches_per_epoch": MAX_BATCHES_PER_EPOCH + 1},
        {"epochs": UINT32_MAX, "batches_per_epoch": UINT32_MAX},
    ],
    ids=["epochs", "batches", "uint32-limits"],
)
def test_a_joiner_asking_for_more_than_the_maximum_is_refused(
    shared_head: RunningServer, certs: Path, asked: dict[str, int]
) -> None:
    address = address_of(shared_head)

    code, detail = refusal(lambda: _member(address, certs, "alice", 0, **asked))

    assert code == Code.INVALID_ARGUMENT
    assert "1..10000 epochs" in detail or "1..1000000 batches" in detail
    assert _group_of(shared_head).members == {}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_the_largest_group_starts_at_once_and_the_server_serves_others_meanwhile(
    tmp_path: Path, certs: Path
) -> None:
    args = [
        "--model-dir", str(tmp_path / "models"), "--group", f"{GROUP}=round-robin:2",
        "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
        "--client-ca", str(certs / "ca.pem"), "-q",
    ]  # fmt: skip
    largest = {"epochs": MAX_EPOCHS, "batches_per_epoch": MAX_BATCHES_PER_EPOCH}
    with ServerProcess(args) as server:
        pid = server.process.pid
        with _member(server.address, certs, "alice", 0, **largest) as alice:
            before = _rss_mib(pid)
            started = time.monotonic()
            with _member(server.address, certs, "bob", 1, **largest) as bob:
                joined = time.monotonic() - started
                grown = _rss_mib(pid) - before
                alone = dataclasses.replace(settings("bobs-own", max_batch_size=B))
                with ServerLink(server.address, alone, credentials=_party(certs, "bob")) as own:
                    own.train_step(StepId("bobs-own", 1, 0), *seeded_batch(0, B))
                served = time.monotonic() - started
                _step(alice, 1, 0, seed=1)  # the group's first step, in its turn
                early = StepId("bob-run", 1, 0)
                code, detail = refusal(lambda: bob.train_step(early, *seeded_batch(2, B)))

    assert joined < 2.0, f"the last join took {joined:.1f} s"
    assert served < 4.0, f"another party waited {served:.1f} s"
    assert grown < 50.0, f"the server grew {grown:.0f} MiB when the group started"
    assert code == Code.FAILED_PRECONDITION and "holder 0's epoch 1 batch 1" in detail


# -- Restore and Checkpoint -------------------------------------------------------------------


def test_restore_in_a_group_session_is_refused_and_the_groups_head_is_unchanged(
    shared_head: RunningServer, certs: Path
) -> None:
    address = address_of(shared_head)
    own = settings("alices-own", seed=99, max_batch_size=B)
    with ServerLink(address, own, credentials=_party(certs, "alice")) as solo:
        for batch in range(3):  # a head of alice's own, far from the group's
            solo.train_step(StepId("alices-own", 1, batch), *seeded_batch(50 + batch, B))
        solo.checkpoint("mine", replace_previous=False)
    group = _group_of(shared_head)
    with (
        _member(address, certs, "alice", 0, batches_per_epoch=2) as alice,
        _member(address, certs, "bob", 1, batches_per_epoch=2) as bob,
    ):
        _step(alice, 1, 0, seed=1)
        _step(bob, 1, 0, seed=2)
        assert group.head is not None
        head = _clone(group.head.state_dict())

        own_run = refusal(lambda: alice.restore("mine", run="alices-own"))
        group_run = refusal(lambda: bob.restore("anything"))
        weights = _clone(group.head.state_dict())
        _step(alice, 1, 1, seed=3)  # the group goes on

    assert own_run[0] == group_run[0] == Code.FAILED_PRECONDITION
    assert "Restore is refused in a training group" in own_run[1]
    assert _same(weights, head)


def test_a_group_head_is_written_only_once_the_group_has_finished(
    tmp_path: Path, shared_head: RunningServer, certs: Path
) -> None:
    address = address_of(shared_head)
    heads = tmp_path / "models" / "heads"
    group = _group_of(shared_head)
    with (
        _member(address, certs, "alice", 0) as alice,
        _member(address, certs, "bob", 1) as bob,
    ):
        before = refusal(lambda: alice.checkpoint("early", replace_previous=True))
        _step(alice, 1, 0, seed=1)
        midway = refusal(lambda: bob.checkpoint("early", replace_previous=True))
        written_midway = sorted(heads.rglob("*.head.ckpt"))
        _step(bob, 1, 0, seed=2)
        alice.finish()
        path = alice.checkpoint("final", replace_previous=True)
        assert group.head is not None
        final = _clone(group.head.state_dict())

    assert before[0] == midway[0] == Code.FAILED_PRECONDITION
    assert "is still training" in midway[1]
    assert written_midway == []
    assert path == "heads/alice/alice-run/final.head.ckpt"
    assert _same(load_checkpoint(tmp_path / "models" / path)[0], final)


# -- FedAvg's weights -------------------------------------------------------------------------


def test_fedavg_weighs_each_holder_by_the_samples_the_server_applied(
    splitfed: RunningServer, certs: Path
) -> None:
    address = address_of(splitfed)
    alices, bobs = _body(1), _body(2)
    with (
        _member(address, certs, "alice", 0, samples=UINT64_MAX) as alice,
        _member(address, certs, "bob", 1, samples=1, batches_per_epoch=3) as bob,
    ):
        _step(alice, 1, 0, seed=1)  # alice trains 8 samples, claims 2^64 - 1
        for batch in range(3):  # bob trains 24, claims 1
            _step(bob, 1, batch, seed=2 + batch)
        alice.hand_in(1, alices)
        bob.hand_in(1, bobs)
        final = alice.finish()

    assert final is not None
    expected = average([from_blob(alices), from_blob(bobs)], [B, 3 * B])
    assert final.sha256 == to_blob(expected).sha256
    assert final.sha256 != alices.sha256


# -- what the group keeps ---------------------------------------------------------------------


@pytest.mark.parametrize("topology", ["splitfed", "round-robin"])
def test_a_group_keeps_the_parts_1_of_its_last_rounds_only(
    tmp_path: Path, certs: Path, topology: str
) -> None:
    epochs = 6
    running = _serve(tmp_path, certs, topology)
    group = _group_of(running)
    blobs = [_body(1), _body(2)]
    held: list[int] = []
    address = address_of(running)
    try:
        with (
            _member(address, certs, "alice", 0, epochs=epochs) as alice,
            _member(address, certs, "bob", 1, epochs=epochs) as bob,
        ):
            for epoch in range(1, epochs + 1):
                for holder, link in enumerate((alice, bob)):
                    _step(link, epoch, 0, seed=10 * epoch + holder)
                    link.hand_in(epoch, blobs[(epoch + holder) % 2])
                held.append(len(group.parts.handed) + len(group.parts.averages))
            finals = alice.finish(), bob.finish()
            parts = group.parts
            kept = sorted(parts.averages) if topology == "splitfed" else sorted(parts.handed)
    finally:
        running.shutdown(grace=0.0)

    assert max(held) <= 4, held  # about two rounds' worth, whatever the number of epochs
    assert finals[0] is not None and finals[1] is not None
    assert finals[0].sha256 == finals[1].sha256
    assert kept[-1] in (epochs, (epochs, 1))
