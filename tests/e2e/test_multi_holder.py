"""Training groups as deployments run them: K data holders, each a real process, one server.

Each topology's group of 3 holders is run twice on one server: once as is, once started in the
opposite order with one holder killed (kill -9) mid-run and restarted with --resume. Both runs
must end with the same parameters, bit for bit, and the same reports: the group's order of steps
does not depend on the processes' timing, and a holder that drops out and comes back resumes.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from splitnn.client.resume import resume_path
from splitnn.common.processes import ServerProcess
from tests.e2e.group_members import (
    GROUP,
    RUN_S,
    Member,
    finish,
    holder_args,
    same,
    start,
    timing_free,
)

pytestmark = pytest.mark.slow

K = 3


def _run_group(
    server: str, model_dir: Path, *, order: list[int], kill: int | None, server_dir: Path
) -> list[Member]:
    """Starts the holders in `order`; kills holder `kill` with SIGKILL once it has saved, and
    starts it again with --resume. Returns the members by holder index."""
    processes: dict[int, subprocess.Popen[str]] = {}
    for holder in order:
        processes[holder] = start(holder_args(server, model_dir, holder, holders=K, epochs=2))
        time.sleep(0.5)  # a different timing from the plain run's
    if kill is not None:
        run = f"{GROUP}_h{kill}_mnist5k_{'05' if kill == 1 else '00'}noise_00nopeek_seed5"
        state = resume_path(model_dir, run)
        deadline = time.monotonic() + RUN_S
        while not state.exists():
            assert processes[kill].poll() is None, "the holder ended before it could be killed"
            assert time.monotonic() < deadline, "the holder never saved"
            time.sleep(0.02)
        processes[kill].kill()
        processes[kill].communicate(timeout=30)
        assert state.exists(), "killed after its run finished: nothing left to resume"
        args = [
            a for a in holder_args(server, model_dir, kill, holders=K, epochs=2) if a != "--restart"
        ]
        processes[kill] = start([*args, "--resume"])
    return [finish(processes[h], server_dir) for h in range(K)]


@pytest.mark.parametrize("topology", ["shared-head", "round-robin", "splitfed"])
def test_group_reproduces_its_parameters_across_timing_and_a_killed_holder(
    tmp_path: Path, topology: str
) -> None:
    served = tmp_path / "server"
    args = ["--model-dir", str(served), "--group", f"{GROUP}={topology}:{K}", "-q"]
    with ServerProcess(args) as server:
        plain = _run_group(
            server.address, tmp_path / "a", order=[0, 1, 2], kill=None, server_dir=served
        )
        # The group is free again once all its holders finished: the same group runs again.
        again = _run_group(
            server.address, tmp_path / "b", order=[2, 1, 0], kill=1, server_dir=served
        )

    assert again[1].report.resumed_from is not None  # holder 1 did continue from a save
    for first, second in zip(plain, again, strict=True):
        assert same(first.body, second.body)
        assert same(first.head, second.head)
        assert timing_free(first.report) == timing_free(second.report)
        assert first.report.group == second.report.group
    groups = [m.report.group for m in plain]
    assert [g.holder for g in groups if g is not None] == [0, 1, 2]
    assert sum(g.train_samples for g in groups if g is not None) == 3000  # mnist5k's train split
    assert len({g.partition_digest for g in groups if g is not None}) == 1  # one partition
    bodies = [m.body for m in plain]
    heads = [m.head for m in plain]
    if topology == "shared-head":
        # One head for all; every holder keeps a part 1 of its own.
        assert all(same(heads[0], h) for h in heads)
        assert not same(bodies[0], bodies[1]) and not same(bodies[1], bodies[2])
    elif topology == "round-robin":
        # Part 1 passed from holder to holder: all end with the last holder's; one head.
        assert all(same(bodies[0], b) for b in bodies)
        assert all(same(heads[0], h) for h in heads)
    else:
        # Averaged after the last round: the same part 1 and the same head everywhere.
        assert all(same(bodies[0], b) for b in bodies)
        assert all(same(heads[0], h) for h in heads)
    # The defence is the holder's own: holder 1 (b = 0.5) sent noisier tensors than holder 0.
    assert plain[1].report.noise == 0.5 and plain[0].report.noise == 0.0
