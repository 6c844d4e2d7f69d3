"""Where a training run stands: the position, the running epoch's sums, the history, the best.

Everything here goes into the data holder's resume state as plain numbers and strings, so that a
resumed run reports exactly what the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from splitnn.common.reports import EpochRecord

__all__ = ["Best", "EpochRecord", "Progress"]


@dataclass(frozen=True)
class Best:
    """The best-validation epoch so far and where both parts of it were saved."""

    epoch: int
    val_accuracy: float
    train_accuracy: float
    checkpoint: str  # the data holder's part 1
    head_checkpoint: str  # the server's part 2, as the server named it (within its model folder)


@dataclass
class Progress:
    """A run's position: `batch` batches of `epoch` are done (epochs count from 1).

    `loss_sum`, `correct`, `samples` and `seconds` add up the running epoch's steps; `seconds`
    counts time spent in steps only, so a resumed run's throughput leaves the outage out.
    """

    epoch: int = 1
    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    samples: int = 0
    seconds: float = 0.0
    history: list[EpochRecord] = field(default_factory=list)
    best: Best | None = None

    def add_step(self, *, loss: float, correct: int, samples: int, seconds: float) -> None:
        """Counts one finished step (loss: the batch's mean cross-entropy)."""
        self.batch += 1
        self.loss_sum += loss * samples
        self.correct += correct
        self.samples += samples
        self.seconds += seconds

    @property
    def train_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    @property
    def train_accuracy(self) -> float:
        return 100.0 * self.correct / max(self.samples, 1)

    def next_epoch(self, val_accuracy: float, *, dp_epsilon: float | None = None) -> EpochRecord:
        """Closes the running epoch with its validation accuracy (and, with DP-SGD, the
        epsilon spent so far); returns its record."""
        record = EpochRecord(
            epoch=self.epoch,
            train_loss=self.train_loss,
            train_accuracy=self.train_accuracy,
            val_accuracy=val_accuracy,
            seconds=self.seconds,
            samples=self.samples,
            dp_epsilon=dp_epsilon,
        )
        self.history.append(record)
        self.epoch, self.batch = self.epoch + 1, 0
        self.loss_sum, self.correct, self.samples, self.seconds = 0.0, 0, 0, 0.0
        return record

    def to_state(self) -> dict[str, Any]:
        """Plain types only (a weights-only checkpoint can hold them)."""
        state = asdict(self)
        state["best"] = asdict(self.best) if self.best is not None else {}
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        fields = dict(state)
        fields["history"] = [EpochRecord(**record) for record in state["history"]]
        fields["best"] = Best(**state["best"]) if state["best"] else None
        return cls(**fields)
