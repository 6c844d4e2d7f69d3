"""Edges of a data holder's epoch: a one-sample last batch under NoPeek, and bad seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitnn.client.progress import Progress
from splitnn.client.split_trainer import SplitTrainer
from splitnn.client.transport import ServerLink
from splitnn.common.datasets import Subset
from splitnn.common.models import build_body
from splitnn.common.noise import LaplaceNoise
from tests.conftest import settings

pytestmark = pytest.mark.slow  # trains through a server, and starts the programs

BATCH = 8


def _subset(n: int) -> Subset:
    generator = torch.Generator().manual_seed(3)
    return Subset(
        images=torch.rand(n, 1, 28, 28, generator=generator),
        labels=torch.randint(0, 10, (n,), generator=generator),
        indices=torch.arange(n),
    )


def test_nopeek_epoch_ending_in_a_one_sample_batch(address: str) -> None:
    # 2 * 8 + 1 samples: the epoch's last batch holds one sample, where dCor is undefined.
    link = ServerLink(address, settings("one-sample", max_batch_size=BATCH))
    body = build_body(0)
    before = [p.detach().clone() for p in body.parameters()]
    trainer = SplitTrainer(
        body=body,
        link=link,
        run="one-sample",
        noise=LaplaceNoise(0.5, seed=1),
        nopeek=0.5,
        lr=1e-3,
        batch_size=BATCH,
        seed=0,
    )
    progress = Progress()

    trainer.train_epoch(_subset(2 * BATCH + 1), progress, show_progress=False)

    link.close()
    assert progress.samples == 2 * BATCH + 1
    assert len(trainer.step_seconds) == 3
    after = list(body.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


@pytest.mark.parametrize("program", ["splitnn-client", "splitnn-attack", "splitnn-sim"])
def test_a_negative_seed_is_a_usage_error(program: str) -> None:
    command = [str(Path(sys.executable).parent / program)]
    args = ["run", "--seed", "-3"] if program == "splitnn-attack" else ["--seed", "-3"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "-3 is not in the range x>=0" in result.stderr
