"""Parties that prove who they are: TLS, mutual TLS, tokens, roles, and runs nobody else can touch.

Every test runs a real server; holders A (alice) and B (bob) and a tap party (attacker) hold
certificates of one development CA, a stranger's come from another CA.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from splitnn.client.transport import ServerLink, ServerUnreachable
from splitnn.common.certs import make_certificates
from splitnn.common.codec import StepId, tensor_to_proto
from splitnn.common.credentials import Credentials, open_channel
from splitnn.proto import splitnn_pb2 as pb
from splitnn.proto import splitnn_pb2_grpc as pb_grpc
from splitnn.server.app import RunningServer
from tests.conftest import address_of, refusal, seeded_batch, settings, start_server
from tests.proxy import CuttingProxy

B = 8
RUN = "alices-run"
Code = grpc.StatusCode


@dataclass(frozen=True)
class Pki:
    certs: Path
    stranger: Path  # another CA's certificates

    def party(self, name: str, *, certs: Path | None = None) -> Credentials:
        folder = certs or self.certs
        return Credentials(
            ca=self.certs / "ca.pem", cert=folder / f"{name}.pem", key=folder / f"{name}.key"
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    certs, stranger = tmp_path_factory.mktemp("certs"), tmp_path_factory.mktemp("stranger")
    names = ["localhost", "127.0.0.1"]
    make_certificates(certs, server_names=names, holders=["alice", "bob"], taps=["attacker"])
    make_certificates(stranger, server_names=names, holders=["alice"], taps=[])
    return Pki(certs, stranger)


def _serve(tmp_path: Path, **changes: Any) -> RunningServer:
    return start_server(tmp_path / "models", **changes)


@pytest.fixture
def mtls(tmp_path: Path, pki: Pki) -> Iterator[RunningServer]:
    """A collusion-mode server that requires client certificates of the development CA."""
    running = _serve(
        tmp_path,
        tls_cert=pki.certs / "server.pem",
        tls_key=pki.certs / "server.key",
        client_ca=pki.certs / "ca.pem",
        tap=True,
    )
    yield running
    running.shutdown(grace=0.0)


def _link(
    server: RunningServer, credentials: Credentials, *, timeout: float = 3.0, **changes: Any
) -> ServerLink:
    spec = dataclasses.replace(settings(RUN, max_batch_size=B), **changes)
    return ServerLink(address_of(server), spec, connect_timeout=timeout, credentials=credentials)


@pytest.mark.parametrize(
    "who",
    ["plaintext", "wrong-ca", "no-client-certificate", "stranger-certificate"],
)
def test_a_party_without_the_right_credentials_cannot_connect(
    mtls: RunningServer, pki: Pki, who: str
) -> None:
    credentials = {
        "plaintext": Credentials(),
        "wrong-ca": Credentials(ca=pki.stranger / "ca.pem"),
        "no-client-certificate": Credentials(ca=pki.certs / "ca.pem"),
        "stranger-certificate": pki.party("alice", certs=pki.stranger),
    }[who]

    with pytest.raises(ServerUnreachable):
        _link(mtls, credentials, timeout=1.0)  # refused: waiting longer would change nothing

    assert len(mtls.sessions) == 0


def test_the_servers_name_is_verified(mtls: RunningServer, pki: Pki) -> None:
    elsewhere = dataclasses.replace(pki.party("alice"), server_name="not-the-server")

    with pytest.raises(ServerUnreachable):
        _link(mtls, elsewhere, timeout=1.0)
    with _link(mtls, dataclasses.replace(pki.party("alice"), server_name="localhost")) as link:
        assert link.session_id


def test_roles_a_tap_cannot_train_a_holder_cannot_subscribe(mtls: RunningServer, pki: Pki) -> None:
    tap_refused = refusal(lambda: _link(mtls, pki.party("attacker")))

    def subscribe(name: str) -> grpc.StatusCode:
        with open_channel(address_of(mtls), pki.party(name)) as channel:
            stream = pb_grpc.TapStub(channel).Subscribe(pb.TapRequest(), timeout=2.0)
            try:
                next(stream)
            except grpc.RpcError as error:
                code: grpc.StatusCode = error.code()
                return code
        return Code.OK

    assert tap_refused[0] == Code.PERMISSION_DENIED and "holder role" in tap_refused[1]
    assert subscribe("alice") == Code.PERMISSION_DENIED
    assert subscribe("attacker") == Code.DEADLINE_EXCEEDED  # subscribed; nothing was sent


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_tokens_name_parties_and_unknown_ones_are_refused(
    tmp_path: Path, pki: Pki, tls: bool
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# name role token\nalice holder alices-token-0123456789\n")
    tls_files = {"tls_cert": pki.certs / "server.pem", "tls_key": pki.certs / "server.key"}
    running = _serve(tmp_path, tokens=tokens, **(tls_files if tls else {}))
    (tmp_path / "good").write_text("alices-token-0123456789\n")
    (tmp_path / "bad").write_text("someone-elses-token-000\n")
    ca = pki.certs / "ca.pem" if tls else None
    try:
        unknown = refusal(lambda: _link(running, Credentials(ca=ca, token_file=tmp_path / "bad")))
        missing = refusal(lambda: _link(running, Credentials(ca=ca)))
        with _link(running, Credentials(ca=ca, token_file=tmp_path / "good")) as link:
            link.train_step(StepId(RUN, 1, 0), *seeded_batch(0))
            owner = running.sessions.get(link.session_id).owner
    finally:
        running.shutdown(grace=0.0)

    assert unknown[0] == missing[0] == Code.UNAUTHENTICATED
    assert owner == "alice"


def _alice_trains(server: RunningServer, pki: Pki, between: Callable[[str], None]) -> Any:
    """Alice's 4 steps; `between(session_id)` runs after each. Her head's weights after."""
    with _link(server, pki.party("alice")) as link:
        for batch in range(4):
            link.train_step(StepId(RUN, 1, batch), *seeded_batch(batch))
            link.checkpoint(f"epoch={batch}", replace_previous=True)
            between(link.session_id)
        session = server.sessions.get(link.session_id)
        return {k: v.clone() for k, v in session.head.state_dict().items()}, session.owner


def test_holder_b_cannot_touch_holder_as_run(tmp_path: Path, pki: Pki) -> None:
    # Prepare: the same run without Bob, on a server of its own.
    alone = _serve(
        tmp_path / "alone",
        tls_cert=pki.certs / "server.pem",
        tls_key=pki.certs / "server.key",
        client_ca=pki.certs / "ca.pem",
    )
    try:
        reference, _ = _alice_trains(alone, pki, lambda _: None)
    finally:
        alone.shutdown(grace=0.0)
    server = _serve(
        tmp_path / "shared",
        tls_cert=pki.certs / "server.pem",
        tls_key=pki.certs / "server.key",
        client_ca=pki.certs / "ca.pem",
    )
    outcomes: list[tuple[str, Any]] = []

    def bob_attacks(alices_session: str) -> None:
        if outcomes:
            return  # once, in the middle of Alice's run
        with _link(server, pki.party("bob"), resume=True) as bob:  # Alice's run name
            outcomes.append(("bob's own session", (bob.session_id != alices_session, bob.resumed)))
            stub = pb_grpc.SplitLearningStub(bob._channel)
            activations, labels = seeded_batch(99)
            foreign = pb.TrainRequest(
                session_id=alices_session,
                step=pb.StepId(run=RUN, epoch=9, batch=0),
                activations=tensor_to_proto(activations),
                labels=tensor_to_proto(labels),
            )
            for name, call in {
                "train": lambda: list(stub.Train(iter([foreign]), timeout=5)),
                "checkpoint": lambda: stub.Checkpoint(
                    pb.CheckpointRequest(session_id=alices_session, name="x"), timeout=5
                ),
                "restore": lambda: stub.Restore(
                    pb.RestoreRequest(session_id=alices_session, name="epoch=0"), timeout=5
                ),
                "close": lambda: stub.CloseSession(
                    pb.CloseSessionRequest(session_id=alices_session), timeout=5
                ),
                "unknown token": lambda: stub.CloseSession(
                    pb.CloseSessionRequest(session_id="0" * 32), timeout=5
                ),
            }.items():
                outcomes.append((name, refusal(call)))
            outcomes.append(("restore alice's label", refusal(lambda: bob.restore("epoch=0"))))
            outcomes.append(("restore a label nobody wrote", refusal(lambda: bob.restore("nope"))))
            bob.train_step(StepId(RUN, 1, 0), *seeded_batch(50))
            bob.checkpoint("epoch=0", replace_previous=True)  # Alice's label, Bob's file
        with _link(server, pki.party("bob"), resume=False):  # starting "her" run over
            pass

    # Execute
    try:
        weights, owner = _alice_trains(server, pki, bob_attacks)
        heads = sorted(
            str(p.relative_to(server.sessions.model_dir / "heads"))
            for p in (server.sessions.model_dir / "heads").rglob("*.head.ckpt")
        )
    finally:
        server.shutdown(grace=0.0)

    # Assert
    refusals = dict(outcomes)
    assert refusals.pop("bob's own session") == (True, False)  # not hers, and nothing resumed
    unknown = refusals.pop("unknown token")
    assert unknown[0] == Code.UNAUTHENTICATED
    for name in ("train", "checkpoint", "restore", "close"):
        assert refusals[name] == unknown, name  # the same answer as for a token nobody has
    assert refusals["restore alice's label"][0] == Code.FAILED_PRECONDITION
    assert (
        refusals["restore alice's label"][1].replace("epoch=0", "nope")
        == (refusals["restore a label nobody wrote"][1])
    )
    assert owner == "alice"
    assert heads == [f"alice/{RUN}/epoch=3.head.ckpt", f"bob/{RUN}/epoch=0.head.ckpt"]
    for name, value in reference.items():
        assert torch.equal(weights[name], value), name  # Alice trained as if Bob were not there


def test_a_passive_observer_sees_neither_session_ids_nor_labels(
    tmp_path: Path, mtls: RunningServer, pki: Pki
) -> None:
    activations, labels = seeded_batch(7)
    label_bytes = tensor_to_proto(labels).data

    def observe(server: RunningServer, credentials: Credentials) -> tuple[bytes, str]:
        with CuttingProxy(address_of(server), every=None) as proxy:
            spec = settings(RUN, max_batch_size=B)
            credentials = dataclasses.replace(credentials, server_name="localhost")
            with ServerLink(proxy.address, spec, credentials=credentials) as link:
                link.train_step(StepId(RUN, 1, 0), activations, labels)
                session_id = link.session_id
            return bytes(proxy.recorded), session_id

    plaintext = _serve(tmp_path / "plaintext")
    try:
        clear, clear_id = observe(plaintext, Credentials())
    finally:
        plaintext.shutdown(grace=0.0)
    sealed, sealed_id = observe(mtls, pki.party("alice"))

    assert clear_id.encode() in clear and label_bytes in clear  # the observer can see them...
    assert len(sealed) > len(label_bytes)
    assert sealed_id.encode() not in sealed and label_bytes not in sealed  # ...but not in TLS
    assert RUN.encode() not in sealed


def test_run_names_with_control_characters_are_refused(mtls: RunningServer, pki: Pki) -> None:
    refused = refusal(lambda: _link(mtls, pki.party("alice"), run="run\n"))

    assert refused[0] == Code.INVALID_ARGUMENT


def test_wire_log_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    running = _serve(tmp_path, tap_log=tmp_path / "wire.log")
    running.shutdown(grace=0.0)

    assert (tmp_path / "wire.log").stat().st_mode & 0o777 == 0o600


def test_tap_with_a_tap_certificate_receives_what_alice_sent(mtls: RunningServer, pki: Pki) -> None:
    received: list[pb.TapRecord] = []
    ready = threading.Event()

    def listen() -> None:
        with open_channel(address_of(mtls), pki.party("attacker")) as channel:
            stream = pb_grpc.TapStub(channel).Subscribe(pb.TapRequest(), timeout=30)
            ready.set()
            received.append(next(stream))
            stream.cancel()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    assert mtls.hub is not None
    while mtls.hub.subscribers == 0:
        threading.Event().wait(0.01)
    with _link(mtls, pki.party("alice")) as link:
        link.train_step(StepId(RUN, 1, 0), *seeded_batch(0))
    thread.join(timeout=30)

    assert len(received) == 1 and received[0].owner == "alice"
    assert not received[0].HasField("indices")  # a real holder's batches carry none


def test_the_health_probe_speaks_tls(mtls: RunningServer, pki: Pki) -> None:
    from splitnn.server.probe import probe

    server_itself = Credentials(
        ca=pki.certs / "ca.pem", cert=pki.certs / "server.pem", key=pki.certs / "server.key"
    )

    assert probe(address_of(mtls), credentials=server_itself)
    assert not probe(address_of(mtls), credentials=Credentials(ca=pki.certs / "ca.pem"))
    assert not probe(address_of(mtls), timeout=1.0)
