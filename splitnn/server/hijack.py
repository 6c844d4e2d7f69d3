"""A malicious server: feature-space hijacking (FSHA, Pasquini, Ateniese, Bernaschi, CCS 2021).

The head policy "fsha". It answers every step like an honest server would (loss, accuracy and
evaluation logits come from an honest head trained on the received tensors and true labels), but
the gradient it returns is not the task's: it is the gradient, w.r.t. the received cut tensor, of
the adversarial loss of a label-conditioned Wasserstein critic that tells the features of a
*pilot* encoder (real) from the holder's tensors (fake). Following it, the holder's part 1 drifts
into the pilot's feature space, which the server can invert with the decoder it trained with the
pilot on public data. The holder's program is unchanged; it cannot tell from the replies alone.

Settings that work on this model (measured on mnist5k, 2 cores): the pilot (a fresh part 1) and
the "deep" decoder are pre-trained as an autoencoder on the public images (300 Adam steps at
lr 1e-3), then the pilot is frozen; per holder step, 10 critic updates (gradient penalty weight
10, Adam lr 1e-3) on the latest 512 received tensors against pilot features of public images of
the same labels, then one decoder update on pilot features of public images. The reference's
settings (penalty weight 500, lr 1e-5/1e-4, a pilot that keeps moving) were too slow or
collapsed here.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from splitnn.common.checkpoints import check_stem, save_checkpoint
from splitnn.common.codec import StepId
from splitnn.common.critics import critic_mlp, gradient_penalty
from splitnn.common.datasets import Subset, load_splits
from splitnn.common.decoders import build_decoder
from splitnn.common.models import CUT_SHAPE, build_body
from splitnn.common.seeds import seed_for
from splitnn.server.head import (
    ANONYMOUS_OWNER,
    HEAD_POLICIES,
    LoneHead,
    SessionSpec,
    StepResult,
    apply_step,
)

logger = logging.getLogger(__name__)

DECODER = "deep"
CRITIC_STEPS = 10  # critic updates per holder step
GP_WEIGHT = 10.0
CRITIC_LR = 1e-3
DECODER_LR = 1e-3
PRETRAIN_LR = 1e-3
BUFFER = 512  # received tensors the critic sees: the latest ones
PUBLIC_BATCH = 64  # public images per pre-training and decoder step
_SEED_SPAN = 2**63


@dataclass(frozen=True)
class HijackSettings:
    """What the hijacking server is told on its command line.

    Attributes:
        model_dir: decoder snapshots go to ``model_dir/hijack/<owner>/<run>/``.
        dataset: the public data set; its attacker's auxiliary slice is the server's public data.
        data_dir: where data sets are read (downloaded if needed).
        pretrain_steps: autoencoder steps of pilot and decoder before the pilot is frozen.
        snapshot_every: write a decoder snapshot every N holder steps (0: only at the end).
        seed: the server's seed; pilot, decoder, critic and public batches draw from its
            "hijack" stream.
    """

    model_dir: Path = Path("models")
    dataset: str = "mnist5k"
    data_dir: Path = Path("data")
    pretrain_steps: int = 300
    snapshot_every: int = 0
    seed: int = 0


class ClassCritic(nn.Module):
    """A label-conditioned WGAN critic: one score per class, the label's selected.

    cut float32 [B, 500], labels int64 [B] -> score float32 [B]. Linear(500 -> hidden) ->
    LeakyReLU(0.2) -> Linear(hidden -> hidden) -> LeakyReLU(0.2) -> Linear(hidden -> classes).
    """

    def __init__(self, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = critic_mlp(num_classes, hidden=hidden)

    def forward(self, cut: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(cut).gather(1, labels.unsqueeze(1)).squeeze(1)
        return out


class _Given(nn.Module):
    """The critic with its labels fixed, as `gradient_penalty` calls a critic: cut -> score."""

    def __init__(self, critic: ClassCritic, labels: torch.Tensor) -> None:
        super().__init__()
        self.critic = critic
        self.labels = labels

    def forward(self, cut: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.critic(cut, self.labels)
        return out


def adversarial_loss(critic: ClassCritic, cut: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What the holder is made to minimise: -mean critic score of its tensors (float32 scalar)."""
    score: torch.Tensor = critic(cut, labels)
    return -score.mean()


