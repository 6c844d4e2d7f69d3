"""The data holder's training loop: part 1 forward, noise, the server's gradient, backward."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId
from splitnn.common.datasets import Subset, epoch_permutation
from splitnn.common.distcorr import distance_correlation
from splitnn.common.models import Body, make_optimizer
from splitnn.common.noise import LaplaceNoise


@dataclass(frozen=True)
class EpochResult:
    """Running training loss/accuracy (percent) of one epoch, over the batches it ran."""

    epoch: int
    loss: float
    accuracy: float
    samples: int
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    """accuracy in percent; loss is the mean cross-entropy."""

    split: str
    accuracy: float
    loss: float
    samples: int


class SplitTrainer:
    """Trains part 1 through a session with the server.

    Args:
        body: model part 1.
        link: an open session with the server.
        run: the run name (the `run` of every step id).
        noise: training noise on the cut tensor.
        nopeek: NoPeek weight W; 0 skips the distance correlation entirely.
        lr: Adam learning rate for part 1.
        batch_size: training batch size.
        seed: seeds the per-epoch shuffling.
    """

    def __init__(
        self,
        *,
        body: Body,
        link: ServerLink,
        run: str,
        noise: LaplaceNoise,
        nopeek: float,
        lr: float,
        batch_size: int,
        seed: int,
    ) -> None:
        self.body = body
        self.link = link
        self.run = run
        self.noise = noise
        self.nopeek = nopeek
        self.batch_size = batch_size
        self.seed = seed
        self.optimizer = make_optimizer(body, lr)

    def step(
        self, step: StepId, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[float, int]:
        """One training step. images: float32 [B,1,28,28]; labels, indices: int64 [B].

        Returns the server's mean cross-entropy and the number of correct predictions.
        """
        self.body.train()
        self.optimizer.zero_grad(set_to_none=True)
        cut = self.body(images)
        sent = self.noise(cut.detach())
        reply = self.link.train_step(step, sent, labels, indices)
        # The noise is additive, so d loss / d cut equals the gradient w.r.t. what was sent.
        if self.nopeek > 0.0:
            penalty = self.nopeek * distance_correlation(images, cut)
            torch.autograd.backward((cut, penalty), (reply.gradient, torch.ones_like(penalty)))
        else:
            cut.backward(reply.gradient)
        self.optimizer.step()
        return reply.loss, reply.correct

    def train_epoch(
        self, epoch: int, data: Subset, *, max_steps: int | None = None, progress: bool = True
    ) -> EpochResult:
        """Trains one epoch over `data` in a fresh seeded order (epochs count from 1)."""
        order = epoch_permutation(len(data), seed=self.seed, epoch=epoch)
        starts = range(0, len(data), self.batch_size)
        if max_steps is not None:
            starts = starts[:max_steps]
        loss_sum, correct, samples = 0.0, 0, 0
        began = time.perf_counter()
        bar = tqdm(starts, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
        for batch, start in enumerate(bar):
            idx = order[start : start + self.batch_size]
            step = StepId(self.run, epoch, batch)
            loss, hits = self.step(step, data.images[idx], data.labels[idx], data.indices[idx])
            loss_sum += loss * len(idx)
            correct += hits
            samples += len(idx)
            bar.set_postfix(loss=f"{loss_sum / samples:.4f}", acc=f"{100 * correct / samples:.2f}%")
        seconds = time.perf_counter() - began
        return EpochResult(
            epoch=epoch,
            loss=loss_sum / max(samples, 1),
            accuracy=100.0 * correct / max(samples, 1),
            samples=samples,
            seconds=seconds,
        )

    @torch.no_grad()
    def evaluate(
        self, split: str, data: Subset, *, noise: LaplaceNoise, tag: int = 0, batch_size: int = 500
    ) -> EvalResult:
        """Accuracy of the split model on `data`, the cut tensor noised by `noise`.

        Every batch crosses the wire like a deployment-time query (split names it for the server).
        """
        self.body.eval()
        loss_sum, correct = 0.0, 0
        for batch, start in enumerate(range(0, len(data), batch_size)):
            images = data.images[start : start + batch_size]
            labels = data.labels[start : start + batch_size]
            indices = data.indices[start : start + batch_size]
            sent = noise(self.body(images))
            reply = self.link.evaluate(
                StepId(self.run, tag, batch), sent, split=split, labels=labels, indices=indices
            )
            loss_sum += reply.loss * len(labels)
            correct += reply.correct
        samples = len(data)
        return EvalResult(
            split=split,
            accuracy=100.0 * correct / max(samples, 1),
            loss=loss_sum / max(samples, 1),
            samples=samples,
        )
