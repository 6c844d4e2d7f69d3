"""The server's side of TLS and identity: what it listens with and whom it believes.

Plaintext is served on loopback only, unless the operator says ``--insecure``: anywhere else the
cut tensors, the labels and the session tokens would cross the network readable by anyone on
the path.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

from splitnn.common import exits
from splitnn.server.config import ServerConfig
from splitnn.server.identity import Authenticator, TokenError, load_tokens

logger = logging.getLogger(__name__)


class SecurityError(exits.BadUsage, ValueError):
    """Settings that would expose the server, or TLS files that cannot be used."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check(cfg: ServerConfig) -> None:
    """Refuses settings that do not fit together or would serve plaintext beyond loopback."""
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise SecurityError("--tls-cert and --tls-key go together")
    if cfg.client_ca is not None and cfg.tls_cert is None:
        raise SecurityError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if cfg.tls_cert is None and not cfg.insecure and not is_loopback(cfg.host):
        raise SecurityError(
            f"plaintext is served on loopback only, not on {cfg.host}: give --tls-cert and "
            "--tls-key (and --client-ca for mutual TLS), or --insecure"
        )
    authenticated = cfg.client_ca is not None or cfg.tokens is not None
    if cfg.anonymous_tap and authenticated:
        raise SecurityError("--anonymous-tap is for servers without --client-ca or --tokens")
    named = [group.name for group in cfg.groups if group.members]
    if named and not authenticated:
        raise SecurityError(
            f"group {named[0]} names its members, but without --client-ca or --tokens every "
            "caller is one anonymous party: name none, or authenticate the parties"
        )
    if cfg.tap and not authenticated and not cfg.anonymous_tap:
        raise SecurityError(
            "--tap without --client-ca or --tokens serves no one: callers are anonymous and "
            "hold the tap role only with --anonymous-tap"
        )


def credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (mutual with `client_ca`) server credentials; None for plaintext."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        if is_loopback(cfg.host):
            logger.info("no TLS: plaintext on loopback")
        else:
            logger.warning(
                "no TLS: plaintext beyond loopback (--insecure): anyone on the path "
                "reads the cut tensors, the labels and the session tokens"
            )
        return None
    ca = _read(cfg.client_ca) if cfg.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(_read(cfg.tls_key), _read(cfg.tls_cert))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def authenticator(cfg: ServerConfig) -> Authenticator:
    """Identities from client certificates (`client_ca`) and/or bearer tokens (`tokens`)."""
    try:
        tokens = load_tokens(cfg.tokens) if cfg.tokens is not None else None
    except TokenError as error:
        raise SecurityError(str(error)) from None
    found = Authenticator(
        certificates=cfg.client_ca is not None, tokens=tokens, anonymous_tap=cfg.anonymous_tap
    )
    if found.anonymous:
        log = logger.info if is_loopback(cfg.host) else logger.warning
        roles = "holder and tap roles" if cfg.anonymous_tap else "holder role"
        log("no authentication: every caller is one anonymous party with the %s", roles)
    return found


def _read(path: Path | None) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except OSError as error:
        raise SecurityError(f"cannot read {path}: {error.strerror}") from None