def critic_loss(
    critic: ClassCritic,
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """WGAN-GP critic loss: mean D(fake) - mean D(real) + GP_WEIGHT * penalty.

    real, fake: float32 [B, 500] of the same labels int64 [B] (pilot features, holder tensors).
    """
    penalty = gradient_penalty(_Given(critic, labels), real, fake, generator=generator)
    fake_score: torch.Tensor = critic(fake, labels)
    real_score: torch.Tensor = critic(real, labels)
    return fake_score.mean() - real_score.mean() + GP_WEIGHT * penalty


@dataclass(frozen=True)
class Prepared:
    """The public data, the pre-trained pilot and decoder, and the frozen pilot's features of
    every public image (float32 [N, 500]): shared by the sessions."""

    settings: HijackSettings
    public: Subset
    pilot: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor]
    pretrain_loss: float
    features: torch.Tensor
    by_class: list[torch.Tensor] = field(default_factory=list)


def _stream(settings: HijackSettings, part: int) -> int:
    return (seed_for(settings.seed, "hijack") + part) % _SEED_SPAN


def prepare(settings: HijackSettings) -> Prepared:
    """Loads the public data and pre-trains pilot and decoder as an autoencoder: PUBLIC_BATCH
    images a step, Adam at PRETRAIN_LR, MSE on pixels. Done once per process for the same data,
    steps and seed (where snapshots go does not change the pre-training)."""
    common = replace(settings, model_dir=Path(), snapshot_every=0)
    return replace(_pretrained(common), settings=settings)


