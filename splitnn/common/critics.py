"""Critics on the cut layer, for the attacks that match distributions of cut tensors.

A hijacking server (feature-space hijacking) and a passive attacker (a substitute part 1) both
train a Wasserstein critic that tells one set of cut tensors from another, with the gradient
penalty of Gulrajani et al. (2017) keeping it 1-Lipschitz. Both parties use these, so they live
in `splitnn.common`.
"""

from __future__ import annotations

import torch
from torch import nn

from splitnn.common.devices import on_device
from splitnn.common.models import CUT_SHAPE


def critic_mlp(outputs: int, *, hidden: int = 256) -> nn.Sequential:
    """The critics' body: float32 [B, 500] -> [B, outputs]. Linear(500 -> hidden) ->
    LeakyReLU(0.2) -> Linear(hidden -> hidden) -> LeakyReLU(0.2) -> Linear(hidden -> outputs)."""
    return nn.Sequential(
        nn.Linear(CUT_SHAPE[0], hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, outputs),
    )


class CutCritic(nn.Module):
    """A small MLP critic: cut float32 [B, 500] -> score float32 [B] (unbounded, WGAN).

    Linear(500 -> hidden) -> LeakyReLU(0.2) -> Linear(hidden -> hidden) -> LeakyReLU(0.2) ->
    Linear(hidden -> 1). No batch norm: the gradient penalty is taken per sample.
    """

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.net = critic_mlp(1, hidden=hidden)

    def forward(self, cut: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(cut).squeeze(1)
        return out


def build_critic(*, seed: int, hidden: int = 256) -> CutCritic:
    """A fresh critic, its weights drawn from `seed` only (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return on_device(CutCritic(hidden))


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, *, generator: torch.Generator
) -> torch.Tensor:
    """WGAN-GP: mean over the batch of (||d critic / d x||_2 - 1)^2 at random interpolates.

    real, fake: float32 [B, *cut] (detached or not; the penalty's gradient reaches only the
    critic). Each x = e * real + (1 - e) * fake with e ~ U(0, 1) per sample, drawn from
    `generator`. Returns a float32 scalar that keeps the graph (create_graph), so it can be
    back-propagated into the critic's parameters.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ")
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    # Drawn on the CPU whatever the device: a seed gives the same points everywhere.
    mix = torch.rand(shape, generator=generator, dtype=real.dtype).to(real.device)
    points = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(points).sum(), points, create_graph=True)
    norms = grads.flatten(1).norm(2, dim=1)
    penalty: torch.Tensor = ((norms - 1) ** 2).mean()
    return penalty
