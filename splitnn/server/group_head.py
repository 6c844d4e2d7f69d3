"""A group member's head: the `HeadPolicy` through which a member's session trains its group.

The head is trained by the group's schedule only. Its weights are loaded by nothing else
(`Restore` is refused in a group session) and written (`Checkpoint`) only once the group has
trained to its end: before that, the head is not the member's to save.
"""

from __future__ import annotations

from typing import Any

import torch

from splitnn.common.codec import StepId, WeightsBlob
from splitnn.server.errors import WrongState
from splitnn.server.group import Group
from splitnn.server.group_member import Member, batch_digest
from splitnn.server.head import EvalResult, StepResult, evaluate_head

RESTORE_REFUSED = (
    "Restore is refused in a training group: the group's head is trained by its schedule only"
)


class GroupMemberHead:
    """Applies a member's steps in its group's order, to the head the topology gives it.

    The head may be shared with the other members; the group's lock guards it. The server keeps
    no resume state of it on disk: the group keeps the member's replies (see `group.py`).
    """

    resumable = False
    last_step: StepId | None = None  # steps are tracked by the group, per member
    steps_applied = 0
    restored = False

    def __init__(self, group: Group, member: Member) -> None:
        self.group = group
        self.member = member
        self.group_name: str | None = group.spec.name

    def train(
        self, step: StepId, activations: torch.Tensor, labels: torch.Tensor, *, save: bool
    ) -> tuple[StepResult, bool]:
        digest = batch_digest(activations, labels)
        return self.group.train(self.member, step, activations, labels, digest, save=save)

    def evaluate(self, activations: torch.Tensor, labels: torch.Tensor | None) -> EvalResult:
        with self.group.lock:
            return evaluate_head(self.member.head, activations, labels)

    def state_dict(self) -> dict[str, torch.Tensor]:
        with self.group.lock:
            return self.member.head.state_dict()

    def state(self) -> dict[str, Any]:
        """The head for a checkpoint, once the group is over (see the module).

        Raises:
            WrongState: the group is still training.
        """
        self.group.check_checkpoint()
        with self.group.lock:
            return {
                "head": self.member.head.state_dict(),
                "optimizer": self.member.optimizer.state_dict(),
                "steps_applied": 0,
            }

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        raise WrongState(RESTORE_REFUSED)

    def restore(self, state: dict[str, Any]) -> None:
        raise WrongState("a group member's head is restored by its group, not from a save")

    def turn(self, epoch: int, batch: int) -> WeightsBlob | None:
        return self.group.turn(self.member, epoch, batch)

    def hand_in(self, epoch: int, blob: WeightsBlob) -> None:
        self.group.hand_in(self.member, epoch, blob)

    def finish(self) -> WeightsBlob | None:
        return self.group.finish(self.member)

    def close(self, *, finished: bool) -> None:
        self.group.closed(self.member, finished=finished)
