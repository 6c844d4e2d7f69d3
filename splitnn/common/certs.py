"""A development certificate authority: a CA, a server certificate and party certificates.

Every certificate is signed by one local CA (``ca.pem``/``ca.key``), which is created on first use
and reused afterwards, so parties can be added later without reissuing the others. A party's name
is its certificate's subject commonName (CN) and its role (holder or tap) the subject's
organizationalUnitName (OU); the server reads both back with `identity_of` to decide who is
calling. Keys are EC P-256, signatures SHA-256, private keys unencrypted PKCS8 PEM files that are
readable by their owner only.

These certificates are for development and tests: the CA key lies unencrypted next to the
certificates it signs.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from splitnn.common import exits
from splitnn.common.files import PRIVATE, SHARED, write_atomic

SERVER = "server"
HOLDER = "holder"
TAP = "tap"
ROLES = (HOLDER, TAP)  # the roles a party (a client) can hold

CA_NAME = "splitnn development CA"
CA_DAYS = 3650
LEAF_DAYS = 825

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A host name: dot-separated labels, optionally a leading wildcard label.
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")
_RESERVED = ("ca", SERVER)  # their files belong to the CA and the server
_BACKDATE = datetime.timedelta(hours=1)  # tolerates clocks a little behind ours

CA = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


class CertificateError(exits.Failed):
    """A certificate that cannot be issued, loaded or accepted; the text says why."""


def load_or_create_ca(out: Path, *, days: int = CA_DAYS) -> CA:
    """Loads the CA from ``out/ca.pem`` and ``out/ca.key``, or creates both if neither exists.

    Args:
        out: the folder of the certificates; created if missing.
        days: validity of a newly created CA.

    Returns:
        The CA certificate and its private key.

    Raises:
        CertificateError: only one of the two files exists, they do not belong together, they
            cannot be parsed, or the CA has expired.
        OSError: the folder or the files cannot be read or written.
    """
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        return _load_ca(cert_path, key_path)
    if have_cert or have_key:
        # Creating a new CA here would silently invalidate every certificate the old one signed.
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise CertificateError(
            f"{present} exists but {missing} does not; restore it, or remove {present} "
            "to create a new CA (and reissue every certificate)"
        )
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    not_before = _now() - _BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + _BACKDATE + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key


def issue(
    out: Path,
    ca: CA,
    *,
    name: str,
    role: str,
    server_names: Sequence[str] = (),
    days: int = LEAF_DAYS,
) -> list[Path]:
    """Issues one leaf certificate signed by `ca` and writes it with its new private key.

    A party's files are ``out/<name>.pem`` and ``out/<name>.key``; the server's are always
    ``out/server.pem`` and ``out/server.key``. Existing files of the same name are replaced.

    Args:
        out: the folder of the certificates; created if missing.
        ca: the CA certificate and key, from `load_or_create_ca`.
        name: the subject's commonName; for a party also its file name, so it must be a safe
            file name and neither ``ca`` nor ``server``.
        role: `SERVER`, `HOLDER` or `TAP`.
        server_names: the server's host names and IP addresses (its subjectAltName); at least
            one for the server, none for a party.
        days: validity in days.

    Returns:
        The certificate's path and the key's path.

    Raises:
        CertificateError: a bad name, role, server name or number of days.
        OSError: the files cannot be written.
    """
    if role == SERVER:
        _check_name(name)
        alt_names = _alt_names(server_names)
        stem = SERVER
        # Client use too: the server's own health probe shows this certificate to a server
        # that requires client certificates. Its role, server, may call no RPC but health.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    elif role in ROLES:
        _check_party_name(name)
        if server_names:
            raise CertificateError(f"server names are for the server certificate, not a {role}")
        alt_names = []
        stem = name
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        raise CertificateError(f"role must be one of {', '.join((SERVER, *ROLES))}, not {role!r}")
    _check_days(days)
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    not_before = _now() - _BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + _BACKDATE + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return [cert_path, key_path]


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs only; a party's key signs the TLS handshake only
    (ECDSA signatures need digitalSignature and nothing else)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_certificates(
    out: Path,
    *,
    server_names: Sequence[str],
    holders: Sequence[str],
    taps: Sequence[str],
    days: int = LEAF_DAYS,
) -> list[Path]:
    """Issues the server's certificate (if any server names are given) and every party's.

    Every name is checked before anything is written. The CA in `out` is reused if there is one,
    else created.

    Args:
        out: the folder of the certificates; created if missing.
        server_names: the server's host names and IP addresses; empty issues no server
            certificate.
        holders: names of the data holders.
        taps: names of the parties allowed to subscribe to the tap.
        days: validity of the issued certificates in days.

    Returns:
        The files written, each certificate before its key; the CA's only if it was created.

    Raises:
        CertificateError: nothing to issue, a bad or repeated name, a bad number of days, or an
            unusable CA.
        OSError: the folder or the files cannot be read or written.
    """
    parties = [(name, HOLDER) for name in holders] + [(name, TAP) for name in taps]
    if not parties and not server_names:
        raise CertificateError("nothing to issue: give server names or at least one party")
    if server_names:
        _alt_names(server_names)
    seen: dict[str, str] = {}
    for name, role in parties:
        _check_party_name(name)
        # Case-folded, as "Alice.pem" and "alice.pem" are one file on some file systems.
        if name.casefold() in seen:
            raise CertificateError(
                f"party name {name!r} is given twice (as {seen[name.casefold()]} and {role})"
            )
        seen[name.casefold()] = role
    _check_days(days)

    ca_created = not (out / "ca.pem").exists() and not (out / "ca.key").exists()
    ca = load_or_create_ca(out)
    written = [out / "ca.pem", out / "ca.key"] if ca_created else []
    if server_names:
        written += issue(out, ca, name=SERVER, role=SERVER, server_names=server_names, days=days)
    for name, role in parties:
        written += issue(out, ca, name=name, role=role, days=days)
    return written


def identity_of(pem: bytes) -> tuple[str, str]:
    """A certificate's name and role: its subject's commonName and organizationalUnitName.

    The certificate's signature is not checked here: that is the TLS handshake's job.

    Args:
        pem: one PEM certificate.

    Returns:
        (name, role), the role being `SERVER`, `HOLDER` or `TAP`.

    Raises:
        CertificateError: not a PEM certificate, no single CN or OU, or an unknown role.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise CertificateError(f"not a PEM certificate: {error}") from None
    name = _single_attribute(cert, NameOID.COMMON_NAME, "commonName (CN)")
    role = _single_attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "role (OU)")
    if role not in (SERVER, *ROLES):
        raise CertificateError(
            f"unknown role {role!r} in the certificate of {name!r}; "
            f"expected one of {', '.join((SERVER, *ROLES))}"
        )
    return name, role


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    # Two values would make the identity ambiguous, so they are refused rather than picked from.
    if len(values) != 1 or not isinstance(values[0].value, str) or not values[0].value:
        found = "none" if not values else f"{len(values)} values"
        raise CertificateError(f"the certificate needs exactly one {what}; found {found}")
    return values[0].value


