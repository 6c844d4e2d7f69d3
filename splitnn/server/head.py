"""One data holder's session: the head (model part 2), its optimizer and the exactly-once cache."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from splitnn.common.codec import StepId
from splitnn.common.models import build_head, make_optimizer
from splitnn.server.errors import InvalidRequest, WrongState

if TYPE_CHECKING:
    from splitnn.server.groups import GroupMembership

# Whose runs these are when the server authenticates nobody (see `identity.py`).
ANONYMOUS_OWNER = "_anonymous"


@dataclass(frozen=True)
class SessionSpec:
    """What the data holder announced when it opened the session."""

    run: str
    cut_shape: tuple[int, ...]
    dtype: str
    max_batch_size: int
    num_classes: int
    lr: float
    seed: int


@dataclass(frozen=True)
class StepResult:
    """The server's answer to one batch. gradient: like the activations, [B, *cut_shape]."""

    step: StepId
    gradient: torch.Tensor
    loss: float
    correct: int


@dataclass(frozen=True)
class EvalResult:
    """logits: float32 [B, num_classes]; loss and correct are 0 without labels."""

    logits: torch.Tensor
    loss: float
    correct: int


def apply_step(
    head: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: StepId,
    activations: torch.Tensor,
    labels: torch.Tensor,
) -> StepResult:
    """One optimizer step of `head` on a batch: activations [B, *cut], labels int64 [B].

    The gradient is d(mean CE)/d(activations), in the activations' dtype.
    """
    received = activations.to(torch.float32).requires_grad_(True)
    head.train()
    logits = head(received)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # an idle session holds no gradients
    assert received.grad is not None
    correct = int((logits.detach().argmax(dim=1) == labels).sum())
    return StepResult(
        step=step,
        gradient=received.grad.to(activations.dtype),
        loss=float(loss.detach()),
        correct=correct,
    )


class HeadSession:
    """Trains the head on the batches of one run, each step at most once.

    Calls are serialised by a lock (the server may compute on several threads). A step whose id
    equals the last applied one is answered from the cache (the data holder retried after a lost
    reply); an older one is refused. Nothing changes unless the whole step succeeds.

    `restored` is true while the head holds weights loaded by `load_weights` rather than the state
    after `last_step`: such a head is not a resume state of the run.
    """

    def __init__(self, session_id: str, spec: SessionSpec, *, owner: str = ANONYMOUS_OWNER) -> None:
        self.session_id = session_id
        self.spec = spec
        self.owner = owner  # the folder of the identity that opened it
        self.replaced = False  # it replaced a live session of the same run
        self.head = build_head(spec.seed, spec.num_classes)
        self.optimizer = make_optimizer(self.head, spec.lr)
        self.lock = threading.Lock()
        self.last_step: StepId | None = None
        self._last_result: StepResult | None = None
        self.steps_applied = 0
        self.restored = False
        self.last_used = time.monotonic()
        # In a training group (see `groups.py`): the group and this holder's place in it. The
        # group trains through `head` and `optimizer`, which may be shared with other members.
        self.member: GroupMembership | None = None

    def touch(self) -> None:
        """Records activity: idle sessions expire."""
        self.last_used = time.monotonic()

    def check_batch(self, activations: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Checks a decoded batch against the session: activations [B, *cut], labels int64 [B]."""
        batch = activations.shape[0]
        if not 1 <= batch <= self.spec.max_batch_size:
            raise InvalidRequest(f"batch size {batch} outside 1..{self.spec.max_batch_size}")
        if labels is None:
            return
        if labels.shape != (batch,):
            raise InvalidRequest(f"{labels.shape[0]} labels for a batch of {batch}")
        if batch and (int(labels.min()) < 0 or int(labels.max()) >= self.spec.num_classes):
            raise InvalidRequest(f"label outside 0..{self.spec.num_classes - 1}")

    def train_step(
        self, step: StepId, activations: torch.Tensor, labels: torch.Tensor
    ) -> tuple[StepResult, bool]:
        """One Adam step of the head.

        Returns:
            The result (gradient = d(mean CE)/d(activations)) and whether this call applied the
            step (False when it was answered from the cache).
        """
        self.check_batch(activations, labels)
        with self.lock:
            if self.last_step is not None and step.key() <= self.last_step.key():
                if step == self.last_step and self._last_result is not None:
                    return self._last_result, False
                raise WrongState(f"step {step} is not after the last applied {self.last_step}")
            result = apply_step(self.head, self.optimizer, step, activations, labels)
            self.last_step, self._last_result = step, result
            self.steps_applied += 1
            self.restored = False
            return result, True

    def evaluate(self, activations: torch.Tensor, labels: torch.Tensor | None) -> EvalResult:
        """Logits of a batch without any update."""
        self.check_batch(activations, labels)
        with self.lock, torch.no_grad():
            self.head.eval()
            logits = self.head(activations.to(torch.float32))
        if labels is None:
            return EvalResult(logits=logits, loss=0.0, correct=0)
        loss = float(F.cross_entropy(logits, labels))
        correct = int((logits.argmax(dim=1) == labels).sum())
        return EvalResult(logits=logits, loss=loss, correct=correct)

    def state(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimizer moments, the last step and its reply."""
        with self.lock:
            state: dict[str, Any] = {
                "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "steps_applied": self.steps_applied,
            }
            if self.last_step is not None and self._last_result is not None:
                state["last_step"] = [self.last_step.epoch, self.last_step.batch]
                state["last_gradient"] = self._last_result.gradient
                state["last_loss"] = self._last_result.loss
                state["last_correct"] = self._last_result.correct
            return state

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Loads head weights only (e.g. the best epoch, to evaluate it); the optimizer stays."""
        with self.lock:
            self.head.load_state_dict(weights)
            self.restored = True

    def restore(self, state: dict[str, Any]) -> None:
        """Loads what `state()` returned (from a weights-only checkpoint)."""
        with self.lock:
            self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.steps_applied = int(state.get("steps_applied", 0))
            if "last_step" in state:
                epoch, batch = (int(v) for v in state["last_step"])
                self.last_step = StepId(self.spec.run, epoch, batch)
                self._last_result = StepResult(
                    step=self.last_step,
                    gradient=state["last_gradient"],
                    loss=float(state["last_loss"]),
                    correct=int(state["last_correct"]),
                )
