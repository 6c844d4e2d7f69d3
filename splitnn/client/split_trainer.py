"""The data holder's training loop: part 1 forward, noise, the server's gradient, backward."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from splitnn.client.progress import Progress
from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId
from splitnn.common.datasets import Subset, epoch_permutation
from splitnn.common.distcorr import distance_correlation
from splitnn.common.models import Body, make_optimizer
from splitnn.common.noise import LaplaceNoise

# Validation, test and deployment batches; the session admits batches up to
# max(training batch, EVAL_BATCH_SIZE).
EVAL_BATCH_SIZE = 500


@dataclass(frozen=True)
class EvalScore:
    """The split model's score on one data split (`split`: val, test...): accuracy in percent,
    loss the mean cross-entropy."""

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
        send_indices: send each batch's sample indices (an evaluation harness scoring an attack
            needs them; a real data holder never reveals which samples it sent).
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
        send_indices: bool = False,
    ) -> None:
        self.body = body
        self.link = link
        self.run = run
        self.noise = noise
        self.nopeek = nopeek
        self.batch_size = batch_size
        self.seed = seed
        self.send_indices = send_indices
        self.optimizer = make_optimizer(body, lr)
        self.step_seconds: list[float] = []  # every training step's duration, for reports

    def step(
        self,
        step: StepId,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | None = None,
        *,
        save: bool = False,
    ) -> tuple[float, int]:
        """One training step. images: float32 [B,1,28,28]; labels, indices: int64 [B].

        `save` marks a save point: the server saves its state of the run before it replies.
        Returns the server's mean cross-entropy and the number of correct predictions.
        """
        self.body.train()
        self.optimizer.zero_grad(set_to_none=True)
        cut = self.body(images)
        sent = self.noise(cut.detach())
        reply = self.link.train_step(step, sent, labels, indices, save=save)
        # The noise is additive, so d loss / d cut equals the gradient w.r.t. what was sent.
        # Distance correlation needs two samples: a one-sample batch (an epoch's last, say)
        # trains on the task loss alone.
        if self.nopeek > 0.0 and len(images) >= 2:
            penalty = self.nopeek * distance_correlation(images, cut)
            torch.autograd.backward((cut, penalty), (reply.gradient, torch.ones_like(penalty)))
        else:
            cut.backward(reply.gradient)
        self.optimizer.step()
        return reply.loss, reply.correct

    def train_epoch(
        self,
        data: Subset,
        progress: Progress,
        *,
        max_steps: int | None = None,
        save_every: int = 0,
        on_save: Callable[[StepId], None] | None = None,
        before_step: Callable[[StepId], None] | None = None,
        show_progress: bool = True,
    ) -> None:
        """Trains the rest of epoch `progress.epoch` over `data`, counting into `progress`.

        Each epoch has its own seeded order, so an epoch resumed halfway sees the same batches.
        The last step of the epoch and every `save_every`-th step of the run are save points:
        the server saves before replying, then `on_save(step)` saves this side.
        `before_step(step)` runs before each step (a group member waits for its turn there).
        """
        epoch = progress.epoch
        order = epoch_permutation(len(data), seed=self.seed, epoch=epoch)
        starts = range(0, len(data), self.batch_size)
        if max_steps is not None:
            starts = starts[:max_steps]
        per_epoch = len(starts)
        bar = tqdm(
            total=per_epoch,
            initial=progress.batch,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not show_progress,
            leave=False,
        )
        for batch in range(progress.batch, per_epoch):
            idx = order[starts[batch] : starts[batch] + self.batch_size]
            step = StepId(self.run, epoch, batch)
            done = (epoch - 1) * per_epoch + batch + 1
            save = batch == per_epoch - 1 or (save_every > 0 and done % save_every == 0)
            if before_step is not None:
                before_step(step)
            began = time.perf_counter()
            indices = data.indices[idx] if self.send_indices else None
            loss, hits = self.step(step, data.images[idx], data.labels[idx], indices, save=save)
            seconds = time.perf_counter() - began
            self.step_seconds.append(seconds)
            progress.add_step(loss=loss, correct=hits, samples=len(idx), seconds=seconds)
            bar.update()
            bar.set_postfix(
                loss=f"{progress.train_loss:.4f}", acc=f"{progress.train_accuracy:.2f}%"
            )
            if save and on_save is not None:
                on_save(step)
        bar.close()

    @torch.no_grad()
    def evaluate(
        self,
        split: str,
        data: Subset,
        *,
        noise: LaplaceNoise,
        tag: int = 0,
        batch_size: int = EVAL_BATCH_SIZE,
    ) -> EvalScore:
        """Accuracy of the split model on `data`, the cut tensor noised by `noise`.

        Every batch crosses the wire like a deployment-time query (split names it for the server).
        """
        self.body.eval()
        loss_sum, correct = 0.0, 0
        for batch, start in enumerate(range(0, len(data), batch_size)):
            images = data.images[start : start + batch_size]
            labels = data.labels[start : start + batch_size]
            indices = data.indices[start : start + batch_size] if self.send_indices else None
            sent = noise(self.body(images))
            reply = self.link.evaluate(
                StepId(self.run, tag, batch), sent, split=split, labels=labels, indices=indices
            )
            loss_sum += reply.loss * len(labels)
            correct += reply.correct
        samples = len(data)
        return EvalScore(
            split=split,
            accuracy=100.0 * correct / max(samples, 1),
            loss=loss_sum / max(samples, 1),
            samples=samples,
        )
