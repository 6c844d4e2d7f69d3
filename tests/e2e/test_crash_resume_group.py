"""A training group through a kill -9 of the server: every holder is a real process, the server
is killed mid-run (at a holder's first save of epoch 2, not after a delay) and started again on
the same port and model folder; every holder resumes and the group ends exactly like the same
group never interrupted: the same part 1 and head, bit for bit, and the same reports.
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
from splitnn.common.checkpoints import load_checkpoint, manifest_path
from splitnn.common.commands import ClientCommand
from splitnn.common.processes import ServerProcess, child_env, program
from splitnn.common.reports import RunReport

pytestmark = pytest.mark.slow

K = 2
GROUP = "g"
EPOCHS = 3
RUN_S = 300.0
COMPARED = ("train_accuracy", "val_accuracy", "test_accuracy", "best_epoch")


@dataclass(frozen=True)
class Member:
    report: RunReport
    body: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    stderr: str


def _holder(server: str, model_dir: Path, holder: int) -> subprocess.Popen[str]:
    command = ClientCommand(
        server=server,
        dataset="mnist5k",
        noise=0.5 if holder == 1 else 0.0,
        epochs=EPOCHS,
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
    args = [program("splitnn-client"), *command.args(), "--save-every", "1"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())  # fmt: skip


def _server(root: Path, topology: str, *, port: int = 0) -> ServerProcess:
    args = ["--model-dir", str(root / "server"), "--group", f"{GROUP}={topology}:{K}", "-v"]
    root.mkdir(parents=True, exist_ok=True)
    return ServerProcess(args, log=(root / "server.log").open("a"), port=port)


def _finish(process: subprocess.Popen[str], server_dir: Path) -> Member:
    stdout, stderr = process.communicate(timeout=RUN_S)
    assert process.returncode == 0, stderr[-3000:]
    report = RunReport.from_json(json.loads(stdout))
    body = load_checkpoint(Path(report.checkpoint))[0]
    head = load_checkpoint(server_dir / report.head_checkpoint)[0]  # named in its folder
    return Member(report, body, head, stderr)


def _saved_step(model_dir: Path, holder: int) -> tuple[int, int] | None:
    """The step holder `holder` saved last (its resume state's manifest), None: none yet."""
    noise = "05" if holder == 1 else "00"
    run = f"{GROUP}_h{holder}_mnist5k_{noise}noise_00nopeek_seed5"
    try:
        step = json.loads(manifest_path(resume_path(model_dir, run)).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None  # none yet, or being replaced
    return int(step[0]), int(step[1])


def _fields(report: RunReport) -> dict[str, Any]:
    """What must not depend on timing (see tests/e2e/test_multi_holder.py)."""
    epochs = [(e.epoch, e.train_loss, e.train_accuracy, e.samples) for e in report.history]
    return {name: getattr(report, name) for name in COMPARED} | {"epochs": epochs}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("topology", ["splitfed", "round-robin"])
def test_a_group_survives_a_kill_of_the_server_and_ends_the_same(
    tmp_path: Path, topology: str
) -> None:
    plain_root, root = tmp_path / "plain", tmp_path / "killed"
    with _server(plain_root, topology) as server:
        holders = [_holder(server.address, plain_root / "client", h) for h in range(K)]
        plain = [_finish(p, plain_root / "server") for p in holders]

    server = _server(root, topology)
    port = int(server.address.rsplit(":", 1)[1])
    holders = [_holder(server.address, root / "client", h) for h in range(K)]
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
        resumed = [_finish(p, root / "server") for p in holders]
    log = (root / "server.log").read_text()

    assert all(running), f"a holder had ended before the kill (saved at {at_kill})"
    assert "its run is taken up from save" in log
    for holder in range(K):
        assert "the server lost the session" in resumed[holder].stderr
        assert _same(plain[holder].body, resumed[holder].body), f"part 1 of holder {holder}"
        assert _same(plain[holder].head, resumed[holder].head), f"head of holder {holder}"
        assert _fields(plain[holder].report) == _fields(resumed[holder].report)
    saves = root / "server" / "groups" / GROUP
    assert not any(saves.rglob("*.group.ckpt")), "a finished group's saves are removed"
    print(  # the numbers the report quotes
        f"{topology}: killed with holders saved at {at_kill}; test accuracy "
        f"uninterrupted {[m.report.test_accuracy for m in plain]}, "
        f"interrupted {[m.report.test_accuracy for m in resumed]}"
    )
