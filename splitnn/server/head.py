"""A data holder's session and the head it trains through, behind one interface.

`HeadPolicy` is how a step reaches a head, whoever owns it: `LoneHead` is a session's own head
(here), `GroupMemberHead` a training group's (`group_head.py`). The handlers call the interface
and never ask which one it is. A session's own head is made by the policy named in
`HEAD_POLICIES`: another way of answering steps is one class and one entry there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.nn import functional as F

from splitnn.common.codec import StepId, WeightsBlob
from splitnn.common.models import build_head, make_optimizer
from splitnn.common.registry import lookup
from splitnn.server.errors import InvalidRequest, WrongState

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

    The gradient is d(mean CE)/d(activations), in the activations' dtype and on their device
    (the head computes on its own, see `splitnn.common.devices`).
    """
    device = _device_of(head)
    received = activations.to(device=device, dtype=torch.float32).requires_grad_(True)
    head.train()
    logits = head(received)
    loss = F.cross_entropy(logits, labels.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # an idle session holds no gradients
    assert received.grad is not None
    correct = int((logits.detach().argmax(dim=1) == labels.to(device)).sum())
    return StepResult(
        step=step,
        gradient=received.grad.to(device=activations.device, dtype=activations.dtype),
        loss=float(loss.detach()),
        correct=correct,
    )


def evaluate_head(
    head: torch.nn.Module, activations: torch.Tensor, labels: torch.Tensor | None
) -> EvalResult:
    """Logits of a batch without any update: activations [B, *cut], labels int64 [B] or None."""
    with torch.no_grad():
        head.eval()
        logits = head(activations.to(device=_device_of(head), dtype=torch.float32)).cpu()
    if labels is None:
        return EvalResult(logits=logits, loss=0.0, correct=0)
    loss = float(F.cross_entropy(logits, labels))
    correct = int((logits.argmax(dim=1) == labels).sum())
    return EvalResult(logits=logits, loss=loss, correct=correct)


def _device_of(model: torch.nn.Module) -> torch.device:
    """Where `model`'s parameters are (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


class HeadPolicy(Protocol):
    """How a session's steps are applied, whatever owns the head.

    Attributes:
        group_name: the training group whose head this is; None: the session's own.
        resumable: the server keeps resume states of this head on disk (a group keeps its
            members' replies in memory instead).
        last_step: the last step applied through `train`, as a resume state would record it.
        steps_applied: steps applied through `train` (restored ones included).
        restored: the head holds weights from `load_weights`, not the state after `last_step`.
    """

    group_name: str | None
    resumable: bool

    @property
    def last_step(self) -> StepId | None: ...

    @property
    def steps_applied(self) -> int: ...

    @property
    def restored(self) -> bool: ...

    def train(
        self, step: StepId, activations: torch.Tensor, labels: torch.Tensor, *, save: bool
    ) -> tuple[StepResult, bool]:
        """Applies step `step` (at most once); returns the result and whether this call
        applied it. `save`: the data holder marks a save point after it."""
        ...

    def evaluate(self, activations: torch.Tensor, labels: torch.Tensor | None) -> EvalResult: ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The head's weights."""
        ...

    def state(self) -> dict[str, Any]:
        """Weights, optimizer moments, steps applied, and the last step and its reply if any."""
        ...

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Loads head weights only (e.g. the best epoch, to evaluate it)."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Loads what `state()` returned."""
        ...

    def turn(self, epoch: int, batch: int) -> WeightsBlob | None:
        """Returns when step (epoch, batch) may be taken, with part 1 to take it with."""
        ...

    def hand_in(self, epoch: int, blob: WeightsBlob) -> None:
        """Takes part 1 after the holder's last step of `epoch`."""
        ...

    def finish(self) -> WeightsBlob | None:
        """Returns when the training is over, with the final part 1 (None: keep yours)."""
        ...

    def close(self, *, finished: bool) -> None:
        """The session ends (`finished`: its run is complete)."""
        ...


class LoneHead:
    """A session's own head: trains on the batches of one run, each step at most once.

    Calls are serialised by a lock (the server may compute on several threads). A step whose id
    equals the last applied one is answered from the cache (the data holder retried after a lost
    reply); an older one is refused. Nothing changes unless the whole step succeeds.
    """

    group_name: str | None = None
    resumable = True

    def __init__(self, spec: SessionSpec, *, owner: str = ANONYMOUS_OWNER) -> None:
        self.spec = spec
        self.head = build_head(spec.seed, spec.num_classes)
        self.optimizer = make_optimizer(self.head, spec.lr)
        self.lock = threading.Lock()
        self.last_step: StepId | None = None
        self._last_result: StepResult | None = None
        self.steps_applied = 0
        self.restored = False

    def train(
        self, step: StepId, activations: torch.Tensor, labels: torch.Tensor, *, save: bool
    ) -> tuple[StepResult, bool]:
        """One Adam step of the head (gradient = d(mean CE)/d(activations)); see the class."""
        with self.lock:
            if self.last_step is not None and step.key() <= self.last_step.key():
                if step == self.last_step and self._last_result is not None:
                    return self._last_result, False
                raise WrongState(f"step {step} is not after the last applied {self.last_step}")
            result = self.apply(step, activations, labels)
            self.last_step, self._last_result = step, result
            self.steps_applied += 1
            self.restored = False
            return result, True

    def apply(self, step: StepId, activations: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """The step itself, on the head (called under the lock)."""
        return apply_step(self.head, self.optimizer, step, activations, labels)

    def evaluate(self, activations: torch.Tensor, labels: torch.Tensor | None) -> EvalResult:
        with self.lock:
            return evaluate_head(self.head, activations, labels)

    def state_dict(self) -> dict[str, torch.Tensor]:
        with self.lock:
            return self.head.state_dict()

    def state(self) -> dict[str, Any]:
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
        """Loads head weights only; the optimizer stays. The head is no resume state then."""
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

    def turn(self, epoch: int, batch: int) -> WeightsBlob | None:
        raise _not_in_a_group()

    def hand_in(self, epoch: int, blob: WeightsBlob) -> None:
        raise _not_in_a_group()

    def finish(self) -> WeightsBlob | None:
        raise _not_in_a_group()

    def close(self, *, finished: bool) -> None:
        """Nothing to release: the registry saves or clears the run."""


def _not_in_a_group() -> WrongState:
    return WrongState("Sync is for the members of a training group")


class HeadFactory(Protocol):
    """Makes a session's own head: what `owner` announced in `spec`."""

    def __call__(self, spec: SessionSpec, *, owner: str = ANONYMOUS_OWNER) -> LoneHead: ...


# How a session's own head answers steps, by name. The server is honest unless told otherwise;
# "fsha" (a hijacking server, `hijack.py`) registers itself when that module is imported (the
# server imports it in malicious mode only; this module never does, so neither imports the other).
HEAD_POLICIES: dict[str, HeadFactory] = {"honest": LoneHead}


def lookup_head_policy(name: str) -> HeadFactory:
    """The factory of head policy `name`.

    Raises:
        ValueError: no such policy, naming the known ones.
    """
    return lookup(HEAD_POLICIES, name, kind="head policy")


class HeadSession:
    """One data holder's session: who opened it, what it announced, and the head it trains.

    Args:
        session_id: the bearer token.
        spec: what the data holder announced.
        head: how its steps are applied (default: its own honest head).
        owner: the folder of the identity that opened it.
    """

    def __init__(
        self,
        session_id: str,
        spec: SessionSpec,
        *,
        head: HeadPolicy | None = None,
        owner: str = ANONYMOUS_OWNER,
    ) -> None:
        self.session_id = session_id
        self.spec = spec
        self.owner = owner
        self.replaced = False  # it replaced a live session of the same run
        self.head: HeadPolicy = LoneHead(spec) if head is None else head
        self.last_used = time.monotonic()

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
