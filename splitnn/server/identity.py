"""Who is calling: a party's identity from its client certificate or its bearer token.

Three ways a server can run, chosen by its flags:

- mutual TLS (``--client-ca``): the identity is the client certificate's name and role (CN, OU);
- bearer tokens (``--tokens FILE``): the ``authorization: Bearer <token>`` header names a party,
  compared in constant time against every token of the file;
- neither (a loopback or ``--insecure`` server): every caller is one anonymous party, as on a
  single user's machine. It holds the holder role, and the tap role only where the operator
  grants it (``--anonymous-tap``): on loopback any local user can call.

Runs, sessions, resume states and head checkpoints belong to an identity's `folder`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from splitnn.common.certs import HOLDER, TAP, CertificateError, identity_of
from splitnn.server.errors import Forbidden, Unauthenticated

ROLES = (HOLDER, TAP)
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Identity:
    """A party: its name and the roles it may act in (holder: train; tap: subscribe)."""

    name: str
    roles: frozenset[str]
    anonymous: bool = False

    @property
    def folder(self) -> str:
        """A file-safe folder name, distinct for distinct parties.

        Generated names start with "_", which no safe party name does, so they cannot collide.
        """
        if self.anonymous:
            return "_anonymous"
        if _SAFE.fullmatch(self.name):
            return self.name
        return "_id-" + hashlib.sha256(self.name.encode()).hexdigest()[:24]

    def require(self, role: str) -> None:
        """Raises PERMISSION_DENIED unless this identity may act as `role`."""
        if role not in self.roles:
            held = ", ".join(sorted(self.roles)) or "none"
            raise Forbidden(f"this needs the {role} role; {self.name!r} holds: {held}")


ANONYMOUS = Identity("anonymous", frozenset({HOLDER}), anonymous=True)
ANONYMOUS_TAP = Identity("anonymous", frozenset(ROLES), anonymous=True)


class TokenError(Exception):
    """A tokens file that cannot be used; the text says where and why."""


def load_tokens(path: Path) -> dict[str, Identity]:
    """Reads ``<name> <role> <token>`` lines (``#`` starts a comment) into token -> identity.

    Raises:
        TokenError: an unreadable file, a malformed line, an unknown role, a short or repeated
            token.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise TokenError(f"cannot read tokens file {path}: {error.strerror}") from None
    tokens: dict[str, Identity] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 3:
            raise TokenError(f"{where}: expected '<name> <role> <token>'")
        name, role, token = fields
        if role not in ROLES:
            raise TokenError(f"{where}: role must be one of {', '.join(ROLES)}")
        if len(token) < _MIN_TOKEN_CHARS:
            raise TokenError(f"{where}: a token needs at least {_MIN_TOKEN_CHARS} characters")
        if token in tokens:
            raise TokenError(f"{where}: this token is already given to another party")
        tokens[token] = Identity(name, frozenset({role}))
    if not tokens:
        raise TokenError(f"{path} holds no tokens")
    return tokens


class Authenticator:
    """Turns a call's TLS peer and metadata into an `Identity`.

    Args:
        certificates: the server requires client certificates (mutual TLS).
        tokens: token -> identity (``--tokens``), or None.
        anonymous_tap: without certificates or tokens, callers also hold the tap role.
    """

    def __init__(
        self,
        *,
        certificates: bool,
        tokens: Mapping[str, Identity] | None,
        anonymous_tap: bool = False,
    ) -> None:
        self._certificates = certificates
        self._tokens = dict(tokens or {})
        self._anonymous = ANONYMOUS_TAP if anonymous_tap else ANONYMOUS

    @property
    def anonymous(self) -> bool:
        return not self._certificates and not self._tokens

    def identify(
        self,
        auth_context: Mapping[str, Iterable[bytes]],
        metadata: Iterable[tuple[str, str | bytes]] | None,
    ) -> Identity:
        """The caller's identity.

        Raises:
            Unauthenticated: no valid certificate or token where one is required.
        """
        if self._certificates:
            pems = list(auth_context.get("x509_pem_cert") or [])
            if pems:
                try:
                    name, role = identity_of(pems[0])
                except CertificateError as error:
                    raise Unauthenticated(f"client certificate not accepted: {error}") from None
                return Identity(name, frozenset({role}) & frozenset(ROLES))
        if self._tokens:
            return self._by_token(metadata or ())
        if self._certificates:
            raise Unauthenticated("a client certificate is required")
        return self._anonymous

    def _by_token(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity:
        given = b""
        for key, value in metadata:
            if key == "authorization":
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                given = text.removeprefix("Bearer ").strip().encode()
        found = None
        for token, identity in self._tokens.items():  # every token, so timing tells nothing
            if hmac.compare_digest(given, token.encode()):
                found = identity
        if found is None:
            raise Unauthenticated("missing or unknown token")
        return found
