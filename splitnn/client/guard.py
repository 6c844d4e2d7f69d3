"""SplitGuard: the data holder's test of whether the server's gradients follow the labels.

Erdogan, Küpçü and Çiçek, "SplitGuard: Detecting and Mitigating Training-Hijacking Attacks in
Split Learning" (WPES 2022). After `start_after` batches, each batch is a *fake* one with
probability `fake_probability`: its labels are shifted by one random r in 1..C-1 (mod C), the
gradient reaching part 1's first layer is recorded, and part 1 takes no optimiser step on it.
Regular batches after `start_after` are split at random into two sets R1 and R2. An honest
server's gradients answer the labels, so fake gradients point away from regular ones while R1 and
R2 agree; a server that ignores the labels (a feature-space hijack) makes all three alike.

Score, with F, R1, R2 the mean gradient of each set, R = (R1 + R2) / 2, |.| the mean of the
Euclidean norms of a set's gradients (|R| the mean of |R1| and |R2|), angles in radians:

    d = | |F| - |R| | + | |R1| - |R2| |
    x = angle(F, R) * | |F| - |R| | / d  -  angle(R1, R2) * | |R1| - |R2| | / d
    SG = sigmoid(multiplier * x) ** exponent

SG tends to 1 against an honest server; an alarm is the first score below `threshold`.
Every decision is drawn from the step's index and the guard's seed alone, so a resumed run makes
the same decisions; the running sums are the guard's whole state (`state_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

__all__ = [
    "GUARDS",
    "GUARD_ACTIONS",
    "GradientSet",
    "GuardSettings",
    "SplitGuard",
    "StepPlan",
    "splitguard_score",
]

GuardAction = Literal["warn", "stop"]
# What the data holder does at the alarm: log it and train on, or save and stop (exit 4).
GUARD_ACTIONS: tuple[GuardAction, ...] = ("warn", "stop")


@dataclass(frozen=True)
class GuardSettings:
    """SplitGuard's parameters (the reference's defaults: N = 20, P_f = 0.1, m = 5, e = 2)."""

    start_after: int = 20
    fake_probability: float = 0.1
    multiplier: float = 5.0
    exponent: float = 2.0
    threshold: float = 0.5
    action: GuardAction = "warn"

    def __post_init__(self) -> None:
        if self.start_after < 0:
            raise ValueError(f"start_after is a non-negative step count, not {self.start_after}")
        if not 0.0 < self.fake_probability < 1.0:
            raise ValueError(f"fake_probability lies in (0, 1), not {self.fake_probability}")
        if self.multiplier <= 0 or self.exponent <= 0:
            raise ValueError("the multiplier and the exponent are positive")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"the threshold lies in (0, 1), not {self.threshold}")


@dataclass
class GradientSet:
    """Running sums of a set of flattened gradients: enough for their mean and mean norm.

    `total`: float64 [P], the sum of the gradients; `norms`: the sum of their norms.
    """

    total: torch.Tensor | None = None
    norms: float = 0.0
    count: int = 0

    def add(self, gradient: torch.Tensor) -> None:
        """Adds one gradient (any shape; flattened, summed in float64)."""
        flat = gradient.detach().reshape(-1).to(torch.float64)
        self.total = flat.clone() if self.total is None else self.total + flat
        self.norms += float(torch.linalg.vector_norm(flat))
        self.count += 1

    def mean(self) -> torch.Tensor:
        """float64 [P]: the mean gradient. Raises ValueError when the set is empty."""
        if self.total is None or self.count == 0:
            raise ValueError("an empty set has no mean")
        return self.total / self.count

    def mean_norm(self) -> float:
        return self.norms / self.count if self.count else 0.0


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two vectors in radians (0 when either is zero)."""
    norms = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    if norms == 0.0:
        return 0.0
    cosine = float(torch.dot(a, b)) / norms
    return math.acos(min(1.0, max(-1.0, cosine)))


