"""Part 1's weights as an integrity-checked blob, and their weighted average.

A training group hands part 1 from holder to holder or averages the holders' copies (see
`topology.py`) through the server. The blob is the serialized `Weights` message (every tensor
float32, named as in the state dict) and its SHA-256: the server checks it when the blob arrives
and the holder that receives it checks it again, so a blob damaged anywhere on its way is
refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

from splitnn.common.codec import CodecError, WeightsBlob, weights_from_bytes, weights_to_bytes
from splitnn.common.models import build_body

# name -> shape of part 1's state dict: a blob must hold exactly these tensors.
BODY_SHAPES: dict[str, tuple[int, ...]] = {
    name: tuple(tensor.shape) for name, tensor in build_body(0).state_dict().items()
}
# Bytes of part 1's float32 weights (4.6 M parameters: about 18.5 MB), for message limits.
BODY_BYTES = 4 * sum(torch.Size(shape).numel() for shape in BODY_SHAPES.values())


def to_blob(weights: Mapping[str, torch.Tensor]) -> WeightsBlob:
    """Serializes a state dict (as float32) and signs it with its SHA-256."""
    data = weights_to_bytes(weights)
    return WeightsBlob(data=data, sha256=hashlib.sha256(data).digest())


def from_blob(
    blob: WeightsBlob, *, shapes: Mapping[str, tuple[int, ...]] = BODY_SHAPES
) -> dict[str, torch.Tensor]:
    """The state dict in `blob`: float32 tensors of exactly `shapes`, all finite.

    Raises:
        CodecError: the SHA-256 does not match, the bytes are not a `Weights` message, or a
            tensor is missing, extra, of another shape or dtype, or not finite.
    """
    if hashlib.sha256(blob.data).digest() != blob.sha256:
        raise CodecError("the weights do not match their SHA-256: damaged on the way")
    return weights_from_bytes(blob.data, shapes=shapes)


def average(
    states: Sequence[Mapping[str, torch.Tensor]], counts: Sequence[int]
) -> dict[str, torch.Tensor]:
    """FedAvg: each tensor's mean over `states`, weighted by `counts` (e.g. training samples).

    The sum runs in float64 in the order given, so the same inputs give the same bits.
    """
    if not states or len(states) != len(counts) or min(counts) <= 0:
        raise ValueError("average needs one positive count per state")
    total = float(sum(counts))
    averaged: dict[str, torch.Tensor] = {}
    for name, first in states[0].items():
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, count in zip(states, counts, strict=True):
            acc += state[name].to(torch.float64) * (count / total)
        averaged[name] = acc.to(first.dtype)
    return averaged
