"""A substitute part 1, trained by a curious server alone to stand in for the data holder's.

The server never sees part 1, only what it sent: cut tensors and, in the clear, their labels. It
trains a network of part 1's architecture on public images so that

- its cut tensors of class c are distributed like the received tensors labelled c (a
  multi-kernel MMD per class, `matching="conditional"`; FORA's marginal MMD with "marginal"),
- the server's own head, frozen, classifies them right (a label term, as in SDAR and PCAT: the
  head was trained on the real part 1's tensors, so it pulls the substitute towards them),
- optionally, a Wasserstein critic cannot tell them from the received ones (`match_weight`; off
  by default: on this model it made every run measured worse).

The trained substitute is then queried like the lent part 1 (`CutOracle`) to train a decoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from splitnn.attacker.mmd import conditional_mk_mmd, mk_mmd
from splitnn.attacker.oracle import cut_tensors
from splitnn.common.critics import build_critic, gradient_penalty
from splitnn.common.devices import to_compute, to_cpu
from splitnn.common.models import Body, build_body
from splitnn.common.noise import LaplaceNoise

logger = logging.getLogger(__name__)

Matching = Literal["conditional", "marginal"]
MATCHINGS: tuple[str, ...] = ("conditional", "marginal")
# WGAN-GP's usual penalty weight and critic optimiser (Gulrajani et al. 2017).
_GP_WEIGHT = 10.0
_CRITIC_BETAS = (0.5, 0.9)


@dataclass(frozen=True)
class SubstituteSettings:
    """How the substitute is trained.

    Attributes:
        matching: "conditional" (MMD per class, the labels on the wire) or "marginal" (FORA).
        mmd_weight: weight of the MMD term (FORA used 0.8).
        ce_weight: weight of the label term through the server's frozen head.
        match_weight: weight of the critic term; 0 trains no critic.
        epochs: passes over the public images.
        lr: Adam learning rate of the substitute.
        batch_size: public images per step (as many received tensors are drawn to match them).
        match_splits: which wire splits' tensors are matched ("train": the training batches;
            adding "attack" matches the very tensors attacked: transductive).
        match_epochs: of each split, the tensors of the last N epochs; 0: all.
        head_snapshots: the label term also goes through the head as it stood after each of
            the last N training epochs (replayed from the wire log; PCAT-style); 0: none.
        substitutes: how many substitutes (different seeds) the decoder is trained through.
        noise: the Laplace scale the attacker assumes the holder adds (its own guess).
    """

    matching: Matching = "conditional"
    mmd_weight: float = 1.0
    ce_weight: float = 1.0
    match_weight: float = 0.0
    epochs: int = 40
    lr: float = 1e-4
    batch_size: int = 64
    match_splits: tuple[str, ...] = ("train",)
    match_epochs: int = 1
    head_snapshots: int = 0
    substitutes: int = 1
    noise: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["match_splits"] = list(self.match_splits)
        return out


@dataclass(frozen=True)
class MatchTarget:
    """What the substitute is fitted to: received cut tensors float32 [M,500] with their labels
    int64 [M], and public images float32 [N,1,28,28] in [0,1] with labels int64 [N]."""

    received: torch.Tensor
    received_labels: torch.Tensor
    public: torch.Tensor
    public_labels: torch.Tensor


class SubstituteOracle:
    """The trained substitute queried like the lent part 1: images in, cut tensors (+ the
    assumed noise) out."""

    kind = "substitute"

    def __init__(self, body: Body, *, noise: float, seed: int, identity: dict[str, Any]) -> None:
        self.body = body.eval()
        self.noise_scale = noise
        self._noise = LaplaceNoise(noise, seed=seed)
        self._identity = identity

    @torch.no_grad()
    def query(
        self, images: torch.Tensor, *, noisy: bool = True, batch_size: int = 500
    ) -> torch.Tensor:
        """images: float32 [N,1,28,28] in [0,1] -> float32 [N,500], noised if `noisy`."""
        return cut_tensors(self.body, self._noise if noisy else None, images, batch_size)

    def describe(self) -> dict[str, Any]:
        """The substitute by the bytes of its weights, with how it was made."""
        buffer = io.BytesIO()
        torch.save(to_cpu(self.body.state_dict()), buffer)
        return {
            "substitute_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
            "set_noise": self.noise_scale,
            **self._identity,
        }


class SubstituteEnsemble:
    """Several substitutes queried in turn, one per call: a decoder trained through it sees
    each of them in its epochs, and so leans on none of one substitute's quirks."""

    kind = "substitute"

    def __init__(self, members: Sequence[SubstituteOracle]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one substitute")
        self.members = tuple(members)
        self.noise_scale = members[0].noise_scale
        self._calls = 0

    def query(
        self, images: torch.Tensor, *, noisy: bool = True, batch_size: int = 500
    ) -> torch.Tensor:
        """images: float32 [N,1,28,28] in [0,1] -> float32 [N,500] from the next member."""
        member = self.members[self._calls % len(self.members)]
        self._calls += 1
        return member.query(images, noisy=noisy, batch_size=batch_size)

    def describe(self) -> dict[str, Any]:
        return {"substitutes": [member.describe() for member in self.members]}


class _ReceivedSampler:
    """Draws received tensors to face a batch of public images: of the same classes
    (conditional), or uniformly (marginal)."""

    def __init__(self, target: MatchTarget, *, generator: torch.Generator) -> None:
        self.received = target.received
        self.labels = target.received_labels
        self.generator = generator
        self.by_class = {
            int(c): torch.nonzero(self.labels == c).squeeze(1) for c in self.labels.unique()
        }

    def like(self, labels: torch.Tensor, *, conditional: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not conditional:
            rows = torch.randint(len(self.received), (len(labels),), generator=self.generator)
            return self.received[rows], self.labels[rows]
        picks = []
        for c in labels.unique().tolist():
            pool = self.by_class.get(int(c))
            if pool is None:
                continue
            count = int((labels == c).sum())
            picks.append(pool[torch.randint(len(pool), (count,), generator=self.generator)])
        rows = torch.cat(picks) if picks else torch.empty(0, dtype=torch.long)
        return self.received[rows], self.labels[rows]


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    # A last batch of one or two gives an MMD of one point per class: fold it into the previous.
    for start in range(0, n, batch_size):
        if n - start < 2 * batch_size:
            yield order[start:]
            return
        yield order[start : start + batch_size]


class _Critic:
    """The optional WGAN-GP critic between received and substitute tensors."""

    def __init__(self, *, seed: int, lr: float, generator: torch.Generator) -> None:
        self.net = build_critic(seed=seed)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=_CRITIC_BETAS)
        self.generator = generator

    def step(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        n = min(len(real), len(fake))
        real, fake = real[:n].detach(), fake[:n].detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.net(fake).mean() - self.net(real).mean()
        loss = loss + _GP_WEIGHT * gradient_penalty(self.net, real, fake, generator=self.generator)
        loss.backward()
        self.optimizer.step()

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = -self.net(fake).mean()
        return loss


def train_substitute(
    *,
    target: MatchTarget,
    heads: Sequence[nn.Module],
    settings: SubstituteSettings,
    seed: int,
    progress: bool = True,
) -> tuple[Body, list[float]]:
    """Trains a fresh part 1 (weights from `seed`) to the three terms of the module docstring.

    Args:
        heads: the server's head, used frozen for the label term (several: snapshots of it
            taken during training, the term averaged over them); none needs `ce_weight` 0.
        seed: seeds the substitute, its critic, its batch order, its draws and its noise.

    Returns:
        The substitute (in eval mode) and its mean loss per epoch.

    Raises:
        ValueError: `ce_weight` > 0 without a head, or nothing to match.
    """
    if settings.ce_weight > 0 and not heads:
        raise ValueError("the label term needs the server's head (or a label weight of 0)")
    if len(target.received) == 0 or len(target.public) == 0:
        raise ValueError("the substitute needs received tensors and public images")
    target = MatchTarget(*(to_compute(t) for t in dataclasses.astuple(target)))
    body = build_body(seed)
    for head in heads:
        head.eval().requires_grad_(False)
    optimizer = torch.optim.Adam(body.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    sampler = _ReceivedSampler(target, generator=generator)
    noise = LaplaceNoise(settings.noise, seed=_draw_seed(generator))
    critic = (
        _Critic(seed=_draw_seed(generator), lr=settings.lr, generator=generator)
        if settings.match_weight > 0
        else None
    )
    conditional = settings.matching == "conditional"
    losses: list[float] = []
    bar = tqdm(range(settings.epochs), desc="substitute", unit="epoch", disable=not progress)
    for _ in bar:
        body.train()
        total = 0.0
        for rows in _batches(len(target.public), settings.batch_size, generator):
            labels = target.public_labels[rows]
            real, real_labels = sampler.like(labels, conditional=conditional)
            fake = noise(body(target.public[rows]))
            if critic is not None:
                critic.step(real, fake)
            loss = _substitute_loss(
                fake, labels, real, real_labels, heads=heads, critic=critic, settings=settings
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / len(target.public))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return body.eval(), losses


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**62, (1,), generator=generator))


def _substitute_loss(
    fake: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    *,
    heads: Sequence[nn.Module],
    critic: _Critic | None,
    settings: SubstituteSettings,
) -> torch.Tensor:
    loss = fake.sum() * 0.0
    if settings.mmd_weight > 0 and len(real):
        if settings.matching == "conditional":
            mmd = conditional_mk_mmd(fake, labels, real, real_labels)
        else:
            mmd = mk_mmd(fake, real)
        loss = loss + settings.mmd_weight * mmd
    if settings.ce_weight > 0 and heads:
        ce = torch.stack([F.cross_entropy(head(fake), labels) for head in heads]).mean()
        loss = loss + settings.ce_weight * ce
    if critic is not None:
        loss = loss + settings.match_weight * critic.generator_loss(fake)
    return loss
