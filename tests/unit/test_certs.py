"""The development CA: chains, names and roles, SANs, key usages, file modes, reuse, the CLI."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from splitnn.certs.cli import main
from splitnn.common.certs import (
    HOLDER,
    SERVER,
    TAP,
    CertificateError,
    identity_of,
    issue,
    load_or_create_ca,
    make_certificates,
)

OU = NameOID.ORGANIZATIONAL_UNIT_NAME
SERVER_NAMES = ("server", "localhost", "127.0.0.1", "::1")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def fingerprint(path: Path) -> bytes:
    return load(path).fingerprint(hashes.SHA256())


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """One run of the whole job, shared by the read-only checks."""
    out = tmp_path_factory.mktemp("certs") / "nested" / "certs"
    written = make_certificates(
        out, server_names=SERVER_NAMES, holders=["alice", "bob"], taps=["attacker"]
    )
    return out, written


def test_writes_every_file(issued: tuple[Path, list[Path]]) -> None:
    out, written = issued
    stems = ["ca", "server", "alice", "bob", "attacker"]
    assert written == [out / f"{stem}{suffix}" for stem in stems for suffix in (".pem", ".key")]


def test_leaves_are_issued_by_the_ca(issued: tuple[Path, list[Path]]) -> None:
    out, _ = issued
    ca = load(out / "ca.pem")
    ca.verify_directly_issued_by(ca)  # self-signed
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "splitnn development CA"
    )
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    for stem in ("server", "alice", "bob", "attacker"):
        leaf = load(out / f"{stem}.pem")
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.digest
        leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert lifetime.days == 825


def test_names_and_roles(issued: tuple[Path, list[Path]]) -> None:
    out, _ = issued
    assert identity_of((out / "server.pem").read_bytes()) == ("server", SERVER)
    assert identity_of((out / "alice.pem").read_bytes()) == ("alice", HOLDER)
    assert identity_of((out / "bob.pem").read_bytes()) == ("bob", HOLDER)
    assert identity_of((out / "attacker.pem").read_bytes()) == ("attacker", TAP)


def test_server_alt_names(issued: tuple[Path, list[Path]]) -> None:
    out, _ = issued
    sans = load(out / "server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.DNSName) == ["server", "localhost"]
    assert sans.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_extended_key_usages(issued: tuple[Path, list[Path]]) -> None:
    out, _ = issued
    expected = {
        "server": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        "alice": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "attacker": [ExtendedKeyUsageOID.CLIENT_AUTH],
    }
    for stem, usages in expected.items():
        eku = load(out / f"{stem}.pem").extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        assert list(eku.value) == usages
        usage = load(out / f"{stem}.pem").extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.digital_signature
        assert not (usage.value.key_cert_sign or usage.value.crl_sign)


def test_file_modes_and_keys(issued: tuple[Path, list[Path]]) -> None:
    out, written = issued
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".key":
            assert mode == 0o600, path
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            assert isinstance(key.curve, ec.SECP256R1)
            assert key.public_key() == load(path.with_suffix(".pem")).public_key()
        else:
            assert not mode & (stat.S_IWGRP | stat.S_IWOTH), path
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_second_run_reuses_the_ca_and_adds_a_party(tmp_path: Path) -> None:
    make_certificates(tmp_path, server_names=["localhost"], holders=["alice"], taps=[])
    ca_before = fingerprint(tmp_path / "ca.pem")
    alice_before = fingerprint(tmp_path / "alice.pem")
    written = make_certificates(tmp_path, server_names=[], holders=["carol"], taps=[])
    assert written == [tmp_path / "carol.pem", tmp_path / "carol.key"]
    assert fingerprint(tmp_path / "ca.pem") == ca_before
    assert fingerprint(tmp_path / "alice.pem") == alice_before
    ca = load(tmp_path / "ca.pem")
    load(tmp_path / "carol.pem").verify_directly_issued_by(ca)
    load(tmp_path / "alice.pem").verify_directly_issued_by(ca)


def test_reissue_replaces_a_key_with_the_right_mode(tmp_path: Path) -> None:
    ca = load_or_create_ca(tmp_path)
    issue(tmp_path, ca, name="alice", role=HOLDER)
    (tmp_path / "alice.key").chmod(0o644)  # an older, too open key file
    issue(tmp_path, ca, name="alice", role=HOLDER)
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600


def test_half_a_ca_is_refused(tmp_path: Path) -> None:
    load_or_create_ca(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CertificateError, match=r"ca\.key"):
        load_or_create_ca(tmp_path)


@pytest.mark.parametrize(
    ("holders", "taps", "message"),
    [
        (["../x"], [], "not allowed"),
        (["a/b"], [], "not allowed"),
        ([""], [], "not allowed"),
        ([".hidden"], [], "not allowed"),
        (["x" * 65], [], "not allowed"),
        (["server"], [], "reserved"),
        ([], ["ca"], "reserved"),
        (["alice", "alice"], [], "twice"),
        (["alice"], ["alice"], "twice"),
        (["alice"], ["Alice"], "twice"),
    ],
)
def test_bad_party_names(tmp_path: Path, holders: list[str], taps: list[str], message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        make_certificates(tmp_path, server_names=["localhost"], holders=holders, taps=taps)
    assert not list(tmp_path.iterdir())  # checked before anything is written


def test_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="nothing to issue"):
        make_certificates(tmp_path, server_names=[], holders=[], taps=[])
    with pytest.raises(CertificateError, match="server name"):
        make_certificates(tmp_path, server_names=["bad name"], holders=["alice"], taps=[])
    with pytest.raises(CertificateError, match="days"):
        make_certificates(tmp_path, server_names=["localhost"], holders=[], taps=[], days=0)
    ca = load_or_create_ca(tmp_path)
    with pytest.raises(CertificateError, match="at least one server name"):
        issue(tmp_path, ca, name=SERVER, role=SERVER)
    with pytest.raises(CertificateError, match="role"):
        issue(tmp_path, ca, name="eve", role="admin")


def self_signed(subject: x509.Name) -> bytes:
    """A PEM certificate with the given subject, not from the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_identity_of_rejects_incomplete_or_unknown_identities(tmp_path: Path) -> None:
    cn = x509.NameAttribute(NameOID.COMMON_NAME, "mallory")
    assert identity_of(self_signed(x509.Name([cn, x509.NameAttribute(OU, "tap")]))) == (
        "mallory",
        TAP,
    )
    with pytest.raises(CertificateError, match="OU"):
        identity_of(self_signed(x509.Name([cn])))
    with pytest.raises(CertificateError, match="CN"):
        identity_of(self_signed(x509.Name([x509.NameAttribute(OU, HOLDER)])))
    with pytest.raises(CertificateError, match="unknown role"):
        identity_of(self_signed(x509.Name([cn, x509.NameAttribute(OU, "admin")])))
    with pytest.raises(CertificateError, match="OU"):
        two_roles = [cn, x509.NameAttribute(OU, TAP), x509.NameAttribute(OU, HOLDER)]
        identity_of(self_signed(x509.Name(two_roles)))
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        identity_of(b"not a certificate")
    load_or_create_ca(tmp_path)
    with pytest.raises(CertificateError, match="OU"):
        identity_of((tmp_path / "ca.pem").read_bytes())