def splitguard_score(
    fake: GradientSet, r1: GradientSet, r2: GradientSet, *, multiplier: float, exponent: float
) -> float | None:
    """SG in [0, 1] (module docstring), or None while any of the three sets is empty."""
    if not (fake.count and r1.count and r2.count):
        return None
    regular = (r1.mean() + r2.mean()) / 2
    fake_gap = abs(fake.mean_norm() - (r1.mean_norm() + r2.mean_norm()) / 2)
    regular_gap = abs(r1.mean_norm() - r2.mean_norm())
    scale = fake_gap + regular_gap
    x = 0.0
    if scale > 0.0:
        x = (
            _angle(fake.mean(), regular) * fake_gap - _angle(r1.mean(), r2.mean()) * regular_gap
        ) / scale
    return float((1.0 / (1.0 + math.exp(-multiplier * x))) ** exponent)


@dataclass(frozen=True)
class StepPlan:
    """What the guard makes of one training step.

    `label_shift`: r in 1..C-1 for a fake batch (labels sent: (y + r) mod C), else 0.
    `regular_set`: 1 or 2 for a regular batch the guard records, 0 if it records nothing.
    """

    label_shift: int = 0
    regular_set: int = 0

    @property
    def fake(self) -> bool:
        return self.label_shift > 0


@dataclass
class SplitGuard:
    """The guard of one data holder's run; `seed` is its own stream (seed role "guard")."""

    settings: GuardSettings
    seed: int
    num_classes: int
    fake: GradientSet = field(default_factory=GradientSet)
    r1: GradientSet = field(default_factory=GradientSet)
    r2: GradientSet = field(default_factory=GradientSet)
    scores: list[tuple[int, float]] = field(default_factory=list)
    detected_at_step: int | None = None

    def plan(self, step: int) -> StepPlan:
        """The decision for global training step `step` (0-based), a function of (seed, step)."""
        if step < self.settings.start_after:
            return StepPlan()
        rng = np.random.default_rng([self.seed, step])
        if rng.random() < self.settings.fake_probability:
            return StepPlan(label_shift=int(rng.integers(1, self.num_classes)))
        return StepPlan(regular_set=1 if rng.random() < 0.5 else 2)

    def record(self, step: int, plan: StepPlan, gradient: torch.Tensor) -> float | None:
        """Records part 1's first-layer gradient of step `step`; after a fake batch, scores.

        Returns the new score after a fake batch (None before every set has a gradient or on a
        regular step). The first score below the threshold sets `detected_at_step`.
        """
        if plan.fake:
            self.fake.add(gradient)
        elif plan.regular_set:
            (self.r1 if plan.regular_set == 1 else self.r2).add(gradient)
            return None
        else:
            return None
        score = splitguard_score(
            self.fake,
            self.r1,
            self.r2,
            multiplier=self.settings.multiplier,
            exponent=self.settings.exponent,
        )
        if score is not None:
            self.scores.append((step, score))
            if score < self.settings.threshold and self.detected_at_step is None:
                self.detected_at_step = step
        return score

    def state_dict(self) -> dict[str, object]:
        """Tensors and numbers only (loads with ``torch.load(weights_only=True)``)."""
        sets = {}
        for name in ("fake", "r1", "r2"):
            part: GradientSet = getattr(self, name)
            sets[name] = {"total": part.total, "norms": part.norms, "count": part.count}
        return {
            "sets": sets,
            "scores": [list(pair) for pair in self.scores],
            "detected_at_step": self.detected_at_step,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restores what `state_dict` gave. Raises ValueError on a malformed state."""
        try:
            sets = state["sets"]
            scores = state["scores"]
            detected = state["detected_at_step"]
            if not isinstance(sets, dict) or not isinstance(scores, list):
                raise TypeError("sets is a dict and scores a list")
            if detected is not None and not isinstance(detected, int):
                raise TypeError("the alarm's step is an integer")
            for name in ("fake", "r1", "r2"):
                part = sets[name]
                total = part["total"]
                if total is not None and not isinstance(total, torch.Tensor):
                    raise TypeError("a gradient sum is a tensor")
                setattr(self, name, GradientSet(total, float(part["norms"]), int(part["count"])))
            self.scores = [(int(step), float(score)) for step, score in scores]
            self.detected_at_step = detected
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a damaged guard state: {error}") from error


# The data holder's guards by name (`splitnn-client --guard NAME`; ``none``: no guard).
GUARDS: dict[str, type[SplitGuard]] = {"splitguard": SplitGuard}
