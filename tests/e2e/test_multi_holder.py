"""Training groups as deployments run them: K data holders, each a real process, one server.

Each topology's group of 3 holders is run twice on one server: once as is, once started in the
opposite order with one holder killed (kill -9) mid-run and restarted with --resume. Both runs
must end with the same parameters, bit for bit, and the same reports: the group's order of steps
does not depend on the processes' timing, and a holder that drops out and comes back resumes.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from splitnn.client.resume import resume_path
from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.commands import ClientCommand
from splitnn.common.processes import ServerProcess, child_env, program
from splitnn.common.reports import RunReport

pytestmark = pytest.mark.slow

K = 3
GROUP = "g"
RUN_S = 300.0
COMPARED = ("train_accuracy", "val_accuracy", "test_accuracy", "best_epoch")


@dataclass(frozen=True)
class Member:
    report: RunReport
    body: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]


def _command(server: str, model_dir: Path, holder: int) -> list[str]:
    command = ClientCommand(
        server=server,
        dataset="mnist5k",
        noise=0.5 if holder == 1 else 0.0,  # each holder its own defence
        epochs=2,
        batch_size=64,
        max_steps=3,
        seed=5,
        threads=1,
        model_dir=model_dir,
        quiet=True,
        group=GROUP,
        holder=holder,
        holders=K,
        partition="dirichlet",
        alpha=1.0,
    )
    return [program("splitnn-client"), *command.args(), "--save-every", "1"]


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())  # fmt: skip


def _finish(process: subprocess.Popen[str], server_dir: Path) -> Member:
    stdout, stderr = process.communicate(timeout=RUN_S)
    assert process.returncode == 0, stderr[-3000:]
    report = RunReport.from_json(json.loads(stdout))
    body = load_checkpoint(Path(report.checkpoint))[0]
    head = load_checkpoint(server_dir / report.head_checkpoint)[0]  # named in its folder
    return Member(report, body, head)


def _run_group(
    server: str, model_dir: Path, *, order: list[int], kill: int | None, server_dir: Path
) -> list[Member]:
    """Starts the holders in `order`; kills holder `kill` with SIGKILL once it has saved, and
    starts it again with --resume. Returns the members by holder index."""
    processes: dict[int, subprocess.Popen[str]] = {}
    for holder in order:
        processes[holder] = _start(_command(server, model_dir, holder))
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
        args = [a for a in _command(server, model_dir, kill) if a != "--restart"]
        processes[kill] = _start([*args, "--resume"])
    return [_finish(processes[h], server_dir) for h in range(K)]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fields(report: RunReport) -> dict[str, Any]:
    """What must not depend on timing: the final numbers and every epoch's training sums (the
    per-epoch validation reads a head the others train on, so only the final one is compared)."""
    epochs = [(e.epoch, e.train_loss, e.train_accuracy, e.samples) for e in report.history]
    return {name: getattr(report, name) for name in COMPARED} | {"epochs": epochs}


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
        assert _same(first.body, second.body)
        assert _same(first.head, second.head)
        assert _fields(first.report) == _fields(second.report)
        assert first.report.group == second.report.group
    groups = [m.report.group for m in plain]
    assert [g.holder for g in groups if g is not None] == [0, 1, 2]
    assert sum(g.train_samples for g in groups if g is not None) == 3000  # mnist5k's train split
    assert len({g.partition_digest for g in groups if g is not None}) == 1  # one partition
    bodies = [m.body for m in plain]
    heads = [m.head for m in plain]
    if topology == "shared-head":
        # One head for all; every holder keeps a part 1 of its own.
        assert all(_same(heads[0], h) for h in heads)
        assert not _same(bodies[0], bodies[1]) and not _same(bodies[1], bodies[2])
    elif topology == "round-robin":
        # Part 1 passed from holder to holder: all end with the last holder's; one head.
        assert all(_same(bodies[0], b) for b in bodies)
        assert all(_same(heads[0], h) for h in heads)
    else:
        # Averaged after the last round: the same part 1 and the same head everywhere.
        assert all(_same(bodies[0], b) for b in bodies)
        assert all(_same(heads[0], h) for h in heads)
    # The defence is the holder's own: holder 1 (b = 0.5) sent noisier tensors than holder 0.
    assert plain[1].report.noise == 0.5 and plain[0].report.noise == 0.0
