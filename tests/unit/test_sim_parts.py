"""The parts every simulation shares: its certificates and its parties' command lines."""

from __future__ import annotations

from pathlib import Path

from splitnn.common.credentials import Credentials
from splitnn.sim.app import SimConfig, certificates, holder_command
from splitnn.sim.cross_holder import MultiConfig, member_command

CREDENTIALS = Credentials(ca=Path("ca.pem"), cert=Path("h.pem"), key=Path("h.key"))


def test_certificates_are_made_once_and_a_new_holder_gets_its_own(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    tls, (alice,) = certificates(tmp_path, ["alice"])
    server = (certs / "server.pem").read_bytes()
    first = (certs / "alice.pem").read_bytes()

    _, (alice_again, bob) = certificates(tmp_path, ["alice", "bob"])

    assert tls == [
        *("--tls-cert", str(tmp_path / "certs" / "server.pem")),
        *("--tls-key", str(tmp_path / "certs" / "server.key")),
        *("--client-ca", str(tmp_path / "certs" / "ca.pem")),
    ]
    assert (tmp_path / "certs" / "server.pem").read_bytes() == server
    assert alice.cert == alice_again.cert == certs / "alice.pem"
    assert (certs / "alice.pem").read_bytes() == first
    assert bob.cert == certs / "bob.pem" and bob.cert.is_file()


def test_a_lone_victim_trains_deploys_and_reveals_its_indices() -> None:
    cfg = SimConfig(epochs=2, seed=3)

    args = holder_command(
        cfg, server="localhost:1", credentials=CREDENTIALS, noise=0.5, nopeek=0.0
    ).args()

    assert {"--deploy", "--restart", "--send-indices"} <= set(args)
    assert args[args.index("--noise") + 1] == "0.5"
    assert args[args.index("--batch-size") + 1] == "128"
    assert "--group" not in args and "-q" not in args


def test_a_member_has_its_own_defences_and_place_in_the_group() -> None:
    cfg = MultiConfig(holders=3, topology="splitfed", noise=0.5, nopeek=0.2, colluder=1)

    victim = member_command(cfg, 2, server="localhost:1", credentials=CREDENTIALS).args()
    colluder = member_command(cfg, 1, server="localhost:1", credentials=CREDENTIALS).args()

    assert victim[victim.index("--nopeek") + 1] == "0.2"
    assert victim[victim.index("--holder") + 1] == "2"
    assert victim[victim.index("--holders") + 1] == "3"
    assert colluder[colluder.index("--noise") + 1] == "0.0"
    assert {"--group", "--threads", "-q"} <= set(victim)
