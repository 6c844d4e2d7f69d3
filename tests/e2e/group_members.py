"""Data holders of one training group as real `splitnn-client` processes, and what they end with.

Shared by the end-to-end tests that compare a group run with a disturbed one (a holder or the
server killed): the same holders, and the same fields that must not depend on timing.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from splitnn.common.checkpoints import load_checkpoint
from splitnn.common.commands import ClientCommand
from splitnn.common.processes import child_env, program
from splitnn.common.reports import RunReport

GROUP = "g"
RUN_S = 300.0
COMPARED = ("train_accuracy", "val_accuracy", "test_accuracy", "best_epoch")


@dataclass(frozen=True)
class Member:
    """A finished holder: its report, its final part 1, its group's head and its stderr."""

    report: RunReport
    body: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    stderr: str


def holder_args(
    server: str, model_dir: Path, holder: int, *, holders: int, epochs: int
) -> list[str]:
    """Holder `holder` of `holders` (Dirichlet alpha 1, 3 steps of 64 an epoch, saving at each);
    holder 1 has its own defence (noise 0.5)."""
    command = ClientCommand(
        server=server,
        dataset="mnist5k",
        noise=0.5 if holder == 1 else 0.0,
        epochs=epochs,
        batch_size=64,
        max_steps=3,
        seed=5,
        threads=1,
        model_dir=model_dir,
        quiet=True,
        group=GROUP,
        holder=holder,
        holders=holders,
        partition="dirichlet",
        alpha=1.0,
    )
    return [program("splitnn-client"), *command.args(), "--save-every", "1"]


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())  # fmt: skip


def finish(process: subprocess.Popen[str], server_dir: Path) -> Member:
    """Waits for a holder; it must exit 0. Its group's head is read from the server's folder."""
    stdout, stderr = process.communicate(timeout=RUN_S)
    assert process.returncode == 0, stderr[-3000:]
    report = RunReport.from_json(json.loads(stdout))
    body = load_checkpoint(Path(report.checkpoint))[0]
    head = load_checkpoint(server_dir / report.head_checkpoint)[0]  # named in its folder
    return Member(report, body, head, stderr)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def timing_free(report: RunReport) -> dict[str, Any]:
    """What must not depend on timing: the final numbers and every epoch's training sums (the
    per-epoch validation reads a head the others train on, so only the final one is compared)."""
    epochs = [(e.epoch, e.train_loss, e.train_accuracy, e.samples) for e in report.history]
    return {name: getattr(report, name) for name in COMPARED} | {"epochs": epochs}