def _load_ca(cert_path: Path, key_path: Path) -> CA:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        # TypeError: an encrypted key, which this tool never writes.
        raise CertificateError(
            f"cannot load the CA from {cert_path} and {key_path}: {error}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} is not an EC private key")
    if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
        raise CertificateError(f"{key_path} is not the private key of {cert_path}")
    if cert.not_valid_after_utc <= _now():
        raise CertificateError(
            f"the CA {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; remove "
            f"{cert_path} and {key_path} to create a new one (and reissue every certificate)"
        )
    return cert, key


def _public_bytes(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = ca_cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CertificateError("the CA's key is not an EC key") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _alt_names(server_names: Sequence[str]) -> list[x509.GeneralName]:
    """The server's subjectAltName: IP literals as IP addresses, anything else as DNS names."""
    if not server_names:
        raise CertificateError("the server certificate needs at least one server name")
    alt_names: list[x509.GeneralName] = []
    for text in dict.fromkeys(server_names):  # drops repeats, keeps the order
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(text)))
            continue
        except ValueError:
            pass
        if len(text) > 253 or not _DNS_NAME.fullmatch(text):
            raise CertificateError(f"server name {text!r} is neither an IP address nor a host name")
        alt_names.append(x509.DNSName(text))
    return alt_names


def _check_name(name: str) -> None:
    if not _SAFE_NAME.fullmatch(name):
        raise CertificateError(
            f"name {name!r} is not allowed: use 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def _check_party_name(name: str) -> None:
    _check_name(name)
    if name.casefold() in _RESERVED:
        raise CertificateError(f"party name {name!r} is reserved for the CA's and server's files")


def _check_days(days: int) -> None:
    if days < 1:
        raise CertificateError(f"days must be at least 1, not {days}")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, mode=PRIVATE)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), mode=SHARED)
