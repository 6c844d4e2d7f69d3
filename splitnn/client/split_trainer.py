"""The data holder's training loop: part 1 forward, noise, the server's gradient, backward."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from splitnn.client.dp import DPSGD, NOPEEK_REFUSAL, DPError
from splitnn.client.guard import SplitGuard, StepPlan
from splitnn.client.progress import Progress
from splitnn.client.transport import ServerLink
from splitnn.common.codec import StepId
from splitnn.common.datasets import Subset, epoch_permutation
from splitnn.common.devices import to_compute
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
        guard: watches the server's gradients (SplitGuard) and plans fake batches; None: none.
        dp: DP-SGD on part 1 (its per-sample hooks on `body`); None: plain steps. Its batches
            are Poisson samples of the training set (expected size `batch_size`) instead of
            an epoch's shuffled slices.
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
        guard: SplitGuard | None = None,
        dp: DPSGD | None = None,
    ) -> None:
        if dp is not None and nopeek > 0.0:
            raise DPError(NOPEEK_REFUSAL)
        self.body = body
        self.link = link
        self.run = run
        self.noise = noise
        self.nopeek = nopeek
        self.batch_size = batch_size
        self.seed = seed
        self.send_indices = send_indices
        self.guard = guard
        self.dp = dp
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
        plan: StepPlan | None = None,
        index: int = 0,
    ) -> tuple[float, int]:
        """One training step. images: float32 [B,1,28,28]; labels, indices: int64 [B].

        `save` marks a save point: the server saves its state of the run before it replies.
        `plan` is the guard's decision for this step, `index` its 0-based place in the run: on a
        fake batch the labels sent are shifted by `plan.label_shift` (mod C), part 1's
        first-layer gradient of the server's answer is recorded, and part 1 takes no optimiser
        step (nor any NoPeek term); a regular batch of R1 or R2 is recorded and trains as usual.
        With DP-SGD the optimiser steps on the noised mean of the clipped per-sample gradients;
        an empty batch (Poisson sampling draws them) sends nothing and steps on noise alone.
        Returns the server's mean cross-entropy and the number of correct predictions (on the
        labels sent).
        """
        plan = plan or StepPlan()
        self.body.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.dp is not None and len(images) == 0:
            if not plan.fake:
                self.dp.privatise(epoch=step.epoch, batch=step.batch, empty=True)
                self.optimizer.step()
            return 0.0, 0
        images = to_compute(images)
        cut = self.body(images)
        sent = self.noise(cut.detach())
        if plan.fake:
            assert self.guard is not None, "a fake batch needs a guard"
            labels = (labels + plan.label_shift) % self.guard.num_classes
        reply = self.link.train_step(step, sent, labels, indices, save=save)
        gradient = to_compute(reply.gradient)
        recorded = self.guard is not None and (plan.fake or plan.regular_set > 0)
        server_part: tuple[torch.Tensor, ...] = ()
        # The noise is additive, so d loss / d cut equals the gradient w.r.t. what was sent.
        # Distance correlation needs two samples: a one-sample batch (an epoch's last, say)
        # trains on the task loss alone.
        if self.nopeek > 0.0 and len(images) >= 2 and not plan.fake:
            if recorded:  # the guard judges the server's gradient, without the NoPeek term
                server_part = torch.autograd.grad(
                    cut, self._first_layer(), gradient, retain_graph=True
                )
            penalty = self.nopeek * distance_correlation(images, cut)
            torch.autograd.backward((cut, penalty), (gradient, torch.ones_like(penalty)))
        else:
            cut.backward(gradient)
            server_part = tuple(p.grad for p in self._first_layer() if p.grad is not None)
        if recorded:
            assert self.guard is not None
            self.guard.record(index, plan, torch.cat([g.reshape(-1) for g in server_part]).cpu())
        if self.dp is not None:
            if plan.fake:
                self.dp.drop_per_sample()
            else:
                self.dp.privatise(epoch=step.epoch, batch=step.batch)
        if not plan.fake:
            self.optimizer.step()
        return reply.loss, reply.correct

    def _first_layer(self) -> list[torch.nn.Parameter]:
        """The parameters of part 1's first layer (the first module that has any)."""
        for module in self.body.modules():
            own = list(module.parameters(recurse=False))
            if own:
                return own
        raise ValueError("part 1 has no parameters")

    def train_epoch(
        self,
        data: Subset,
        progress: Progress,
        *,
        max_steps: int | None = None,
        save_every: int = 0,
        on_save: Callable[[StepId], None] | None = None,
        before_step: Callable[[StepId], None] | None = None,
        on_alarm: Callable[[StepId], None] | None = None,
        show_progress: bool = True,
    ) -> None:
        """Trains the rest of epoch `progress.epoch` over `data`, counting into `progress`.

        Each epoch has its own seeded order, so an epoch resumed halfway sees the same batches.
        The last step of the epoch and every `save_every`-th step of the run are save points:
        the server saves before replying, then `on_save(step)` saves this side.
        `before_step(step)` runs before each step (a group member waits for its turn there).
        With a guard, its fake batches count as steps done but add no samples, loss or hits to
        `progress` (they are not training); `on_alarm(step)` runs after the step whose score
        first fell below the guard's threshold.
        """
        epoch = progress.epoch
        order = epoch_permutation(len(data), seed=self.seed, epoch=epoch)
        dp = self.dp
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
            if dp is None:
                idx = order[starts[batch] : starts[batch] + self.batch_size]
            else:
                idx = dp.batch(len(data), seed=self.seed, epoch=epoch, batch=batch)
            step = StepId(self.run, epoch, batch)
            done = (epoch - 1) * per_epoch + batch + 1
            save = batch == per_epoch - 1 or (save_every > 0 and done % save_every == 0)
            # A batch that sends nothing cannot be a save point: the server takes no step there.
            # A run interrupted after it goes back to the save before and replays it exactly.
            save = save and len(idx) > 0
            if before_step is not None:
                before_step(step)
            began = time.perf_counter()
            indices = data.indices[idx] if self.send_indices else None
            index = done - 1
            plan = self.guard.plan(index) if self.guard is not None else StepPlan()
            loss, hits = self.step(
                step, data.images[idx], data.labels[idx], indices, save=save, plan=plan, index=index
            )
            seconds = time.perf_counter() - began
            self.step_seconds.append(seconds)
            if plan.fake:  # not training: the position moves on, the epoch's sums do not
                progress.add_step(loss=0.0, correct=0, samples=0, seconds=seconds)
            else:
                progress.add_step(loss=loss, correct=hits, samples=len(idx), seconds=seconds)
            bar.update()
            bar.set_postfix(
                loss=f"{progress.train_loss:.4f}", acc=f"{progress.train_accuracy:.2f}%"
            )
            if save and on_save is not None:
                on_save(step)
            alarm = self.guard is not None and self.guard.detected_at_step == index
            if alarm and on_alarm is not None:
                on_alarm(step)
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
            sent = noise(self.body(to_compute(images)))
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
