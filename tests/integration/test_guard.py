"""The data holder's guard as a real `splitnn-client` process against a real server on port 0:
a server whose head ignores the labels is flagged (with ``--guard-action stop``: exit 4, the
state saved, ``--resume`` goes on past the alarm); an honest one is not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from splitnn.common import exits
from splitnn.common.codec import StepId
from splitnn.common.reports import RunReport
from splitnn.server.app import RunningServer
from splitnn.server.head import HEAD_POLICIES, LoneHead, StepResult, apply_step
from tests.conftest import address_of, run_program, start_server

pytestmark = pytest.mark.slow

RUN = "guarded"


class LabelBlindHead(LoneHead):
    """Trains on labels of its own (all zero), never on the ones sent: its gradients steer part 1
    the same way whatever the labels, as a hijacking server's do."""

    def apply(self, step: StepId, activations: torch.Tensor, labels: torch.Tensor) -> StepResult:
        return apply_step(self.head, self.optimizer, step, activations, torch.zeros_like(labels))


@pytest.fixture
def blind_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    # The server takes its sessions' heads from the registry's default entry when it starts.
    monkeypatch.setitem(HEAD_POLICIES, "honest", LabelBlindHead)
    server = start_server(tmp_path / "server")
    yield server
    server.shutdown(grace=0.0)


@pytest.fixture
def honest_server(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "server")
    yield server
    server.shutdown(grace=0.0)


def client(server: RunningServer, tmp_path: Path, *extra: str) -> Any:
    """`splitnn-client` with the guard, 3 epochs of 12 batches of 32, to completion."""
    args = ["--server", address_of(server), "--run", RUN, "--model-dir", str(tmp_path / "m")]
    args += ["--epochs", "3", "--max-steps", "12", "--batch-size", "32", "--lr", "1e-3"]
    args += ["--guard", "splitguard", "--guard-start-after", "2"]
    args += ["--guard-fake-probability", "0.3", "--threads", "1", "--json", "-q"]
    return run_program("splitnn-client", *args, *extra, cwd=tmp_path)


def test_a_blind_server_stops_the_run_with_exit_4_and_resume_goes_on(
    blind_server: RunningServer, tmp_path: Path
) -> None:
    stopped = client(blind_server, tmp_path, "--guard-action", "stop")

    assert stopped.returncode == exits.ALARM, stopped.stderr
    assert "GUARD ALARM" in stopped.stderr
    assert stopped.stderr.count("\n") == 1  # one line, no traceback
    state = tmp_path / "m" / "client" / f"{RUN}.ckpt"
    assert state.exists()
    step = json.loads(state.with_name(state.name + ".json").read_text())["step"]

    resumed = client(blind_server, tmp_path, "--resume")

    assert resumed.returncode == 0, resumed.stderr
    report = RunReport.from_json(json.loads(resumed.stdout.splitlines()[-1]))
    epoch, batch = step
    assert report.guard_detected_at_step == (epoch - 1) * 12 + batch
    assert report.resumed_from == str(StepId(RUN, epoch, batch))
    assert [h.epoch for h in report.history] == [1, 2, 3]
    assert not state.exists()


def test_an_honest_server_raises_no_alarm(honest_server: RunningServer, tmp_path: Path) -> None:
    finished = client(honest_server, tmp_path, "--guard-action", "stop")

    assert finished.returncode == 0, finished.stderr
    report = RunReport.from_json(json.loads(finished.stdout.splitlines()[-1]))
    assert report.guard == "splitguard"
    assert len(report.guard_scores) >= 3
    assert min(s.score for s in report.guard_scores) > 0.5
    assert report.guard_detected_at_step is None
