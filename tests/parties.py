"""Parties of one development CA, and a real server that requires their certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitnn.common.certs import make_certificates
from splitnn.common.credentials import Credentials
from splitnn.server.app import RunningServer
from tests.conftest import start_server


@dataclass(frozen=True)
class Pki:
    """The certificates of a server on loopback and of holders, all of one CA, in `folder`."""

    folder: Path

    @classmethod
    def make(cls, folder: Path, holders: list[str]) -> Pki:
        make_certificates(folder, server_names=["localhost", "127.0.0.1"], holders=holders, taps=[])
        return cls(folder)

    def party(self, name: str) -> Credentials:
        """The credentials of holder `name`."""
        f = self.folder
        return Credentials(ca=f / "ca.pem", cert=f / f"{name}.pem", key=f / f"{name}.key")

    def server_settings(self) -> dict[str, Path]:
        """The server's settings for mutual TLS."""
        f = self.folder
        return {
            "tls_cert": f / "server.pem",
            "tls_key": f / "server.key",
            "client_ca": f / "ca.pem",
        }

    def server_flags(self) -> list[str]:
        """`splitnn-server`'s flags for mutual TLS."""
        return [
            f"--{name.replace('_', '-')}={path}" for name, path in self.server_settings().items()
        ]

    def serve(self, model_dir: Path, **changes: Any) -> RunningServer:
        """A real server on a free loopback port that requires these certificates."""
        return start_server(model_dir, **self.server_settings(), **changes)
