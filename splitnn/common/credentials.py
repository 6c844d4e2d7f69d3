"""How a party proves who it is and reaches the server: TLS files, a bearer token, the channel.

Used by every program that calls the server (data holder, attacker's live tap, health probe).
With a CA the channel is TLS and the server's certificate must name the address's host (or
`server_name`); with a certificate and key as well it is mutual TLS. A token rides in the
``authorization: Bearer`` header of every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from splitnn.common import exits


class CredentialError(exits.Failed):
    """TLS files or a token file that cannot be used; the text says which and why."""


@dataclass(frozen=True)
class Credentials:
    """A party's TLS files and token (all optional: none means plaintext, anonymous).

    Attributes:
        ca: PEM of the CA that signed the server's certificate; given, the channel is TLS.
        cert, key: this party's certificate and private key (mutual TLS).
        server_name: the name the server's certificate must carry, when it is not the host of
            the address (e.g. connecting to 127.0.0.1 with a certificate for "localhost").
        token_file: a file whose first line is this party's bearer token.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise CredentialError("a client certificate needs its key, and a key its certificate")
        if self.cert is not None and self.ca is None:
            raise CredentialError("a client certificate needs --tls-ca to check the server")

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def args(self) -> list[str]:
        """The command-line flags that give these credentials to another splitnn program."""
        flags = [
            ("--tls-ca", self.ca),
            ("--tls-cert", self.cert),
            ("--tls-key", self.key),
            ("--tls-server-name", self.server_name),
            ("--token-file", self.token_file),
        ]
        return [arg for flag, value in flags if value is not None for arg in (flag, str(value))]


def open_channel(
    address: str, credentials: Credentials, *, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to `address` with `credentials` (TLS, mutual TLS, token, or plaintext).

    Raises:
        CredentialError: a file cannot be read.
    """
    options = list(options)
    token = _read_token(credentials.token_file) if credentials.token_file else None
    if not credentials.tls:
        channel = grpc.insecure_channel(address, options=options)
        return grpc.intercept_channel(channel, _Bearer(token)) if token else channel
    ssl = grpc.ssl_channel_credentials(
        root_certificates=_read(credentials.ca),
        private_key=_read(credentials.key) if credentials.key else None,
        certificate_chain=_read(credentials.cert) if credentials.cert else None,
    )
    if credentials.server_name:
        options.append(("grpc.ssl_target_name_override", credentials.server_name))
    if token:
        ssl = grpc.composite_channel_credentials(ssl, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(address, ssl, options=options)


def _read(path: Path | None) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except OSError as error:
        raise CredentialError(f"cannot read {path}: {error.strerror}") from None


def _read_token(path: Path) -> str:
    lines = _read(path).decode(errors="replace").split()
    if not lines:
        raise CredentialError(f"{path} holds no token")
    return lines[0]


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <token>`` to every call of a plaintext channel.

    (On TLS channels the token goes through gRPC's own call credentials instead, which refuse
    plaintext.)
    """

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
