"""``splitnn-server --stop-after-runs``: only runs that trained count, whoever closes the others.

The server is a real process with mutual TLS; Mallory holds a valid certificate.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId
from splitnn.common.credentials import Credentials
from splitnn.common.processes import ServerProcess
from tests.conftest import seeded_batch, settings
from tests.parties import Pki

pytestmark = pytest.mark.slow

B = 8
# The server looks for finished runs every 0.2 s: this is several of its looks.
SETTLE_S = 1.5
STOP_S = 30.0


def _run(address: str, credentials: Credentials, run: str, *, steps: int) -> None:
    spec = settings(run, max_batch_size=B)
    link = ServerLink(address, spec, connect_timeout=30.0, credentials=credentials)
    for batch in range(steps):
        link.train_step(StepId(run, 1, batch), *seeded_batch(batch, B))
    link.close(finished=True)


def _stopped(server: ServerProcess, within: float) -> int | None:
    deadline = time.monotonic() + within
    while server.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.process.poll()


def test_closing_runs_that_never_trained_does_not_stop_the_server(tmp_path: Path) -> None:
    pki = Pki.make(tmp_path / "certs", ["alice", "mallory"])
    flags = ["--model-dir", str(tmp_path / "models"), "--stop-after-runs", "2", "-q"]
    with ServerProcess([*flags, *pki.server_flags()]) as server:
        address = server.address
        for number in range(3):
            _run(address, pki.party("mallory"), f"empty{number}", steps=0)
        after_empty_runs = _stopped(server, SETTLE_S)
        _run(address, pki.party("alice"), "alices-run", steps=2)
        after_one = _stopped(server, SETTLE_S)
        _run(address, pki.party("alice"), "alices-second-run", steps=1)
        after_two = _stopped(server, STOP_S)

    assert after_empty_runs is None, "runs that never trained stopped the server"
    assert after_one is None
    assert after_two == 0