def test_cli_writes_the_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = "--out certs --server-name server --server-name localhost"
    args += " --holder alice --holder bob --tap attacker"
    result = CliRunner().invoke(main, args.split())
    assert result.exit_code == 0, result.output
    for stem in ("ca", "server", "alice", "bob", "attacker"):
        assert (tmp_path / "certs" / f"{stem}.pem").is_file()
        assert (tmp_path / "certs" / f"{stem}.key").is_file()
    lines = result.output.splitlines()
    assert len(lines) == 11  # ten files and the hint
    assert "certs/alice.pem  holder certificate (CN=alice)" in lines
    assert "certs/attacker.pem  tap certificate (CN=attacker)" in lines
    assert (
        "--tls-cert certs/server.pem --tls-key certs/server.key --client-ca certs/ca.pem"
        in (lines[-1])
    )
    assert (
        "--tls-ca certs/ca.pem --tls-cert certs/alice.pem --tls-key certs/alice.key" in (lines[-1])
    )


def test_cli_usage_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "certs")
    result = runner.invoke(main, ["--out", out])
    assert result.exit_code == 2
    assert "nothing to issue" in result.output
    assert not (tmp_path / "certs").exists()
    result = runner.invoke(main, ["--out", out, "--holder", "../x"])
    assert result.exit_code == 1
    assert result.output.startswith("splitnn-certs: name '../x' is not allowed")
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "DEVELOPMENT" in result.output
