"""NoPeek through a real server: the distance-correlation penalty lowers the measured dCor."""

from __future__ import annotations

import torch

from splitnn.client.trainer import SplitTrainer
from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId
from splitnn.common.datasets import load_splits
from splitnn.common.distcorr import distance_correlation
from splitnn.common.models import build_body
from splitnn.common.noise import LaplaceNoise
from tests.conftest import settings

STEPS = 30
BATCH = 32


def _train_and_measure(address: str, nopeek: float) -> float:
    data = load_splits("mnist5k")
    run = f"nopeek{nopeek:g}"
    with ServerLink(address, settings(run, seed=1, max_batch_size=BATCH)) as link:
        trainer = SplitTrainer(
            body=build_body(0), link=link, run=run, noise=LaplaceNoise(0.0),
            nopeek=nopeek, lr=1e-3, batch_size=BATCH, seed=0,
        )  # fmt: skip
        for batch in range(STEPS):
            rows = slice(batch * BATCH, (batch + 1) * BATCH)
            trainer.step(
                StepId(run, 1, batch), data.train.images[rows], data.train.labels[rows],
                data.train.indices[rows],
            )  # fmt: skip
    held_out = data.val.images[:256]
    with torch.no_grad():
        return float(distance_correlation(held_out, trainer.body(held_out)))


def test_nopeek_lowers_distance_correlation_against_the_same_seed(address: str) -> None:
    # Execute: the same seed, data and steps, without and with the penalty
    plain = _train_and_measure(address, 0.0)
    penalised = _train_and_measure(address, 1.0)
    # Assert
    print(f"dCor without NoPeek {plain:.3f}, with W=1: {penalised:.3f}")
    assert penalised < plain - 0.05, (plain, penalised)
