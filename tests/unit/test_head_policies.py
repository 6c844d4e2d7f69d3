"""Head policies: the honest head is registered, and a registered policy answers the steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitnn.common.codec import StepId
from splitnn.server.head import (
    HEAD_POLICIES,
    LoneHead,
    SessionSpec,
    StepResult,
    lookup_head_policy,
)
from splitnn.server.sessions import SessionRegistry

SPEC = SessionSpec(
    run="r", cut_shape=(500,), dtype="float32", max_batch_size=8, num_classes=10, lr=1e-3, seed=1
)


class _ZeroGradientHead(LoneHead):
    """Answers every step with a zero gradient (a stand-in for another way of answering)."""

    def apply(self, step: StepId, activations: torch.Tensor, labels: torch.Tensor) -> StepResult:
        honest = super().apply(step, activations, labels)
        return StepResult(
            step=step, gradient=torch.zeros_like(honest.gradient), loss=0.0, correct=0
        )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(4, 500, generator=generator), torch.randint(0, 10, (4,), generator=generator)


def test_the_server_is_honest_unless_told_otherwise() -> None:
    assert lookup_head_policy("honest") is LoneHead
    with pytest.raises(ValueError, match="'other': one of honest"):
        lookup_head_policy("other")


def test_a_registered_policy_answers_the_sessions_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(HEAD_POLICIES, "zero", _ZeroGradientHead)
    honest = SessionRegistry(model_dir=tmp_path / "a", max_batch_size=8)
    zero = SessionRegistry(model_dir=tmp_path / "b", max_batch_size=8, head_policy="zero")
    step = StepId("r", 1, 0)

    answers = []
    for registry in (honest, zero):
        session, _ = registry.open(SPEC, resume=False)
        result, applied = session.head.train(step, *_batch(), save=False)
        assert applied and session.head.last_step == step
        answers.append(result.gradient)

    assert answers[0].abs().sum() > 0
    assert torch.equal(answers[1], torch.zeros(4, 500))
