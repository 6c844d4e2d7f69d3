"""NoPeek through a real server: part 1's gradient is the server's plus W times the gradient of
dCor(images, cut), and the same steps on a fixed batch leave a lower dCor with it than without."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from splitnn.client.split_trainer import SplitTrainer
from splitnn.client.transport import ServerLink, StepReply
from splitnn.common.codec import StepId
from splitnn.common.datasets import load_splits
from splitnn.common.distcorr import distance_correlation
from splitnn.common.models import build_body
from splitnn.common.noise import LaplaceNoise
from tests.conftest import settings

pytestmark = pytest.mark.slow  # NoPeek steps through a server, each with the dCor of a batch

BATCH = 32
STEPS = 8


def _fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first BATCH training images float32 [B, 1, 28, 28] of mnist5k and their labels."""
    train = load_splits("mnist5k").train
    return train.images[:BATCH], train.labels[:BATCH]


def _trainer(link: ServerLink, run: str, nopeek: float) -> SplitTrainer:
    return SplitTrainer(
        body=build_body(0), link=link, run=run, noise=LaplaceNoise(0.0),
        nopeek=nopeek, lr=1e-3, batch_size=BATCH, seed=0,
    )  # fmt: skip


@pytest.mark.parametrize("nopeek", [0.0, 0.5])
def test_part_1_gradient_is_the_servers_plus_w_times_the_dcor_gradient(
    address: str, monkeypatch: pytest.MonkeyPatch, nopeek: float
) -> None:
    images, labels = _fixed_batch()
    run = f"formula-{nopeek:g}"
    replies: list[StepReply] = []
    with ServerLink(address, settings(run, seed=1, max_batch_size=BATCH)) as link:
        send = link.train_step

        def recording(*args: Any, **kwargs: Any) -> StepReply:
            reply = send(*args, **kwargs)
            replies.append(reply)
            return reply

        monkeypatch.setattr(link, "train_step", recording)
        trainer = _trainer(link, run, nopeek)
        before = copy.deepcopy(trainer.body)  # the weights the step's gradient is taken at
        trainer.step(StepId(run, 1, 0), images, labels)

    (reply,) = replies
    params = list(before.parameters())
    cut = before(images)
    from_server = torch.autograd.grad(cut, params, reply.gradient, retain_graph=True)
    from_dcor = torch.autograd.grad(distance_correlation(images, cut), params)
    for param, server, dcor in zip(trainer.body.parameters(), from_server, from_dcor, strict=True):
        assert param.grad is not None
        torch.testing.assert_close(param.grad, server + nopeek * dcor, rtol=1e-4, atol=1e-7)
    # The dCor term is not negligible next to the server's: W = 0.5 changes the gradient.
    weight = next(trainer.body.parameters()).grad
    assert weight is not None
    assert (nopeek == 0.0) == torch.allclose(weight, from_server[0], rtol=1e-3, atol=0.0)


def _dcor_after_steps(address: str, nopeek: float) -> float:
    """dCor(images, cut) on the fixed batch after STEPS steps on it with NoPeek weight `nopeek`."""
    images, labels = _fixed_batch()
    run = f"steps-{nopeek:g}"
    with ServerLink(address, settings(run, seed=1, max_batch_size=BATCH)) as link:
        trainer = _trainer(link, run, nopeek)
        for batch in range(STEPS):
            trainer.step(StepId(run, 1, batch), images, labels)
    with torch.no_grad():
        return float(distance_correlation(images, trainer.body(images)))


def test_the_same_steps_with_nopeek_leave_a_lower_dcor_on_their_batch(address: str) -> None:
    # The same initial weights, data, server head seed and steps; only the penalty differs.
    plain = _dcor_after_steps(address, 0.0)
    penalised = _dcor_after_steps(address, 1.0)

    assert penalised < plain, (plain, penalised)