@functools.cache
def _pretrained(settings: HijackSettings) -> Prepared:
    public = load_splits(settings.dataset, root=settings.data_dir).aux
    pilot = build_body(_stream(settings, 0))
    decoder = build_decoder(DECODER, seed=_stream(settings, 1))
    generator = torch.Generator().manual_seed(_stream(settings, 2))
    params = [*pilot.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=PRETRAIN_LR)
    loss = torch.tensor(float("nan"))
    for _ in range(settings.pretrain_steps):
        idx = torch.randint(0, len(public), (PUBLIC_BATCH,), generator=generator)
        images = public.images[idx]
        loss = F.mse_loss(decoder(pilot(images)), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = float(loss.detach())
    logger.info(
        "hijack: pilot and decoder pre-trained on %d public images of %s (%d steps, MSE %.4f)",
        len(public),
        settings.dataset,
        settings.pretrain_steps,
        final,
    )
    pilot.eval()
    with torch.no_grad():
        features = pilot(public.images)  # the pilot is frozen from here on
    labels = public.labels
    every = torch.arange(len(public))
    by_class = [every[labels == c] for c in range(int(labels.max()) + 1)]
    return Prepared(
        settings=settings,
        public=public,
        pilot=pilot.state_dict(),
        decoder=decoder.state_dict(),
        pretrain_loss=final,
        features=features,
        by_class=by_class,
    )


class HijackHead(LoneHead):
    """A session's head that hijacks its holder's part 1 (see the module docstring).

    Args:
        spec: what the holder announced.
        owner: whose run it is (snapshots are written per owner).
        settings: the server's hijack settings (default: `HijackSettings()`).
    """

    def __init__(
        self,
        spec: SessionSpec,
        *,
        owner: str = ANONYMOUS_OWNER,
        settings: HijackSettings | None = None,
    ) -> None:
        super().__init__(spec, owner=owner)
        self.owner = owner
        self.kit = prepare(settings or HijackSettings())
        self.pilot = build_body(0)
        self.pilot.load_state_dict(self.kit.pilot)
        self.pilot.requires_grad_(False).eval()  # frozen after pre-training
        self.decoder = build_decoder(DECODER, seed=0)
        self.decoder.load_state_dict(self.kit.decoder)
        self.decoder_optimizer = torch.optim.Adam(self.decoder.parameters(), lr=DECODER_LR)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_stream(self.kit.settings, 3))
            self.critic = ClassCritic(spec.num_classes)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=CRITIC_LR)
        self.generator = torch.Generator().manual_seed(_stream(self.kit.settings, 4))
        self.buffer_cut = torch.empty((0, *CUT_SHAPE))
        self.buffer_labels = torch.empty(0, dtype=torch.int64)
        self.features = self.kit.features  # [N, 500]: the pilot is frozen

    def apply(self, step: StepId, activations: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """Honest loss and accuracy; the critic's gradient instead of the task's."""
        honest = apply_step(self.head, self.optimizer, step, activations, labels)
        received = activations.detach().to(torch.float32)
        self.buffer_cut = torch.cat([self.buffer_cut, received])[-BUFFER:]
        self.buffer_labels = torch.cat([self.buffer_labels, labels])[-BUFFER:]
        self.train_critic()
        gradient = self.hijacking_gradient(received, labels)
        self.train_decoder()
        steps = self.steps_applied + 1
        every = self.kit.settings.snapshot_every
        if every > 0 and steps % every == 0:
            self.write_snapshot(steps)
        return StepResult(
            step=step,
            gradient=gradient.to(activations.dtype),
            loss=honest.loss,
            correct=honest.correct,
        )

    def public_features(self, labels: torch.Tensor) -> torch.Tensor:
        """Pilot features of random public images, one of each given label: float32 [B, 500]."""
        rows = torch.empty_like(labels)
        draws = torch.rand(labels.shape[0], generator=self.generator)
        for c in labels.unique().tolist():
            pool = self.kit.by_class[c] if c < len(self.kit.by_class) else torch.empty(0)
            if pool.numel() == 0:
                pool = torch.arange(len(self.kit.public))  # a class the public data lacks
            chosen = labels == c
            picks = (draws[chosen] * pool.numel()).long().clamp_(max=pool.numel() - 1)
            rows[chosen] = pool[picks]
        features: torch.Tensor = self.features[rows]
        return features

    def train_critic(self) -> None:
        """CRITIC_STEPS updates on the buffer against public features of the same labels."""
        self.critic.train()
        for _ in range(CRITIC_STEPS):
            real = self.public_features(self.buffer_labels)
            loss = critic_loss(
                self.critic, real, self.buffer_cut, self.buffer_labels, generator=self.generator
            )
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)

    def hijacking_gradient(self, received: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """d adversarial_loss / d received: float32 [B, 500]."""
        cut = received.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(adversarial_loss(self.critic, cut, labels), cut)
        return gradient

    def train_decoder(self) -> None:
        """One decoder update on pilot features of PUBLIC_BATCH public images."""
        rows = torch.randint(0, len(self.kit.public), (PUBLIC_BATCH,), generator=self.generator)
        self.decoder.train()
        loss = F.mse_loss(self.decoder(self.features[rows]), self.kit.public.images[rows])
        self.decoder_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.decoder_optimizer.step()
        self.decoder_optimizer.zero_grad(set_to_none=True)

    def snapshot_path(self, steps: int) -> Path:
        """``model_dir/hijack/<owner>/<run>/decoder_step=<steps>.ckpt``."""
        root = self.kit.settings.model_dir / "hijack" / self.owner / check_stem(self.spec.run)
        return root / f"decoder_step={steps}.ckpt"

    def write_snapshot(self, steps: int) -> Path:
        """Writes the decoder as it is after `steps` holder steps, with its manifest."""
        settings = asdict(self.kit.settings)
        manifest = {
            "part": "hijack-decoder",
            "decoder": DECODER,
            "step": steps,
            "run": self.spec.run,
            "owner": self.owner,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
            "critic_steps": CRITIC_STEPS,
            "gp_weight": GP_WEIGHT,
            "critic_lr": CRITIC_LR,
            "buffer": BUFFER,
            "pretrain_loss": self.kit.pretrain_loss,
        }
        path = save_checkpoint(self.snapshot_path(steps), self.decoder.state_dict(), manifest)
        logger.info("hijack: decoder snapshot of run %s at step %d: %s", self.spec.run, steps, path)
        return path

    def state(self) -> dict[str, Any]:
        state = super().state()
        with self.lock:
            # Copies: an optimizer loading this state would otherwise share our moments.
            state["hijack"] = copy.deepcopy(
                {
                    "pilot": self.pilot.state_dict(),
                    "decoder": self.decoder.state_dict(),
                    "decoder_optimizer": self.decoder_optimizer.state_dict(),
                    "critic": self.critic.state_dict(),
                    "critic_optimizer": self.critic_optimizer.state_dict(),
                    "generator": self.generator.get_state(),
                    "buffer_cut": self.buffer_cut,
                    "buffer_labels": self.buffer_labels,
                }
            )
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        saved = state["hijack"]
        with self.lock:
            self.pilot.load_state_dict(saved["pilot"])
            self.decoder.load_state_dict(saved["decoder"])
            self.decoder_optimizer.load_state_dict(saved["decoder_optimizer"])
            self.critic.load_state_dict(saved["critic"])
            self.critic_optimizer.load_state_dict(saved["critic_optimizer"])
            self.generator.set_state(saved["generator"])
            self.buffer_cut = saved["buffer_cut"].clone()
            self.buffer_labels = saved["buffer_labels"].clone()
            with torch.no_grad():
                self.features = self.pilot(self.kit.public.images)

    def close(self, *, finished: bool) -> None:
        """A finished run leaves its final decoder snapshot (if not written at this step)."""
        if not finished or self.steps_applied == 0:
            return
        with self.lock:
            if not self.snapshot_path(self.steps_applied).exists():
                self.write_snapshot(self.steps_applied)


HEAD_POLICIES["fsha"] = HijackHead
