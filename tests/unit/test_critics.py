"""The cut-layer critic and its gradient penalty."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitnn.common.critics import build_critic, gradient_penalty


def test_critic_is_seeded_and_shaped() -> None:
    first, second = build_critic(seed=3), build_critic(seed=3)
    x = torch.randn(4, 500)
    assert first(x).shape == (4,)
    assert torch.equal(first(x), second(x))
    assert not torch.equal(first(x), build_critic(seed=4)(x))


class _Linear(nn.Module):
    """critic(x) = x . w: its gradient is w everywhere, so the penalty is (|w| - 1)^2."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


@pytest.mark.parametrize("norm", [0.0, 0.5, 1.0, 3.0])
def test_penalty_of_a_linear_critic_is_known(norm: float) -> None:
    w = torch.zeros(500)
    w[0], w[1] = 0.6 * norm, 0.8 * norm
    penalty = gradient_penalty(
        _Linear(w),
        torch.randn(8, 500),
        torch.randn(8, 500),
        generator=torch.Generator().manual_seed(0),
    )
    assert float(penalty.detach()) == pytest.approx((norm - 1) ** 2, abs=1e-6)


def test_penalty_trains_the_critic_only() -> None:
    critic = _Linear(torch.full((500,), 0.2))
    real, fake = torch.randn(8, 500), torch.randn(8, 500, requires_grad=True)
    gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(1)).backward()
    assert critic.w.grad is not None and float(critic.w.grad.abs().sum()) > 0
    assert fake.grad is None


def test_penalty_refuses_mismatched_sets() -> None:
    with pytest.raises(ValueError, match="differ"):
        gradient_penalty(
            build_critic(seed=0),
            torch.randn(2, 500),
            torch.randn(3, 500),
            generator=torch.Generator(),
        )
