"""`splitnn-certs`: issue development certificates for the server and its parties."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509

from splitnn.common.certs import CA_NAME, LEAF_DAYS, SERVER, identity_of, make_certificates
from splitnn.options import dir_option
from splitnn.programs import program


@program("splitnn-certs", example_option="OUT=certs")
@dir_option(
    "--out",
    "certs",
    help="Folder of the CA and the certificates; created if missing, its CA reused if present.",
)
@click.option(
    "--server-name",
    "server_names",
    metavar="NAME",
    multiple=True,
    help="A host name or IP address clients dial the server by (repeatable).",
)
@click.option("--holder", "holders", metavar="NAME", multiple=True, help="A data holder.")
@click.option("--tap", "taps", metavar="NAME", multiple=True, help="A party allowed to tap.")
@click.option(
    "--days", type=click.IntRange(1), default=LEAF_DAYS, help="Validity of issued certificates."
)
def main(
    out: Path,
    server_names: tuple[str, ...],
    holders: tuple[str, ...],
    taps: tuple[str, ...],
    days: int,
) -> None:
    """Issue DEVELOPMENT certificates for mutual TLS between the server and its parties.

    Creates a local CA in OUT (ca.pem, ca.key) on first use and reuses it afterwards, so parties
    can be added later. Writes server.pem/server.key for the --server-name values and
    NAME.pem/NAME.key for each --holder and --tap; a party's certificate carries its name (CN)
    and its role (OU, holder or tap), which decide what the server lets it do. Private keys are
    unencrypted and readable by their owner only.

    These are for development and tests, not production: the CA key lies unencrypted next to
    the certificates, and anyone who holds it can issue any identity.

    \b
    Example:
      splitnn-certs --out certs --server-name server --server-name localhost \\
        --holder alice --holder bob --tap attacker
    """
    if not server_names and not holders and not taps:
        raise click.UsageError("nothing to issue: give --server-name, --holder or --tap")
    ca_existed = (out / "ca.pem").exists()
    written = make_certificates(
        out, server_names=server_names, holders=holders, taps=taps, days=days
    )
    lines = [f"{path}  {_describe(path)}" for path in written]
    if ca_existed:
        click.echo(f"{out / 'ca.pem'}  CA certificate, existing one reused")
    for line in lines:
        click.echo(line)
    holder = holders[0] if holders else "NAME"
    click.echo(
        f"use: splitnn-server --tls-cert {out / 'server.pem'} --tls-key {out / 'server.key'} "
        f"--client-ca {out / 'ca.pem'}; splitnn-client --tls-ca {out / 'ca.pem'} "
        f"--tls-cert {out / f'{holder}.pem'} --tls-key {out / f'{holder}.key'}"
    )


def _describe(path: Path) -> str:
    """What a written file is, e.g. ``holder certificate (CN=alice)``."""
    if path.name == "ca.pem":
        return f"CA certificate (CN={CA_NAME})"
    if path.name == "ca.key":
        return "CA private key (signs certificates: keep it private)"
    if path.suffix == ".key":
        name, role = identity_of(path.with_suffix(".pem").read_bytes())
        return f"{role} private key (CN={name})"
    pem = path.read_bytes()
    name, role = identity_of(pem)
    description = f"{role} certificate (CN={name})"
    if role == SERVER:
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        shown = [f"DNS:{n}" for n in sans.get_values_for_type(x509.DNSName)]
        shown += [f"IP:{ip}" for ip in sans.get_values_for_type(x509.IPAddress)]
        description += f" for {', '.join(shown)}"
    return description
