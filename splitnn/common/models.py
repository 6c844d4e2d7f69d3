"""The study's classifier, split at the 500-d tanh layer (the reference's double softmax fixed)."""

from __future__ import annotations

import torch
from torch import nn

from splitnn.common.devices import on_device

CUT_SHAPE = (500,)
IMAGE_SHAPE = (1, 28, 28)
# The study's MNIST normalisation; applied inside the body so every caller feeds [0, 1] pixels.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
# The study's batch sizes, plain and whenever the NoPeek loss is on (`study_batch_size`).
PLAIN_BATCH_SIZE = 128
NOPEEK_BATCH_SIZE = 32
# The inversion decoders by name (`splitnn.common.decoders` builds them), for the
# programs that pass a name on to `splitnn-attack run --decoder` without importing the attacker.
DECODER_NAMES = ("deep", "study")
# Epochs of every inversion decoder by default, in every program (splitnn-attack, splitnn-sim,
# splitnn-experiments), so that a table measured by one is reproduced by the others.
DECODER_EPOCHS = 30


class Body(nn.Module):
    """Model part 1, the data holder's: images -> cut tensor.

    Input: float32 [B, 1, 28, 28] pixels in [0, 1]. Output: float32 [B, 500] in [-1, 1] (tanh).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(9216, CUT_SHAPE[0]),
            nn.Tanh(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.features((images - PIXEL_MEAN) / PIXEL_STD)
        return out


class Head(nn.Module):
    """Model part 2, the server's: cut tensor -> logits.

    Input: float32 [B, 500]. Output: float32 [B, num_classes] logits (no softmax: the loss is
    cross-entropy on logits).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(CUT_SHAPE[0], 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, cut: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(cut)
        return out


def build_body(seed: int) -> Body:
    """Part 1 with initial weights drawn from `seed` only (the global RNG is left as it was), on
    the compute device (drawn on the CPU: a seed gives the same weights on every device)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return on_device(Body())


def build_head(seed: int, num_classes: int = 10) -> Head:
    """Part 2 with initial weights drawn from `seed` only (the global RNG is left as it was), on
    the compute device (drawn on the CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return on_device(Head(num_classes))


def make_optimizer(params: nn.Module, lr: float) -> torch.optim.Adam:
    """The study's Adam, fused (one kernel for all parameters: measured 5-19 ms faster a step)."""
    return torch.optim.Adam(params.parameters(), lr=lr, fused=True)


def study_batch_size(nopeek: float) -> int:
    """The study's batch size for a NoPeek weight: `NOPEEK_BATCH_SIZE` if it is on, else plain."""
    return NOPEEK_BATCH_SIZE if nopeek > 0 else PLAIN_BATCH_SIZE
