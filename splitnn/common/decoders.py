"""Inversion decoders, looked up by name: cut float32 [B, 500] -> image float32 [B, 1, 28, 28].

An attacker trains one on (cut tensor, image) pairs from its auxiliary data and applies it
to the victim's intercepted tensors: the colluding attacker, the passive one and a hijacking
server alike, so they live here, shared by the parties.

- ``study``: the study's decoder, affine: no activation anywhere (docs/study.md, defect 4);
  its output is not confined to [0, 1], so clamp it before scoring.
- ``deep``: a non-linear decoder (batch norm, ReLU, sigmoid output in [0, 1]) for a stronger
  attack than the study measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from splitnn.common import exits
from splitnn.common.devices import on_device
from splitnn.common.models import CUT_SHAPE, DECODER_NAMES, IMAGE_SHAPE


class DecoderError(exits.Failed, ValueError):
    """An unknown decoder name; the message lists the known ones."""


class StudyDecoder(nn.Module):
    """The study's transposed-convolution decoder, with no non-linearity (an affine map).

    Linear(500 -> 9216) -> [64, 12, 12] -> ConvT(64, 64, k=2, s=2): 12 -> 24 ->
    ConvT(64, 32, k=3): 24 -> 26 -> ConvT(32, 8, k=3): 26 -> 28 -> ConvT(8, 1, k=1): 28 -> 28.
    The study does not give kernel sizes; these mirror the body (two 3x3 convolutions and a 2x2
    max-pool take 28 to 12), with a final 1x1 projection to one channel. About 4.65 M parameters,
    almost all in the first linear layer.

    Input: float32 [B, 500]. Output: float32 [B, 1, 28, 28], unbounded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(CUT_SHAPE[0], 64 * 12 * 12)
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(64, 64, kernel_size=2, stride=2),
            nn.ConvTranspose2d(64, 32, kernel_size=3),
            nn.ConvTranspose2d(32, 8, kernel_size=3),
            nn.ConvTranspose2d(8, 1, kernel_size=1),
        )

    def forward(self, cut: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.upsample(self.project(cut).view(-1, 64, 12, 12))
        return out


def _up(channels_in: int, channels_out: int) -> list[nn.Module]:
    """Doubles the resolution: ConvT(k=4, s=2, p=1) -> BatchNorm -> ReLU."""
    return [
        nn.ConvTranspose2d(channels_in, channels_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    ]


def _refine(channels: int) -> list[nn.Module]:
    """Keeps the resolution: Conv(k=3, p=1) -> BatchNorm -> ReLU."""
    return [
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    ]


class DeepDecoder(nn.Module):
    """A non-linear decoder: Linear(500 -> 128x7x7) -> BN/ReLU -> up to 14 -> up to 28 -> sigmoid.

    Linear -> [128, 7, 7] -> BN -> ReLU -> ConvT(128, 64): 7 -> 14 -> Conv(64, 64) ->
    ConvT(64, 32): 14 -> 28 -> Conv(32, 32) -> Conv(32, 1, k=3) -> Sigmoid, each hidden layer with
    batch norm and ReLU. The first batch norm is 2-d (per channel), so a training batch of one
    sample still works. About 3.35 M parameters.

    Input: float32 [B, 500]. Output: float32 [B, 1, 28, 28] in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(CUT_SHAPE[0], 128 * 7 * 7, bias=False)
        self.upsample = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            *_up(128, 64),
            *_refine(64),
            *_up(64, 32),
            *_refine(32),
            nn.Conv2d(32, IMAGE_SHAPE[0], 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, cut: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.upsample(self.project(cut).view(-1, 128, 7, 7))
        return out


_CONSTRUCTORS: dict[str, Callable[[], nn.Module]] = {"study": StudyDecoder, "deep": DeepDecoder}
# Name -> constructor, for each of `DECODER_NAMES` in its order. Read-only; iterating it gives
# the names.
DECODERS: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {name: _CONSTRUCTORS[name] for name in DECODER_NAMES}
)


def build_decoder(name: str, *, seed: int) -> nn.Module:
    """A fresh decoder, its initial weights drawn from `seed` only (the global RNG is left alone).

    Raises:
        DecoderError: if `name` is not in `DECODERS`.
    """
    try:
        factory = DECODERS[name]
    except KeyError:
        known = ", ".join(sorted(DECODERS))
        raise DecoderError(f"unknown decoder {name!r}; known decoders: {known}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return on_device(factory())
