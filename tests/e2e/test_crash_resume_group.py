"""A training group through a kill -9 of the server: every holder is a real process, the server
is killed mid-run (at a holder's first save of epoch 2, not after a delay) and started again on
the same port and model folder; every holder resumes and the group ends exactly like the same
group never interrupted: the same part 1 and head, bit for bit, and the same reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from splitnn.client.resume import resume_path
from splitnn.common.checkpoints import manifest_path
from splitnn.common.processes import ServerProcess
from tests.e2e.group_members import (
    GROUP,
    RUN_S,
    finish,
    holder_args,
    same,
    start,
    timing_free,
)

pytestmark = pytest.mark.slow

K = 2
EPOCHS = 3


def _server(root: Path, topology: str, *, port: int = 0) -> ServerProcess:
    args = ["--model-dir", str(root / "server"), "--group", f"{GROUP}={topology}:{K}", "-v"]
    root.mkdir(parents=True, exist_ok=True)
    return ServerProcess(args, log=(root / "server.log").open("a"), port=port)


def _saved_step(model_dir: Path, holder: int) -> tuple[int, int] | None:
    """The step holder `holder` saved last (its resume state's manifest), None: none yet."""
    noise = "05" if holder == 1 else "00"
    run = f"{GROUP}_h{holder}_mnist5k_{noise}noise_00nopeek_seed5"
    try:
        step = json.loads(manifest_path(resume_path(model_dir, run)).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None  # none yet, or being replaced
    return int(step[0]), int(step[1])


# Splitfed only, as processes: of the topologies it leaves the most with the server (every
# holder's part 1 of the round and their average). Every topology's saves are taken up after a
# crash at five points in tests/unit/test_group_saves.py, and a killed holder of each resumes
# in test_multi_holder.py; a round-robin run here took another 100 s of CI.
@pytest.mark.parametrize("topology", ["splitfed"])
def test_a_group_survives_a_kill_of_the_server_and_ends_thesame(
    tmp_path: Path, topology: str
) -> None:
    plain_root, root = tmp_path / "plain", tmp_path / "killed"
    with _server(plain_root, topology) as server:
        holders = [
            start(holder_args(server.address, plain_root / "client", h, holders=K, epochs=EPOCHS))
            for h in range(K)
        ]
        plain = [finish(p, plain_root / "server") for p in holders]

    server = _server(root, topology)
    port = int(server.address.rsplit(":", 1)[1])
    holders = [
        start(holder_args(server.address, root / "client", h, holders=K, epochs=EPOCHS))
        for h in range(K)
    ]
    deadline = time.monotonic() + RUN_S
    # The trigger: holder 0's first save of epoch 2 (the server saved the group before it).
    while (_saved_step(root / "client", 0) or (0, 0)) < (2, 0):
        assert all(p.poll() is None for p in holders), "a holder ended before the kill"
        assert time.monotonic() < deadline, "holder 0 never reached epoch 2"
        time.sleep(0.02)
    server.process.kill()
    server.process.wait()
    at_kill = [_saved_step(root / "client", h) for h in range(K)]
    running = [p.poll() is None for p in holders]
    time.sleep(1.0)  # the holders retry against nothing for a while
    with _server(root, topology, port=port):
        resumed = [finish(p, root / "server") for p in holders]
    log = (root / "server.log").read_text()

    assert all(running), f"a holder had ended before the kill (saved at {at_kill})"
    assert "its run is taken up from save" in log
    for holder in range(K):
        assert "the server lost the session" in resumed[holder].stderr
        assert same(plain[holder].body, resumed[holder].body), f"part 1 of holder {holder}"
        assert same(plain[holder].head, resumed[holder].head), f"head of holder {holder}"
        assert timing_free(plain[holder].report) == timing_free(resumed[holder].report)
    saves = root / "server" / "groups" / GROUP
    assert not any(saves.rglob("*.group.ckpt")), "a finished group's saves are removed"
    print(  # the numbers the report quotes
        f"{topology}: killed with holders saved at {at_kill}; test accuracy "
        f"uninterrupted {[m.report.test_accuracy for m in plain]}, "
        f"interrupted {[m.report.test_accuracy for m in resumed]}"
    )
